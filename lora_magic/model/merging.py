"""Merging an adapter into its base: a standalone model in safetensors with its tokenizer.

The adapter is merged into a fresh full-precision copy of its base, never into the session's (which
may be quantised, and keeps hot-swapping its adapters)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.catalogue import local_name, resolve_model
from ..core.hardware import device
from ..core.store import check_new_folder, new_folder
from .session import session


@dataclass
class Merged:
    """A merged model written by `merge`."""

    path: Path
    base: str
    dtype: str
    quantized_session: bool

    def __repr__(self) -> str:
        note = (
            f" The session's base is quantised, so the base was reloaded in {self.dtype} to merge "
            "(merging into 4/8-bit weights would round the adapter away)."
            if self.quantized_session
            else ""
        )
        return f"Merged model saved to {self.path} (base {self.base}, {self.dtype}, safetensors + tokenizer).{note}"


def export_folder(source: str | Path, kind: str) -> Path:
    """Where a merge or an export of `source` goes unless told: exports/NAME-KIND in the working
    directory (beside the notebook)."""
    return Path("exports") / f"{Path(source).name}-{kind}"


def merge(source: str, out: str | Path | None = None, runs_dir: str | Path | None = None) -> Merged:
    """Merge an adapter (a run, a loaded adapter or an adapter folder) into a fresh full-precision
    copy of its base and save it in the new folder `out` (default: exports/NAME-merged)
    (safetensors + tokenizer)."""
    from transformers import AutoTokenizer

    out = export_folder(source, "merged") if out is None else Path(out).expanduser()
    check_new_folder(out)
    folder = session().adapter_folder(source, runs_dir)
    merged, base_path, dtype = merged_model(folder)
    with new_folder(out) as staging:
        merged.save_pretrained(staging)
        AutoTokenizer.from_pretrained(base_path).save_pretrained(staging)
        (staging / "lora_magic_merge.json").write_text(
            json.dumps(
                {"base": base_path, "adapter": str(folder), "dtype": str(dtype).removeprefix("torch.")},
                indent=2,
            )
        )
    return Merged(out, base_path, str(dtype).removeprefix("torch."), session().quantized)


def merged_model(folder: Path) -> tuple[Any, str, torch.dtype]:
    """(model, base, dtype): the adapter in `folder` merged into a fresh full-precision copy of its base."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_path = adapter_base(folder)
    dtype = torch.float32 if device() == "cpu" else torch.bfloat16
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype)
    return PeftModel.from_pretrained(base, str(folder)).merge_and_unload(), base_path, dtype


def adapter_base(folder: Path) -> str:
    """The base model (folder or Hub id) that the adapter saved in `folder` was trained on, as it
    loads here: a built-in model named by its Hub id is the built-in model's local checkpoint."""
    named = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    return resolve_model(local_name(named))
