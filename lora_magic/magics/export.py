"""`%lora export`: the fine-tuned model as one GGUF file for llama.cpp and Ollama, or merged safetensors."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from IPython.core.magic_arguments import argument

from .commands import command

if TYPE_CHECKING:
    from . import LoraMagics


@command("export")
@argument("run", metavar="RUN", help="A run, a loaded adapter or an adapter folder.")
@argument("--out", required=True, metavar="DIR", help="New folder for the export.")
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
def export(magics: LoraMagics, args: Any) -> Any:
    """Merge an adapter into its base and export it: a GGUF file for llama.cpp and Ollama.

    The GGUF holds the weights, the tokenizer, a chat template in the run's prompt template and
    where it came from. Beside it: an Ollama Modelfile (the run's template and stop strings) and a
    README with the llama.cpp and Ollama commands. Llama-family models (Llama, Mistral, Qwen2,
    SmolLM); --format safetensors exports any model.
    """
    from ..exporting import export as write

    return write(args.run, args.out, format=args.format, type=args.type, runs_dir=magics.runs_root)
