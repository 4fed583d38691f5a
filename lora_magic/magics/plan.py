"""`%lora plan`: will a run fit? Parameters and memory from the model's configuration alone."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from IPython.core.magic_arguments import argument

from .commands import command
from .options import config_arguments, config_values

if TYPE_CHECKING:
    from . import LoraMagics

GPU_HELP = (
    "Plan for a named GPU (T4, L4, A10, A100-40, A100-80, H100) or a number of GiB. "
    "Default: this machine's GPU, else its RAM."
)


@command("plan")
@argument("model", nargs="?", metavar="MODEL", help="Model to plan for. Default: the last %%%%finetune's.")
@argument("--gpu", metavar="NAME|GIB", help=GPU_HELP)
@argument(
    "--measure",
    action="store_true",
    help="Also train a few real steps of batch_size × max_length here: measured peak memory and time "
    "per step beside the estimate (loads the model).",
)
@config_arguments(skip=("model",))
def plan(magics: LoraMagics, args: Any) -> Any:
    """Will it fit? Parameters and memory of a run, from the model's configuration, before loading it.

    Takes the settings of %%finetune (default: those of the last %%finetune). Reports the trainable
    LoRA parameters as PEFT counts them, the memory of a training step by part, a verdict for the
    GPU (or RAM), and the cheapest changes that make a run fit.
    """
    from ..planning import plan as make_plan

    given = config_values(args)
    settings = {**vars(magics.last_config), **given} if magics.last_config else given
    return make_plan(magics.run_config(settings), gpu=args.gpu, measure=args.measure)
