"""The magics over the real engine on the tiny model: train, inspect, compare, control, merge."""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest
from IPython.core.error import UsageError

from lora_magic.data.prepare import DataPreview
from lora_magic.model.generation import Comparison
from lora_magic.model.session import session


@pytest.fixture
def trained(ip, capsys):
    """A finished 4-step run started by %%finetune with YAML, flags and notebook variables."""
    ip.push({"lr": 1e-3, "i": 7, "question": "unused"})
    run = ip.run_cell_magic(
        "finetune",
        "--steps 4 --name tiny-{i} --learning_rate {lr} --no-train-on-prompt",
        """
        data: df          # a notebook variable, named plainly
        r: 4
        eval_every: 2
        targets: q_proj, v_proj
        gradient_checkpointing: off
        eval_fraction: 0.25
        probes: ["Describe the red lamp."]
        probe_tokens: 4
        """,
    )
    return run, capsys.readouterr().out


def test_finetune_trains_then_runs_and_show_describe_it(trained, ip, lm, capsys, tmp_path, monkeypatch):
    run, out = trained
    assert run.status == "completed" and run.step == 4 and run.adapter_path is not None
    config = run.config
    assert (config.name, config.learning_rate, config.r, config.gradient_checkpointing) == (
        "tiny-7",
        1e-3,
        4,
        "off",
    )
    assert config.targets == ["q_proj", "v_proj"] and config.probes == ["Describe the red lamp."]
    assert config.data is ip.user_ns["df"]  # the DataFrame itself, not its text
    assert lm.last_config.r == 4 and lm.last_config.data is config.data  # for %lora preview and ui
    assert "[tiny-7]" in out and "step 4/4" in out  # text progress where no widgets are shown
    assert repr(run).startswith("<Run 'tiny-7': completed, step 4/4")

    table = ip.run_line_magic("lora", "runs")
    assert isinstance(table, pd.DataFrame)
    assert table.loc["tiny-7", "status"] == "completed" and table.loc["tiny-7", "step"] == "4/4"
    assert table.loc["tiny-7", "eval_loss"] > 0

    ip.run_line_magic("lora", "show")  # the last run of this kernel
    text = capsys.readouterr().out
    assert text.startswith("Run 'tiny-7': completed, step 4/4")
    for expected in ("metrics      train_loss", "targets      q_proj, v_proj", str(run.adapter_path), "r=4"):
        assert expected in text

    ip.run_line_magic("lora", "show tiny-7 --code")
    code = capsys.readouterr().out
    assert "lora_magic" not in code.split("\n", 1)[1]
    assert "target_modules=['q_proj', 'v_proj']" in code and "learning_rate=0.001" in code
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "plain.py", "exec"), {})
    adapter = tmp_path / "tiny-7-plain" / "adapter" / "adapter_config.json"
    assert json.loads(adapter.read_text())["r"] == 4


def test_compare_chat_load_use_model_merge_free(ip, capsys, tmp_path):
    run = ip.run_line_magic("finetune", "--data df --steps 2 --eval-fraction 0 --name tiny-7")
    session().free()  # the run's adapter is then loaded from the store on first use
    ip.push({"i": 7})
    comparison = ip.run_cell_magic(
        "compare", "--adapters base,tiny-7 --max-new-tokens 3", "Describe the {i} lamp."
    )
    assert isinstance(comparison, Comparison)
    assert comparison.prompt == "Describe the 7 lamp." and [a.name for a in comparison.answers] == [
        "base",
        "tiny-7",
    ]
    line = ip.run_line_magic("lora", "compare Describe the lamp --max-new-tokens 2 --raw")
    assert [a.name for a in line.answers] == ["base", "tiny-7"] and line.answers[0].tokens <= 2

    ip.run_line_magic("lora", f"load {run.adapter_path} --name copy")
    ip.run_line_magic("lora", "use copy")
    ip.run_line_magic("lora", "chat hello there --max-new-tokens 2")
    out = capsys.readouterr().out
    assert "Loaded adapter 'copy'" in out and "Generation now uses 'copy'." in out
    assert "adapters: tiny-7, copy; using copy" in repr(ip.run_line_magic("lora", "model"))

    merged = ip.run_line_magic("lora", f"merge tiny-7 --out {tmp_path / 'merged'}")
    assert (merged.path / "config.json").is_file() and (merged.path / "tokenizer.json").is_file()
    ip.run_line_magic("lora", "free")
    assert session().model is None


