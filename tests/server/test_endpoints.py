"""The REST endpoints of the server extension, against a run store written with RunStore itself."""

import json
import os
import time

import nbformat
import pytest
from tornado.httpclient import HTTPClientError


def make_run(store, name, status="completed", events=(), **fields):
    store.create(
        name,
        {
            "name": name,
            "status": status,
            "created": time.time(),
            "config": {"model": "tiny", "steps": 10, "r": 8},
            "model": "tiny",
            "versions": {"torch": "x"},
            "step": 0,
            "total_steps": 10,
            "metrics": {},
            "error": None,
            **fields,
        },
    )
    for event in events:
        store.append_event(name, event)


async def get_json(jp_fetch, *parts, **params):
    response = await jp_fetch("lora-magic", *parts, params=params)
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    return json.loads(response.body)


async def status_of(jp_fetch, *parts, method="GET", **params):
    body = b"" if method == "POST" else None
    try:
        response = await jp_fetch("lora-magic", *parts, method=method, body=body, params=params)
    except HTTPClientError as error:
        return error.code
    return response.code


async def test_lists_runs_newest_first_without_their_config(jp_fetch, store, runs_dir):
    make_run(store, "first", step=10, metrics={"train_loss": 1.5})
    os.utime(runs_dir / "first" / "run.json", (1, 1))
    make_run(store, "second", status="running", step=3)

    reply = await get_json(jp_fetch, "runs")

    assert reply["root"] == str(runs_dir.resolve())
    assert [run["name"] for run in reply["runs"]] == ["second", "first"]
    second, first = reply["runs"]
    assert second["status"] == "running"  # written by this live process
    assert (second["step"], second["total_steps"]) == (3, 10)
    assert first["metrics"] == {"train_loss": 1.5}
    assert "config" not in first and "versions" not in first


async def test_empty_store_lists_no_runs(jp_fetch, runs_dir):
    assert (await get_json(jp_fetch, "runs"))["runs"] == []


async def test_one_run_gives_config_status_and_metrics(jp_fetch, store):
    make_run(store, "r1-v2_a-b", metrics={"eval_loss": 0.9}, adapter_path="/x/adapter")

    record = await get_json(jp_fetch, "runs", "r1-v2_a-b")

    assert record["name"] == "r1-v2_a-b"
    assert record["status"] == "completed"
    assert record["config"] == {"model": "tiny", "steps": 10, "r": 8}
    assert record["metrics"] == {"eval_loss": 0.9}


async def test_a_run_whose_process_is_gone_reads_as_interrupted(jp_fetch, store, runs_dir):
    make_run(store, "orphan", status="running")
    record = json.loads((runs_dir / "orphan" / "run.json").read_text())
    record["pid"] = 2**22 + 12345  # above Linux's pid_max: no such process
    (runs_dir / "orphan" / "run.json").write_text(json.dumps(record))

    assert (await get_json(jp_fetch, "runs", "orphan"))["status"] == "interrupted"
    assert await status_of(jp_fetch, "runs", "orphan", "stop", method="POST") == 409


async def test_events_are_read_from_a_byte_offset(jp_fetch, store, runs_dir):
    log = {"type": "log", "time": 1.0, "step": 1, "total_steps": 10, "loss": 2.5, "eta": 9.0}
    make_run(store, "live", status="running", events=[{"type": "status", "status": "running"}, log])

    first = await get_json(jp_fetch, "runs", "live", "events", offset="0")
    assert [e["type"] for e in first["events"]] == ["status", "log"]
    assert first["events"][1]["loss"] == 2.5
    assert first["offset"] == (runs_dir / "live" / "events.jsonl").stat().st_size

    again = await get_json(jp_fetch, "runs", "live", "events", offset=str(first["offset"]))
    assert again == {"events": [], "offset": first["offset"], "more": False}

    store.append_event("live", {**log, "step": 2, "loss": 2.0})
    with open(runs_dir / "live" / "events.jsonl", "a") as out:
        out.write('{"type": "log", "step": 3')  # a line still being written is not read yet
    later = await get_json(jp_fetch, "runs", "live", "events", offset=str(first["offset"]))
    assert [e["step"] for e in later["events"]] == [2]

    whole = await get_json(jp_fetch, "runs", "live", "events")
    assert [e.get("step") for e in whole["events"]] == [None, 1, 2]


