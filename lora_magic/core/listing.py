"""The run store at a glance: `lm.runs()` (`%lora runs`) as a table and `lm.show(name)`
(`%lora show`) as text, from the store alone."""

from __future__ import annotations

import os
import time
from typing import Any

from .config import fields_by_section
from .format import Text, count, number
from .store import WORKER_LOG, RunStore


def runs(runs_dir: str | os.PathLike | None = None) -> Any:
    """A DataFrame of the runs in the store, newest first (loss: the last logged training loss);
    the error column only where a run has one."""
    import pandas as pd

    records = RunStore(runs_dir).list()
    table = pd.DataFrame([row(record) for record in records], columns=COLUMNS).set_index("name")
    return table if table["error"].any() else table.drop(columns="error")


COLUMNS = ("name", "status", "step", "loss", "eval_loss", "model", "quantization", "created", "error")


def row(record: dict[str, Any]) -> dict[str, Any]:
    """One run as a row: losses to 4 decimals, steps with thousands separators."""
    import pandas as pd

    metrics = record.get("metrics") if isinstance(record.get("metrics"), dict) else {}
    created = record.get("created")
    # an eval at step 0 is the base model's loss, not the adapter's
    evaluated = number(metrics.get("eval_step")) != 0
    return {
        "name": record["name"],
        "status": record["status"],
        "step": f"{count(record.get('step') or 0)}/{count(record.get('total_steps') or '?')}",
        "loss": _rounded(record.get("loss")),
        "eval_loss": _rounded(metrics.get("eval_loss")) if evaluated else None,
        "model": record.get("model"),
        "quantization": record.get("quantization"),
        "created": pd.to_datetime(created, unit="s").floor("s") if number(created) is not None else pd.NaT,
        "error": record.get("error") or "",
    }


def _rounded(value: Any) -> float | None:
    return None if number(value) is None else round(value, 4)


def show(name: str, runs_dir: str | os.PathLike | None = None) -> Text:
    """Run `name`'s status, settings, metrics and where its files are."""
    store = RunStore(runs_dir)
    record, folder = store.read(name), store.path(name)
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(record.get("created", 0)))
    lines = [
        f"Run {name!r}: {record['status']}, step {record.get('step', 0)}/{record.get('total_steps') or '?'}"
        f" (started {when})",
        f"  model        {record.get('model')} ({record.get('quantization')}, on {record.get('device')})",
    ]
    if record.get("metrics"):
        lines.append("  metrics      " + ", ".join(f"{k} {v:.4g}" for k, v in record["metrics"].items()))
    if record.get("total_params"):
        share = record["trainable_params"] / record["total_params"]
        lines.append(
            f"  parameters   {record['trainable_params']:,} trained of {record['total_params']:,} ({share:.2%})"
        )
    lines.append(f"  targets      {', '.join(record.get('targets') or [])}")
    if record.get("error"):
        lines.append(f"  error        {record['error']}")
    checkpoint = store.last_checkpoint(name)
    adapter = folder / "adapter"
    lines += [
        f"  folder       {folder}",
        f"  adapter      {adapter if (adapter / 'adapter_config.json').is_file() else 'not saved yet'}",
        f"  checkpoint   {checkpoint or 'none'}",
        f"  events       {folder / 'events.jsonl'}",
        *([f"  worker log   {folder / WORKER_LOG}"] if (folder / WORKER_LOG).is_file() else []),
        f"  data         {folder / 'data'}",
        "  settings",
    ]
    config = record.get("config", {})
    for section, fields in fields_by_section().items():
        values = " ".join(f"{f.name}={config.get(f.name)!r}" for f in fields if f.name in config)
        lines.append(f"    {section:<6} {values}")
    return Text("\n".join(lines) + "\n")
