"""Runs beyond the kernel: a worker process (launch='process'), or several under Accelerate
(launch='accelerate'), trains a run from its folder while this kernel follows it through the store.

`launch()` starts the worker (`python -m lora_magic.worker RUN_FOLDER`) in a session of its own,
so a kernel interrupt, restart or crash does not reach it; its output goes to the folder's
worker.log. The Run it returns follows the run through its folder (run.follow).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from ..core.config import RunConfig
from ..core.store import WORKER_LOG, RunStore
from .run import Run, follow


def worker_command(config: RunConfig, folder: Path) -> list[str]:
    """The command that trains the run in `folder`: the worker alone, or under accelerate launch."""
    # the user's own call allows its model's code (trust_remote_code); the folder alone never does
    worker = [
        "-m",
        "lora_magic.worker",
        str(folder),
        *(["--trust-remote-code"] if config.trust_remote_code else []),
    ]
    if config.launch == "process":
        return [sys.executable, *worker]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(config.processes)]
    if config.accelerate_config:
        launch += ["--config_file", config.accelerate_config]
    else:  # data parallel on this machine: NCCL between GPUs, gloo between CPU processes
        launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        launch += ["--multi_gpu"] if config.processes > 1 else []
    return [*launch, *worker]


def launch(store: RunStore, name: str, config: RunConfig) -> Run:
    """Start the worker of run `name` (its folder is complete) and follow it."""
    folder = store.path(name)
    with open(folder / WORKER_LOG, "ab") as log:
        process = subprocess.Popen(
            worker_command(config, folder),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # not in the kernel's process group: its interrupts stay there
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    # until the worker writes its own, the run is alive as long as the launched process is
    store.update(name, pid=process.pid, launched=worker_command(config, folder))
    threading.Thread(target=process.wait, daemon=True).start()  # reaps it: no zombie looks alive
    return follow(store, name)
