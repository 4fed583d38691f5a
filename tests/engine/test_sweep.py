"""Sweeps on the tiny model: the grid, its table of real measurements, stopping and running again."""

import json

import pandas as pd
import pytest

import lora_magic as lm
from lora_magic.core.errors import ConfigError
from lora_magic.core.store import RunStore


def test_a_2x2_sweep_trains_every_combination_on_one_base_and_tabulates_them(
    tiny_model_dir, records, runs_dir, tmp_path
):
    sweep = lm.sweep(
        model=tiny_model_dir,
        data=records,
        steps=3,
        eval_every=3,
        name="knobs",
        grid={"r": [4, 8], "targets": ["attention", "all-linear"]},
    ).wait()
    assert sweep.status == "completed" and not sweep.skipped
    table = sweep.table()
    assert list(table.index) == [
        "knobs-r_4-targets_attention",
        "knobs-r_4-targets_all-linear",
        "knobs-r_8-targets_attention",
        "knobs-r_8-targets_all-linear",
    ]
    assert list(table.columns[:2]) == ["r", "targets"] and list(table["r"]) == [4, 4, 8, 8]
    assert (table["status"] == "completed").all()
    params = table["trainable_params"]
    assert params.iloc[2] == 2 * params.iloc[0] and params.iloc[3] == 2 * params.iloc[1] > params.iloc[2]
    for column in ("wall_seconds", "tokens_per_second", "peak_memory_mb", "first_loss", "final_loss"):
        assert (table[column] > 0).all(), column
    assert (table["final_eval_loss"] < table["first_eval_loss"] + 1).all()
    # trained on one loaded base: loading another would have dropped the earlier adapters
    assert set(lm.session().adapters) == set(table.index)
    assert RunStore(runs_dir).read(table.index[0])["sweep"] == {
        "name": "knobs",
        "knobs": {"r": 4, "targets": "attention"},
    }
    csv = pd.read_csv(sweep.to_csv(tmp_path / "knobs.csv"), index_col="name")
    assert list(csv.index) == list(table.index) and list(csv["trainable_params"]) == list(params)


def test_a_sweep_over_max_examples_shows_how_many_examples_each_run_used(tiny_model_dir, records, runs_dir):
    sweep = lm.sweep(
        model=tiny_model_dir,
        data=records,
        eval_fraction=0.25,
        steps=1,
        evaluate=True,
        probes=["Describe the red lamp."],
        probe_tokens=4,
        grid={"max_examples": [5, 10, None]},
    ).wait()
    table = sweep.table()
    assert sweep.name.startswith("sweep-") and list(table["train_examples"]) == [5, 10, 18]
    assert list(table["max_examples"]) == [5, 10, None]
    store = RunStore(runs_dir)
    for name in table.index:  # each run's held-out scores and last probe answer, from its own folder
        scores = json.loads((store.path(name) / "evaluation.json").read_text())["metrics"][name]
        assert table.loc[name, "token_f1"] == scores["token_f1"]
        assert table.loc[name, "terminated"] == scores["terminated"]
        probe = [e for e in store.events(name)[0] if e["type"] == "probe"][-1]
        assert table.loc[name, "probe: Describe the red lamp."] == probe["adapter"]


def test_a_stopped_sweep_run_again_completes_only_the_missing_runs(tiny_model_dir, records, runs_dir):
    settings = {"model": tiny_model_dir, "data": records, "steps": 12, "grid": {"r": [2, 4, 8]}}
    sweep = lm.sweep(**settings)
    first = sweep.next_run()
    second = sweep.next_run(first)
    sweep.stop()
    sweep.wait()
    assert sweep.status == "stopped" and first.status == "completed" and second.status == "stopped"
    table = sweep.table()
    assert list(table["status"]) == ["completed", "stopped", "not started"]
    created = RunStore(runs_dir).read(first.name)["created"]

    again = lm.sweep(**settings)
    assert again.name == sweep.name and again.skipped == [first.name]
    assert again.next_run().name == second.name
    again.wait()
    assert list(again.table()["status"]) == ["completed"] * 3
    assert RunStore(runs_dir).read(first.name)["created"] == created  # not trained again


def test_a_sweep_whose_settings_changed_under_its_name_is_refused(tiny_model_dir, records, runs_dir):
    lm.sweep(model=tiny_model_dir, data=records, steps=1, name="same", grid={"r": [2]}).wait()
    with pytest.raises(ConfigError, match=r"'same-r_2'.*other settings \(steps: 1 then, 2 now\)"):
        lm.sweep(model=tiny_model_dir, data=records, steps=2, name="same", grid={"r": [2]})


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({}, "a sweep needs settings with lists of values"),
        ({"rank": [8]}, "unknown setting 'rank'"),
        ({"r": 8}, r"sweep r=8 is not valid; give a list of values"),
        ({"r": ["eight"]}, "r='eight' is not valid; it must be a whole number"),
        ({"data": ["a.jsonl"]}, "data cannot be swept"),
        ({"quantization": ["2bit"]}, "quantization='2bit' is not valid; choose one of"),
        ({"r": [8, 8]}, r"sweep r lists 8 twice; give each value once"),
        (
            {"r": list(range(1, 101)), "alpha": list(range(1, 101))},
            r"the sweep has 10,000 runs \(100 r × 100 alpha\); one sweep trains at most 1,000",
        ),
    ],
)
def test_a_bad_grid_is_refused_before_anything_trains(grid, message, tiny_model_dir, records, runs_dir):
    with pytest.raises(ConfigError, match=message):
        lm.sweep(model=tiny_model_dir, data=records, steps=1, grid=grid)
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


def test_grid_points_whose_names_would_meet_get_names_of_their_own():
    from lora_magic.core.config import RunConfig
    from lora_magic.experiments.sweep import check_grid, grid_points

    long = check_grid({"system_prompt": ["a" * 120 + "x", "a" * 120 + "y"]})  # alike in their first 100
    short = check_grid({"system_prompt": ["a b", "a-b"]})  # the same name once made a run name
    for grid in (long, short):
        names = [point.name for point in grid_points("swept", RunConfig(), grid)]
        assert len(set(names)) == 2 and all(len(name) <= 100 for name in names), names
