"""The model card (README.md) saved with a run's adapter: what it was trained from and how, in the
Hugging Face card format that PEFT writes (YAML front matter, then text)."""

from __future__ import annotations

from typing import Any

import yaml

from ..core.catalogue import portable_name
from ..core.config import BASE_CHANGING_INITS

TRAINING_SETTINGS = (
    "steps",
    "epochs",
    "learning_rate",
    "batch_size",
    "grad_accum",
    "warmup_steps",
    "scheduler",
)


def adapter_card(record: dict[str, Any], metrics: dict[str, Any]) -> str:
    """The card of the adapter of run `record` (its run.json) with its final `metrics`."""
    config = record.get("config") or {}
    base = portable_name(config.get("model") or record.get("model") or "")
    front = {
        "base_model": base,
        "library_name": "peft",
        "pipeline_tag": "text-generation",
        "tags": [f"base_model:adapter:{base}", "lora", "lora_magic"],
    }
    quantization = record.get("quantization") or "none"
    lines = [
        f"# {record['name']}",
        "",
        f"A LoRA adapter for `{base}`, fine-tuned with lora_magic.",
        "",
        f"- **Base model**: `{base}` (loaded here from `{record.get('resolved_model')}`"
        + (f", quantised to {quantization}" if quantization != "none" else "")
        + ")",
        f"- **Data**: {config.get('data')}, template {config.get('template')!r}; records fingerprint "
        f"`{record.get('data_fingerprint')}`",
        f"- **LoRA**: r={config.get('r')}, alpha={config.get('alpha')}, dropout={config.get('dropout')}, "
        f"target modules {', '.join(record.get('targets') or [])}{_variant(config)}",
        "- **Training**: "
        + ", ".join(f"{key}={config.get(key)}" for key in TRAINING_SETTINGS if key in config),
        "- **Metrics**: "
        + (", ".join(f"{key} {_number(value)}" for key, value in metrics.items()) or "none"),
        "",
        "## Use",
        "",
        "```python",
        "from peft import AutoPeftModelForCausalLM",
        "",
        'model = AutoPeftModelForCausalLM.from_pretrained("path/to/this/folder")',
        "```",
        "",
        "### Framework versions",
        "",
        *(f"- {package} {version}" for package, version in (record.get("versions") or {}).items()),
        "",
    ]
    return f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n\n" + "\n".join(lines)


def _variant(config: dict[str, Any]) -> str:
    """The LoRA variant of a run's settings, as the card's LoRA line ends."""
    parts = [name for name, key in (("DoRA", "dora"), ("rsLoRA", "rslora")) if config.get(key)]
    init = config.get("init") or "kaiming"
    if init in BASE_CHANGING_INITS:
        parts.append(f"initialised with {init}, saved as a plain LoRA of rank {2 * config['r']}")
    elif init != "kaiming":
        parts.append(f"initialised with {init}")
    return "".join(f", {part}" for part in parts)


def _number(value: Any) -> str:
    return (
        f"{value:,}" if isinstance(value, int) else f"{value:.4g}" if isinstance(value, float) else str(value)
    )
