"""Evaluation during training: by default it scores a fixed sample of the eval split, as often as
keeps it to about a tenth of the run's time, and always after the last step."""

from __future__ import annotations

import pytest

import lora_magic as lm
from lora_magic.core import recipe
from lora_magic.core.config import RunConfig
from lora_magic.core.results import measurements
from lora_magic.core.store import RunStore


@pytest.mark.parametrize(
    ("settings", "train", "evaluated", "schedule"),
    [
        # the bundled products' default split: 36 to train, 4 held out; one epoch is 9 steps
        ({}, 36, 4, (9, False)),
        # 20 steps of 8 (160 rows) against a 100-row eval split: one evaluation of 32 rows, at the end
        ({"steps": 20, "batch_size": 8}, 500, 100, (20, False)),
        # 200 steps of 8: ten evaluations of 32 rows fit, at the start and every 23 steps
        ({"steps": 200, "batch_size": 8}, 500, 100, (23, True)),
        # long runs: at most the start and ten more
        ({"steps": 5000}, 500, 100, (500, True)),
        # eval_every as asked, with the start
        ({"steps": 20, "eval_every": 5}, 500, 100, (5, True)),
        # every row of a large split each time: the budget allows three evaluations
        ({"steps": 200, "batch_size": 8, "eval_rows": 0}, 500, 100, (100, True)),
    ],
)
def test_the_schedule_keeps_evaluation_within_its_budget(settings, train, evaluated, schedule):
    config = RunConfig(**settings)
    assert recipe.eval_schedule(config, train, evaluated) == schedule
    steps, on_start = schedule
    total = recipe.total_steps(config, train)
    count = total // steps + on_start + (total % steps > 0)  # and after the last step
    scored = min(evaluated, config.eval_rows or evaluated)
    trained = total * config.batch_size
    assert count * scored <= max(recipe.EVAL_BUDGET * trained, scored) or config.eval_every


def test_the_sample_is_the_same_for_every_seed_and_every_row_when_the_split_is_small():
    sample = recipe.eval_sample(RunConfig(seed=1), 100)
    assert len(sample) == 32 == len(set(sample)) and sample == sorted(sample)
    assert recipe.eval_sample(RunConfig(seed=2), 100) == sample
    assert recipe.eval_sample(RunConfig(eval_rows=8), 100) == recipe.eval_sample(RunConfig(eval_rows=8), 100)
    assert (
        recipe.eval_sample(RunConfig(), 32) is None
        and recipe.eval_sample(RunConfig(eval_rows=0), 100) is None
    )


def test_a_run_scores_its_sample_on_schedule_and_after_the_last_step(tiny_model_dir, records, runs_dir):
    """16 rows to train on for 4 steps of 4, 8 held out of which 1 is scored: the budget of 3.2 rows
    allows 3 evaluations, at the start and every 2 steps. At the start the adapter changes nothing
    (LoRA's B is zero), so the first eval loss is the base's on the rows scored."""

    def first_eval(**settings):
        run = lm.train(
            model=tiny_model_dir, data=records[:16], eval_data=records[16:], runs_dir=runs_dir, **settings
        ).wait()
        assert run.status == "completed", run.error
        return run

    run = first_eval(eval_rows=1, steps=4)
    assert [step for step, _ in run.eval_losses] == [0, 2, 4]
    another_seed = first_eval(eval_rows=1, steps=1, eval_every=1, seed=7)
    assert another_seed.eval_losses[0][1] == pytest.approx(run.eval_losses[0][1], abs=1e-6)
    every_row = first_eval(eval_rows=0, steps=1, eval_every=1)
    assert every_row.eval_losses[0][1] != pytest.approx(run.eval_losses[0][1], abs=1e-3)
    odd = first_eval(eval_rows=1, steps=3, eval_every=2)
    # after the last step although 3 is not a multiple of 2
    assert [step for step, _ in odd.eval_losses] == [0, 2, 3]
    assert odd.metrics["first_eval_loss"] == odd.eval_losses[0][1]
    short = first_eval(steps=1)  # 4 rows trained against 8 to score: one evaluation, after the step
    assert [step for step, _ in short.eval_losses] == [1]
    assert "first_eval_loss" not in short.metrics  # no loss before training to report
    assert measurements(RunStore(runs_dir), short.name)["first_eval_loss"] is None
