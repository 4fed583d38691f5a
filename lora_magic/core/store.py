"""The run store: one folder per run, written atomically, readable by any process.

Layout of `<root>/<run>/`:
  run.json            config, status, timestamps, versions, fingerprints, progress, final metrics
  events.jsonl        append-only, one JSON object per line (log, eval, probe, checkpoint, status)
  adapter/            the trained adapter in standard PEFT format (safetensors)
  checkpoints/        resumable trainer checkpoints; a complete one holds the file COMPLETE
  data/               the exact train/eval records the run used, so it can be resumed and audited
  stop-request        present when another process (the Lab sidebar, `%lora stop`) asks it to stop
  pause-request       present while another process asks it to hold after its current step

Nothing here imports torch: the Jupyter Server extension and a fresh kernel read runs with it.
Readers are tolerant: a run whose run.json cannot be read is listed as `unreadable` with the
reason, and a bad line of events.jsonl is skipped, so one damaged run never hides the others.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .config import RUN_NAME
from .errors import LoraMagicError, RunError, did_you_mean
from .events import ACTIVE, INTERRUPTED, STATUSES, UNREADABLE

STOP_REQUEST = "stop-request"
PAUSE_REQUEST = "pause-request"
WORKER_LOG = "worker.log"  # the output of a run's worker processes (training/launch.py)
COMPLETE_MARK = "COMPLETE"
MAX_DEPTH = 64  # of nested lists and objects in run.json or an event: deeper ones are not records


class UnreadableRun(RunError):
    """run.json exists but is not a readable run record (the message says why)."""


def default_root() -> Path:
    """`$LORA_MAGIC_RUNS`, else `lora_runs/` in the working directory (beside the notebook)."""
    return Path(os.environ.get("LORA_MAGIC_RUNS") or "lora_runs")


def write_text_atomic(path: Path, text: str) -> None:
    """Write through a temporary file and rename, so readers never see a half-written file (and a
    failed write, e.g. on a full disk, leaves the previous file and no temporary one).

    The temporary file is a new one under a random name, and the rename replaces the directory
    entry: whatever stood at `path` (a link to a file elsewhere, say) is replaced, never written
    through."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", opener=_new_file) as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _new_file(path: str, flags: int) -> int:
    """Open a file that does not exist yet: never one that someone left there, nor through a link."""
    return os.open(path, flags | os.O_EXCL | os.O_NOFOLLOW, 0o666)


def _own_file(path: str, flags: int) -> int:
    """Open a file of the run store to add to it, refusing a link: a symbolic link, or a hard link
    that makes the same file stand elsewhere too."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW, 0o666)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise RunError(f"{path} is a link; the run store writes only its own files") from None
        raise
    if os.fstat(fd).st_nlink > 1:
        os.close(fd)
        raise RunError(f"{path} is also linked elsewhere; the run store writes only its own files")
    return fd


def append_bytes(path: Path, data: bytes) -> None:
    """Add `data` at the end of a file of the run store (made if missing), never through a link.
    After a torn last line (a process killed mid-write) it starts on a fresh line."""
    with open(path, "a+b", opener=_own_file) as out:
        end = out.seek(0, os.SEEK_END)
        if end:
            out.seek(end - 1)
            data = data if out.read(1) == b"\n" else b"\n" + data
        out.write(data)


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str))


@contextlib.contextmanager
def new_folder(out: Path) -> Iterator[Path]:
    """A folder that appears at `out` complete or not at all. The block writes into a staging
    folder beside it, new and under a name of its own (never one that could be the user's), which
    is renamed to `out` at the end, or removed when anything failed; a failure is one line saying
    what went wrong (a full disk, a folder that cannot be written)."""
    check_new_folder(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".staging", dir=out.parent))
        staging.chmod(0o755)
    except OSError as error:
        raise cannot_write(error, out) from None
    try:
        yield staging
        if out.exists():
            out.rmdir()
        os.rename(staging, out)
    except LoraMagicError:
        raise
    except Exception as error:
        raise cannot_write(error, out) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_new_folder(out: Path) -> None:
    """Refuse, before any work, to write a new folder where a file or a folder with files stands."""
    if out.is_file():
        raise RunError(f"{out} is a file; choose a new folder")
    if out.exists() and any(out.iterdir()):
        raise RunError(f"{out} already exists and is not empty; choose a new folder")


def cannot_write(error: BaseException, out: Path) -> RunError:
    """A one-line error for a failed write of `out`."""
    full = no_space(error, out.parent)
    if full or "No space left" in str(error):  # libraries that write for us (safetensors) say it in words
        return full or RunError(
            f"no space left in {out.parent}: free some disk space or choose another folder"
        )
    if isinstance(error, OSError) and error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return RunError(f"cannot write to {out.parent}: {error.strerror}; choose a folder you can write to")
    if isinstance(error, NotADirectoryError):
        return RunError(f"cannot write {out}: a part of its path is a file, not a folder")
    reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return RunError(f"could not write {out}: {type(error).__name__}{': ' + reason if reason else ''}")


def no_space(error: BaseException, where: Path) -> RunError | None:
    """A one-line error for a full disk, or None for any other failure."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return RunError(
            f"no space left in {where}: free some disk space or move the run store ($LORA_MAGIC_RUNS)"
        )
    return None


