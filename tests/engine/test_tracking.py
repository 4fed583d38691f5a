"""The tracking setting on the tiny model: runs logged to MLflow and TensorBoard, read back with
their own readers; a missing extra and a failing tracker."""

import json
import logging
import os
import socket
import sys

import mlflow
import pytest
from mlflow import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import lora_magic as lm
from lora_magic.core.config import RunConfig
from lora_magic.core.errors import ConfigError
from lora_magic.core.store import RunStore
from lora_magic.training import tracking

SCORES = {"eval_loss": 2.5, "perplexity": 12.2, "token_f1": 0.4, "rouge_l": 0.35, "exact_match": 0.0}


def same(logged, points):
    """The same steps with the same values (TensorBoard keeps float32)."""
    return [step for step, _ in logged] == [step for step, _ in points] and [
        value for _, value in logged
    ] == pytest.approx([value for _, value in points], rel=1e-6)


def writes_an_evaluation(run, steps):
    """Put an evaluation.json in the run folder before training ends, as evaluate: true does."""

    def on_event(event):
        if event["type"] == "log" and event["step"] == steps:
            evaluation = {
                "rows": 1,
                "metrics": {"base": SCORES, run.name: {**SCORES, "token_f1": 0.9}},
                "samples": [
                    {
                        "prompt": "Describe product 3.",
                        "reference": "Product 3 is a amber chair for every day.",
                        "answers": {"base": "A chair.", run.name: "Product 3 is a amber chair."},
                    }
                ],
            }
            (run.path / "evaluation.json").write_text(json.dumps(evaluation))

    run.subscribe(on_event)


def test_an_mlflow_run_has_the_settings_step_metrics_evaluation_and_adapter(
    tiny_model_dir, records, runs_dir
):
    run = lm.train(
        model=tiny_model_dir, data=records, steps=4, eval_every=2, tracking="mlflow", name="tracked"
    )
    writes_an_evaluation(run, 4)
    run.wait()
    assert run.status == "completed"
    record = RunStore(runs_dir).read("tracked")["tracking"]
    assert record["uri"] == f"sqlite:///{runs_dir.resolve() / 'mlflow.db'}" and "error" not in record

    client = MlflowClient(record["uri"])
    logged = client.get_run(record["run_id"])
    assert logged.info.run_name == "tracked" and logged.info.status == "FINISHED"
    assert client.get_experiment(logged.info.experiment_id).name == "lora_magic"
    params = logged.data.params
    assert params["learning_rate"] == "0.0002" and params["r"] == "8" and params["steps"] == "4"
    assert params["targets"] == "attention" and params["tracking"] == "mlflow"
    assert params["data"] == "<list: 24 rows>" and params["probes"] == "[]"
    assert params["model"] == tiny_model_dir and params["name"] == "tracked"

    loss = client.get_metric_history(record["run_id"], "loss")
    assert same([(m.step, m.value) for m in loss], run.losses) and len(loss) == 4
    eval_loss = client.get_metric_history(record["run_id"], "eval_loss")
    assert same([(m.step, m.value) for m in eval_loss], run.eval_losses)
    assert [m.step for m in eval_loss] == [0, 2, 4]
    metrics = logged.data.metrics
    assert metrics["final/train_loss"] == pytest.approx(run.metrics["train_loss"])
    assert metrics["evaluation/adapter/token_f1"] == 0.9 and metrics["evaluation/base/token_f1"] == 0.4

    adapter = {a.path for a in client.list_artifacts(record["run_id"], "adapter")}
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= adapter
    evaluation = {a.path for a in client.list_artifacts(record["run_id"], "evaluation")}
    assert evaluation == {"evaluation/evaluation.json", "evaluation/samples.json"}
    table = json.loads(
        (runs_dir / "mlartifacts" / record["run_id"] / "artifacts/evaluation/samples.json").read_text()
    )
    assert table["columns"] == ["prompt", "reference", "base", "adapter"]
    assert table["data"] == [
        [
            "Describe product 3.",
            "Product 3 is a amber chair for every day.",
            "A chair.",
            "Product 3 is a amber chair.",
        ]
    ]
    # the process's own MLflow settings are untouched
    assert not mlflow.is_tracking_uri_set() and mlflow.active_run() is None
    assert "MLFLOW_TRACKING_URI" not in os.environ


