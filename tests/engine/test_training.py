"""The training manager on the tiny model: events, run store, controls, resume, failures."""

import dataclasses
import gc
import itertools
import json
import shutil
import subprocess
import sys
import time

import pytest
import torch

import lora_magic as lm
from lora_magic.core.errors import RunError
from lora_magic.core.store import RunStore


def wait_for(predicate, timeout=120.0):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def test_run_json_records_the_machine_and_the_choices_the_trainer_trained_with(
    tiny_model_dir, records, runs_dir, monkeypatch
):
    """The memory available changes from one reading to the next, as on a busy machine: the run
    reads its machine once, and its record, its memory estimate and its trainer agree on it."""
    import psutil

    reading, gib = psutil.virtual_memory, itertools.count(4)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: reading()._replace(available=next(gib) * 2**30))
    run = lm.train(model=tiny_model_dir, data=records, steps=1, eval_fraction=0, name="measured").wait()
    record = RunStore(runs_dir).read("measured")

    assert record["machine"] == dataclasses.asdict(run.trainer.machine)
    assert record["machine"]["name"] == "CPU" and record["device"] == "cpu"
    assert record["plan"]["machine_gib"] == round(record["machine"]["memory_gib"], 2)
    assert record["hardware"] == {"dtype": "float32", "precision": "fp32", "checkpointing": False}
    assert lm.session().base_model.dtype == torch.float32


def test_a_run_publishes_events_and_fills_the_run_store(tiny_model_dir, records, runs_dir):
    seen = []
    run = lm.train(
        model=tiny_model_dir,
        data=records,
        steps=6,
        eval_every=3,
        probes=["Describe product 99."],
        probe_every=3,
        probe_tokens=4,
        name="first",
    )
    run.subscribe(seen.append)
    run.wait()
    assert run.status == "completed" and run.step == 6
    kinds = [e["type"] for e in run.events]
    assert kinds.count("log") == 6 and kinds.count("eval") == 3
    statuses = [e["status"] for e in run.events if e["type"] == "status"]
    assert kinds[0] == kinds[-1] == "status" and statuses == ["running", "completed"]
    assert {e["step"] for e in run.events if e["type"] == "probe"} == {0, 3, 6}
    log = next(e for e in run.events if e["type"] == "log")
    assert (
        log["tokens_per_second"] > 0
        and log["eta"] >= 0
        and log["total_steps"] == 6
        and log["peak_memory_mb"] > 0
    )
    assert seen and seen[-1] == run.events[-1]
    record = RunStore(runs_dir).read("first")
    assert (
        record["status"] == "completed" and record["step"] == 6 and record["targets"] == ["q_proj", "v_proj"]
    )
    assert record["trainable_params"] == run.trainable_params > 0 and record["metrics"]["eval_loss"] > 0
    assert set(record["versions"]) >= {"torch", "transformers", "peft", "trl"}
    assert record["data_fingerprint"].startswith("sha256:") and record["config"]["data"] == "<list: 24 rows>"
    assert RunStore(runs_dir).events("first")[0] == run.events
    saved = [json.loads(line) for line in (run.path / "data" / "train.jsonl").read_text().splitlines()]
    assert len(saved) == 22 and saved[0] in records
    assert (run.adapter_path / "adapter_model.safetensors").is_file()


