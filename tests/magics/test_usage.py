"""Help and user mistakes, through a real IPython shell: nothing here trains or loads a model."""

from __future__ import annotations

import subprocess
import sys

import pytest
from IPython.core.error import UsageError

from lora_magic.core.config import field_names
from lora_magic.magics.registry import COMMANDS


def test_loading_the_extension_imports_nothing_heavy():
    # nor the server side: Jupyter Server imports lora_magic.server itself, where it runs
    heavy = ("torch", "transformers", "peft", "trl", "ipywidgets", "jupyter_server", "jupyterlab")
    code = (
        "import sys; from IPython.testing.globalipapp import get_ipython; "
        "get_ipython().extension_manager.load_extension('lora_magic'); "
        f"print('heavy:', sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "heavy: []\n" in out  # IPython 7 may write a terminal title before it


def test_lora_help_lists_every_subcommand(ip, capsys):
    ip.run_line_magic("lora", "help")
    listing = capsys.readouterr().out
    ip.run_line_magic("lora", "")
    assert capsys.readouterr().out == listing
    for name, func in COMMANDS.items():
        assert name in listing and func.summary in listing
    assert ip.find_line_magic("lora").__doc__.strip() == listing.strip()  # what %lora? shows


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_subcommand_has_its_own_help(ip, capsys, name):
    ip.run_line_magic("lora", f"{name} --help")
    text = capsys.readouterr().out
    assert text.startswith(f"%lora {COMMANDS[name].parser.prog.split()[1]}")
    assert COMMANDS[name].summary in text
    ip.run_line_magic("lora", f"help {name}")
    assert capsys.readouterr().out == text


def test_finetune_help_has_a_flag_for_every_setting(ip, capsys):
    ip.run_line_magic("finetune", "--help")
    text = capsys.readouterr().out
    assert text.startswith("%finetune [OPTIONS]")
    for name in field_names():
        assert f"--{name.replace('_', '-')} " in text or f"--{name.replace('_', '-')}," in text, name
    for section in ("run", "model", "data", "lora", "train", "probes"):
        assert f"{section} settings:" in text
    assert "--quantization <none|8bit|4bit>" in text
    assert "--train-on-prompt, --no-train-on-prompt" in text
    assert ip.find_cell_magic("finetune").__doc__.strip().endswith(text.strip()[-200:])  # %%finetune?


def test_compare_cell_magic_help(ip, capsys):
    ip.run_cell_magic("compare", "--help", "ignored")
    text = capsys.readouterr().out
    assert text.startswith("%%compare [OPTIONS]")
    assert "--adapters <A,B>" in text and "--max-new-tokens N" in text


@pytest.mark.parametrize(
    ("magic", "line", "cell", "message"),
    [
        (
            "lora",
            "shw",
            None,
            r"^%lora: unknown subcommand 'shw' \(did you mean 'show'\?\); subcommands: help, ",
        ),
        (
            "finetune",
            "--lerning-rate 1e-4",
            None,
            r"^%finetune: unknown option '--lerning-rate' \(did you mean '--learning-rate'\?\); "
            r"valid options: .*--learning-rate",
        ),
        ("finetune", "--data df extra", None, r"unknown argument 'extra'"),
        ("lora", "runs --all", None, r"^%lora runs: unknown option '--all'; valid options: none"),
        (
            "finetune",
            "--steps many --data df",
            None,
            r"^steps='many' is not valid; it must be a whole number$",
        ),
        (
            "finetune",
            "--quantization 4-bit --data df",
            None,
            r"quantization='4-bit' is not valid; choose one of: none, 8bit, 4bit \(did you mean '4bit'\?\)",
        ),
        ("finetune", "--steps", None, r"^%finetune: argument --steps: expected one argument"),
        (
            "finetune",
            "",
            "lerning_rate: 1e-4",
            r"unknown setting 'lerning_rate' \(did you mean 'learning_rate'\?\)",
        ),
        ("finetune", "", "steps: [1", r"^the cell body is not valid YAML"),
        ("finetune", "", "- steps", r"^the cell body must be YAML settings"),
        (
            "finetune",
            "--data {dff}",
            None,
            r"^data: no notebook variable named 'dff' \(did you mean 'df'\?\)$",
        ),
        (
            "finetune",
            "",
            "data: dff",
            r"^data='dff' is neither a notebook variable nor a file \(did you mean 'df'\?\)",
        ),
        ("finetune", "", "data: missing.jsonl", r"^no data file at missing.jsonl$"),
        ("finetune", "--model nosuchmodel --data df", None, r"unknown model 'nosuchmodel'"),
        ("finetune", "--name 'a b' --data df", None, r"name='a b' is not a valid run name"),
        ("lora", "show nope", None, r"^no run named 'nope' in "),
        ("lora", "merge", None, r"^%lora merge: the following arguments are required: RUN"),
        ("lora", "preview -n x", None, r"argument -n/--examples: invalid int value: 'x'"),
        (  # which depends on the runs this kernel started before
            "lora",
            "pause",
            None,
            r"nothing to pause|only a running run can be paused|no run has been started in this kernel; name the run",
        ),
        ("lora", "stop", None, r"^no run is training in this kernel; name the run to stop"),
        ("lora", "stop nope", None, r"^no run named 'nope' in "),
        ("lora", "compare", None, r"^no prompt given"),
        ("lora", "compare 'unclosed", None, r"cannot read the options"),
        ("lora", "use nope", None, r"^no adapter named 'nope' is loaded; loaded: base$"),
        ("lora", "chat", None, r"^no message given"),
        ("lora", "ui", None, r"needs a widget frontend"),
        ("lora", "help nope", None, r"unknown subcommand 'nope'"),
    ],
)
def test_mistakes_are_one_line_usage_errors(ip, magic, line, cell, message):
    with pytest.raises(UsageError, match=message) as caught:
        if cell is None:
            ip.run_line_magic(magic, line)
        else:
            ip.run_cell_magic(magic, line, cell)
    assert type(caught.value) is UsageError
    assert "\n" not in str(caught.value)


def test_a_mistake_prints_one_line_without_traceback(ip, capsys):
    result = ip.run_cell("%lora bogus")
    assert not result.success
    captured = capsys.readouterr()
    lines = (captured.out + captured.err).strip().splitlines()
    assert lines == [
        "UsageError: %lora: unknown subcommand 'bogus'; subcommands: "
        + ", ".join(COMMANDS)
        + " (see %lora help)"
    ]


def test_nothing_is_written_when_a_run_is_refused(ip, runs_dir):
    with pytest.raises(UsageError):
        ip.run_cell_magic("finetune", "--steps 2", "data: df\ntemplate: custom\nprompt_format: 'Q: {q}'")
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


def test_settings_are_kept_with_config(ip, lm, tmp_path, capsys):
    ip.run_line_magic("config", f"LoraMagics.runs_dir = {str(tmp_path / 'elsewhere')!r}")
    assert lm.store.root == tmp_path / "elsewhere"
    ip.run_line_magic("lora", "runs")
    assert (
        capsys.readouterr().out.strip()
        == f"No runs in {tmp_path / 'elsewhere'} yet; start one with %%finetune."
    )
    ip.run_line_magic("config", "LoraMagics.default_model = 'org/some-model'")
    assert lm.run_config({"data": "x.jsonl"}).model == "org/some-model"
    ip.run_line_magic("config", "LoraMagics.device = 'cpu'")
    assert lm.run_config({"data": "x.jsonl"}).device == "cpu"
    assert lm.run_config({"data": "x.jsonl", "device": "auto"}).device == "auto"  # a magic's own value wins