class RunStore:
    """Runs under one root folder. Every name is validated and every path confined to the root."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_root()

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"

    # -- paths ---------------------------------------------------------------------------------
    def path(self, name: str) -> Path:
        """The folder of run `name`; refuses names that could point outside the store."""
        if not isinstance(name, str) or not RUN_NAME.fullmatch(name):
            raise RunError(
                f"{name!r} is not a valid run name; use letters, digits, '_' and '-', starting "
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
        found = {}
        with os.scandir(self.root) as entries:
            for entry in entries:
                with contextlib.suppress(OSError, RunError):  # removed meanwhile, or a link out of the store
                    if RUN_NAME.fullmatch(entry.name) and (updated := self._updated(entry)) is not None:
                        found[entry.name] = updated
        return sorted(found, key=found.__getitem__, reverse=True)

    def _updated(self, entry: os.DirEntry) -> float | None:
        """When the run in folder `entry` last changed (its run.json's mtime); None if it is no run.
        A plain folder holding a plain run.json is read with one stat (a listing of 100,000 runs
        stats each); links are followed only as far as `file` allows."""
        if entry.is_dir(follow_symlinks=False):
            with contextlib.suppress(FileNotFoundError):
                record = os.stat(os.path.join(entry.path, "run.json"), follow_symlinks=False)
                if stat.S_ISREG(record.st_mode):
                    return record.st_mtime
        if not self.exists(entry.name):
            return None
        return self.file(entry.name, "run.json").stat().st_mtime

    def read(self, name: str) -> dict[str, Any]:
        """run.json of `name`. A run whose process is gone is reported as 'interrupted'.

        Raises UnreadableRun when the file is not a run record (not UTF-8, not JSON, no status).
        """
        file = self.file(name, "run.json")
        if not file.is_file():
            raise RunError(f"no run named {name!r} in {self.root}{did_you_mean(name, self.names())}")
        try:
            record = json.loads(file.read_bytes().decode("utf-8"))
        except UnicodeDecodeError:
            raise UnreadableRun(f"run {name!r} is unreadable: its run.json is not UTF-8 text") from None
        except OSError as error:
            raise UnreadableRun(f"run {name!r} is unreadable: {error.strerror or error}") from None
        except json.JSONDecodeError as error:
            raise UnreadableRun(
                f"run {name!r} is unreadable: its run.json is not valid JSON ({error.msg} at line "
                f"{error.lineno}, column {error.colno})"
            ) from None
        except (ValueError, RecursionError) as error:  # a number too long to read, nesting too deep
            raise UnreadableRun(f"run {name!r} is unreadable: its run.json {_beyond(error)}") from None
        if too_deep(record):
            raise UnreadableRun(
                f"run {name!r} is unreadable: its run.json is nested deeper than {MAX_DEPTH} levels"
            )
        if not isinstance(record, dict):
            raise UnreadableRun(
                f"run {name!r} is unreadable: its run.json holds {_kind(record)}, not a run record"
            )
        if record.get("status") not in STATUSES:
            raise UnreadableRun(f"run {name!r} is unreadable: its run.json has no valid status")
        if record["status"] in ACTIVE and not _process_alive(record):
            record["status"] = INTERRUPTED
        return {**record, "name": name}

    def summary(self, name: str) -> dict[str, Any]:
        """run.json of `name`, or for an unreadable one a record saying why (status 'unreadable')."""
        try:
            return self.read(name)
        except UnreadableRun as error:
            try:
                updated = self.file(name, "run.json").stat().st_mtime
            except OSError:
                updated = None
            return {"name": name, "status": UNREADABLE, "error": str(error), "updated": updated}

    def list(self) -> list[dict[str, Any]]:
        """Every run, newest first; unreadable ones included as such, removed ones left out."""
        return self._summaries(self.names())

    def page(self, limit: int, after: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """Up to `limit` runs, newest first, from the one after run `after` (None: the newest), and
        the name to ask for the next page after (None when there is none). Only the page's run.json
        files are read, so the first page of a store of 100,000 runs costs a listing of its folder."""
        names = self.names()
        if after is not None and after not in names:
            raise RunError(
                f"no run named {after!r} in {self.root}: ask for a page after a run that is listed"
            )
        start = names.index(after) + 1 if after is not None else 0
        shown = names[start : start + limit]
        more = start + limit < len(names)
        return self._summaries(shown), shown[-1] if more and shown else None

    def _summaries(self, names: list[str]) -> list[dict[str, Any]]:
        runs = []
        for name in names:
            with contextlib.suppress(RunError):  # removed while listing
                runs.append(self.summary(name))
        return runs

    def events(
        self, name: str, offset: int = 0, limit: int | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        """Up to `limit` events from byte `offset`, and the offset to ask for next time.

        Only whole lines are read (the last one may still be being written). Lines that are not a
        JSON event (a torn write, garbage, invalid UTF-8) are skipped. An offset must be 0 or one
        this method returned: a RunError says why any other is refused.
        """
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise RunError(f"offset {offset!r} is not valid: use 0 or an offset returned with events")
        file = self.file(name, "events.jsonl")
        if not file.is_file():
            if offset:
                raise RunError(f"offset {offset} is past the end of run {name!r}'s events (it has none)")
            return [], 0
        events: list[dict[str, Any]] = []
        with open(file, "rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            if offset > size:
                raise RunError(f"offset {offset} is past the end of run {name!r}'s events ({size} bytes)")
            if offset:
                stream.seek(offset - 1)
                if stream.read(1) != b"\n":
                    raise RunError(
                        f"offset {offset} is not at the start of an event; use 0 or an offset returned with events"
                    )
            for line in stream:
                if not line.endswith(b"\n"):
                    break  # still being written
                offset += len(line)
                event = _event(line)
                if event is not None:
                    events.append(event)
                    if limit is not None and len(events) >= limit:
                        break
        return events, offset

    def last_checkpoint(self, name: str) -> Path | None:
        """The newest checkpoint that was written completely, if any."""
        folder = self.path(name) / "checkpoints"
        done = [p for p in folder.glob("checkpoint-*") if (p / COMPLETE_MARK).is_file()]
        return max(done, key=lambda p: int(p.name.rsplit("-", 1)[1]), default=None)

    # -- writing -------------------------------------------------------------------------------
    def create(self, name: str, record: dict[str, Any], data: dict[str, list[dict]] | None = None) -> Path:
        """Make the folder of a new run with its run.json and its data records (`data/<split>.jsonl`
        for each split given); refuses a name that is taken. It is complete or not there at all:
        on a failure (a full disk says so in one line) nothing of it is left."""
        folder = self.path(name)
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            folder.mkdir()
        except FileExistsError:
            raise RunError(
                f"a run named {name!r} already exists in {self.root}; choose another name"
            ) from None
        try:
            (folder / "data").mkdir()
            for split, records in (data or {}).items():
                lines = "".join(json.dumps(r, default=str) + "\n" for r in records)
                write_text_atomic(folder / "data" / f"{split}.jsonl", lines)
            self.write(name, record)  # last: a run is listed once its run.json exists
        except BaseException as error:
            self.remove(name)
            full = no_space(error, self.root)
            if full:
                raise full from error
            raise
        return folder

    def remove(self, name: str) -> None:
        """Delete run `name`'s folder and everything in it."""
        shutil.rmtree(self.path(name), ignore_errors=True)

    def write(self, name: str, record: dict[str, Any], pid: int | None = None) -> None:
        """Write run.json, naming the process that trains the run: this one unless `pid` is given."""
        pid = pid or os.getpid()
        record = {
            **record,
            "updated": time.time(),
            "pid": pid,
            "pid_started": process_started(pid),
            "host": socket.gethostname(),
        }
        write_json_atomic(self.path(name) / "run.json", record)

    def update(self, name: str, pid: int | None = None, **changes: Any) -> dict[str, Any]:
        file = self.path(name) / "run.json"
        record = {**json.loads(file.read_text(encoding="utf-8")), **changes}
        self.write(name, record, pid)
        return record

    def append_event(self, name: str, event: dict[str, Any]) -> None:
        append_bytes(
            self.path(name) / "events.jsonl", (json.dumps(event, default=str) + "\n").encode("utf-8")
        )

    def request_stop(self, name: str) -> None:
        """Ask the process training `name` to stop at its next step (works across processes)."""
        record = self.read(name)
        if record["status"] not in ACTIVE:
            raise RunError(f"run {name!r} is {record['status']}, not running; nothing to stop")
        write_text_atomic(self.path(name) / STOP_REQUEST, str(time.time()))

    def stop_requested(self, name: str) -> bool:
        return (self.path(name) / STOP_REQUEST).exists()

    def request_pause(self, name: str, paused: bool = True) -> None:
        """Ask the process training `name` to hold after its current step (paused=False: go on)."""
        record = self.read(name)
        if record["status"] not in ACTIVE:
            raise RunError(f"run {name!r} is {record['status']}, not running; nothing to pause or resume")
        if paused:
            write_text_atomic(self.path(name) / PAUSE_REQUEST, str(time.time()))
        else:
            (self.path(name) / PAUSE_REQUEST).unlink(missing_ok=True)

    def pause_requested(self, name: str) -> bool:
        return (self.path(name) / PAUSE_REQUEST).exists()

    def clear_requests(self, name: str) -> None:
        """Forget stop and pause requests: a run that starts or ends obeys none left over."""
        for request in (STOP_REQUEST, PAUSE_REQUEST):
            (self.path(name) / request).unlink(missing_ok=True)


def _event(line: bytes) -> dict[str, Any] | None:
    """The event on one line of events.jsonl, or None for a line that holds none."""
    try:
        event = json.loads(line)
    except (ValueError, RecursionError):  # invalid JSON or UTF-8, a number too long, nesting too deep
        return None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str) or too_deep(event):
        return None
    return event


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether lists and objects nest in `value` deeper than `limit` (looked at without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            stack += [(child, depth + 1) for child in (item.values() if isinstance(item, dict) else item)]
    return False


def _beyond(error: BaseException) -> str:
    if isinstance(error, RecursionError):
        return "is nested too deeply to read"
    return f"holds a value that cannot be read ({str(error).split(';')[0]})"


def _kind(value: Any) -> str:
    kinds = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}
    return "null" if value is None else kinds[type(value)]


def _process_alive(record: dict[str, Any]) -> bool:
    """Whether the process that run.json names as the run's trainer is still that process: alive,
    and started when the record says (a pid is reused once its process is gone)."""
    pid, host = record.get("pid"), record.get("host")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0 or host != socket.gethostname():
        return True  # another machine's process, or no usable pid: trust what it wrote
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process, or no pid this machine can have: nothing more to tell
    started = process_started(pid)
    if started is None:
        return True
    recorded = record.get("pid_started")
    if isinstance(recorded, int | float):
        return abs(started - recorded) < 1.0
    written = record.get("updated")  # an older record: a process younger than it did not write it
    return not isinstance(written, int | float) or started <= written + 1.0


def process_started(pid: int) -> float | None:
    """When process `pid` of this machine started (seconds since the epoch); None if it cannot be told."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, ValueError, OverflowError):
        return None
