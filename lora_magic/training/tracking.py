"""Experiment tracking (the `tracking` setting): a run also logged to MLflow or TensorBoard.

MLflow: the run's settings as params, the trainer's logs (loss, eval_loss, learning rate, ...) as
metrics at their step, and at the end the final metrics, the evaluation and the adapter. It goes
to the tracking URI MLflow is given ($MLFLOW_TRACKING_URI or `mlflow.set_tracking_uri`), else to
a local store beside the runs: `<run store>/mlflow.db`, artifacts under `<run store>/mlartifacts`.
The logging goes through a client bound to that URI, not MLflow's process-wide current URI and
active run, so the notebook's own MLflow use is left as it was. (transformers' MLflowCallback
works on those, and logs the trainer's arguments as params, some under the names of the run's
settings with other values, which MLflow refuses.)

TensorBoard: transformers' TensorBoardCallback writes event files to `<run folder>/tensorboard`.

Where a run was logged goes into its run.json under "tracking". A tracker that fails (a server
gone) is dropped with a warning, and the training goes on without it.
"""

from __future__ import annotations

import importlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ..core import results
from ..core.config import RunConfig
from ..core.errors import ConfigError
from ..core.results import EVALUATION_FILE
from .run import Run

log = logging.getLogger(__name__)
EXPERIMENT = "lora_magic"  # the MLflow experiment, unless $MLFLOW_EXPERIMENT_NAME names another
TENSORBOARD_FOLDER = "tensorboard"


def check(config: RunConfig) -> None:
    """Refuse a tracker whose extra is not installed (the extras are named as the trackers)."""
    if config.tracking == "none":
        return
    try:
        importlib.import_module(config.tracking)
    except ImportError as error:
        raise ConfigError(
            f"tracking={config.tracking!r} needs {config.tracking}, which is not installed: "
            f'pip install "lora_magic[{config.tracking}]"'
        ) from error


def callbacks(run: Run) -> list[TrainerCallback]:
    """Trainer callbacks that log `run` to its tracker."""
    check(run.config)
    if run.config.tracking == "none":
        return []
    try:
        tracker = _start_mlflow(run) if run.config.tracking == "mlflow" else _start_tensorboard(run)
    except Exception as error:
        _failed(run, error)
        return []
    return [Guarded(run, tracker)]


def finish(run: Run) -> None:
    """After the adapter (and any evaluation.json) is saved: log what only exists at the end."""
    if run.config.tracking == "none":
        return
    record = run.store.read(run.name).get("tracking") or {}
    if not record or "error" in record:
        return
    try:
        if record["kind"] == "mlflow":
            _finish_mlflow(run, record)
        else:
            _finish_tensorboard(run, record)
    except Exception as error:
        _failed(run, error)


def _failed(run: Run, error: Exception) -> None:
    message = (
        f"{run.config.tracking} tracking failed at step {run.step}; the run goes on without it: "
        f"{type(error).__name__}: {error}"
    )
    log.warning("run %s: %s", run.name, message)
    record = run.store.read(run.name).get("tracking") or {"kind": run.config.tracking}
    run.store.update(run.name, tracking={**record, "error": message})


