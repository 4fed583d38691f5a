"""The sweep view on a real sweep of the tiny model: the current run over the finished ones."""

import lora_magic
from lora_magic.widgets import SweepView, watch_sweep
from lora_magic.widgets.static import snapshot
from lora_magic.widgets.watch import pump


def test_the_view_draws_the_finished_runs_behind_the_current_one_and_tabulates_them(
    tiny_model_dir, records, runs_dir
):
    sweep = lora_magic.sweep(
        model=tiny_model_dir, data=records, steps=2, name="view", grid={"r": [2, 4], "dropout": [0.0]}
    )
    watch_sweep(sweep, widgets=False)  # follows every run to its end, in text
    assert sweep.done and sweep.status == "completed"
    view = SweepView(sweep)
    second = lora_magic.session().adapters["view-r_4-dropout_0-0"]
    run = lora_magic.manager().last
    assert run.name == second.name
    dashboard = view.show_run(run)
    pump(run, dashboard)  # its events so far
    labels = [reference["label"] for reference in dashboard.chart.references]
    assert "r=2, dropout=0.0" in labels and "r=4, dropout=0.0" not in labels
    assert [len(reference["points"]) for reference in dashboard.chart.references] == [2]  # its 2 steps
    assert "now run 2 of 2: r=4, dropout=0.0" in view.header.value
    picture, _ = snapshot(view.widget)
    assert "view-r_2-dropout_0-0" in picture and "view-r_4-dropout_0-0" in picture and "<img" in picture
    assert "token_f1" not in picture and "None" not in picture  # no run was evaluated
