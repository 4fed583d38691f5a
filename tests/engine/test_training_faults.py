"""Faults around a training run on the tiny model: bad settings, a full disk, a killed process,
a crash while a checkpoint is written, and running out of memory."""

import gc
import json
import subprocess
import sys
import time

import pytest
import torch
from faults import FullDisk
from safetensors.torch import load_file

import lora_magic as lm
from lora_magic.core import store as run_store
from lora_magic.core.events import History
from lora_magic.core.store import RunStore


def wait_for(predicate, timeout=180.0):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"r": 2.5}, r"^r=2\.5 is not valid; it must be a whole number$"),
        ({"r": None}, r"^r has no value; it must be a whole number$"),
        ({"r": "8"}, r"^r='8' is not valid; it must be a whole number$"),
        ({"r": [8]}, r"^r=\[8\] is not valid; it must be a whole number$"),
        ({"stpes": 3}, r"^unknown setting 'stpes' \(did you mean 'steps'\?\); valid settings: name, "),
        ({"epochs": float("inf")}, r"^epochs=inf is not valid; it must be a finite number$"),
        ({"learning_rate": float("nan")}, r"^learning_rate=nan is not valid; it must be a finite number$"),
        ({"train_on_prompt": "yes"}, r"^train_on_prompt='yes' is not valid; it must be true or false$"),
        ({"name": "nl-run\n"}, r"^name='nl-run\\n' is not a valid run name"),
        (
            {"template": "custom", "prompt_format": "Q: {", "response_format": "{a}"},
            r"^prompt_format='Q: \{' is not a valid format string \(Single '\{' encountered in format "
            r"string\); write \{\{ and \}\} for a literal brace$",
        ),
    ],
)
def test_bad_settings_are_config_errors_before_anything_is_written(
    tiny_model_dir, records, runs_dir, settings, message
):
    with pytest.raises(lm.ConfigError, match=message):
        lm.train(model=tiny_model_dir, data=records, steps=2, **settings)
    assert not runs_dir.exists() or not any(runs_dir.iterdir())
    assert lm.session().model is None  # refused before the model was loaded


def test_a_full_disk_at_start_says_so_and_leaves_no_run(tiny_model_dir, records, runs_dir, monkeypatch):
    disk = FullDisk(room=500, where=lambda path: path.parent.name == "data")
    monkeypatch.setattr(run_store, "open", disk.open, raising=False)

    with pytest.raises(lm.RunError) as refused:
        lm.train(model=tiny_model_dir, data=records, steps=2, name="no-room")

    assert str(refused.value) == (
        f"no space left in {runs_dir}: free some disk space or move the run store ($LORA_MAGIC_RUNS)"
    )
    assert list(runs_dir.iterdir()) == []
    monkeypatch.delattr(run_store, "open")  # space was freed: the same run starts and trains
    assert lm.train(model=tiny_model_dir, data=records, steps=2, name="no-room").wait().status == "completed"


def test_when_the_disk_fills_during_training_the_run_still_ends(
    tiny_model_dir, records, runs_dir, monkeypatch
):
    run = lm.train(model=tiny_model_dir, data=records, steps=400, save_every=2, name="filled")
    wait_for(lambda: RunStore(runs_dir).last_checkpoint("filled") is not None and run.step >= 3)
    monkeypatch.setattr(run_store, "open", FullDisk(room=0).open, raising=False)  # nothing more fits

    run.wait(timeout=120)

    assert run.done and run.status == "failed"
    assert run.error.startswith(f"no space left in {runs_dir}: ")
    assert "the run store could not record that it failed: no space left in" in run.error
    assert run.events[-1]["type"] == "status" and run.events[-1]["status"] == "failed"
    monkeypatch.delattr(run_store, "open")
    store = RunStore(runs_dir)
    assert store.read("filled")["status"] == "running"  # the last status that could be written
    record = json.loads((runs_dir / "filled" / "run.json").read_text())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (runs_dir / "filled" / "run.json").write_text(json.dumps({**record, "pid": dead.pid}))
    assert store.read("filled")["status"] == "interrupted"  # as a reader sees it once this kernel is gone
    (runs_dir / "filled" / "run.json").write_text(json.dumps(record))
    resumed = lm.resume("filled")  # this kernel knows the run is over: it may be resumed here
    wait_for(lambda: resumed.step > run.step)
    resumed.stop()
    assert resumed.wait().status == "stopped"


