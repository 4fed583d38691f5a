"""Experiment tracking (the `tracking` setting): a run also logged to MLflow or TensorBoard."""

from __future__ import annotations

from typing import Any


def callbacks(run: Any) -> list[Any]:
    """Trainer callbacks that log `run` to its tracker."""
    return []


def finish(run: Any) -> None:
    """After the adapter (and any evaluation.json) is saved: log what only exists at the end."""
