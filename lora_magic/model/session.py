"""The kernel's one shared base model and its named adapters, with the lease that whatever needs the
model to itself takes (a training run, an evaluation, an answer being generated).

Training and generation use the same loaded base. Each adapter is a named PEFT adapter on it; the
base's answer comes from the same weights with adapters disabled, never from a second copy.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.catalogue import local_name, portable_name, same_model
from ..core.config import Base, RunConfig
from ..core.errors import ModelError, RunError, did_you_mean
from ..core.hardware import Machine, detect
from ..core.record import config_to_load
from ..core.store import RunStore
from .loading import load_base
from .targets import lora_config

BASE = "base"  # the name under which the base model answers, with every adapter disabled


@dataclass
class Adapter:
    name: str
    config: RunConfig | None  # the run's settings (template) when known
    path: Path | None = None
    # A PiSSA/OLoRA adapter's weights as it started, while it trains on the rest of the base's weights
    initial: dict[str, torch.Tensor] | None = None


class Session:
    """The loaded base model and its adapters. One per kernel: see `session()`.

    Whatever needs the model to itself for a while (a training run) takes the session's lease;
    until it gives it back, loading, switching, freeing and generating are refused with its reason.
    """

    def __init__(self) -> None:
        self.model: Any = None  # the base model, or a PeftModel wrapping it once an adapter exists
        self.tokenizer: Any = None
        self.resolved: str | None = None
        self.base: Base | None = None  # the settings the loaded base was loaded with
        self.adapters: dict[str, Adapter] = {}
        self.active: str = BASE
        self.holder: str | None = None  # why the model is leased, e.g. "run 'x' is training"
        self._lease = threading.Lock()

    def __repr__(self) -> str:
        if self.model is None:
            return "<Session: no model loaded>"
        adapters = ", ".join(self.adapters) or "none"
        return (
            f"<Session: {self.base.model} ({self.base.quantization}, {self.base_model.dtype}, "
            f"{self.model.device}); adapters: {adapters}; using {self.active}>"
        )

    @property
    def base_model(self) -> Any:
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    @property
    def quantized(self) -> bool:
        return self.base is not None and self.base.quantization != "none"

    # -- the lease -----------------------------------------------------------------------------
    def take(self, holder: str) -> None:
        """Lease the model to `holder` (a reason, e.g. "run 'x' is training") until `release`."""
        with self._lease:
            if self.holder is not None:
                raise RunError(f"the model is busy: {self.holder}; wait for it or stop it first")
            self.holder = holder

    def release(self, holder: str) -> None:
        with self._lease:
            if self.holder == holder:
                self.holder = None

    @contextlib.contextmanager
    def leased(self, holder: str) -> Iterator[None]:
        self.take(holder)
        try:
            yield
        finally:
            self.release(holder)

    def refuse_while_leased(self, action: str) -> None:
        if self.holder is not None:
            raise RunError(f"cannot {action} while {self.holder}; wait for it or stop it first")

    # -- the base ------------------------------------------------------------------------------
    def ensure_base(self, config: RunConfig, on: Machine | None = None) -> None:
        """Load the config's base model (for machine `on`, else this one) unless it is already the
        one in memory."""
        base = Base.of(config)
        if self.model is not None and self.base == base:
            return
        self.refuse_while_leased("load another base model")
        self.free()
        model, tokenizer, resolved = load_base(config, on or detect(config))
        if config.quantization != "none":
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
            model.enable_input_require_grads()  # needed if gradient checkpointing is turned on later
        self.model, self.tokenizer, self.resolved, self.base = model, tokenizer, resolved, base

    def free(self) -> None:
        """Release the model, the adapters in memory and the GPU cache (adapters on disk stay)."""
        self.refuse_while_leased("free the model")
        self.model = self.tokenizer = self.resolved = self.base = None
        self.adapters.clear()
        self.active = BASE
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def require_model(self) -> None:
        if self.model is None:
            raise ModelError("no model is loaded yet: train a run or load an adapter first")

    # -- adapters ------------------------------------------------------------------------------
    def add_training_adapter(self, name: str, config: RunConfig, targets: list[str]) -> None:
        from peft import PeftModel, get_peft_model, get_peft_model_state_dict
        from transformers import set_seed

        set_seed(config.seed)  # LoRA's A matrices are initialised randomly
        lora = lora_config(config, targets)
        with base_changes_handled():
            if isinstance(self.model, PeftModel):
                self.model.add_adapter(name, lora)
            else:
                self.model = get_peft_model(self.model, lora, adapter_name=name)
        self.model.set_adapter(name)
        self.adapters[name] = Adapter(name, config)
        if config.changes_base:
            state = get_peft_model_state_dict(self.model, adapter_name=name)
            self.adapters[name].initial = {key: value.detach().clone() for key, value in state.items()}
        self.active = name

    def save_adapter(self, name: str, folder: Path, card: str | None = None) -> None:
        """Write adapter `name` in standard PEFT format, with `card` as its model card (README.md);
        the folder appears complete or not at all. Its config names the base portably (the Hub id
        of a built-in model, not this machine's cache), so it loads on any machine."""
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))  # new, and ours alone
        staging.chmod(0o755)  # readable as a saved model is
        with tempfile.TemporaryDirectory() as scratch, base_changes_handled():
            self.model.save_pretrained(
                staging, selected_adapters=[name], **self._conversion(name, Path(scratch))
            )
        saved = staging / name if (staging / name).is_dir() else staging  # PEFT nests non-default names
        config = self.adapters[name].config
        if config is not None:
            settings = json.loads((saved / "adapter_config.json").read_text())
            settings["base_model_name_or_path"] = portable_name(config.model)
            (saved / "adapter_config.json").write_text(json.dumps(settings, indent=2, sort_keys=True))
        if card is not None:
            (saved / "README.md").write_text(card, encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        os.rename(saved, folder)
        shutil.rmtree(staging, ignore_errors=True)
        self.adapters[name].path = folder

    def _conversion(self, name: str, scratch: Path) -> dict[str, str]:
        """`save_pretrained`'s arguments that save a PiSSA/OLoRA adapter as a LoRA of the untouched
        base: PEFT subtracts the adapter's initial weights, which it reads as an adapter folder."""
        initial = self.adapters[name].initial
        if initial is None:
            return {}
        from safetensors.torch import save_file

        folder = scratch / "initial"  # PEFT loads it as an adapter named after its folder
        folder.mkdir()
        save_file(initial, folder / "adapter_model.safetensors")
        return {"path_initial_model_for_weight_conversion": str(folder)}

    def settle(self, name: str) -> None:
        """Once a PiSSA/OLoRA run has ended: the base's weights back as they were, and its adapter
        as it was saved (a LoRA of the untouched base), or gone when it was not saved. The caller
        holds the lease."""
        adapter = self.adapters.get(name)
        if adapter is None or adapter.initial is None:
            return
        restore_base(self.model, name, adapter.initial)
        adapter.initial = None
        self._detach(name)
        if adapter.path is not None:
            self._attach(adapter.path, name)
        else:
            del self.adapters[name]
            self.active = BASE if self.active == name else self.active
        if self.active != BASE:
            self.model.set_adapter(self.active)

    def delete_adapter(self, name: str) -> None:
        """Remove adapter `name` from memory; the base stays loaded and usable for the next run."""
        self.check_names([name])
        self.refuse_while_leased("delete an adapter")
        initial = self.adapters[name].initial  # a PiSSA/OLoRA adapter whose run never started
        if initial is not None:
            restore_base(self.model, name, initial)
        self._detach(name)
        del self.adapters[name]
        still_adapted = getattr(self.model, "peft_config", None)  # else _detach left the plain base
        if still_adapted and (self.active == name or self.active not in self.adapters):
            self.model.set_adapter(next(iter(self.model.peft_config)))
        self.active = BASE if self.active == name else self.active

    def _detach(self, name: str) -> None:
        """Take adapter `name` off the model; with no adapter left, the model is the plain base."""
        with warnings.catch_warnings():  # PEFT warns when the active adapter goes; the caller handles it
            warnings.simplefilter("ignore", UserWarning)
            self.model.delete_adapter(name)
        if not self.model.peft_config:
            self.model = self.model.unload()

    def _attach(self, folder: Path, name: str) -> None:
        """Put the adapter saved in `folder` on the model under `name`."""
        from peft import PeftModel

        if isinstance(self.model, PeftModel):
            self.model.load_adapter(str(folder), adapter_name=name)
        else:
            self.model = PeftModel.from_pretrained(self.model, str(folder), adapter_name=name)

    def load_adapter(
        self,
        source: str | Path,
        name: str | None = None,
        runs_dir: str | Path | None = None,
        trust_remote_code: bool = False,
    ) -> str:
        """Load an adapter from a run of the store or a PEFT folder under `name`; returns the name.

        The base model is loaded first if none is, from the run's settings or the adapter's config.
        A run trained with trust_remote_code loads only with `trust_remote_code=True` here.
        """
        self.refuse_while_leased("load an adapter")
        store = RunStore(runs_dir)
        config = None
        if Path(source).is_dir():
            folder = Path(source).resolve()
            if (folder.parent / "run.json").is_file():
                config = config_to_load(
                    json.loads((folder.parent / "run.json").read_text()), trust_remote_code
                )
        elif store.exists(str(source)):
            record = store.read(str(source))
            folder = store.path(str(source)) / "adapter"
            config = config_to_load(record, trust_remote_code)
            if not (folder / "adapter_config.json").is_file():
                raise RunError(f"run {source!r} has no saved adapter (it is {record['status']})")
        else:
            raise RunError(
                f"{source!r} is neither a run in {store.root} nor a folder with an adapter{did_you_mean(str(source), store.names())}"
            )
        if not (folder / "adapter_config.json").is_file():
            raise ModelError(f"{folder} has no adapter_config.json, so it is not a PEFT adapter")
        adapter_base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
        name = name or (config.name if config and config.name else folder.name)
        if name == BASE or name in self.adapters:
            raise RunError(f"an adapter named {name!r} is already loaded; pass another name")
        if self.model is None:
            self.ensure_base(config or RunConfig(model=local_name(adapter_base)))
        elif adapter_base and self.resolved and not same_model(adapter_base, self.resolved):
            raise ModelError(
                f"adapter {name!r} was trained on {adapter_base}, but the loaded base is {self.resolved}; "
                "free the session (lora_magic.free() / %lora free) and load the adapter again"
            )
        self._attach(folder, name)
        self.adapters[name] = Adapter(name, config, folder)
        return name

    def use(self, name: str) -> None:
        """Make `name` (or 'base') the adapter that plain generation uses. No reload."""
        self.check_names([name])
        self.refuse_while_leased("switch adapters")
        if name != BASE:
            self.model.set_adapter(name)
        self.active = name

    def adapter_folder(self, source: str, runs_dir: str | Path | None = None) -> Path:
        """The saved adapter that `source` names: a loaded adapter, a run of the store or a folder."""
        store = RunStore(runs_dir)
        if source in self.adapters and self.adapters[source].path:
            folder = self.adapters[source].path
        elif Path(source).is_dir():
            folder = Path(source)
        elif store.exists(source):
            folder = store.path(source) / "adapter"
        else:
            raise RunError(
                f"no saved adapter named {source!r}{did_you_mean(source, [*self.adapters, *store.names()])}"
            )
        if not (folder / "adapter_config.json").is_file():
            raise RunError(f"{folder} holds no saved adapter")
        return folder

    def check_names(self, names: list[str]) -> None:
        known = [BASE, *self.adapters]
        for name in names:
            if name not in known:
                raise RunError(
                    f"no adapter named {name!r} is loaded{did_you_mean(name, known)}; loaded: {', '.join(known)}"
                )

    @contextlib.contextmanager
    def answering_as(self, name: str) -> Iterator[None]:
        """The model answers as adapter `name` (the base: adapters disabled) inside the block; the
        adapter in use stays in use. The caller holds the lease (or is the run that holds it)."""
        try:
            if name == BASE:
                with self.model.disable_adapter() if self.adapters else contextlib.nullcontext():
                    yield
            else:
                self.model.set_adapter(name)
                with folded(self.model, name):
                    yield
        finally:
            if self.active != BASE:
                self.model.set_adapter(self.active)


@contextlib.contextmanager
def folded(model: Any, name: str) -> Iterator[None]:
    """Inside the block, `model` answers as adapter `name` at the base's speed: the adapter is merged
    into copies of the weights it adapts. Unmerged, each adapted layer costs a few small operations
    more per generated token (about a tenth of a small model's decoding on a CPU). The base's own
    weight tensors are put back afterwards, untouched, so the base's answers never drift. Where a
    layer cannot be merged (a quantised base, a LoRA variant) or the copies would take more than a
    quarter of the memory available, the adapter answers unmerged."""
    from peft.tuners.lora import Linear

    layers = [m for m in model.modules() if hasattr(m, "lora_A") and name in m.lora_A]
    weights = [layer.get_base_layer().weight for layer in layers]
    foldable = all(
        type(layer) is Linear
        and type(weight) is torch.nn.Parameter  # bitsandbytes' packed weights are subclasses
        and weight.dtype.is_floating_point
        and name not in layer.lora_variant
        and not layer.lora_bias.get(name)
        for layer, weight in zip(layers, weights)
    )
    copies = sum(weight.numel() * weight.element_size() for weight in weights)
    if not layers or not foldable or copies > available_memory(weights[0].device) / 4:
        yield
        return
    merged = []
    try:
        with torch.no_grad():
            for layer, weight in zip(layers, weights):
                base = layer.get_base_layer()
                base.weight = torch.nn.Parameter(weight + layer.get_delta_weight(name), requires_grad=False)
                layer.merged_adapters.append(name)  # PEFT's layer now skips the adapter's own path
                merged.append((layer, base, weight))
        yield
    finally:
        for layer, base, weight in merged:
            layer.merged_adapters.remove(name)
            base.weight = weight


@contextlib.contextmanager
def base_changes_handled() -> Iterator[None]:
    """Without PEFT's warning against a PiSSA/OLoRA adapter beside other adapters, and its advice to
    convert it into a plain LoRA: the session saves it converted, and gives the base its weights
    back when its run ends."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".* changes the base weights of the model", category=UserWarning
        )
        yield


def restore_base(model: Any, name: str, initial: dict[str, torch.Tensor]) -> None:
    """Give back to each weight that PiSSA/OLoRA adapter `name` adapts what its initial weights
    took out of it (PEFT subtracted scaling × B₀A₀, computed in float32)."""
    from peft.utils.other import transpose

    with torch.no_grad():
        for path, layer in model.named_modules():
            if name not in getattr(layer, "lora_A", {}):
                continue
            a, b = initial[f"{path}.lora_A.weight"], initial[f"{path}.lora_B.weight"]
            weight = layer.get_base_layer().weight
            taken = transpose(layer.scaling[name] * b.float() @ a.float(), layer.fan_in_fan_out)
            weight.data = (weight.float() + taken.to(weight.device)).to(weight.dtype)


def available_memory(device: torch.device) -> float:
    """Bytes free on `device`: the GPU's, or the machine's for a CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


_session = Session()


def session() -> Session:
    """The kernel's shared model session."""
    return _session


def free() -> None:
    """Release the shared model and its memory."""
    _session.free()
