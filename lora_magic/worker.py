"""`python -m lora_magic.worker RUN_FOLDER [--trust-remote-code]`: train a run from its folder alone.

The folder holds everything a run needs: its settings (run.json) and the exact records it trains
on (data/). The worker trains it as the kernel's manager does, writing the same events,
checkpoints, status and adapter, and obeying the stop and pause requests left in the folder; a
folder with a complete checkpoint continues from it. Copy the folder to another machine and the
same command runs it there, also under `accelerate launch` or `torchrun` (one process per GPU):
then every process trains and the first alone writes. A run folder never allows the code shipped
with a model to run: `--trust-remote-code` does, given by whoever starts the worker (lora_magic
gives it for the user's own run with trust_remote_code).

Exit status: 0 when the run completed or was stopped, 1 when it failed.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from .core.events import COMPLETED, FAILED, STATUS, STOPPED
from .core.store import RunStore

USAGE = "usage: python -m lora_magic.worker RUN_FOLDER [--trust-remote-code]"


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    trust_remote_code = "--trust-remote-code" in argv
    places = [word for word in argv if word != "--trust-remote-code"]
    if len(places) != 1 or places[0].startswith("-"):
        print(USAGE, file=sys.stderr)
        return 2
    folder = Path(places[0]).resolve()
    if not (folder / "run.json").is_file():
        print(f"{folder} is not a run folder: it has no run.json", file=sys.stderr)
        return 2
    from .training.start import train_folder

    store = RunStore(folder.parent)
    first = int(os.environ.get("RANK", "0")) == 0  # under Accelerate, the first process alone writes
    # SIGTERM (a scheduler's cancel, kill) stops the run gracefully, as an interrupt does. It raises
    # the KeyboardInterrupt itself: a process started in the background inherits SIGINT ignored.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        run = train_folder(store, folder.name, writes=first, trust_remote_code=trust_remote_code)
    except Exception as error:  # before the training started: the run itself says why, not only this log
        if first and store.read(folder.name)["status"] != COMPLETED:
            reason = f"{type(error).__name__}: {error}"
            event = {"time": time.time(), "type": STATUS, "status": FAILED, "step": 0, "error": reason}
            store.append_event(folder.name, event)
            store.update(folder.name, status=FAILED, error=reason, finished=time.time())
        raise
    run.wait()
    print(f"run {run.name!r} {run.status}" + (f": {run.error}" if run.error else ""), flush=True)
    return 0 if run.status in (COMPLETED, STOPPED) else 1


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
