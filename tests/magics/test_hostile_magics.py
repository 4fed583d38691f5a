"""Bad input through the magics is one line; `%lora runs` survives damaged runs and reads well;
`%lora chat` is a conversation; `%lora ui` does not reuse the last run's name."""

from __future__ import annotations

import time

import pandas as pd
import pytest
from IPython.core.error import UsageError

from lora_magic.core.store import RunStore


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("data: df\nsteps:", r"^steps has no value; it must be a whole number$"),
        ("data: df\nr: [8]", r"^r=\['8'\] is not valid; it must be a whole number$"),
        ("data: df\nr: {a: 1}", r"^r=\{'a': '1'\} is not valid; it must be a whole number$"),
        ("data: df\nepochs: inf", r"^epochs=inf is not valid; it must be a finite number$"),
        (
            "data: df\ntemplate: custom\nprompt_format: 'Q: {'\nresponse_format: '{a}'",
            r"^prompt_format='Q: \{' is not a valid format string",
        ),
        (
            "data: df\ntemplate: custom\nprompt_format: 'Q: {instruction:>999999999}'\nresponse_format: '{response}'",
            r"^prompt_format=.* formats \{instruction:>999999999\}, which text cannot take; .* at most 1000",
        ),
        ("data: df\nsteps: 3\nsteps: 4", r"^the cell body is not valid YAML: 'steps' is given twice"),
        (
            "data: df\na: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
            "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c]",
            r"^the cell body is not valid YAML: aliases \(\*name\) are not allowed in settings",
        ),
        (
            "data: df\nprobes: " + "[" * 5000 + "]" * 5000,
            r"^the cell body is not valid YAML: nested deeper than 20",
        ),
        ("data: df\nbogus: {x}", r"^unknown setting 'bogus'"),  # refused before {x} is looked up
        ("data: df\nseed: -1", r"^seed=-1 is not valid; it must be from 0 to 4294967295"),
    ],
)
def test_malformed_settings_are_one_line_and_write_nothing(ip, runs_dir, body, message):
    with pytest.raises(UsageError, match=message) as caught:
        ip.run_cell_magic("finetune", "", body)
    assert type(caught.value) is UsageError and "\n" not in str(caught.value)
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


def test_a_binary_data_file_is_one_line(ip, tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe" * 50)
    result = ip.run_cell(f"%finetune --data {path} --steps 1")
    assert not result.success and type(result.error_in_exec) is UsageError
    assert str(result.error_in_exec) == f"{path} is not a valid JSON Lines file: it is not UTF-8 text"


def make_run(store, name, **fields):
    record = {"name": name, "status": "completed", "created": time.time(), "config": {}, **fields}
    store.create(name, record)


def test_runs_lists_a_damaged_run_as_unreadable_without_a_traceback(ip, runs_dir, capsys):
    store = RunStore(runs_dir)
    make_run(store, "fine", step=4, total_steps=4)
    make_run(store, "broken")
    (runs_dir / "broken" / "run.json").write_text("{not json")

    result = ip.run_cell("table = %lora runs")

    assert result.success, result.error_in_exec
    table = ip.user_ns["table"]
    assert table.loc["fine", "status"] == "completed"
    assert table.loc["broken", "status"] == "unreadable"
    assert table.loc["broken", "error"].startswith(
        "run 'broken' is unreadable: its run.json is not valid JSON"
    )
    assert "Traceback" not in capsys.readouterr().out


def test_runs_reads_well(ip, runs_dir):
    store = RunStore(runs_dir)
    metrics = {"train_loss": 3.3, "eval_loss": 2.3456789, "eval_step": 1200}
    make_run(store, "long", step=1200, total_steps=2000, loss=2.123456789, metrics=metrics)
    base_only = {"train_loss": 3.3, "eval_loss": 4.1, "eval_step": 0}  # stopped before its 2nd eval
    make_run(store, "stopped-early", status="stopped", step=3, total_steps=2000, loss=3.9, metrics=base_only)

    table = ip.run_line_magic("lora", "runs")

    assert table.loc["long", "step"] == "1,200/2,000"
    assert table.loc["long", "loss"] == 2.1235  # the last logged loss, as the dashboard shows it
    assert table.loc["long", "eval_loss"] == 2.3457
    assert table.loc["stopped-early", "loss"] == 3.9
    assert pd.isna(table.loc["stopped-early", "eval_loss"])  # the base model's loss is not the adapter's
    assert "error" not in table.columns


def test_chat_is_a_conversation_across_calls(ip, lm, capsys):
    ip.run_line_magic("finetune", "--data df --steps 1 --eval-fraction 0 --name talker")
    capsys.readouterr()

    ip.run_line_magic("lora", "chat --max-new-tokens 3 Describe product 1.")
    ip.run_line_magic("lora", "chat --adapter base --max-new-tokens 3 And product 2?")

    turns = lm.conversation.turns
    assert [t["content"] for t in turns if t["role"] == "user"] == ["Describe product 1.", "And product 2?"]
    assert [t["adapter"] for t in turns if t["role"] == "assistant"] == ["talker", "base"]
    printed = capsys.readouterr().out
    assert printed == "".join(t["content"] + "\n" for t in turns if t["role"] == "assistant")
    ip.run_line_magic("lora", "chat --clear")
    assert lm.conversation.turns == [] and capsys.readouterr().out == "Started a new conversation.\n"


def test_ui_starts_from_the_last_run_under_a_new_name(ip, lm, monkeypatch):
    from lora_magic.core.config import RunConfig

    shown = []
    monkeypatch.setattr("lora_magic.magics.runs.display", shown.append)
    lm.last_config = RunConfig(name="taken", data=ip.user_ns["df"], r=16)
    ip.run_line_magic("config", "LoraMagics.widgets = 'on'")
    try:
        ip.run_line_magic("lora", "ui")
    finally:
        ip.run_line_magic("config", "LoraMagics.widgets = 'off'")
    (form,) = shown
    assert knob(form, "name").value == "" and knob(form, "r").value == 16


def knob(widget, description):
    """The input of a form with this description (its setting's name)."""
    if getattr(widget, "description", None) == description:
        return widget
    for child in getattr(widget, "children", ()):
        found = knob(child, description)
        if found is not None:
            return found
    return None
