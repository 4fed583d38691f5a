"""`%lora preview` and `%lora data`: the training data as the run will see it."""

from __future__ import annotations

from typing import Any

from IPython.core.magic_arguments import argument

from .options import config_arguments, config_values
from .registry import Magics, command


@command("preview")
@argument(
    "data",
    nargs="?",
    metavar="DATA",
    help="A notebook variable or a file. Default: the data of the last %%%%finetune.",
)
@argument("-n", "--examples", type=int, default=3, help="How many examples to render. Default: 3.")
@config_arguments(skip=("data",), sections=("model", "data"))
def preview(magics: Magics, args: Any) -> Any:
    """Show training examples as they will be trained: templated text, token counts, loss mask."""
    from ..data.prepare import preview as render

    given = config_values(args)
    if magics.last_config and not given:
        return render(magics.last_config, n=args.examples)
    return render(magics.run_config(given), n=args.examples)


@command("data")
@argument(
    "data",
    nargs="?",
    metavar="DATA",
    help="A notebook variable or a file. Default: the data of the last %%%%finetune.",
)
@config_arguments(skip=("data",), sections=("model", "data"))
def data(magics: Magics, args: Any) -> Any:
    """Report on the training data: lengths, padding, duplicates, bad responses, template markers.

    The report shows token lengths against max_length, padding per batch, the share of tokens
    with loss, exact and near-duplicates, empty or short responses, responses that repeat the
    instruction, and fields holding the template's own markers, each with its rows.

    Settings given here change those of the last %%finetune; the cleaning settings (dedup,
    min_response_tokens, drop_template_markers) also show what cleaning would drop.
    """
    from ..data.report import inspect_data

    given = config_values(args)
    config = magics.run_config(given)
    if magics.last_config and "data" not in given:
        config = magics.last_config.replace(**{key: getattr(config, key) for key in given})
    return inspect_data(config)
