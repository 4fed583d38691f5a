"""The run store under damage and faults: tolerant readers, torn lines, paging, a full disk."""

import os
import time
from pathlib import Path

import pytest
from faults import FullDisk

from lora_magic.core import events
from lora_magic.core import store as run_store
from lora_magic.core.errors import RunError
from lora_magic.core.events import History
from lora_magic.core.store import RunStore

LOG = {"type": "log", "step": 1, "loss": 2.5}


@pytest.fixture
def store(runs_dir):
    return RunStore(runs_dir)


def make_run(store, name, status="completed", **fields):
    store.create(name, {"name": name, "status": status, "created": time.time(), "config": {}, **fields})


def test_a_damaged_run_is_listed_as_unreadable_with_why(store, runs_dir):
    make_run(store, "older")
    make_run(store, "damaged")
    make_run(store, "newer")
    (runs_dir / "damaged" / "run.json").write_text("{not json")

    listed = {record["name"]: record for record in store.list()}

    assert set(listed) == {"older", "damaged", "newer"}
    assert listed["older"]["status"] == listed["newer"]["status"] == "completed"
    assert listed["damaged"]["status"] == "unreadable"
    assert listed["damaged"]["error"] == (
        "run 'damaged' is unreadable: its run.json is not valid JSON "
        "(Expecting property name enclosed in double quotes at line 1, column 2)"
    )
    with pytest.raises(run_store.UnreadableRun, match="run 'damaged' is unreadable"):
        store.read("damaged")


def test_a_run_removed_while_listing_is_left_out(store, runs_dir):
    make_run(store, "here")
    (runs_dir / "half-made").mkdir()  # a run being created: no run.json yet
    assert [record["name"] for record in store.list()] == ["here"]


def test_an_event_after_a_torn_last_line_starts_on_a_fresh_line(store, runs_dir):
    make_run(store, "killed")
    store.append_event("killed", {**LOG, "step": 1})
    with open(runs_dir / "killed" / "events.jsonl", "a") as out:
        out.write('{"type": "log", "step": 2, "lo')  # the process died in the middle of this line

    store.append_event("killed", {**LOG, "step": 3})  # the resumed process goes on

    events, offset = store.events("killed")
    assert [event["step"] for event in events] == [1, 3]
    assert offset == (runs_dir / "killed" / "events.jsonl").stat().st_size


def test_events_page_by_limit_and_refuse_offsets_inside_a_line(store):
    make_run(store, "paged")
    for step in range(5):
        store.append_event("paged", {**LOG, "step": step})

    first, offset = store.events("paged", 0, limit=2)
    second, offset = store.events("paged", offset, limit=2)
    rest, end = store.events("paged", offset, limit=2)

    assert [e["step"] for e in first + second + rest] == [0, 1, 2, 3, 4] and len(rest) == 1
    assert store.events("paged", end) == ([], end)
    for bad in (-1, 1, end + 1, 10**23, 2.5, True):
        with pytest.raises(RunError, match=r"offset .* (not valid|not at the start|past the end)"):
            store.events("paged", bad)


def test_resumed_steps_supersede_what_was_logged_after_the_checkpoint():
    evaluation = {"type": "eval", "step": 5, "eval_loss": 1.0}
    logged = [
        {"type": "status", "status": "running", "step": 0},
        *({**LOG, "step": step} for step in range(1, 9)),
        {"type": "checkpoint", "step": 5},
        evaluation,
        {"type": "status", "status": "running", "step": 5, "resumed_from": 5},
        {**evaluation, "eval_loss": 1.1},  # a resumed run evaluates again where it starts
        *({**LOG, "step": step} for step in range(6, 11)),
    ]
    kept = History(logged).events
    assert [e["step"] for e in kept if e["type"] == "log"] == list(range(1, 11))
    assert [e["eval_loss"] for e in kept if e["type"] == "eval"] == [1.1]
    assert [e["type"] for e in kept].count("status") == 2 and {"type": "checkpoint", "step": 5} in kept


def test_a_full_disk_at_creation_leaves_no_half_written_run(store, runs_dir, monkeypatch):
    records = [{"instruction": f"row {i}", "response": "x" * 100} for i in range(100)]
    monkeypatch.setattr(run_store, "open", FullDisk(room=2000).open, raising=False)

    with pytest.raises(RunError) as refused:
        store.create("full", {"name": "full", "status": "running"}, data={"train": records, "eval": []})

    assert str(refused.value) == (
        f"no space left in {runs_dir}: free some disk space or move the run store ($LORA_MAGIC_RUNS)"
    )
    assert list(runs_dir.iterdir()) == []  # no folder, no truncated data/train.jsonl, no temporary file


def test_a_full_disk_keeps_the_last_good_run_json(store, runs_dir, monkeypatch):
    make_run(store, "kept", status="running", step=3)
    monkeypatch.setattr(run_store, "open", FullDisk(room=10).open, raising=False)

    with pytest.raises(OSError, match="No space left"):
        store.update("kept", step=4)

    monkeypatch.delattr(run_store, "open")
    assert store.read("kept")["step"] == 3
    assert sorted(os.listdir(runs_dir / "kept")) == ["data", "run.json"]


def test_the_typescript_vocabulary_is_generated_from_the_python_one():
    generated = Path(__file__).parents[2] / "labextension" / "src" / "vocabulary.ts"
    assert generated.read_text() == events.typescript(), (
        "regenerate it: python -c 'from lora_magic.core.events import typescript; print(typescript(), end=\"\")' "
        "> labextension/src/vocabulary.ts"
    )
