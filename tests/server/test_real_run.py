"""A stop request sent to the server reaches a real training run through its folder."""

import asyncio
import json
import time
from pathlib import Path

import pytest

import lora_magic as lm


async def fetch_json(jp_fetch, *parts):
    return json.loads((await jp_fetch("lora-magic", *parts)).body)


@pytest.mark.real_model
async def test_a_stop_request_stops_a_real_run(jp_fetch, runs_dir, tiny_model_dir, records):
    run = lm.train(
        lm.RunConfig(model=tiny_model_dir, data=records, steps=20000, name="to-stop", batch_size=2),
        runs_dir=runs_dir,
    )
    deadline = time.monotonic() + 120
    record = await fetch_json(jp_fetch, "runs", "to-stop")
    while record["step"] < 3:
        assert record["status"] == "running", record.get("error")
        assert time.monotonic() < deadline, "the run made no progress"
        await asyncio.sleep(0.2)
        record = await fetch_json(jp_fetch, "runs", "to-stop")

    response = await jp_fetch("lora-magic", "runs", "to-stop", "stop", method="POST", body=b"")
    assert response.code == 202

    await asyncio.to_thread(run.wait, 120)
    record = await fetch_json(jp_fetch, "runs", "to-stop")
    assert run.status == record["status"] == "stopped"
    assert 3 <= record["step"] < 20000
    assert (Path(record["adapter_path"]) / "adapter_config.json").is_file()
    events = (await fetch_json(jp_fetch, "runs", "to-stop", "events"))["events"]
    assert [e["status"] for e in events if e["type"] == "status"][-1] == "stopped"
    assert any(e["type"] == "log" for e in events)
