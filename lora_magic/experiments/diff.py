"""Runs side by side: the settings that differ, the metrics, the loss curves overlaid, and the probe
and evaluation answers to the same prompts, read from the run store alone (no model is loaded).

A run still training or one that failed shows what it has logged so far.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..core import results
from ..core.errors import RunError
from ..core.events import EVAL, LOG, PROBE, Curve
from ..core.format import answer_html, answer_text, duration, number
from ..core.results import smooth
from ..core.store import RunStore


@dataclass
class RunDiff:
    """Runs side by side. `settings` and `metrics` have one column per run; `probes` and `samples`
    one row per prompt, with a column per run (and the base model's and reference answers)."""

    runs: list[str]
    settings: pd.DataFrame
    metrics: pd.DataFrame
    probes: pd.DataFrame
    samples: pd.DataFrame
    train: dict[str, Curve]
    eval: dict[str, Curve]

    def figure(self) -> Figure:
        """The runs' smoothed train loss (solid) and eval loss (dashed), a colour per run."""
        figure = Figure(figsize=(7, 3), dpi=100)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        axes.set_xlabel("step")
        axes.set_ylabel("loss")
        axes.grid(alpha=0.3)
        for index, run in enumerate(self.runs):
            colour = f"C{index % 10}"
            if self.train[run]:
                steps, losses = zip(*self.train[run], strict=True)
                axes.plot(steps, smooth(losses), color=colour, label=f"{run} train (smoothed)")
            if self.eval[run]:
                steps, losses = zip(*self.eval[run], strict=True)
                axes.plot(steps, losses, "o--", color=colour, markersize=4, label=f"{run} eval")
        if axes.lines:
            axes.legend(loc="best", fontsize="small")
        figure.tight_layout()
        return figure

    def png(self) -> bytes:
        buffer = io.BytesIO()
        self.figure().savefig(buffer, format="png")
        return buffer.getvalue()

    def __repr__(self) -> str:
        lines = [f"Runs {', '.join(self.runs)}", "", "Settings that differ:"]
        lines.append(_text_table(self.settings, _setting) if len(self.settings) else "  none")
        lines += ["", "Metrics:", _text_table(self.metrics, _shown)]
        for title, answers in self._answer_sections():
            lines += ["", f"{title}:"]
            for prompt, row in answers.to_dict("index").items():
                lines.append(f"--- {prompt}")
                lines += [f"  {column}: {answer_text(text)}" for column, text in row.items()]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        names = " · ".join(f"<b>{html.escape(run)}</b>" for run in self.runs)
        parts = [f"<div class='lora-magic-diff'><p>Runs {names}</p>", "<h4>Settings that differ</h4>"]
        if len(self.settings):
            parts.append(_html_table(self.settings, _setting))
        else:
            parts.append("<p>none: the runs have the same settings</p>")
        parts += ["<h4>Metrics</h4>", _html_table(self.metrics, _shown)]
        if any(self.train.values()) or any(self.eval.values()):
            png = base64.b64encode(self.png()).decode("ascii")
            parts.append(f"<img src='data:image/png;base64,{png}' style='max-width:100%' alt='loss curves'>")
        for title, answers in self._answer_sections():
            parts.append(f"<h4>{html.escape(title)}</h4>")
            for prompt, row in answers.to_dict("index").items():
                heads = "".join(f"<th>{html.escape(column)}</th>" for column in row)
                cells = "".join(
                    "<td style='vertical-align:top;text-align:left'>"
                    + ("<i style='color:#888'>—</i>" if text is None else answer_html(text))
                    + "</td>"
                    for text in row.values()
                )
                parts.append(
                    f"<p><b>Prompt:</b> {html.escape(str(prompt))}</p>"
                    f"<table style='table-layout:fixed;width:100%'><tr>{heads}</tr><tr>{cells}</tr></table>"
                )
        return "".join(parts) + "</div>"

    def _answer_sections(self) -> list[tuple[str, pd.DataFrame]]:
        sections = [
            ("Probe answers (the last probe of each run)", self.probes),
            ("Evaluation answers", self.samples),
        ]
        return [(title, answers) for title, answers in sections if len(answers)]


def diff(*runs: str, runs_dir: str | os.PathLike | None = None) -> RunDiff:
    """Compare runs of the store: `diff("run-a", "run-b")`; in a notebook, `%lora diff run-a run-b`."""
    if len(runs) < 2:
        raise RunError(f"a diff needs at least two runs, got {len(runs)}: diff('run-a', 'run-b')")
    twice = next((run for run in runs if runs.count(run) > 1), None)
    if twice:
        raise RunError(f"run {twice!r} is named more than once; name each run once")
    store = RunStore(runs_dir)
    records = {run: store.read(run) for run in runs}
    histories = {run: results.history(store, run) for run in runs}
    evaluations = {run: results.evaluation(store, run) for run in runs}
    measured = {run: results.measurements(store, run) for run in runs}
    labels = [key for key in measured[runs[0]] if any(m[key] is not None for m in measured.values())]
    probes = {
        run: {
            e["prompt"]: {"base": e.get("base"), "answer": e.get("adapter")} for e in histories[run].of(PROBE)
        }
        for run in runs
    }
    samples = {
        run: {
            s["prompt"]: {
                "reference": s.get("reference"),
                "base": (s.get("answers") or {}).get("base"),
                "answer": (s.get("answers") or {}).get(run),
            }
            for s in evaluations[run].get("samples", [])
        }
        for run in runs
    }
    return RunDiff(
        runs=list(runs),
        settings=_differing({run: records[run].get("config") or {} for run in runs}),
        metrics=pd.DataFrame(
            {run: [values[label] for label in labels] for run, values in measured.items()},
            index=labels,
            dtype=object,
        ),
        probes=_side_by_side(probes),
        samples=_side_by_side(samples),
        train={run: histories[run].curve(LOG) for run in runs},
        eval={run: histories[run].curve(EVAL) for run in runs},
    )


def _differing(configs: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """The settings whose values are not the same in every run (the run name left out)."""
    keys = list(dict.fromkeys(key for config in configs.values() for key in config if key != "name"))
    differ = [
        key
        for key in keys
        if len({json.dumps(config.get(key), sort_keys=True, default=str) for config in configs.values()}) > 1
    ]
    return pd.DataFrame(
        {run: [config.get(key) for key in differ] for run, config in configs.items()},
        index=differ,
        dtype=object,
    )


def _side_by_side(answers: dict[str, dict[str, dict[str, Any]]]) -> pd.DataFrame:
    """One row per prompt (in order of first appearance), with the reference when there is one, the
    base model's answer (one column per run where the runs' bases answered differently) and each
    run's answer; None where a run has no answer to that prompt."""
    prompts = list(dict.fromkeys(prompt for given in answers.values() for prompt in given))
    columns: dict[str, list[Any]] = {}
    if any(a.get("reference") is not None for given in answers.values() for a in given.values()):
        columns["reference"] = [_first(answers, prompt, "reference") for prompt in prompts]
    bases = {run: {prompt: a.get("base") for prompt, a in given.items()} for run, given in answers.items()}
    if all(len({b[prompt] for b in bases.values() if prompt in b}) == 1 for prompt in prompts):
        columns["base"] = [_first(answers, prompt, "base") for prompt in prompts]
    else:
        columns.update({f"base ({run})": [b.get(prompt) for prompt in prompts] for run, b in bases.items()})
    if all(base is None for base in columns.get("base", [None])):
        columns.pop("base", None)
    for run, given in answers.items():
        columns[run] = [given.get(prompt, {}).get("answer") for prompt in prompts]
    return pd.DataFrame(columns, index=pd.Index(prompts, name="prompt"), dtype=object)


def _first(answers: dict[str, dict[str, dict[str, Any]]], prompt: str, key: str) -> Any:
    return next(given[prompt][key] for given in answers.values() if prompt in given)


# -- how values are shown --------------------------------------------------------------------------
def _loss(value: float) -> str:
    return f"{value:.4f}"


def _share(value: float) -> str:
    return f"{value:.0%}"


FORMATS: dict[str, Callable[[Any], str]] = {
    "trainable_params": "{:,}".format,
    "wall_seconds": duration,
    "tokens_per_second": "{:,.0f}".format,
    "peak_memory_mb": "{:,.0f}".format,
    "exact_match": _share,
    "terminated": _share,
    "answer_tokens": "{:.1f}".format,
}


def _shown(label: str, value: Any) -> str:
    """A metric as shown: losses to 4 decimals, counts with thousands separators."""
    if number(value) is None:
        return "—" if value is None else str(value)
    return FORMATS.get(label, _loss if isinstance(value, float) else "{:,}".format)(value)


def _setting(label: str, value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


Show = Callable[[str, Any], str]


def _cells(frame: pd.DataFrame, show: Show) -> pd.DataFrame:
    return pd.DataFrame(
        [[show(label, value) for value in row.values()] for label, row in frame.to_dict("index").items()],
        index=frame.index,
        columns=frame.columns,
    )


def _text_table(frame: pd.DataFrame, show: Show) -> str:
    return "\n".join("  " + line for line in _cells(frame, show).to_string().splitlines())


def _html_table(frame: pd.DataFrame, show: Show) -> str:
    heads = "".join(f"<th>{html.escape(str(c))}</th>" for c in ["", *frame.columns])
    rows = "".join(
        f"<tr><th style='text-align:left'>{html.escape(str(label))}</th>"
        + "".join(f"<td style='text-align:left'>{html.escape(v)}</td>" for v in row.values())
        + "</tr>"
        for label, row in _cells(frame, show).to_dict("index").items()
    )
    return f"<table><tr>{heads}</tr>{rows}</table>"
