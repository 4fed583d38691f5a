"""The run store: one folder per run, written atomically, readable by any process.

Layout of `<root>/<run>/`:
  run.json            config, status, timestamps, versions, fingerprints, progress, final metrics
  events.jsonl        append-only, one JSON object per line (log, eval, probe, checkpoint, status)
  adapter/            the trained adapter in standard PEFT format (safetensors)
  checkpoints/        resumable trainer checkpoints; a complete one holds the file COMPLETE
  data/               the exact train/eval records the run used, so it can be resumed and audited
  stop-request        present when another process (the Lab sidebar, `%lora stop`) asks it to stop

Nothing here imports torch: the Jupyter Server extension and a fresh kernel read runs with it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from .config import RUN_NAME
from .errors import RunError, did_you_mean

ACTIVE = ("running", "paused")
FINISHED = ("completed", "stopped", "failed", "interrupted")
STOP_REQUEST = "stop-request"
COMPLETE_MARK = "COMPLETE"


def default_root() -> Path:
    """`$LORA_MAGIC_RUNS`, else `lora_runs/` in the working directory (beside the notebook)."""
    return Path(os.environ.get("LORA_MAGIC_RUNS") or "lora_runs")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write through a temporary file and rename, so readers never see a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        json.dump(data, out, indent=2, default=str)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


class RunStore:
    """Runs under one root folder. Every name is validated and every path confined to the root."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_root()

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"

    # -- paths ---------------------------------------------------------------------------------
    def path(self, name: str) -> Path:
        """The folder of run `name`; refuses names that could point outside the store."""
        if not isinstance(name, str) or "\x00" in name or not RUN_NAME.match(name):
            raise RunError(
                f"{name!r} is not a valid run name; use letters, digits, '.', '_' and '-', starting "
                "with a letter or digit"
            )
        root = self.root.resolve()
        folder = (root / name).resolve()
        if folder.parent != root:
            raise RunError(f"run {name!r} resolves outside the run store {root}")
        return folder

    def file(self, name: str, relative: str) -> Path:
        """A path inside run `name`; refuses one that a symlink leads out of the run's folder."""
        folder = self.path(name)
        target = (folder / relative).resolve()
        if not target.is_relative_to(folder):
            raise RunError(f"{relative!r} of run {name!r} resolves outside the run's folder")
        return target

    def exists(self, name: str) -> bool:
        return self.file(name, "run.json").is_file()

    # -- reading -------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Run names, newest first."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if RUN_NAME.match(p.name) and self._listable(p.name)]
        return [p.name for p in sorted(found, key=lambda p: (p / "run.json").stat().st_mtime, reverse=True)]

    def _listable(self, name: str) -> bool:
        try:
            return self.exists(name)
        except RunError:  # a symlink out of the store is not a run of this store
            return False

    def read(self, name: str) -> dict[str, Any]:
        """run.json of `name`. A run whose process is gone is reported as 'interrupted'."""
        file = self.file(name, "run.json")
        if not file.is_file():
            raise RunError(f"no run named {name!r} in {self.root}{did_you_mean(name, self.names())}")
        record = json.loads(file.read_text(encoding="utf-8"))
        if record.get("status") in ACTIVE and not _process_alive(record.get("host"), record.get("pid")):
            record["status"] = "interrupted"
        return record

    def list(self) -> list[dict[str, Any]]:
        return [self.read(name) for name in self.names()]

    def events(self, name: str, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Events from byte `offset`, and the offset to ask for next time (only whole lines are read)."""
        file = self.file(name, "events.jsonl")
        if not file.is_file():
            return [], offset
        with open(file, "rb") as stream:
            stream.seek(offset)
            chunk = stream.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        return [json.loads(line) for line in complete.splitlines() if line.strip()], offset + len(complete)

    def last_checkpoint(self, name: str) -> Path | None:
        """The newest checkpoint that was written completely, if any."""
        folder = self.path(name) / "checkpoints"
        done = [p for p in folder.glob("checkpoint-*") if (p / COMPLETE_MARK).is_file()]
        return max(done, key=lambda p: int(p.name.rsplit("-", 1)[1]), default=None)

    # -- writing -------------------------------------------------------------------------------
    def create(self, name: str, record: dict[str, Any]) -> Path:
        """Make the folder of a new run; refuses a name that is taken."""
        folder = self.path(name)
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            folder.mkdir()
        except FileExistsError:
            raise RunError(
                f"a run named {name!r} already exists in {self.root}; choose another name"
            ) from None
        self.write(name, record)
        return folder

    def write(self, name: str, record: dict[str, Any]) -> None:
        record = {**record, "updated": time.time(), "pid": os.getpid(), "host": socket.gethostname()}
        write_json_atomic(self.path(name) / "run.json", record)

    def update(self, name: str, **changes: Any) -> dict[str, Any]:
        file = self.path(name) / "run.json"
        record = {**json.loads(file.read_text(encoding="utf-8")), **changes}
        self.write(name, record)
        return record

    def append_event(self, name: str, event: dict[str, Any]) -> None:
        line = json.dumps(event, default=str) + "\n"
        with open(self.path(name) / "events.jsonl", "a", encoding="utf-8") as out:
            out.write(line)

    def request_stop(self, name: str) -> None:
        """Ask the process training `name` to stop at its next step (works across processes)."""
        record = self.read(name)
        if record["status"] not in ACTIVE:
            raise RunError(f"run {name!r} is {record['status']}, not running; nothing to stop")
        self.file(name, STOP_REQUEST).write_text(str(time.time()))

    def stop_requested(self, name: str) -> bool:
        return (self.path(name) / STOP_REQUEST).exists()

    def clear_stop_request(self, name: str) -> None:
        (self.path(name) / STOP_REQUEST).unlink(missing_ok=True)


def _process_alive(host: str | None, pid: int | None) -> bool:
    if not pid or host != socket.gethostname():
        return True  # another machine's process: trust what it wrote
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