async def test_events_of_a_run_without_events_file(jp_fetch, store):
    make_run(store, "fresh")
    reply = await get_json(jp_fetch, "runs", "fresh", "events", offset="0")
    assert reply == {"events": [], "offset": 0, "more": False}


@pytest.mark.parametrize("offset", ["-1", "abc", "1.5", ""])
async def test_bad_offsets_are_refused(jp_fetch, store, offset):
    make_run(store, "live", events=[{"type": "status", "status": "running"}])
    assert await status_of(jp_fetch, "runs", "live", "events", offset=offset) == 400


async def test_stop_request_is_written_into_the_run_folder(jp_fetch, store, runs_dir):
    make_run(store, "training", status="running")

    response = await jp_fetch("lora-magic", "runs", "training", "stop", method="POST", body=b"")

    assert response.code == 202
    assert json.loads(response.body) == {"name": "training", "stop_requested": True}
    assert (runs_dir / "training" / "stop-request").is_file()
    assert store.stop_requested("training")


async def test_stopping_a_finished_run_is_a_conflict(jp_fetch, store, runs_dir):
    make_run(store, "done", status="completed")
    assert await status_of(jp_fetch, "runs", "done", "stop", method="POST") == 409
    assert not (runs_dir / "done" / "stop-request").exists()


@pytest.mark.parametrize(
    ("parts", "method"),
    [(("runs", "nope"), "GET"), (("runs", "nope", "events"), "GET"), (("runs", "nope", "stop"), "POST")],
)
async def test_unknown_runs_are_not_found(jp_fetch, store, parts, method):
    make_run(store, "other")
    assert await status_of(jp_fetch, *parts, method=method) == 404


async def test_stop_is_post_only(jp_fetch, store):
    make_run(store, "training", status="running")
    assert await status_of(jp_fetch, "runs", "training", "stop") == 405
    assert not store.stop_requested("training")


async def test_notebook_template_is_a_valid_notebook_using_the_magics(jp_fetch):
    notebook = nbformat.reads(json.dumps(await get_json(jp_fetch, "notebook-template")), as_version=4)
    nbformat.validate(notebook)
    cells = [cell.source.splitlines()[0] for cell in notebook.cells if cell.cell_type == "code"]
    assert cells[0] == "%load_ext lora_magic"
    for magic in ("%lora preview", "%%finetune", "%%compare"):
        assert any(line.startswith(magic) for line in cells), magic


async def test_the_listing_carries_a_diverging_runs_warning(jp_fetch, store):
    make_run(store, "hot", warning="diverging: eval loss 5.0 at step 30 is 62% above its best")
    make_run(store, "calm")

    runs = {run["name"]: run for run in (await get_json(jp_fetch, "runs"))["runs"]}

    assert runs["hot"]["warning"].startswith("diverging: eval loss 5.0") and runs["calm"]["warning"] is None


async def test_the_listing_comes_in_pages_newest_first_that_join_up(jp_fetch, store, runs_dir):
    for number in range(250):
        make_run(store, f"run-{number:03d}")
        os.utime(runs_dir / f"run-{number:03d}" / "run.json", (number, number))

    first = await get_json(jp_fetch, "runs")
    assert len(first["runs"]) == 200 and first["runs"][0]["name"] == "run-249" and first["next"] == "run-050"
    rest = await get_json(jp_fetch, "runs", after=first["next"], limit="100")
    assert [run["name"] for run in rest["runs"]] == [f"run-{n:03d}" for n in range(49, -1, -1)]
    assert rest["next"] is None
    small = await get_json(jp_fetch, "runs", limit="10")
    assert len(small["runs"]) == 10 and small["next"] == "run-240"
    assert await status_of(jp_fetch, "runs", after="no-such-run") == 400
    assert await status_of(jp_fetch, "runs", limit="0") == 400
    assert len((await get_json(jp_fetch, "runs", limit="5000"))["runs"]) == 250  # at most 1000 a page
