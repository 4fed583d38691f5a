"""`%%finetune` with a `sweep:` block and `%lora eval`, in a real IPython shell on the tiny model."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError

from lora_magic.experiments.sweep import Sweep
from lora_magic.model.scoring import Evaluation

SWEEP_CELL = """
data: df
steps: 2
eval_fraction: 0.25
sweep:
  r: [2, 4]
  targets: [attention, all-linear]
"""


def test_a_sweep_cell_trains_the_grid_and_running_it_again_trains_nothing(ip, capsys):
    sweep = ip.run_cell_magic("finetune", "--name cell", SWEEP_CELL)
    assert isinstance(sweep, Sweep) and sweep.status == "completed" and len(sweep.points) == 4
    out = capsys.readouterr().out
    assert "sweep 'cell': r=2, targets=attention" in out and "sweep 'cell': completed" in out
    assert out.count("completed") >= 5 and "cell-r_4-targets_all-linear" in out  # the table at the end

    again = ip.run_cell_magic("finetune", "--name cell", SWEEP_CELL)
    assert again.status == "completed" and len(again.skipped) == 4
    assert "sweep 'cell': r=" not in capsys.readouterr().out  # no run trained

    with pytest.raises(UsageError) as caught:
        ip.run_cell_magic("finetune", "", "data: df\nsweep:\n  r: 8\n")
    assert str(caught.value) == "sweep r='8' is not valid; give a list of values, e.g. r: [a, b]"


def test_lora_eval_scores_runs_on_their_held_out_prompts_or_given_data(ip, capsys):
    ip.run_cell_magic("finetune", "--name scored --steps 2 --eval-fraction 0.25", "data: df")
    evaluation = ip.run_line_magic("lora", "eval --limit 2")  # the last run
    assert isinstance(evaluation, Evaluation) and list(evaluation.metrics) == ["base", "scored"]
    assert len(evaluation.samples) == 2

    ip.push({"held_out": [{"instruction": "Describe the red lamp.", "response": "A red lamp."}]})
    evaluation = ip.run_line_magic("lora", "eval scored --data held_out --max-new-tokens 4")
    assert evaluation.samples[0]["reference"] == "A red lamp." and evaluation.max_new_tokens == 4

    with pytest.raises(UsageError) as caught:
        ip.run_line_magic("lora", "eval scored --data helt_out")
    assert str(caught.value).startswith("data='helt_out' is neither a notebook variable nor a file")
