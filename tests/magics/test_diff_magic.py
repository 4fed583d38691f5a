"""`%lora diff` in a real IPython shell over two runs trained by %%finetune on the tiny model."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError

from lora_magic.experiments.diff import RunDiff

CELL = """
data: df
steps: 2
eval_every: 1
probes: ["Describe the red lamp."]
probe_tokens: 4
"""


def test_lora_diff_shows_two_runs_side_by_side(ip, capsys):
    ip.run_cell_magic("finetune", "--name rank-4 --r 4", CELL)
    ip.run_cell_magic("finetune", "--name rank-8 --r 8 --learning-rate 1e-3", CELL)
    capsys.readouterr()

    result = ip.run_cell("%lora diff rank-4 rank-8")
    result.raise_error()
    diff = result.result
    assert isinstance(diff, RunDiff) and diff.runs == ["rank-4", "rank-8"]
    assert diff.settings.index.tolist() == ["r", "learning_rate"]
    assert diff.metrics.loc["status"].tolist() == ["completed", "completed"]
    assert diff.probes.columns.tolist() == ["base", "rank-4", "rank-8"]

    out = capsys.readouterr().out  # the shell shows the diff as text; a notebook shows its HTML
    assert out.startswith("Out[") and "Runs rank-4, rank-8" in out and "Settings that differ:" in out
    page = diff._repr_html_()
    assert "data:image/png;base64," in page and "Describe the red lamp." in page

    with pytest.raises(UsageError) as caught:
        ip.run_line_magic("lora", "diff rank-4 rank-9")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("no run named 'rank-9'")
    assert message.endswith("(did you mean 'rank-8'?)")


def test_lora_diff_needs_two_runs(ip, capsys):
    with pytest.raises(UsageError, match=r"^a diff needs at least two runs, got 1"):
        ip.run_line_magic("lora", "diff rank-4")
    with pytest.raises(UsageError, match="the following arguments are required: RUN"):
        ip.run_line_magic("lora", "diff")
    ip.run_line_magic("lora", "diff --help")
    assert capsys.readouterr().out.startswith("%lora diff RUN [RUN ...]\n\nRuns side by side")
