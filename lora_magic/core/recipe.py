"""The recipe: a run's settings and its machine, as the arguments of transformers, bitsandbytes,
PEFT and TRL.

The in-kernel trainer, the worker process, `%lora plan` and `lm.script` (`%lora show --code`) all
build from these functions, so the code shown is the code that runs. Each returns plain keyword
arguments of plain values (dtypes by name): the engine passes them to the libraries, the code view
prints them. Importing this module imports no torch.
"""

from __future__ import annotations

import math
import random
from typing import Any

from .config import RunConfig
from .errors import ConfigError
from .hardware import Hardware, Machine, device_index, world_size

# On the CPU the trainer (training/sft.py) computes the logits of a batch's labelled positions at
# once, up to this many entries (0.5 GiB in float32); a larger batch goes through TRL's tiled LM head.
LOGITS_LIMIT = 2**27
EVAL_BUDGET = 0.2  # eval rows scored during training, per row trained, when eval_every is 0
MAX_EVALUATIONS = 11  # the start, and up to ten more


# -- loading -----------------------------------------------------------------------------------------
def tokenizer_arguments(config: RunConfig) -> dict[str, Any]:
    return {"trust_remote_code": True} if config.trust_remote_code else {}


def model_arguments(config: RunConfig, on: Machine) -> dict[str, Any]:
    """`AutoModelForCausalLM.from_pretrained` keywords, bar the quantisation (quantization_arguments)."""
    arguments = {
        "dtype": Hardware.of(config, on).dtype,
        "device_map": {"": device_index() if on.gpu else "cpu"},
    }
    return {**arguments, **tokenizer_arguments(config)}


def quantization_arguments(config: RunConfig, on: Machine) -> dict[str, Any] | None:
    """`BitsAndBytesConfig` keywords for the run's quantisation; None for a full-precision base."""
    if config.quantization == "4bit":  # QLoRA: NF4 with double quantisation
        return {
            "load_in_4bit": True,
            "bnb_4bit_quant_type": "nf4",
            "bnb_4bit_use_double_quant": True,
            "bnb_4bit_compute_dtype": Hardware.of(config, on).dtype,
        }
    if config.quantization == "8bit":
        return {"load_in_8bit": True}
    return None


def lora_arguments(config: RunConfig, targets: list[str]) -> dict[str, Any]:
    """`peft.LoraConfig` keywords."""
    return {
        "r": config.r,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "bias": config.bias,
        "target_modules": list(targets),
        "task_type": "CAUSAL_LM",
        "use_dora": config.dora,
        "use_rslora": config.rslora,
        "init_lora_weights": True if config.init == "kaiming" else config.init,  # True: PEFT's default
    }


# -- training ----------------------------------------------------------------------------------------
def total_steps(config: RunConfig, train_examples: int) -> int:
    return config.steps or math.ceil(train_examples / (config.batch_size * config.grad_accum) * config.epochs)


def eval_sample(config: RunConfig, eval_examples: int) -> list[int] | None:
    """The rows of the eval split that evaluations during training score (eval_rows of them, drawn
    with a fixed seed so that runs of any seed score the same ones); None for all of them."""
    if not config.eval_rows or config.eval_rows >= eval_examples:
        return None
    return sorted(random.Random(0).sample(range(eval_examples), config.eval_rows))


def eval_schedule(config: RunConfig, train_examples: int, eval_examples: int) -> tuple[int, bool]:
    """(eval_steps, eval_on_start). By default the evaluations together score at most EVAL_BUDGET
    rows per row trained (a forward pass costs about half a training step, so about a tenth of the
    run's time): at the end only, or also at the start and evenly in between, MAX_EVALUATIONS at most.
    The evaluation after the last step is training/sft.py's EvaluateAtTheEnd."""
    steps = total_steps(config, train_examples)
    if config.eval_every:
        return config.eval_every, True
    scored = min(eval_examples, config.eval_rows or eval_examples)
    trained = steps * config.batch_size * config.grad_accum
    count = min(MAX_EVALUATIONS, int(EVAL_BUDGET * trained / max(1, scored)))
    if count <= 1:
        return steps, False
    return math.ceil(steps / (count - 1)), True


def trainer_arguments(
    config: RunConfig, on: Machine, *, output_dir: str, train_examples: int, eval_examples: int
) -> dict[str, Any]:
    """`trl.SFTConfig` keywords. batch_size is per step: split between the processes."""
    hardware = Hardware.of(config, on)
    steps = total_steps(config, train_examples)
    eval_steps, eval_on_start = eval_schedule(config, train_examples, eval_examples)
    per_device, rest = divmod(config.batch_size, world_size())
    if rest or not per_device:
        raise ConfigError(
            f"batch_size={config.batch_size} cannot be split between {world_size()} processes: make it "
            "a multiple of the number of processes"
        )
    return {
        "output_dir": output_dir,
        "max_steps": config.steps or -1,
        "num_train_epochs": config.epochs,
        "per_device_train_batch_size": per_device,
        "per_device_eval_batch_size": per_device,
        "gradient_accumulation_steps": config.grad_accum,
        "learning_rate": config.learning_rate,
        "warmup_steps": config.warmup_steps,
        "lr_scheduler_type": config.scheduler,
        "seed": config.seed,
        "logging_steps": 1,
        "logging_nan_inf_filter": False,  # a NaN or infinite loss is shown as it is, not hidden by an average
        "eval_strategy": "steps" if eval_examples else "no",
        "eval_steps": eval_steps,
        "eval_on_start": bool(eval_examples) and eval_on_start,
        "save_strategy": "steps" if config.save_every else "no",
        "save_steps": config.save_every or steps,
        "save_total_limit": 2,
        "bf16": hardware.precision == "bf16",
        "fp16": hardware.precision == "fp16",
        checkpointing_argument(): hardware.checkpointing,
        "max_length": config.max_length,
        "include_num_input_tokens_seen": "non_padding",
        "train_sampling_strategy": "sequential" if config.order == "length" else "random",
        "dataloader_pin_memory": on.gpu,
        "use_cpu": not on.gpu,
        "report_to": "none",
        "disable_tqdm": True,
        # every LoRA weight takes part in each step: DDP need not search for unused ones
        **({"ddp_find_unused_parameters": False} if world_size() > 1 else {}),
    }


def checkpointing_argument() -> str:
    """The trainer's name for gradient checkpointing: newer transformers call it
    activation_checkpointing and warn on the old name."""
    from transformers import TrainingArguments

    fields = TrainingArguments.__dataclass_fields__
    return "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
