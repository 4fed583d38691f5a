"""`%lora data`: the data report, on the same data and template settings as `%%finetune`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from IPython.core.magic_arguments import argument

from .commands import command
from .options import config_arguments, config_values

if TYPE_CHECKING:
    from . import LoraMagics


@command("data")
@argument(
    "data",
    nargs="?",
    metavar="DATA",
    help="A notebook variable or a file. Default: the data of the last %%%%finetune.",
)
@config_arguments(skip=("data",), sections=("model", "data"))
def data(magics: LoraMagics, args: Any) -> Any:
    """Report on the training data: lengths, padding, duplicates, bad responses, template markers.

    The report shows token lengths against max_length, padding per batch, the share of tokens
    with loss, exact and near-duplicates, empty or short responses, responses that repeat the
    instruction, and fields holding the template's own markers, each with its rows.

    Settings given here change those of the last %%finetune; the cleaning settings (dedup,
    min_response_tokens, drop_template_markers) also show what cleaning would drop.
    """
    from ..datacheck import inspect_data

    given = config_values(args)
    config = magics.run_config(given)
    if magics.last_config and "data" not in given:
        config = magics.last_config.replace(**{key: getattr(config, key) for key in given})
    return inspect_data(config)