def test_model_loads_and_preview_renders(ip, tiny_model_dir, capsys):
    assert repr(ip.run_line_magic("lora", "model")) == "<Session: no model loaded>"
    loaded = ip.run_line_magic("lora", f"model {tiny_model_dir}")
    assert repr(loaded).startswith(f"<Session: {tiny_model_dir} (none, torch.float32, cpu)")
    preview = ip.run_line_magic("lora", "preview df -n 2 --train-on-prompt")
    assert isinstance(preview, DataPreview) and len(preview.examples) == 2
    assert preview.examples[0].trained_tokens == preview.examples[0].tokens
    in_cell = ip.run_cell_magic("finetune", "--preview", "data: df\nmax_length: 16")
    assert isinstance(in_cell, DataPreview) and in_cell.max_length == 16 and in_cell.truncated > 0
    assert "carry loss" in repr(in_cell)
    ip.push({"response": "a notebook variable"})  # a template's {fields} are record fields, not variables
    custom = ip.run_cell_magic(
        "finetune",
        "--preview --template custom --eval-fraction 0",
        'data: df\nprompt_format: "Q: {instruction}\\nA: "\nresponse_format: "{response}"',
    )
    first = ip.user_ns["df"].iloc[custom.examples[0].row]
    assert custom.examples[0].prompt == f"Q: {first.instruction}\nA: "
    assert custom.examples[0].completion == first.response


def test_background_run_is_paused_resumed_stopped_and_resumed_from_its_checkpoint(ip, capsys):
    run = ip.run_line_magic("finetune", "--data df --steps 12 --save-every 2 --name bg --background")
    assert not run.done
    ip.run_line_magic("lora", "pause")
    _until(lambda: run.status == "paused")
    paused_at = run.step
    time.sleep(1)
    assert run.step == paused_at
    with pytest.raises(UsageError, match="is still paused"):
        ip.run_line_magic("finetune", "--data df --steps 2")
    ip.run_line_magic("lora", "resume")
    _until(lambda: run.step > paused_at)
    ip.run_line_magic("lora", "stop bg")
    ip.run_line_magic("lora", "watch")  # follows to the end in text
    assert run.status == "stopped" and run.step < 12
    out = capsys.readouterr().out
    assert "Pausing run 'bg'" in out and "Resumed run 'bg'." in out and "Stopping run 'bg'" in out

    resumed = ip.run_line_magic("lora", "resume bg")
    assert resumed is not run and resumed.status == "completed" and resumed.step == 12


def _until(condition, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def test_with_widgets_compare_and_ui_show_panels(ip, lm, monkeypatch):
    shown, outputs = [], []
    monkeypatch.setattr("lora_magic.magics.runs.display", shown.append)
    monkeypatch.setattr("lora_magic.widgets.static.display", lambda data, **kw: outputs.append(data))
    monkeypatch.setattr("lora_magic.widgets.static.update_display", lambda data, **kw: outputs.append(data))
    ip.run_line_magic("config", "LoraMagics.widgets = 'on'")
    try:
        ip.run_line_magic("finetune", "--data df --steps 1 --eval-fraction 0 --name w --background").wait()
        outputs.clear()  # the background dashboard's
        assert (
            ip.run_cell_magic("compare", "--adapters base,w --max-new-tokens 2", "Describe the lamp.") is None
        )
        several = ip.run_cell_magic(
            "compare",
            "--adapters base,w --max-new-tokens 2 --batch-size 3",
            "Describe the lamp.\n---\nThe kettle?\n",
        )  # prompts split by '---' lines are answered together, and shown as one table
        ip.run_line_magic("lora", "ui")
    finally:
        ip.run_line_magic("config", "LoraMagics.widgets = 'off'")
    # the panel, live while answering, then its static picture: the prompt and both columns
    live, frozen = outputs
    assert "application/vnd.jupyter.widget-view+json" in live
    assert "application/vnd.jupyter.widget-view+json" not in frozen
    assert "<i>Describe the lamp.</i>" in frozen["text/html"]
    assert "<b>base</b>" in frozen["text/html"] and "<b>w</b>" in frozen["text/html"]
    assert frozen["text/html"].count("tokens/s") == 2
    assert [c.prompt for c in several] == ["Describe the lamp.", "The kettle?"]
    assert [[a.name for a in c.answers] for c in several] == [["base", "w"]] * 2
    assert "<table" in several._repr_html_()
    (form,) = shown
    assert "lora-magic-form" in form._dom_classes
