"""Damaged run stores and odd requests: the server answers every one without a 500, a damaged run
never hides the others, and a large events file never holds up the server."""

import asyncio
import json
import threading
import time

import pytest
from jupyter_server.utils import url_path_join

from lora_magic.core.store import RunStore

LOG = {"type": "log", "step": 1, "total_steps": 10, "loss": 2.5}


def make_run(store, name, status="completed", events=(), **fields):
    store.create(name, {"name": name, "status": status, "created": time.time(), "config": {}, **fields})
    for event in events:
        store.append_event(name, event)


async def fetch(http_server_client, jp_base_url, jp_auth_header, path, method="GET"):
    """A request with the path exactly as given (no quoting), answered whatever its status."""
    return await http_server_client.fetch(
        url_path_join(jp_base_url, "lora-magic", path),
        method=method,
        body=b"" if method == "POST" else None,
        headers=jp_auth_header,
        raise_error=False,
    )


@pytest.fixture
def get(http_server_client, jp_base_url, jp_auth_header):
    async def get(path, method="GET"):
        response = await fetch(http_server_client, jp_base_url, jp_auth_header, path, method)
        body = json.loads(response.body) if response.body else None
        return response.code, body

    return get


DAMAGED = [
    (b"[]", "its run.json holds an array, not a run record"),
    (b"null", "its run.json holds null, not a run record"),
    (b'"a string"', "its run.json holds a string, not a run record"),
    (b"{not json", "its run.json is not valid JSON"),
    (b'{"status": "running", "name": "\xff\xfe"}', "its run.json is not UTF-8 text"),
    (b'{"name": "x", "config": {}}', "its run.json has no valid status"),
    (b'{"status": "running", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "is nested too deeply to read"),
    (b'{"status": "running", "x": ' + b"[" * 900 + b"]" * 900 + b"}", "is nested deeper than 64 levels"),
    (b'{"status": "running", "x": ' + b"[" * 100 + b"]" * 100 + b"}", "is nested deeper than 64 levels"),
    (b'{"status": "running", "step": ' + b"9" * 5000 + b"}", "holds a value that cannot be read"),
]


@pytest.mark.parametrize(("content", "why"), DAMAGED)
async def test_a_damaged_run_is_listed_as_unreadable_and_hides_no_other(get, store, runs_dir, content, why):
    make_run(store, "good", step=10)
    make_run(store, "damaged")
    (runs_dir / "damaged" / "run.json").write_bytes(content)

    code, listing = await get("runs")

    assert code == 200
    runs = {run["name"]: run for run in listing["runs"]}
    assert runs["good"]["status"] == "completed" and runs["good"]["step"] == 10
    assert runs["damaged"]["status"] == "unreadable"
    assert (
        runs["damaged"]["error"].startswith("run 'damaged' is unreadable: ")
        and why in runs["damaged"]["error"]
    )
    code, record = await get("runs/damaged")
    assert code == 200 and record["status"] == "unreadable" and why in record["error"]
    assert (await get("runs/damaged/stop", "POST"))[0] == 409
    assert (await get("runs/damaged/events"))[0] == 200


@pytest.mark.parametrize("pid", ["abc", 2.5, -3, [1], 10**30, True])
async def test_a_run_with_an_odd_pid_is_still_listed(get, store, pid):
    make_run(store, "odd", status="running")
    record = json.loads((store.path("odd") / "run.json").read_text())
    (store.path("odd") / "run.json").write_text(json.dumps({**record, "pid": pid}))

    code, listing = await get("runs")

    assert code == 200 and [run["status"] for run in listing["runs"]] == ["running"]


async def test_bad_event_lines_are_skipped(get, store, runs_dir):
    make_run(store, "noisy", events=[{"type": "status", "status": "running"}])
    with open(runs_dir / "noisy" / "events.jsonl", "ab") as out:
        out.write(b'{"type": "log", "loss": "\xff\xfe"}\n')  # invalid UTF-8
        out.write(b"garbage that is no JSON\n")
        out.write(b'["an", "array"]\n')
        out.write(b'{"no": "type"}\n')
        out.write(b'{"type": "log", "x": ' + b"[" * 600 + b"]" * 600 + b"}\n")  # nested too deep
        out.write(b'{"type": "log", "step": ' + b"7" * 5000 + b"}\n")  # a number too long to read
    store.append_event("noisy", LOG)

    code, page = await get("runs/noisy/events")

    assert code == 200
    assert [event["type"] for event in page["events"]] == ["status", "log"]
    assert page["offset"] == (runs_dir / "noisy" / "events.jsonl").stat().st_size


async def test_a_diverged_loss_is_sent_as_json_browsers_parse(get, store):
    make_run(store, "nan", events=[{**LOG, "loss": float("nan"), "grad_norm": float("inf")}])

    code, page = await get("runs/nan/events")

    assert code == 200 and page["events"][0]["loss"] is None and page["events"][0]["grad_norm"] is None


async def test_events_come_in_pages_that_join_up(get, store):
    make_run(store, "long", events=[{**LOG, "step": step} for step in range(2500)])

    steps, offset, pages = [], 0, 0
    while True:
        code, page = await get(f"runs/long/events?offset={offset}&limit=1000")
        assert code == 200 and len(page["events"]) <= 1000
        steps += [event["step"] for event in page["events"]]
        offset, pages = page["offset"], pages + 1
        if not page["more"]:
            break

    assert steps == list(range(2500)) and pages == 3
    code, default = await get("runs/long/events")
    assert len(default["events"]) == 1000 and default["more"] is True


async def test_a_large_events_file_does_not_hold_up_the_server(get, store, runs_dir, monkeypatch):
    """The events file is read as if from a slow disk: the read waits until the server has answered
    another request, which it can only do when the read is off its event loop."""
    make_run(store, "huge")
    event = json.dumps({**LOG, "padding": "x" * 2000}) + "\n"
    (runs_dir / "huge" / "events.jsonl").write_text(event * 25_000)  # 50 MB
    answered = threading.Event()
    read = RunStore.events

    def slow_read(self, *args):
        answered.wait(timeout=30)
        return read(self, *args)

    monkeypatch.setattr(RunStore, "events", slow_read)
    events = asyncio.ensure_future(get("runs/huge/events?limit=10000"))
    await asyncio.sleep(0.05)
    code, _ = await get("runs")  # the server's other requests are answered meanwhile
    answered.set()
    assert code == 200 and not events.done()
    code, page = await events
    assert code == 200 and len(page["events"]) == 10_000 and page["more"] is True


@pytest.mark.parametrize(
    "offset",
    ["-1", "abc", "1.5", "", "1e23", "100000000000000000000000", "5", "7"],
)
async def test_offsets_not_at_the_start_of_an_event_are_refused(get, store, offset):
    make_run(store, "live", events=[{"type": "status", "status": "running"}, LOG])

    code, reply = await get(f"runs/live/events?offset={offset}")

    assert code == 400 and reply["message"]


@pytest.mark.parametrize("limit", ["0", "-5", "many"])
async def test_bad_limits_are_refused(get, store, limit):
    make_run(store, "live", events=[LOG])
    assert (await get(f"runs/live/events?limit={limit}"))[0] == 400


@pytest.mark.parametrize("suffix", ["%0a", "%0A", "%0d", "%20", "%09"])
async def test_a_name_with_a_trailing_newline_or_space_is_not_a_run_name(get, store, suffix):
    make_run(store, "good-run", status="running")
    for path, method in [("", "GET"), ("/events", "GET"), ("/stop", "POST")]:
        code, reply = await get(f"runs/good-run{suffix}{path}", method)
        assert code == 400 and "is not a valid run name" in reply["message"], (path, code, reply)
    assert not RunStore(store.root).stop_requested("good-run")


@pytest.mark.parametrize("written", ["pid 1", "a pid reused"])
def test_a_live_process_that_is_not_the_runs_is_no_sign_of_life(store, written):
    """run.json names its process by pid and start time: a live process with that pid that started
    at another time (init, or a new process given a dead one's pid) does not keep the run running."""
    import os

    make_run(store, "orphan", status="running")
    record = json.loads((store.path("orphan") / "run.json").read_text())
    pid = 1 if written == "pid 1" else os.getpid()
    (store.path("orphan") / "run.json").write_text(json.dumps({**record, "pid": pid, "pid_started": 12345.0}))
    assert store.read("orphan")["status"] == "interrupted"
    make_run(store, "alive", status="running")
    assert store.read("alive")["status"] == "running"  # this process, started when the record says
