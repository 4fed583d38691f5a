"""`%lora diff`: runs side by side."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from IPython.core.magic_arguments import argument

from .commands import command

if TYPE_CHECKING:
    from . import LoraMagics


@command("diff")
@argument("runs", nargs="+", metavar="RUN", help="Two or more runs of the store.")
def diff(magics: LoraMagics, args: Any) -> Any:
    """Runs side by side: the settings that differ, metrics, loss curves, probe and evaluation answers.

    Reads the run store only, so it also compares runs still training or ones that failed (with
    what they logged so far). The output is static HTML with the loss plot inline: it stays in the
    saved notebook. In Python: lora_magic.diff("run-a", "run-b").
    """
    from ..diffing import diff as compare_runs

    return compare_runs(*args.runs, runs_dir=magics.runs_root)
