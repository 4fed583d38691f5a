"""Attacks on the run store through crafted run folders: each test names the attack and shows that
it fails without a trace outside the store.

A run folder may come from someone else (a shared drive, a copied folder), and the server extension
writes into run folders on request. Every file the product writes in a run folder is a new file
put in place by a rename, or added to after checking that it is the folder's own: a link planted
at a file's name is replaced or refused, never written through.
"""

from __future__ import annotations

import json
import os
import time

import pytest

import lora_magic as lm
from lora_magic.core.config import RunConfig
from lora_magic.core.errors import RunError
from lora_magic.core.store import PAUSE_REQUEST, STOP_REQUEST, RunStore

SECRET = "someone else's file\n"


def running(store: RunStore, name: str = "target") -> RunStore:
    store.create(name, {"name": name, "status": "running", "created": time.time(), "config": {}})
    return store


@pytest.fixture
def outside(tmp_path):
    """A file outside the run store that an attacker wants overwritten."""
    victim = tmp_path / "outside.txt"
    victim.write_text(SECRET)
    return victim


async def test_a_stop_request_hard_linked_outside_the_store_is_replaced_not_written_through(
    jp_fetch, store, outside
):
    running(store)
    os.link(outside, store.path("target") / STOP_REQUEST)
    response = await jp_fetch("lora-magic", "runs", "target", "stop", method="POST", body=b"")
    assert response.code == 202
    assert outside.read_text() == SECRET
    assert os.stat(store.path("target") / STOP_REQUEST).st_nlink == 1  # a new file of the run's own
    assert store.stop_requested("target")


async def test_a_stop_request_symlinked_to_run_json_leaves_the_record_whole(jp_fetch, store):
    running(store)
    (store.path("target") / STOP_REQUEST).symlink_to(store.path("target") / "run.json")
    response = await jp_fetch("lora-magic", "runs", "target", "stop", method="POST", body=b"")
    assert response.code == 202
    assert store.read("target")["status"] == "running"
    assert not (store.path("target") / STOP_REQUEST).is_symlink()


def test_a_pause_request_linked_outside_the_store_is_replaced(store, outside):
    running(store)
    (store.path("target") / PAUSE_REQUEST).symlink_to(outside)
    store.request_pause("target")
    assert outside.read_text() == SECRET and store.pause_requested("target")


def test_a_run_json_linked_outside_the_store_is_replaced_when_the_run_is_updated(store, outside):
    running(store)
    record = store.path("target") / "run.json"
    record.unlink()
    os.link(outside, record)
    outside.write_text('{"name": "target", "status": "running", "config": {}}')
    store.update("target", step=3)
    assert outside.read_text() == '{"name": "target", "status": "running", "config": {}}'
    assert store.read("target")["step"] == 3


@pytest.mark.parametrize("link", ["symbolic", "hard"])
def test_events_linked_outside_the_store_are_refused_and_left_alone(store, outside, link):
    running(store)
    events = store.path("target") / "events.jsonl"
    events.symlink_to(outside) if link == "symbolic" else os.link(outside, events)
    with pytest.raises(
        RunError,
        match=r"events\.jsonl is (a link|also linked elsewhere); the run store writes only its own files",
    ):
        store.append_event("target", {"type": "log", "step": 1})
    assert outside.read_text() == SECRET


def test_temporary_names_planted_beside_run_json_are_never_written_through(store, outside):
    running(store)
    for pid in range(os.getpid() - 2, os.getpid() + 3):  # the old, guessable temporary names
        (store.path("target") / f".run.json.{pid}.tmp").symlink_to(outside)
    store.update("target", step=1)
    assert outside.read_text() == SECRET and store.read("target")["step"] == 1


# -- a shared run folder that would run code when loaded --------------------------------------------
EVIL = """
import pathlib
pathlib.Path({marker!r}).write_text("ran")
from transformers import PretrainedConfig


class EvilConfig(PretrainedConfig):
    model_type = "evil"
"""