CRASH_WHILE_CHECKPOINTING = """
import os, sys
import lora_magic as lm
from transformers import Trainer

save = Trainer._save_checkpoint

def save_then_die(self, *args, **kwargs):
    save(self, *args, **kwargs)
    if self.state.global_step == {crash_at}:
        os.remove(os.path.join(self.args.output_dir, f"checkpoint-{crash_at}", "trainer_state.json"))
        os._exit(9)  # killed before the checkpoint was complete

Trainer._save_checkpoint = save_then_die
lm.train(model={model!r}, data={data!r}, steps={steps}, save_every={every}, eval_every=2, name="crashed").wait()
"""


def test_a_crash_while_checkpointing_resumes_from_the_previous_checkpoint_with_one_history(
    tiny_model_dir, records, runs_dir, tmp_path
):
    data = tmp_path / "records.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    script = CRASH_WHILE_CHECKPOINTING.format(
        model=tiny_model_dir, data=str(data), steps=12, every=4, crash_at=8
    )
    crashed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert crashed.returncode == 9, crashed.stderr[-2000:]
    store = RunStore(runs_dir)
    assert store.read("crashed")["status"] == "interrupted"
    assert store.last_checkpoint("crashed").name == "checkpoint-4"  # checkpoint-8 was never completed
    logged = [e["step"] for e in store.events("crashed")[0] if e["type"] == "log"]
    assert logged == list(range(1, 9))

    resumed = lm.resume("crashed").wait()

    assert resumed.status == "completed" and resumed.step == 12
    raw = [e["step"] for e in store.events("crashed")[0] if e["type"] == "log"]
    assert raw == [*range(1, 9), *range(5, 13)]  # steps 5-8 were trained twice
    one_history = [e["step"] for e in History(store.events("crashed")[0]).events if e["type"] == "log"]
    assert one_history == [e[0] for e in resumed.losses] == list(range(1, 13))
    assert [e["step"] for e in History(store.events("crashed")[0]).events if e["type"] == "eval"] == [
        0,
        2,
        4,
        *range(6, 13, 2),
    ]
    resume_event = next(e for e in resumed.events if e.get("resumed_from") is not None)
    assert resume_event["resumed_from"] == 4

    # 4 steps, a crash, and 8 more give the adapter that 12 straight steps give
    straight = lm.train(
        model=tiny_model_dir, data=str(data), steps=12, save_every=4, eval_every=2, name="straight"
    ).wait()
    for key, value in load_file(straight.adapter_path / "adapter_model.safetensors").items():
        again = load_file(resumed.adapter_path / "adapter_model.safetensors")[key]
        assert torch.allclose(value, again, atol=1e-6), key


def tensor_bytes() -> int:
    return sum(
        t.numel() * t.element_size()
        for t in gc.get_objects()
        if isinstance(t, torch.Tensor) and not t.is_meta
    )


def test_out_of_memory_gives_the_memory_back_and_the_kernel_stays_usable(
    tiny_model_dir, records, runs_dir, monkeypatch
):
    from transformers import Trainer

    lm.session().ensure_base(lm.RunConfig(model=tiny_model_dir))
    gc.collect()
    before = tensor_bytes()
    step = Trainer.training_step

    def out_of_memory_at_step_3(self, *args, **kwargs):
        if self.state.global_step == 2:  # the optimizer state exists by now
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return step(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", out_of_memory_at_step_3)  # the allocator is the boundary
    run = lm.train(model=tiny_model_dir, data=records, steps=5, name="oom").wait()

    assert run.status == "failed" and run.error.startswith("out of memory at step 2: lower batch_size")
    adapter = sum(p.numel() * p.element_size() for p in lm.session().model.parameters() if p.requires_grad)
    gc.collect()
    left = tensor_bytes() - before - adapter  # Adam's state alone would be twice the adapter
    assert left < adapter / 2, f"{left} bytes of the run are still held (the adapter is {adapter} bytes)"
    monkeypatch.setattr(Trainer, "training_step", step)
    assert (
        lm.train(model=tiny_model_dir, data=records, steps=2, name="after-oom").wait().status == "completed"
    )
    assert lm.compare("Describe product 1.", max_new_tokens=4).answers
