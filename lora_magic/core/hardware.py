"""The machine a run trains on, and what 'auto' settles to there.

A `Machine` is the memory a run must fit in: a GPU (this one, a named one or a size) or the CPU's
RAM. `detect()` asks torch once per run, in the process that trains it; the run records what it
found (run.json "machine" and "hardware"), and everything after reads that. Importing this module
imports no torch.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .config import RunConfig
from .errors import ConfigError, ModelError, did_you_mean

GIB = 2**30
SMALL_GPU_GIB = 16  # gradient_checkpointing='auto' turns it on below this
# Total memory as torch reports it (GiB) and bfloat16 support, of GPUs people fine-tune on.
GPUS: dict[str, tuple[float, bool]] = {
    "T4": (14.7, False),
    "L4": (22.0, True),
    "A10": (22.0, True),
    "A100-40": (39.4, True),
    "A100-80": (79.2, True),
    "H100": (79.1, True),
}


@dataclass(frozen=True)
class Machine:
    """The memory a run must fit in: a GPU or the CPU's RAM."""

    name: str
    memory_gib: float
    gpu: bool
    bf16: bool = True

    @property
    def label(self) -> str:
        kind = "" if self.gpu else " RAM available"
        return f"{self.name} ({self.memory_gib:.1f} GiB{kind})"


@dataclass(frozen=True)
class Hardware:
    """The choices a run makes on a machine: what its 'auto' settings settle to."""

    dtype: str  # of the base weights
    precision: str  # of the computation: fp32, bf16 or fp16
    checkpointing: bool

    @classmethod
    def of(cls, config: RunConfig, on: Machine) -> Hardware:
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


def device(choice: str = "auto") -> str:
    """'cuda' or 'cpu' for a device setting; asking for a GPU that torch cannot see is an error."""
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise ModelError(
            f"device='cuda' but torch {torch.__version__} sees no CUDA GPU; use device='auto' or 'cpu'"
        )
    return choice


def detect(config: RunConfig) -> Machine:
    """This process's GPU for the run, or the CPU with the RAM available now."""
    import psutil

    if device(config.device) == "cuda":
        import torch

        properties = torch.cuda.get_device_properties(device_index())
        return Machine(properties.name, properties.total_memory / GIB, True, torch.cuda.is_bf16_supported())
    return Machine("CPU", psutil.virtual_memory().available / GIB, gpu=False)


def named(gpu: str | float) -> Machine:
    """A GPU named (T4, A100-80, ...) or given as its memory in GiB."""
    if isinstance(gpu, int | float) or re.fullmatch(r"\d+(\.\d+)?", str(gpu).strip()):
        size = float(gpu)
        if size <= 0:
            raise ConfigError(f"gpu={gpu!r}: a GPU's memory must be more than 0 GiB")
        return Machine(f"a {size:g} GiB GPU", size, gpu=True)
    key = str(gpu).strip().upper().removesuffix("GB")
    if key not in GPUS:
        variants = [name for name in GPUS if name.startswith(key + "-")]  # A100 -> A100-40, A100-80
        hint = f" (did you mean {' or '.join(map(repr, variants))}?)" if variants else did_you_mean(key, GPUS)
        raise ConfigError(
            f"unknown GPU {gpu!r}{hint}; name one of {', '.join(GPUS)}, or give its memory in GiB (e.g. 16)"
        )
    memory, bf16 = GPUS[key]
    return Machine(key, memory, gpu=True, bf16=bf16)


def world_size() -> int:
    """How many processes train together: set by accelerate launch / torchrun, else 1."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def device_index() -> int:
    """The GPU of this process: under accelerate launch / torchrun, one per local rank."""
    return int(os.environ.get("LOCAL_RANK", "0"))
