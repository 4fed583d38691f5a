"""The layers LoRA can adapt: the linear layers of a loaded (or meta-device) model, the target
presets resolved against them, and PEFT's LoraConfig for a run."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from ..core import recipe
from ..core.config import RunConfig
from ..core.errors import ConfigError, ModelError, did_you_mean

if TYPE_CHECKING:
    from torch import nn

# LoRA target presets by layer role. Names are matched on the last part of a module's path.
QUERY_VALUE = ("q_proj", "v_proj")
ATTENTION_ALL = ("q_proj", "k_proj", "v_proj", "o_proj")
FUSED_QKV = ("query_key_value", "c_attn", "qkv_proj", "Wqkv")
OUTPUT_HEADS = ("lm_head", "embed_out")

# PEFT reads transformers' deprecated `is_gradient_checkpointing` each time it wraps a model; the
# warning is for PEFT's authors, not for someone fine-tuning.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


# -- LoRA targets ------------------------------------------------------------------------------------
def linear_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every layer LoRA can adapt, by full name: nn.Linear (bitsandbytes 4/8-bit included) and GPT-2's Conv1D."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    found = {}
    for name, module in model.named_modules():
        parts = name.split(".")
        if not isinstance(module, nn.Linear | Conv1D) or any(p.startswith("lora_") for p in parts):
            continue
        # once PEFT wraps a layer, the original sits under `<layer>.base_layer`
        found[name.removesuffix(".base_layer")] = module
    return found


def linear_layer_names(model: nn.Module) -> list[str]:
    """The distinct short names of the linear layers, e.g. ['down_proj', 'gate_proj', ...]."""
    return sorted({name.rsplit(".", 1)[-1] for name in linear_layers(model)})


def lora_config(config: RunConfig, targets: list[str]) -> Any:
    """PEFT's LoraConfig for a run: what training applies and what a plan counts."""
    from peft import LoraConfig

    return LoraConfig(**recipe.lora_arguments(config, targets))


def resolve_targets(config: RunConfig, model: nn.Module) -> list[str]:
    """The target_modules list for PEFT, from a preset or an explicit list checked against the model."""
    names = linear_layer_names(model)
    valid = f"this model's linear layers are: {', '.join(names)}"
    if isinstance(config.targets, list):
        for target in config.targets:
            if target.rsplit(".", 1)[-1] not in names:
                raise ModelError(
                    f"target module {target!r} is not a linear layer of {config.model}{did_you_mean(target, names)}; {valid}"
                )
        return list(config.targets)
    if config.targets == "all-linear":
        heads = () if config.include_lm_head else OUTPUT_HEADS
        return [n for n in names if n not in heads]
    wanted = QUERY_VALUE if config.targets == "attention" else ATTENTION_ALL
    found = [n for n in wanted if n in names]
    if found:
        return found
    fused = [n for n in FUSED_QKV if n in names]
    if fused and config.targets == "attention":
        return fused
    if fused:  # fused q/k/v plus the attention's output projection, addressed through its parent
        outputs = set()
        for full in linear_layers(model):
            parent, _, leaf = full.rpartition(".")
            parent_leaf = parent.rpartition(".")[2]
            if leaf not in fused and ("attn" in parent_leaf or "attention" in parent_leaf):
                outputs.add(f"{parent_leaf}.{leaf}")
        return fused + sorted(outputs)
    raise ModelError(
        f"the {config.targets!r} preset does not know this architecture's layer names; {valid}; pass targets as a list"
    )


def check_rank(config: RunConfig, model: nn.Module, targets: list[str]) -> None:
    """LoRA's rank must not exceed the smaller side of a layer it adapts: past it, the update gains
    no direction to learn, only parameters."""
    adapted = {
        name: min(_sides(layer))
        for name, layer in linear_layers(model).items()
        if any(name == t or name.endswith("." + t) for t in targets)
    }
    if not adapted:
        return
    name, smallest = min(adapted.items(), key=lambda item: item[1])
    if config.r > smallest:
        raise ConfigError(
            f"r={config.r} is more than the {smallest} features of {name}, the smallest layer it adapts; "
            f"LoRA's rank can be at most {smallest} here (8 or 16 are common)"
        )


def _sides(layer: nn.Module) -> tuple[int, int]:
    """(inputs, outputs) of a linear layer, also of a quantised one or GPT-2's Conv1D."""
    if hasattr(layer, "in_features"):
        return layer.in_features, layer.out_features
    return tuple(layer.weight.shape)