class Guarded(TrainerCallback):
    """Hands the trainer's hooks on to a tracker's callback; one that fails is dropped."""

    def __init__(self, run: Run, tracker: TrainerCallback):
        self.run, self.tracker = run, tracker

    def _call(self, hook: str, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.tracker is None:
            return
        try:
            getattr(self.tracker, hook)(args, state, control, **kwargs)
        except Exception as error:
            self.tracker = None
            _failed(self.run, error)


def _passed_on(hook: str) -> Any:
    def method(self: Guarded, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._call(hook, args, state, control, **kwargs)

    return method


for _hook in [name for name in vars(TrainerCallback) if name.startswith("on_")]:
    setattr(Guarded, _hook, _passed_on(_hook))


def _evaluation(run: Run) -> dict[str, Any] | None:
    return results.evaluation(run.store, run.name) or None


def _evaluation_metrics(run: Run, evaluation: dict[str, Any]) -> dict[str, float]:
    """evaluation/base/token_f1, evaluation/adapter/token_f1, ..."""
    return {
        f"evaluation/{'adapter' if model == run.name else model}/{metric}": float(value)
        for model, scores in evaluation["metrics"].items()
        for metric, value in scores.items()
        if isinstance(value, int | float)
    }


# -- MLflow ---------------------------------------------------------------------------------------
def _start_mlflow(run: Run) -> TrainerCallback:
    import mlflow
    from mlflow.entities import Param
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

    local = not mlflow.is_tracking_uri_set()
    uri = f"sqlite:///{run.store.root.resolve() / 'mlflow.db'}" if local else mlflow.get_tracking_uri()
    client = mlflow.MlflowClient(uri)
    earlier = run.store.read(run.name).get("tracking") or {}
    if earlier.get("uri") == uri and earlier.get("run_id"):  # resumed: go on in the same MLflow run
        run_id, experiment_id = earlier["run_id"], earlier["experiment_id"]
        client.update_run(run_id, status="RUNNING")
    else:
        experiment_id = _experiment(client, run.store.root / "mlartifacts" if local else None)
        run_id = client.create_run(
            experiment_id, run_name=run.name, tags={"lora_magic.run_folder": str(run.path)}
        ).info.run_id
        params = [
            Param(key, (value if isinstance(value, str) else json.dumps(value))[:MAX_PARAM_VAL_LENGTH])
            for key, value in run.config.to_dict().items()
        ]
        for start in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
            client.log_batch(run_id, params=params[start : start + MAX_PARAMS_TAGS_PER_BATCH])
    tracking = {"kind": "mlflow", "uri": uri, "experiment_id": experiment_id, "run_id": run_id}
    run.store.update(run.name, tracking=tracking)
    return MlflowMetrics(client, run_id)


def _experiment(client: Any, artifacts: Path | None) -> str:
    from mlflow.environment_variables import MLFLOW_EXPERIMENT_NAME

    name = MLFLOW_EXPERIMENT_NAME.get() or EXPERIMENT
    found = client.get_experiment_by_name(name)
    if found:
        return found.experiment_id
    # a local store's artifacts go beside it, not under the working directory
    return client.create_experiment(name, artifact_location=artifacts and artifacts.resolve().as_uri())


class MlflowMetrics(TrainerCallback):
    """The trainer's logs as MLflow metrics at their step."""

    def __init__(self, client: Any, run_id: str):
        self.client, self.run_id = client, run_id

    def on_log(self, args, state, control, logs=None, **kwargs):
        _log_metrics(self.client, self.run_id, logs or {}, state.global_step)


def _log_metrics(client: Any, run_id: str, values: dict[str, Any], step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [
        Metric(key, float(value), now, step)
        for key, value in values.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    ]
    if metrics:
        client.log_batch(run_id, metrics=metrics)


def _finish_mlflow(run: Run, record: dict[str, Any]) -> None:
    import mlflow
    import pandas

    client, run_id = mlflow.MlflowClient(record["uri"]), record["run_id"]
    metrics = {f"final/{key}": value for key, value in run.metrics.items()}
    evaluation = _evaluation(run)
    if evaluation:
        metrics.update(_evaluation_metrics(run, evaluation))
        table = [
            {
                "prompt": sample["prompt"],
                "reference": sample["reference"],
                **{("adapter" if m == run.name else m): a for m, a in sample["answers"].items()},
            }
            for sample in evaluation["samples"]
        ]
        if table:
            client.log_table(
                run_id, data=pandas.DataFrame(table, dtype=object), artifact_file="evaluation/samples.json"
            )
        client.log_artifact(run_id, str(run.path / EVALUATION_FILE), "evaluation")
    _log_metrics(client, run_id, metrics, run.step)
    if run.adapter_path:
        client.log_artifacts(run_id, str(run.adapter_path), "adapter")
    stopped = run.step < run.total_steps
    client.set_terminated(run_id, "FAILED" if run.error else "KILLED" if stopped else "FINISHED")


# -- TensorBoard ----------------------------------------------------------------------------------
def _start_tensorboard(run: Run) -> TrainerCallback:
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    folder = run.path / TENSORBOARD_FOLDER
    run.store.update(run.name, tracking={"kind": "tensorboard", "log_dir": str(folder)})
    return TensorBoardCallback(SummaryWriter(log_dir=str(folder)))


def _finish_tensorboard(run: Run, record: dict[str, Any]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    evaluation = _evaluation(run)
    if evaluation:
        with SummaryWriter(log_dir=record["log_dir"]) as writer:
            for key, value in _evaluation_metrics(run, evaluation).items():
                writer.add_scalar(key, value, run.step)
