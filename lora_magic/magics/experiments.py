"""`%lora eval`: held-out evaluation of runs (sweeps are a `sweep:` block of `%%finetune`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from IPython.core.magic_arguments import argument

from .commands import command, last_run_name

if TYPE_CHECKING:
    from . import LoraMagics


@command("eval")
@argument("runs", nargs="*", metavar="RUN", help="Runs to evaluate. Default: the last run.")
@argument(
    "--data",
    metavar="DATA",
    help="Prompts with reference answers, in the runs' template: a notebook variable or a file. "
    "Default: the first run's held-out eval split.",
)
@argument("--limit", type=int, metavar="N", help="Evaluate only the first N prompts.")
@argument(
    "--max-new-tokens",
    type=int,
    metavar="N",
    help="New tokens per answer. Default: the longest reference answer's, plus 16.",
)
def eval_(magics: LoraMagics, args: Any) -> Any:
    """Score the base model and each run's adapter on held-out prompts, answered greedily.

    Per model: eval loss and perplexity, token-F1 and ROUGE-L against the reference answers,
    exact match, the share of answers that end with the template's terminator, and the mean
    answer length in tokens; then the first answers side by side. The results are saved in each
    run's evaluation.json, where %lora diff and sweep tables find them.
    """
    from ..evaluation import evaluate

    names = args.runs or [last_run_name(magics, None)]
    data = magics.variables.data_source(args.data, "data") if args.data else None
    return evaluate(
        *names, data=data, limit=args.limit, max_new_tokens=args.max_new_tokens, runs_dir=magics.runs_root
    )