def test_the_adapter_loads_in_plain_peft_in_a_fresh_process_with_the_same_logits(
    tiny_model_dir, records, runs_dir, tmp_path
):
    run = lm.train(model=tiny_model_dir, data=records, steps=4, learning_rate=0.01, name="portable").wait()
    session = lm.session()
    ids = session.tokenizer("Describe product 3.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        here = session.model(input_ids=ids).logits
        with session.model.disable_adapter():
            base = session.model(input_ids=ids).logits
    assert not torch.allclose(here, base)  # the adapter changed something
    torch.save(ids, tmp_path / "ids.pt")
    script = f"""
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({tiny_model_dir!r}), {str(run.adapter_path)!r})
with torch.no_grad():
    torch.save(model(input_ids=torch.load({str(tmp_path / "ids.pt")!r})).logits, {str(tmp_path / "logits.pt")!r})
"""
    subprocess.run([sys.executable, "-c", script], check=True)
    assert torch.allclose(torch.load(tmp_path / "logits.pt"), here, atol=1e-5)


def test_stop_saves_a_loadable_adapter_and_resume_continues_the_step_count(tiny_model_dir, records, runs_dir):
    run = lm.train(model=tiny_model_dir, data=records, steps=400, name="long")
    heard = []  # each status a view hears of, with what run.json says at that moment
    run.subscribe(
        lambda event: (
            event["type"] == "status"
            and heard.append((event["status"], RunStore(runs_dir).read("long")["status"]))
        )
    )
    wait_for(lambda: run.step >= 3)
    run.stop()
    run.wait()
    assert run.status == "stopped" and 3 <= run.step < 400 and run.adapter_path
    assert heard[-1] == ("stopped", "stopped") and all(a == b for a, b in heard)  # never ahead of run.json
    stopped_at = run.step
    checkpoint = RunStore(runs_dir).last_checkpoint("long")
    assert checkpoint.name == f"checkpoint-{stopped_at}"
    lm.free()  # as after a kernel restart: nothing in memory, the run store has it all
    resumed = lm.resume("long")
    wait_for(lambda: resumed.step >= stopped_at + 2)
    assert resumed.events[0]["type"] != "status" or resumed.events[0]["step"] == 0  # earlier events kept
    first_new_log = next(
        e for e in resumed.events if e["type"] == "log" and e["time"] > run.events[-1]["time"]
    )
    assert first_new_log["step"] == stopped_at + 1
    resumed.stop()
    resumed.wait()
    assert resumed.status == "stopped" and resumed.step > stopped_at


def test_pause_holds_training_until_resume(tiny_model_dir, records, runs_dir):
    run = lm.train(model=tiny_model_dir, data=records, steps=30, name="pausing")
    wait_for(lambda: run.step >= 2)
    run.pause()
    wait_for(lambda: run.status == "paused")
    held = run.step
    time.sleep(1.0)
    assert run.step == held and RunStore(runs_dir).read("pausing")["status"] == "paused"
    run.resume()
    run.wait()
    assert run.status == "completed" and run.step == 30


def test_a_stop_request_from_another_process_is_honoured(tiny_model_dir, records, runs_dir):
    run = lm.train(model=tiny_model_dir, data=records, steps=400, name="remote")
    wait_for(lambda: run.step >= 2)
    subprocess.run(
        [
            sys.executable,
            "-c",
            f"from lora_magic import RunStore; RunStore({str(runs_dir)!r}).request_stop('remote')",
        ],
        check=True,
    )
    run.wait(timeout=120)
    assert run.status == "stopped" and run.adapter_path and not RunStore(runs_dir).stop_requested("remote")


def test_a_second_concurrent_run_and_generation_during_training_are_refused(
    tiny_model_dir, records, runs_dir
):
    run = lm.train(model=tiny_model_dir, data=records, steps=400, name="busy")
    with pytest.raises(RunError, match=r"run 'busy' is still running; stop it .* before starting another"):
        lm.train(model=tiny_model_dir, data=records, steps=2)
    with pytest.raises(RunError, match=r"cannot generate while run 'busy' is training"):
        lm.compare("hello")
    run.stop()
    run.wait()
    with pytest.raises(RunError, match=r"a run or adapter named 'busy' already exists; choose another name"):
        lm.train(model=tiny_model_dir, data=records, steps=2, name="busy")


def test_resume_refuses_a_changed_config_or_base_before_loading(tiny_model_dir, records, runs_dir, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    run = lm.train(model=str(base), data=records, steps=400, name="picky")
    wait_for(lambda: run.step >= 2)
    run.stop()
    run.wait()
    lm.free()
    with pytest.raises(
        RunError, match=r"cannot resume 'picky' with a different config \(r: 8 then, 16 now\)"
    ):
        lm.resume("picky", lm.RunConfig(model=str(base), data=records, steps=400, r=16))
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-3}))
    with pytest.raises(
        RunError, match=r"run 'picky' cannot go on: the base model .* changed since the run started"
    ):
        lm.resume("picky")
    assert lm.session().model is None  # refused before anything loaded
    with pytest.raises(RunError, match=r"run 'picky' is stopped|no run named 'pick' .*did you mean 'picky'"):
        lm.resume("pick")


def test_out_of_memory_fails_the_run_with_advice(tiny_model_dir, records, runs_dir, monkeypatch):
    from transformers import Trainer

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(Trainer, "training_step", out_of_memory)  # the allocator is the boundary
    run = lm.train(model=tiny_model_dir, data=records, steps=5, name="oom").wait()
    assert run.status == "failed"
    assert run.error == "out of memory at step 0: lower batch_size or max_length, or use quantization='4bit'"
    assert RunStore(runs_dir).read("oom")["error"] == run.error
    assert gc.get_freeze_count() == 0  # what the run froze for the trainer's start is back (below)
    lm.train(
        model=tiny_model_dir, data=records, steps=1, name="after-oom"
    ).wait()  # the manager is free again


def test_the_trainers_opening_collection_skips_what_existed_and_nothing_stays_frozen(
    tiny_model_dir, records, runs_dir, monkeypatch
):
    """The trainer collects garbage as it starts (accelerate's free_memory): the objects that
    existed before the run are frozen out of that collection, and unfrozen once training begins."""
    from accelerate import Accelerator

    frozen, original = [], Accelerator.free_memory

    def free_memory(self, *objects):
        frozen.append(gc.get_freeze_count())
        return original(self, *objects)

    monkeypatch.setattr(Accelerator, "free_memory", free_memory)
    steps = []
    run = lm.train(model=tiny_model_dir, data=records, steps=2, name="collected")
    run.subscribe(lambda event: event["type"] == "log" and steps.append(gc.get_freeze_count()))
    run.wait()
    assert run.status == "completed"
    assert frozen[0] > 50_000 and steps and set(steps) == {0} and gc.get_freeze_count() == 0


