"""`%lora show --code`: the plain code renders what lora_magic trains on, and, run with plain python in a
fresh process, trains as the run did."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import lora_magic as lm
from lora_magic.core.config import RunConfig
from lora_magic.data.templates import render
from lora_magic.data.tokens import load_tokenizer
from lora_magic.training.script import _template, script


@pytest.mark.parametrize(
    ("settings", "record"),
    [
        ({}, {"instruction": "Name it.", "input": "", "response": "A lamp."}),
        ({}, {"instruction": "Name it.", "input": "Red, small.", "response": "A lamp."}),
        (
            {"instruction_field": "q", "input_field": "ctx", "response_field": "a"},
            {"q": "Why?", "a": "Because."},
        ),
        (
            {"template": "custom", "prompt_format": "Q: {q}\nA: ", "response_format": "{a}"},
            {"q": "Why?", "a": "Because."},
        ),
    ],
)
def test_plain_template_matches_the_engine(settings, record):
    config = RunConfig(**settings)
    namespace: dict = {}
    exec("\n".join(_template(config)), namespace)
    assert namespace["to_example"](record) == render(record, 0, config, tokenizer=None)


def test_chat_template_matches_the_engine(tiny_model_dir):
    config = RunConfig(model=tiny_model_dir, template="chat", system_prompt="Be brief.")
    tokenizer = load_tokenizer(config)
    namespace: dict = {"tokenizer": tokenizer}
    exec("\n".join(_template(config)), namespace)
    record = {"instruction": "Hi", "input": "there", "response": "Hello"}
    prompt, completion = namespace["to_example"](record)
    assert (prompt, completion) == render(record, 0, config, tokenizer)
    assert "Be brief." in prompt and completion.startswith("Hello")


def step_losses(events: list[dict]) -> list[float]:
    return [event["loss"] for event in events if event["type"] == "log"]


@pytest.mark.parametrize(
    "settings",
    [{"quantization": "none"}, {"quantization": "4bit"}, {"init": "pissa"}],
    ids=["none", "4bit", "pissa"],
)
def test_the_shown_code_trains_as_the_run_did(settings, tiny_model_dir, records, runs_dir, tmp_path):
    run = lm.train(
        model=tiny_model_dir,
        data=records,
        name=f"shown-{next(iter(settings.values()))}",
        **settings,
        steps=5,
        learning_rate=1e-3,
        eval_fraction=0.25,
        eval_rows=4,  # of the 6 held out: the script scores the same sample
        runs_dir=runs_dir,
    ).wait()
    assert run.status == "completed", run.error
    code = script(run.name, runs_dir)
    assert ("BitsAndBytesConfig(" in code) == (settings.get("quantization") == "4bit")
    plain_file = tmp_path / "plain.py"
    report = "print('HISTORY', json.dumps(trainer.state.log_history))"
    plain_file.write_text(code + report + "\n")
    done = subprocess.run(
        [sys.executable, str(plain_file)], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    history = json.loads(done.stdout.split("HISTORY", 1)[1])
    plain = [entry["loss"] for entry in history if "loss" in entry]
    ours = step_losses(run.events)
    assert len(ours) == len(plain) == 5
    assert plain == pytest.approx(ours, abs=1e-4)
    plain_eval = [(entry["step"], entry["eval_loss"]) for entry in history if "eval_loss" in entry]
    assert plain_eval == [(5, pytest.approx(run.eval_losses[0][1], abs=1e-4))] and len(run.eval_losses) == 1
    assert (tmp_path / f"{run.name}-plain" / "adapter" / "adapter_config.json").is_file()
    # the same adapter: a PiSSA one saved, as the run saves it, as a plain LoRA of the untouched base
    saved = load_file(tmp_path / f"{run.name}-plain" / "adapter" / "adapter_model.safetensors")
    ours = load_file(run.adapter_path / "adapter_model.safetensors")
    assert set(saved) == set(ours)
    assert all(torch.allclose(saved[key], ours[key], atol=1e-4) for key in ours)
