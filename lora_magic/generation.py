"""The kernel's one shared base model, its named adapters, and generation with them.

Training and generation use the same loaded base. Each adapter is a named PEFT adapter on it;
the base's answer comes from the same weights with adapters disabled, never from a second copy.
"""

from __future__ import annotations

import contextlib
import gc
import html
import json
import os
import shutil
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TextStreamer

from . import models
from .config import RunConfig
from .data import prompt_for
from .errors import ModelError, RunError, did_you_mean
from .runs import RunStore, stored_config

BASE = "base"
ANSWERING = "a prompt is being answered"  # the lease's reason while generation uses the model


@dataclass
class Adapter:
    name: str
    config: RunConfig | None  # the run's settings (template) when known
    path: Path | None = None


@dataclass
class Answer:
    name: str
    text: str
    tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


@dataclass
class Merged:
    """A merged model written by Session.merge."""

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


@dataclass
class Comparison:
    """Answers of the base and adapters to one prompt, side by side."""

    prompt: str
    answers: list[Answer] = field(default_factory=list)

    def __getitem__(self, name: str) -> str:
        return next(a.text for a in self.answers if a.name == name)

    def __repr__(self) -> str:
        blocks = [f"Prompt: {self.prompt}"]
        for a in self.answers:
            blocks.append(
                f"--- {a.name} ({a.tokens} tokens, {a.tokens_per_second:.1f} tokens/s) ---\n{a.text}"
            )
        return "\n".join(blocks)

    def _repr_html_(self) -> str:
        heads = "".join(
            f"<th>{html.escape(a.name)}<br><small>{a.tokens} tokens, {a.tokens_per_second:.1f} tokens/s</small></th>"
            for a in self.answers
        )
        cells = "".join(
            f"<td style='vertical-align:top;white-space:pre-wrap;text-align:left'>{html.escape(a.text)}</td>"
            for a in self.answers
        )
        return (
            f"<p><b>Prompt:</b> {html.escape(self.prompt)}</p>"
            f"<table style='table-layout:fixed;width:100%'><tr>{heads}</tr><tr>{cells}</tr></table>"
        )


class _CallbackStreamer(TextStreamer):
    """Hands each newly decoded piece of text to a callback as generation goes."""

    def __init__(self, tokenizer: Any, on_text: Callable[[str], None]):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.on_text = on_text

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.on_text(text)


def generate_text(
    model: Any,
    tokenizer: Any,
    text: str,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    on_text: Callable[[str], None] | None = None,
) -> tuple[str, int]:
    """(answer, number of new tokens) for `text` with whatever adapter is active on `model`."""
    inputs = tokenizer(text, return_tensors="pt").to(model.device)
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p}
        if temperature > 0
        else {"do_sample": False}
    )
    with torch.no_grad():
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            streamer=_CallbackStreamer(tokenizer, on_text) if on_text else None,
            top_k=None,
            use_cache=True,  # the trainer may have switched the cache off in the model config
            **sampling,
        )
    new = output[0, inputs["input_ids"].shape[1] :]
    return tokenizer.decode(new, skip_special_tokens=True), len(new)