def test_on_the_cpu_a_run_trains_its_adapter_with_cpu_dropout(tiny_model_dir, records, runs_dir):
    from lora_magic.model.session import session
    from lora_magic.training.sft import CPUDropout

    run = lm.train(model=tiny_model_dir, data=records, steps=1, dropout=0.1, name="dropped").wait()
    assert run.status == "completed", run.error
    layers = [
        m for m in session().model.modules() if hasattr(m, "lora_dropout") and "dropped" in m.lora_dropout
    ]
    assert layers and all(type(m.lora_dropout["dropped"]) is CPUDropout for m in layers)
    assert {m.lora_dropout["dropped"].p for m in layers} == {0.1}


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_on_the_cpu_a_quantized_bases_adapter_trains_in_float32(
    quantization, tiny_model_dir, records, runs_dir
):
    """TRL stores a quantized base's adapter in bfloat16, several times slower to multiply on a CPU."""
    from lora_magic.model.session import session

    run = lm.train(model=tiny_model_dir, data=records, steps=1, quantization=quantization, name="q").wait()
    assert run.status == "completed", run.error
    adapter = {n: p.dtype for n, p in session().model.named_parameters() if ".q." in n}
    assert adapter and set(adapter.values()) == {torch.float32}, adapter


RSS_AFTER_A_RUN = """
import sys, tempfile
from pathlib import Path
import lora_magic as lm

def rss_mb():
    status = Path("/proc/self/status").read_text().splitlines()
    return int(next(line for line in status if line.startswith("VmRSS:")).split()[1]) / 1024

rows, model = lm.load_records(lm.bundled_dataset())[:32], sys.argv[1]
settings = dict(model=model, targets="all-linear", eval_fraction=0, runs_dir=tempfile.mkdtemp())
lm.train(data=rows[:1], steps=1, batch_size=1, name="first-use", **settings).wait()
before = rss_mb()
lm.train(data=rows, steps=2, batch_size=16, name="big", **settings).wait()
print(rss_mb() - before)
"""


def test_a_finished_run_gives_the_memory_of_its_steps_back(smollm2_layers_dir):
    """Batches of 16 through four SmolLM2-sized layers free about 0.5 GB when the steps end; the C
    allocator kept it for the process (a kernel grew run after run) until the run asked it back.
    In a fresh process, after a first small run has loaded what every run uses."""
    command = [sys.executable, "-c", RSS_AFTER_A_RUN, smollm2_layers_dir]
    grown = float(subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()[-1])
    assert grown < 100, f"the process kept {grown:.0f} MB after the run"


def test_bad_input_is_refused_before_the_run_store_is_touched(tiny_model_dir, runs_dir, monkeypatch):
    with pytest.raises(lm.DataError, match=r"row 0 has no field 'response'"):
        lm.train(model=tiny_model_dir, data=[{"instruction": "x", "answer": "y"}], steps=2)
    with pytest.raises(lm.ModelError, match=r"target module 'qq' is not a linear layer"):
        lm.train(model=tiny_model_dir, data=[{"instruction": "x", "response": "y"}], targets="qq", steps=2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the hardware is the boundary
    with pytest.raises(
        lm.ModelError, match=r"device='cuda' but torch \S+ sees no CUDA GPU; use device='auto' or 'cpu'"
    ):
        lm.train(model=tiny_model_dir, data=[{"instruction": "x", "response": "y"}], device="cuda", steps=2)
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


def test_a_long_probe_is_bounded_and_stop_reaches_it(tiny_model_dir, records, runs_dir):
    from lora_magic.core.config import Sampling
    from lora_magic.model.answering import Question, answer_all

    with pytest.raises(
        lm.ConfigError, match=r"probe_tokens=1000000000 is not valid; it must be at most 4096"
    ):
        lm.train(model=tiny_model_dir, data=records, probes=["Describe."], probe_tokens=10**9)
    asked = []
    lm.session().ensure_base(lm.RunConfig(model=tiny_model_dir))
    [answer] = answer_all(
        [Question("base", "Describe")],
        Sampling(max_new_tokens=4096),
        stop=lambda: asked.append(1) or len(asked) >= 5,
    )
    assert answer.tokens <= 5 and len(asked) <= 5  # stopped at the token it was asked to, not at 4096
    run = lm.train(
        model=tiny_model_dir, data=records, steps=50, probes=["Describe product 1."], probe_tokens=4096
    )
    wait_for(lambda: run.events)
    started = time.perf_counter()
    run.stop()
    run.wait()
    assert time.perf_counter() - started < 15
    assert run.status == "stopped" and lm.session().holder is None
