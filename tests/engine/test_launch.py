"""Runs beyond the kernel: `launch: process` trains in a worker process that outlives the kernel and
obeys the run folder's requests; `launch: accelerate` trains data-parallel processes (gloo on a CPU)
that match a single-process run step by step and write one event stream and one adapter."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

import lora_magic as lm
from lora_magic.core.store import RunStore


def wait_until(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def events(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]


def log_steps(folder) -> list[int]:
    return [event["step"] for event in events(folder) if event["type"] == "log"]


def test_accelerate_processes_train_as_one_process_with_the_same_global_batch(
    tiny_model_dir, records, runs_dir
):
    settings = dict(model=tiny_model_dir, data=records, steps=5, batch_size=4, dropout=0.0, runs_dir=runs_dir)
    single = lm.train(name="single", learning_rate=1e-3, **settings).wait()
    assert single.status == "completed", single.error
    parallel = lm.train(name="parallel", learning_rate=1e-3, launch="accelerate", processes=2, **settings)
    parallel.wait(600)
    assert parallel.status == "completed", (
        parallel.error,
        (parallel.path / "worker.log").read_text()[-3000:],
    )

    losses = [loss for _, loss in parallel.losses]
    assert losses == pytest.approx([loss for _, loss in single.losses], abs=1e-4)
    # one event stream, the first process's: each step logged once, one end
    assert log_steps(parallel.path) == [1, 2, 3, 4, 5]
    ends = [e for e in events(parallel.path) if e["type"] == "status" and e["status"] == "completed"]
    assert len(ends) == 1
    assert (parallel.path / "adapter" / "adapter_model.safetensors").is_file()
    assert "--multi_gpu" in RunStore(runs_dir).read("parallel")["launched"]


def test_a_worker_obeys_pause_and_stop_from_the_folder_and_a_dead_one_is_resumable(
    tiny_model_dir, records, runs_dir
):
    store = RunStore(runs_dir)
    run = lm.train(
        model=tiny_model_dir,
        data=records,
        name="detached",
        launch="process",
        steps=40,
        save_every=5,
        batch_size=2,
        runs_dir=runs_dir,
    )
    assert run.path == store.path("detached")
    wait_until(lambda: run.step >= 6, 300, "the worker made no progress")
    run.pause()
    wait_until(lambda: run.status == "paused", 60, "the worker did not pause")
    held = run.step
    time.sleep(2)
    assert run.step == held and store.read("detached")["status"] == "paused"
    worker = store.read("detached")["pid"]
    assert worker != os.getpid()

    os.kill(worker, signal.SIGKILL)  # the worker dies while paused
    run.wait(60)
    assert run.status == "interrupted" and "worker.log" in run.error
    assert store.read("detached")["status"] == "interrupted"

    resumed = lm.resume("detached", runs_dir=runs_dir).wait()  # in this process, from its checkpoint
    assert resumed.status == "completed", resumed.error
    assert resumed.step == 40 and log_steps(resumed.path)[-1] == 40
    assert not (resumed.path / "pause-request").exists()


def test_sigterm_stops_a_worker_and_a_copied_folder_trains_on_with_the_worker_command(
    tiny_model_dir, records, runs_dir, tmp_path
):
    run = lm.train(
        model=tiny_model_dir, data=records, name="moved", launch="process", steps=30, runs_dir=runs_dir
    )
    # held after its first step, so that it is still running when the signal comes (asked later, a
    # fast worker could finish all its steps first)
    run.pause()
    wait_until(lambda: run.status == "paused", 300, "the worker did not pause")
    os.kill(RunStore(runs_dir).read("moved")["pid"], signal.SIGTERM)
    run.wait(120)
    assert run.status == "stopped" and run.adapter_path is not None
    stopped_at = run.step

    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(run.path, elsewhere / "moved")
    worker = [sys.executable, "-m", "lora_magic.worker", str(elsewhere / "moved")]
    done = subprocess.run(worker, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = RunStore(elsewhere).read("moved")
    assert record["status"] == "completed" and record["step"] == 30
    resumed = [e for e in events(elsewhere / "moved") if e.get("resumed_from") is not None]
    assert resumed[-1]["resumed_from"] == stopped_at  # from the copied checkpoint, not from scratch

    again = subprocess.run(worker, capture_output=True, text=True, timeout=600)
    assert again.returncode == 1 and "nothing left to train" in again.stderr

    broken = tmp_path / "broken"
    shutil.copytree(run.path, broken / "moved")
    (broken / "moved" / "data" / "train.jsonl").write_text(json.dumps(records[0]) + "\n")
    failed = subprocess.run(
        [*worker[:-1], str(broken / "moved")], capture_output=True, text=True, timeout=600
    )
    assert failed.returncode == 1
    record = RunStore(broken).read("moved")
    assert record["status"] == "failed" and "was modified" in record["error"]


@pytest.fixture
def kernels(runs_dir, monkeypatch):
    """`kernels()` starts an ipykernel of this Python as a notebook server does (run store: runs_dir)."""
    from jupyter_client.manager import start_new_kernel

    monkeypatch.setenv("LORA_MAGIC_WIDGETS", "off")
    started = []

    def start():
        manager, client = start_new_kernel(kernel_name="python3")
        started.append((manager, client))
        return manager, client

    yield start
    for manager, client in started:
        client.stop_channels()
        if manager.is_alive():
            manager.shutdown_kernel(now=True)


def execute(client, code: str, timeout: float = 120) -> str:
    """Run `code` in the kernel; its printed and displayed text. A cell error fails the test."""
    msg_id = client.execute(code)
    out = []
    while True:
        msg = client.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        content = msg["content"]
        if msg["msg_type"] == "stream":
            out.append(content["text"])
        elif msg["msg_type"] in ("execute_result", "display_data"):
            out.append(content["data"].get("text/plain", ""))
        elif msg["msg_type"] == "error":
            raise AssertionError("\n".join(content["traceback"]))
        elif msg["msg_type"] == "status" and content["execution_state"] == "idle":
            return "".join(out)


def test_a_process_run_outlives_its_kernel_and_a_new_kernel_follows_it(
    kernels, tiny_model_dir, records, runs_dir
):
    store = RunStore(runs_dir)
    manager, client = kernels()
    execute(client, f"%load_ext lora_magic\nrecords = {records!r}")
    client.execute(  # the cell follows the run until its kernel is killed
        f"%%finetune\nmodel: {tiny_model_dir}\ndata: records\nname: outlives\nlaunch: process\n"
        "steps: 120\nbatch_size: 2"
    )
    wait_until(
        lambda: store.exists("outlives") and (store.read("outlives").get("step") or 0) >= 3,
        300,
        "the worker made no progress",
    )
    manager.shutdown_kernel(now=True)
    assert not manager.is_alive()
    step = store.read("outlives")["step"]
    wait_until(lambda: store.read("outlives")["step"] > step + 2, 120, "the run ended with its kernel")

    _, client = kernels()
    listing = execute(client, "%load_ext lora_magic\n%lora runs")
    assert re.search(r"outlives\s+running", listing), listing
    execute(client, "%lora pause outlives")
    wait_until(
        lambda: store.read("outlives")["status"] == "paused", 120, "%lora pause did not reach the worker"
    )
    execute(client, "%lora resume outlives")
    wait_until(lambda: store.read("outlives")["status"] != "paused", 120, "%lora resume did not reach it")
    watched = execute(client, "%lora watch outlives", timeout=600)
    assert "Run outlives completed after 120/120 steps" in watched, watched
    loaded = execute(
        client,
        "%lora load outlives\nfrom lora_magic.model.session import session\nprint(list(session().adapters))",
    )
    assert "['outlives']" in loaded


def test_the_worker_explains_itself_and_refuses_what_is_no_run_folder(tmp_path):
    helped = subprocess.run(
        [sys.executable, "-m", "lora_magic.worker", "--help"], capture_output=True, text=True
    )
    assert helped.returncode == 0 and "RUN_FOLDER [--trust-remote-code]" in helped.stdout
    assert "not a run folder" not in helped.stdout + helped.stderr
    nothing = subprocess.run(
        [sys.executable, "-m", "lora_magic.worker", str(tmp_path)], capture_output=True, text=True
    )
    assert nothing.returncode == 2 and "is not a run folder: it has no run.json" in nothing.stderr