@pytest.fixture
def crafted(store, tmp_path):
    """A run folder whose run.json asks for trust_remote_code, for a model inside the folder whose
    config.json maps to a Python file that leaves a mark when it is imported."""
    marker = tmp_path / "the-code-ran"
    folder = store.root / "crafted"
    model = folder / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text(
        json.dumps({"model_type": "evil", "auto_map": {"AutoConfig": "configuration_evil.EvilConfig"}})
    )
    (model / "configuration_evil.py").write_text(EVIL.format(marker=str(marker)))
    (folder / "adapter").mkdir()
    (folder / "adapter" / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": str(model)})
    )
    (folder / "checkpoints" / "checkpoint-1").mkdir(parents=True)
    (folder / "checkpoints" / "checkpoint-1" / "COMPLETE").write_text("1")
    (folder / "data").mkdir()
    (folder / "data" / "eval.jsonl").write_text('{"instruction": "a", "response": "b"}\n')
    config = {**RunConfig().to_dict(), "name": "crafted", "model": str(model), "trust_remote_code": True}
    store.write("crafted", {"name": "crafted", "status": "stopped", "config": config, "targets": ["q_proj"]})
    return marker


REFUSED = r"run 'crafted' was trained with trust_remote_code: loading it runs configuration_evil\.py in .*model\. .*trust_remote_code=True"


def test_loading_a_crafted_run_folder_runs_none_of_its_code(crafted, runs_dir):
    attempts = {
        "Session.load_adapter(name)": lambda: lm.session().load_adapter("crafted"),
        "Session.load_adapter(path)": lambda: lm.session().load_adapter(
            str(runs_dir / "crafted" / "adapter")
        ),
        "lm.resume": lambda: lm.resume("crafted"),
        "lm.evaluate": lambda: lm.evaluate("crafted"),
    }
    for attempt, call in attempts.items():
        with pytest.raises(RunError, match=REFUSED):
            call()
        assert not crafted.exists(), attempt
    assert lm.session().model is None


def test_the_magics_and_a_worker_refuse_it_too_and_say_how_to_allow_it(crafted, runs_dir):
    import subprocess
    import sys

    from IPython.core.error import UsageError
    from IPython.testing import globalipapp

    shell = globalipapp.get_ipython()
    shell.extension_manager.load_extension("lora_magic")
    for line in ("load crafted", "resume crafted", "eval crafted"):
        with pytest.raises(
            UsageError, match=REFUSED.replace("trust_remote_code=True", r"--trust-remote-code")
        ):
            shell.run_line_magic("lora", line)
    worker = subprocess.run(
        [sys.executable, "-m", "lora_magic.worker", str(runs_dir / "crafted")], capture_output=True, text=True
    )
    assert worker.returncode != 0 and "was trained with trust_remote_code" in worker.stderr
    assert not crafted.exists()


def test_the_users_own_allowance_lets_the_code_run(crafted):
    with pytest.raises(Exception):  # noqa: B017  the crafted model is no model: what matters is that its code ran
        lm.session().load_adapter("crafted", trust_remote_code=True)
    assert crafted.read_text() == "ran"


# -- a base changed under a stopped run ------------------------------------------------------------
@pytest.fixture
def stopped_on_a_copy(store, tiny_model_dir, tmp_path):
    """A stopped run with a complete checkpoint, on its own copy of the tiny model."""
    import shutil

    from lora_magic.core.catalogue import base_fingerprint

    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    config = {**RunConfig(model=str(base)).to_dict(), "name": "stopped"}
    record = {
        "name": "stopped",
        "status": "stopped",
        "config": config,
        "base_fingerprint": base_fingerprint(str(base)),
    }
    store.create("stopped", record)
    (store.path("stopped") / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (store.path("stopped") / "checkpoints" / "checkpoint-2" / "COMPLETE").write_text("2")
    return base


def test_weights_rewritten_at_the_same_size_and_time_are_a_changed_base(stopped_on_a_copy):
    from safetensors.torch import load_file, save_file

    weights = stopped_on_a_copy / "model.safetensors"
    before = weights.stat()
    save_file(
        {name: tensor * -3 for name, tensor in load_file(weights).items()}, weights, metadata={"format": "pt"}
    )
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))  # the time put back, the size the same
    assert weights.stat().st_size == before.st_size
    with pytest.raises(
        RunError, match=r"run 'stopped' cannot go on: the base model .* changed since the run started"
    ):
        lm.resume("stopped")
    assert lm.session().model is None  # refused before anything loaded


def test_a_run_json_without_a_base_fingerprint_says_so(store, stopped_on_a_copy):
    record = store.read("stopped")
    del record["base_fingerprint"]
    store.write("stopped", record)
    with pytest.raises(
        RunError, match=r"run 'stopped' cannot go on: its run.json has no fingerprint of its base model"
    ):
        lm.resume("stopped")
