"""The recipe: a run's settings and its hardware, as the arguments of transformers, bitsandbytes,
PEFT and TRL.

The in-kernel trainer, the worker process (worker.py), `%lora plan` and `%lora show --code` all
build from these functions, so the code shown is the code that runs. Each returns plain keyword
arguments: the engine passes them to the libraries, the code view prints them.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from typing import Any

from .config import RunConfig
from .errors import ConfigError

GIB = 2**30
# On the CPU the trainer (sft.py) computes the logits of a batch's labelled positions at once, up to
# this many entries (0.5 GiB in float32); a larger batch goes through TRL's tiled LM head.
LOGITS_LIMIT = 2**27
SMALL_GPU_GIB = 16  # gradient_checkpointing='auto' turns it on below this
EVAL_BUDGET = 0.2  # eval rows scored during training, per row trained, when eval_every is 0
MAX_EVALUATIONS = 11  # the start, and up to ten more


# -- the hardware --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """The memory a run must fit in: a GPU (named, detected or a size) or the CPU's RAM."""

    name: str
    memory_gib: float
    gpu: bool
    bf16: bool = True

    @property
    def label(self) -> str:
        kind = "" if self.gpu else " RAM available"
        return f"{self.name} ({self.memory_gib:.1f} GiB{kind})"


def this_machine(config: RunConfig) -> Target:
    """This machine's GPU, or its CPU with the RAM available now."""
    import psutil

    from . import models

    if models.device(config.device) == "cuda":
        import torch

        properties = torch.cuda.get_device_properties(0)
        return Target(properties.name, properties.total_memory / GIB, True, torch.cuda.is_bf16_supported())
    return Target("CPU", psutil.virtual_memory().available / GIB, gpu=False)


@dataclass(frozen=True)
class Hardware:
    """The choices a run makes on a target: what 'auto' settles to."""

    dtype: str  # of the base weights
    precision: str  # of the computation: fp32, bf16 or fp16
    checkpointing: bool

    @classmethod
    def of(cls, config: RunConfig, on: Target) -> Hardware:
        """float32 on a CPU (fast there; bf16 on a CPU is emulated), bf16 on GPUs with it, else fp16;
        gradient checkpointing only on a small GPU."""
        half = "bfloat16" if on.bf16 else "float16"
        dtype = config.dtype if config.dtype != "auto" else (half if on.gpu else "float32")
        precision = config.precision
        if precision == "auto":
            precision = ("bf16" if on.bf16 else "fp16") if on.gpu else "fp32"
        checkpointing = config.gradient_checkpointing == "on" or (
            config.gradient_checkpointing == "auto" and on.gpu and on.memory_gib < SMALL_GPU_GIB
        )
        return cls(dtype, precision, checkpointing)


def world_size() -> int:
    """How many processes train together: set by accelerate launch / torchrun, else 1."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def device_index() -> int:
    """The GPU of this process: under accelerate launch / torchrun, one per local rank."""
    return int(os.environ.get("LOCAL_RANK", "0"))


# -- loading -----------------------------------------------------------------------------------------
def tokenizer_arguments(config: RunConfig) -> dict[str, Any]:
    return {"trust_remote_code": True} if config.trust_remote_code else {}


def model_arguments(config: RunConfig, on: Target) -> dict[str, Any]:
    """`AutoModelForCausalLM.from_pretrained` keywords, bar the quantisation (quantization_arguments)."""
    import torch

    arguments = {
        "dtype": getattr(torch, Hardware.of(config, on).dtype),
        "device_map": {"": device_index() if on.gpu else "cpu"},
    }
    return {**arguments, **tokenizer_arguments(config)}


def quantization_arguments(config: RunConfig, on: Target) -> dict[str, Any] | None:
    """`BitsAndBytesConfig` keywords for the run's quantisation; None for a full-precision base."""
    if config.quantization == "4bit":  # QLoRA: NF4 with double quantisation
        import torch

        return {
            "load_in_4bit": True,
            "bnb_4bit_quant_type": "nf4",
            "bnb_4bit_use_double_quant": True,
            "bnb_4bit_compute_dtype": getattr(torch, Hardware.of(config, on).dtype),
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
    The evaluation after the last step is sft.EvaluateAtTheEnd's."""
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
    config: RunConfig, on: Target, *, output_dir: str, train_examples: int, eval_examples: int
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
