"""`%lora eval`, `diff`, `plan` and `export`: experiments on runs (sweeps are a `sweep:` block of
`%%finetune`)."""

from __future__ import annotations

from typing import Any

from IPython.core.magic_arguments import argument

from ..core.hardware import GPUS
from .options import config_arguments, config_values
from .registry import Magics, command
from .runs import last_run_name


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
@argument(
    "--batch-size",
    type=int,
    metavar="N",
    help="Prompts answered at once at most. Default: as many as the memory left allows (64 at most).",
)
@argument(
    "--trust-remote-code",
    action="store_true",
    help="Allow a run trained with trust_remote_code to run its model's code (a run folder never allows it).",
)
def eval_(magics: Magics, args: Any) -> Any:
    """Score the base model and each run's adapter on held-out prompts, answered greedily.

    Per model: eval loss and perplexity, token-F1 and ROUGE-L against the reference answers,
    exact match, the share of answers that end with the template's terminator, and the mean
    answer length in tokens; then the first answers side by side. The results are saved in each
    run's evaluation.json, where %lora diff and sweep tables find them.
    """
    from ..experiments.evaluate import evaluate

    names = args.runs or [last_run_name(magics, None)]
    data = magics.variables.data_source(args.data, "data") if args.data else None
    return evaluate(
        *names,
        data=data,
        limit=args.limit,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        runs_dir=magics.runs_root,
        trust_remote_code=args.trust_remote_code,
    )


@command("diff")
@argument("runs", nargs="+", metavar="RUN", help="Two or more runs of the store.")
def diff(magics: Magics, args: Any) -> Any:
    """Runs side by side: the settings that differ, metrics, loss curves, probe and evaluation answers.

    Reads the run store only, so it also compares runs still training or ones that failed (with
    what they logged so far). The output is static HTML with the loss plot inline: it stays in the
    saved notebook. In Python: lora_magic.diff("run-a", "run-b").
    """
    from ..experiments.diff import diff as compare_runs

    return compare_runs(*args.runs, runs_dir=magics.runs_root)


@command("plan")
@argument("model", nargs="?", metavar="MODEL", help="Model to plan for. Default: the last %%%%finetune's.")
@argument(
    "--gpu",
    metavar="NAME|GIB",
    help=f"Plan for a named GPU ({', '.join(GPUS)}) or a number of GiB. Default: this machine's GPU, else its RAM.",
)
@argument(
    "--measure",
    action="store_true",
    help="Also train a few real steps of batch_size × max_length here: measured peak memory and time "
    "per step beside the estimate (loads the model).",
)
@config_arguments(skip=("model",))
def plan(magics: Magics, args: Any) -> Any:
    """Will it fit? Parameters and memory of a run, from the model's configuration, before loading it.

    Takes the settings of %%finetune (default: those of the last %%finetune). Reports the trainable
    LoRA parameters as PEFT counts them, the memory of a training step by part, a verdict for the
    GPU (or RAM), and the cheapest changes that make a run fit.
    """
    from ..experiments.plan import plan as make_plan

    given = config_values(args)
    settings = {**vars(magics.last_config), **given} if magics.last_config else given
    return make_plan(magics.run_config(settings), gpu=args.gpu, measure=args.measure)


@command("export")
@argument("run", metavar="RUN", help="A run, a loaded adapter or an adapter folder.")
@argument(
    "--out",
    metavar="DIR",
    help="New folder for the export. Default: exports/RUN-gguf (exports/RUN-merged for safetensors), "
    "beside the notebook.",
)
@argument(
    "--format",
    default="gguf",
    help="'gguf' (one file for llama.cpp and Ollama, with a Modelfile) or 'safetensors' (the merged "
    "model, as %%lora merge saves it). Default: gguf.",
)
@argument(
    "--type",
    default="f16",
    help="GGUF weights: 'f16' (16-bit floats) or 'q8_0' (8-bit blocks, about half the size). Default: f16.",
)
def export(magics: Magics, args: Any) -> Any:
    """Merge an adapter into its base and export it: a GGUF file for llama.cpp and Ollama.

    The GGUF holds the weights, the tokenizer, a chat template in the run's prompt template and
    where it came from. Beside it: an Ollama Modelfile (the run's template and stop strings) and a
    README with the llama.cpp and Ollama commands. Llama-family models (Llama, Mistral, Qwen2,
    SmolLM); --format safetensors exports any model.
    """
    from ..experiments.export import export as write

    return write(args.run, args.out, format=args.format, type=args.type, runs_dir=magics.runs_root)
