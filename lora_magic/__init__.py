"""lora_magic: LoRA / QLoRA fine-tuning as a notebook experience.

`%load_ext lora_magic` registers the magics. The same features are plain Python:

    import lora_magic as lm
    run = lm.train(model="smollm2-135m", data=df, template="alpaca", steps=60)
    run.wait()
    lm.compare("Describe the product: Aurora Lamp", adapters=["base", run.name])

torch, transformers, peft and trl are imported on first real use, never at import time.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from .core.config import RunConfig
from .core.errors import ConfigError, DataError, LoraMagicError, ModelError, RunError
from .core.store import RunStore

__version__ = "0.1.0"

# bitsandbytes is imported by transformers and peft wherever it is installed, and on a CPU with
# AVX512-BF16 it then warns that an optional kernel from the Hub (package `kernels`) is missing. It
# goes on with its own, so nothing is wrong: keep that warning out of every first cell of a kernel.
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
    lambda record: not record.getMessage().startswith("Failed to load CPU gemm_4bit_forward")
)

# Public names served lazily from the modules that hold the heavy imports.
_LAZY = {
    "train": "training.start",
    "resume": "training.start",
    "Run": "training.run",
    "manager": "training.trainer",
    "script": "training.script",
    "preview": "data.prepare",
    "load_records": "data.sources",
    "bundled_dataset": "data.sources",
    "inspect_data": "data.report",
    "session": "model.session",
    "free": "model.session",
    "load_base": "model.loading",
    "compare": "model.generation",
    "Conversation": "model.generation",
    "merge": "model.merging",
    "resolve_model": "core.catalogue",
    "runs": "core.listing",
    "show": "core.listing",
    "plan": "experiments.plan",
    "diff": "experiments.diff",
    "evaluate": "experiments.evaluate",
    "sweep": "experiments.sweep",
    "export": "experiments.export",
}

__all__ = [
    "ConfigError",
    "DataError",
    "LoraMagicError",
    "ModelError",
    "RunConfig",
    "RunError",
    "RunStore",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'lora_magic' has no attribute {name!r}")


def load_ipython_extension(ipython) -> None:
    from .magics import LoraMagics

    ipython.register_magics(LoraMagics)


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": "lora_magic"}]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "lora_magic.server"}]