def test_a_resumed_run_goes_on_in_the_same_mlflow_run(tiny_model_dir, records, runs_dir):
    run = lm.train(model=tiny_model_dir, data=records, steps=6, tracking="mlflow", name="again")
    run.subscribe(lambda event: event["type"] == "log" and event["step"] == 2 and run.stop())
    run.wait()
    assert run.status == "stopped" and run.step == 3
    first = RunStore(runs_dir).read("again")["tracking"]
    client = MlflowClient(first["uri"])
    assert client.get_run(first["run_id"]).info.status == "KILLED"

    resumed = lm.resume("again").wait()
    assert resumed.status == "completed"
    assert RunStore(runs_dir).read("again")["tracking"] == first
    assert client.get_run(first["run_id"]).info.status == "FINISHED"
    loss = client.get_metric_history(first["run_id"], "loss")
    assert [m.step for m in loss] == [1, 2, 3, 4, 5, 6]


def test_a_tensorboard_run_writes_the_loss_scalars_in_the_run_folder(tiny_model_dir, records, runs_dir):
    run = lm.train(
        model=tiny_model_dir, data=records, steps=4, eval_every=2, tracking="tensorboard", name="board"
    )
    writes_an_evaluation(run, 4)
    run.wait()
    assert run.status == "completed"
    assert RunStore(runs_dir).read("board")["tracking"] == {
        "kind": "tensorboard",
        "log_dir": str(run.path / "tensorboard"),
    }
    events = EventAccumulator(str(run.path / "tensorboard"))
    events.Reload()
    assert same([(e.step, e.value) for e in events.Scalars("train/loss")], run.losses)
    assert same([(e.step, e.value) for e in events.Scalars("eval/loss")], run.eval_losses)
    assert len(run.losses) == 4 and len(run.eval_losses) == 3
    assert [(e.step, e.value) for e in events.Scalars("evaluation/adapter/token_f1")] == [
        (4, pytest.approx(0.9))
    ]


@pytest.mark.parametrize("tracker", ["mlflow", "tensorboard"])
def test_a_missing_extra_is_refused_before_the_run_starts(
    tracker, monkeypatch, tiny_model_dir, records, runs_dir
):
    monkeypatch.setitem(sys.modules, tracker, None)  # `import <tracker>` now fails as if not installed
    with pytest.raises(ConfigError, match=rf'needs {tracker}.*pip install "lora_magic\[{tracker}\]"'):
        lm.train(model=tiny_model_dir, data=records, steps=1, tracking=tracker, name="untracked")
    assert not runs_dir.exists() or not any(runs_dir.iterdir())
    tracking.check(RunConfig())


def test_a_tracker_failing_mid_run_leaves_the_training_going(tiny_model_dir, records, runs_dir, caplog):
    run = lm.train(model=tiny_model_dir, data=records, steps=4, tracking="mlflow", name="orphan")

    def delete_the_mlflow_run(event):  # writes to a deleted run are refused by MLflow
        if event["type"] == "log" and event["step"] == 2:
            logged = RunStore(runs_dir).read("orphan")["tracking"]
            MlflowClient(logged["uri"]).delete_run(logged["run_id"])

    run.subscribe(delete_the_mlflow_run)
    with caplog.at_level(logging.WARNING, logger="lora_magic.training.tracking"):
        run.wait()
    assert run.status == "completed" and run.step == 4 and run.adapter_path
    error = RunStore(runs_dir).read("orphan")["tracking"]["error"]
    assert error.startswith("mlflow tracking failed at step 2") and "the run goes on without it" in error
    assert [r.getMessage() for r in caplog.records] == [f"run orphan: {error}"]
    logged = RunStore(runs_dir).read("orphan")["tracking"]
    loss = MlflowClient(logged["uri"]).get_metric_history(logged["run_id"], "loss")
    assert [m.step for m in loss] == [1]


def test_an_unreachable_tracking_server_leaves_the_run_untracked(
    tiny_model_dir, records, runs_dir, monkeypatch
):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    run = lm.train(model=tiny_model_dir, data=records, steps=2, tracking="mlflow", name="offline").wait()
    assert run.status == "completed" and run.adapter_path
    record = RunStore(runs_dir).read("offline")["tracking"]
    assert record["kind"] == "mlflow" and "run_id" not in record
    assert record["error"].startswith("mlflow tracking failed at step 0") and str(port) in record["error"]