class Session:
    """The loaded base model and its adapters. One per kernel: see `session()`.

    Whatever needs the model to itself for a while (a training run) takes the session's lease;
    until it gives it back, loading, switching, freeing and generating are refused with its reason.
    """

    def __init__(self) -> None:
        self.model: Any = None  # the base model, or a PeftModel wrapping it once an adapter exists
        self.tokenizer: Any = None
        self.resolved: str | None = None
        self.key: tuple | None = None
        self.adapters: dict[str, Adapter] = {}
        self.active: str = BASE
        self.holder: str | None = None  # why the model is leased, e.g. "run 'x' is training"
        self._lease = threading.Lock()

    def __repr__(self) -> str:
        if self.model is None:
            return "<Session: no model loaded>"
        model, quantization = self.key[0], self.key[1]
        adapters = ", ".join(self.adapters) or "none"
        return f"<Session: {model} ({quantization}, {self.base_model.dtype}, {self.model.device}); adapters: {adapters}; using {self.active}>"

    @property
    def base_model(self) -> Any:
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

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
    def ensure_base(self, config: RunConfig) -> None:
        """Load the config's base model unless it is already the one in memory."""
        key = (config.model, config.quantization, config.dtype, config.device, config.trust_remote_code)
        if self.model is not None and self.key == key:
            return
        self.refuse_while_leased("load another base model")
        self.free()
        model, tokenizer, resolved = models.load_base(config)
        if config.quantization != "none":
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
            model.enable_input_require_grads()  # needed if gradient checkpointing is turned on later
        self.model, self.tokenizer, self.resolved, self.key = model, tokenizer, resolved, key

    def free(self) -> None:
        """Release the model, the adapters in memory and the GPU cache (adapters on disk stay)."""
        self.refuse_while_leased("free the model")
        self.model = self.tokenizer = self.resolved = self.key = None
        self.adapters.clear()
        self.active = BASE
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- adapters ------------------------------------------------------------------------------
    def add_training_adapter(self, name: str, config: RunConfig, targets: list[str]) -> None:
        from peft import PeftModel, get_peft_model
        from transformers import set_seed

        set_seed(config.seed)  # LoRA's A matrices are initialised randomly
        lora = models.lora_config(config, targets)
        if isinstance(self.model, PeftModel):
            self.model.add_adapter(name, lora)
        else:
            self.model = get_peft_model(self.model, lora, adapter_name=name)
        self.model.set_adapter(name)
        self.adapters[name] = Adapter(name, config)
        self.active = name

    def save_adapter(self, name: str, folder: Path, card: str | None = None) -> None:
        """Write adapter `name` in standard PEFT format, with `card` as its model card (README.md);
        the folder appears complete or not at all. Its config names the base portably (the Hub id
        of a built-in model, not this machine's cache), so it loads on any machine."""
        staging = folder.with_name(f".{folder.name}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        self.model.save_pretrained(staging, selected_adapters=[name])
        saved = staging / name if (staging / name).is_dir() else staging  # PEFT nests non-default names
        config = self.adapters[name].config
        if config is not None:
            settings = json.loads((saved / "adapter_config.json").read_text())
            settings["base_model_name_or_path"] = models.portable_name(config.model)
            (saved / "adapter_config.json").write_text(json.dumps(settings, indent=2, sort_keys=True))
        if card is not None:
            (saved / "README.md").write_text(card, encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        os.rename(saved, folder)
        shutil.rmtree(staging, ignore_errors=True)
        self.adapters[name].path = folder

    def delete_adapter(self, name: str) -> None:
        """Remove adapter `name` from memory; the base stays loaded and usable for the next run."""
        self._check_names([name])
        self.refuse_while_leased("delete an adapter")
        with warnings.catch_warnings():  # PEFT warns when the active adapter goes; handled below
            warnings.simplefilter("ignore", UserWarning)
            self.model.delete_adapter(name)
        del self.adapters[name]
        if not self.model.peft_config:  # no adapter left: back to the plain base model
            self.model = self.model.unload()
        elif self.active == name or self.active not in self.adapters:
            self.model.set_adapter(next(iter(self.model.peft_config)))
        self.active = BASE if self.active == name else self.active

    def load_adapter(
        self, source: str | Path, name: str | None = None, runs_dir: str | Path | None = None
    ) -> str:
        """Load an adapter from a run of the store or a PEFT folder under `name`; returns the name.

        The base model is loaded first if none is, from the run's settings or the adapter's config.
        """
        from peft import PeftModel

        self.refuse_while_leased("load an adapter")
        store = RunStore(runs_dir)
        config = None
        if Path(source).is_dir():
            folder = Path(source).resolve()
            if (folder.parent / "run.json").is_file():
                config = stored_config(json.loads((folder.parent / "run.json").read_text()))
        elif store.exists(str(source)):
            record = store.read(str(source))
            folder = store.path(str(source)) / "adapter"
            config = stored_config(record)
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
            self.ensure_base(config or RunConfig(model=models.local_name(adapter_base)))
        elif adapter_base and self.resolved and not models.same_model(adapter_base, self.resolved):
            raise ModelError(
                f"adapter {name!r} was trained on {adapter_base}, but the loaded base is {self.resolved}; "
                "free the session (lora_magic.free() / %lora free) and load the adapter again"
            )
        if isinstance(self.model, PeftModel):
            self.model.load_adapter(str(folder), adapter_name=name)
        else:
            self.model = PeftModel.from_pretrained(self.model, str(folder), adapter_name=name)
        self.adapters[name] = Adapter(name, config, folder)
        return name

    def use(self, name: str) -> None:
        """Make `name` (or 'base') the adapter that plain generation uses. No reload."""
        self._check_names([name])
        self.refuse_while_leased("switch adapters")
        if name != BASE:
            self.model.set_adapter(name)
        self.active = name

    # -- generation ----------------------------------------------------------------------------
    def compare(
        self,
        prompt: str,
        adapters: list[str] | None = None,
        max_new_tokens: int = 96,
        temperature: float = 0.0,
        top_p: float = 1.0,
        raw: bool = False,
        on_text: Callable[[str, str], None] | None = None,
    ) -> Comparison:
        """Answer `prompt` with the base and each adapter. The prompt is put in the template the
        adapters were trained with (unless raw), the same text for every column."""
        if self.model is None:
            raise ModelError("no model is loaded yet: train a run or load an adapter first")
        names = adapters or [BASE, *self.adapters]
        self._check_names(names)
        self.refuse_while_leased("generate")
        text = prompt if raw else self._templated(prompt, names)
        result = Comparison(prompt)
        with self.leased(ANSWERING):  # nothing loads, frees or trains meanwhile (a button, a subshell)
            for name in names:
                stream = (lambda piece, name=name: on_text(name, piece)) if on_text else None
                result.answers.append(self._answer(name, text, max_new_tokens, temperature, top_p, stream))
        return result

    def chat(
        self,
        messages: list[dict[str, str]],
        adapter: str | None = None,
        max_new_tokens: int = 96,
        temperature: float = 0.0,
        top_p: float = 1.0,
        on_text: Callable[[str], None] | None = None,
    ) -> Answer:
        """The next assistant turn of a conversation (`messages` of role and content), by `adapter`
        (default: the one in use), through the tokenizer's chat template."""
        if self.model is None:
            raise ModelError("no model is loaded yet: train a run or load an adapter first")
        name = adapter or self.active
        self._check_names([name])
        self.refuse_while_leased("generate")
        with self.leased(ANSWERING):
            return self._answer(
                name, chat_text(messages, self.tokenizer), max_new_tokens, temperature, top_p, on_text
            )

    def _answer(
        self,
        name: str,
        text: str,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        on_text: Callable[[str], None] | None,
    ) -> Answer:
        """`name`'s answer to `text` (the base with adapters off); the adapter in use stays in use."""
        self.model.eval()
        start = time.perf_counter()
        with self.answering_as(name):
            answer, count = generate_text(
                self.model, self.tokenizer, text, max_new_tokens, temperature, top_p, on_text
            )
        return Answer(name, answer, count, time.perf_counter() - start)

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

    def _templated(self, prompt: str, names: list[str]) -> str:
        configs = [self.adapters[n].config for n in names if n != BASE and self.adapters[n].config]
        return prompt_for(prompt, configs[0], self.tokenizer) if configs else prompt

    def _check_names(self, names: list[str]) -> None:
        known = [BASE, *self.adapters]
        for name in names:
            if name not in known:
                raise RunError(
                    f"no adapter named {name!r} is loaded{did_you_mean(name, known)}; loaded: {', '.join(known)}"
                )

    # -- merging -------------------------------------------------------------------------------
    def merge(self, source: str, out: str | Path, runs_dir: str | Path | None = None) -> Merged:
        """Merge an adapter into a fresh full-precision copy of its base and save it (safetensors +
        tokenizer). The session's own base stays as it is, so hot-swapping keeps working."""
        from transformers import AutoTokenizer

        out = Path(out).expanduser()
        if out.exists() and any(out.iterdir()):
            raise RunError(f"{out} already exists and is not empty; choose a new folder")
        folder = self.adapter_folder(source, runs_dir)
        merged, base_path, dtype = merged_model(folder)
        staging = out.with_name(f".{out.name}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        merged.save_pretrained(staging)
        AutoTokenizer.from_pretrained(base_path).save_pretrained(staging)
        (staging / "lora_magic_merge.json").write_text(
            json.dumps(
                {"base": base_path, "adapter": str(folder), "dtype": str(dtype).removeprefix("torch.")},
                indent=2,
            )
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            out.rmdir()
        os.rename(staging, out)
        quantized = bool(self.key and self.key[1] != "none")
        return Merged(out, base_path, str(dtype).removeprefix("torch."), quantized)

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
    if not layers or not foldable or copies > _available_memory(weights[0].device) / 4:
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


def _available_memory(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


def adapter_base(folder: Path) -> str:
    """The base model (folder or Hub id) that the adapter saved in `folder` was trained on, as it
    loads here: a built-in model named by its Hub id is the built-in model's local checkpoint."""
    named = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    return models.resolve_model(models.local_name(named))


def merged_model(folder: Path) -> tuple[Any, str, torch.dtype]:
    """(model, base, dtype): the adapter in `folder` merged into a fresh full-precision copy of its base."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_path = adapter_base(folder)
    dtype = torch.float32 if models.device() == "cpu" else torch.bfloat16
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype)
    return PeftModel.from_pretrained(base, str(folder)).merge_and_unload(), base_path, dtype


def chat_text(messages: list[dict[str, str]], tokenizer: Any) -> str:
    """A conversation as the model reads it: the tokenizer's chat template with the assistant's
    turn opened, or for a tokenizer without one, a plain 'User:' / 'Assistant:' transcript."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n".join([*lines, "Assistant:"])


class Conversation:
    """A chat with the base model or an adapter. Every turn is sent with the whole history; the
    adapter can change between turns (each answer records who gave it); `clear` starts over."""

    def __init__(self, adapter: str | None = None, system_prompt: str | None = None):
        self.adapter = adapter  # None: the session's adapter in use
        self.system_prompt = system_prompt
        self.turns: list[dict[str, str]] = []  # role, content, and for answers the adapter

    def say(self, message: str, adapter: str | None = None, **sampling: Any) -> Answer:
        """Add `message` and the model's answer to the conversation; returns the answer."""
        if not message.strip():
            raise RunError("say something: the message is empty")
        self.adapter = adapter or self.adapter
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        history = [{"role": t["role"], "content": t["content"]} for t in self.turns]
        messages = [*system, *history, {"role": "user", "content": message}]
        answer = _session.chat(messages, self.adapter, **sampling)
        self.turns += [
            {"role": "user", "content": message},
            {"role": "assistant", "content": answer.text, "adapter": answer.name},
        ]
        return answer

    def clear(self) -> None:
        self.turns.clear()

    def __repr__(self) -> str:
        lines = [
            f"[{t['adapter']}] {t['content']}" if t["role"] == "assistant" else f"> {t['content']}"
            for t in self.turns
        ]
        return "\n".join(lines) or "<Conversation: no turns yet>"


_session = Session()


def session() -> Session:
    """The kernel's shared model session."""
    return _session


def compare(prompt: str, adapters: list[str] | None = None, **options: Any) -> Comparison:
    """Answer `prompt` with the base model and adapters side by side (see Session.compare)."""
    return _session.compare(prompt, adapters, **options)


def free() -> None:
    """Release the shared model and its memory."""
    _session.free()
