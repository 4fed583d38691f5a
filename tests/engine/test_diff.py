"""Runs side by side: two tiny-model runs that differ in r, an evaluation, a failed run, bad names."""

from __future__ import annotations

import base64
import html
import json
import re
import shutil

import pytest

import lora_magic as lm
from lora_magic.core.errors import RunError
from lora_magic.core.events import History
from lora_magic.core.format import answer_html
from lora_magic.core.store import RunStore
from lora_magic.experiments.diff import RunDiff

PROMPT = "Describe product 99."


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir, records):
    """A store with two finished runs, 'small' (r=4) and 'large' (r=8), otherwise the same."""
    root = tmp_path_factory.mktemp("diff") / "runs"
    for name, r in (("small", 4), ("large", 8)):
        settings = {"steps": 4, "eval_every": 2, "probes": [PROMPT], "probe_every": 2, "probe_tokens": 4}
        lm.train(model=tiny_model_dir, data=records, r=r, name=name, runs_dir=root, **settings).wait()
    lm.free()
    return root


@pytest.fixture
def store(trained, tmp_path):
    """A copy of the trained store that a test may change."""
    return RunStore(shutil.copytree(trained, tmp_path / "runs"))


def test_a_diff_shows_the_settings_that_differ_the_metrics_the_curves_and_the_probes(store):
    diff = lm.diff("small", "large", runs_dir=store.root)
    assert isinstance(diff, RunDiff) and diff.runs == ["small", "large"]
    assert diff.settings.index.tolist() == ["r"] and diff.settings.loc["r"].tolist() == [4, 8]

    for name in diff.runs:
        record, events = store.read(name), History(store.events(name)[0]).events
        column = diff.metrics[name]
        assert column["status"] == "completed" and column["steps"] == "4/4"
        assert column["trainable_params"] == record["trainable_params"]
        assert column["first_eval_loss"] == record["metrics"]["first_eval_loss"]
        assert column["final_eval_loss"] == record["metrics"]["eval_loss"]
        assert column["best_eval_loss"] == record["metrics"]["best_eval_loss"]
        losses = [e["loss"] for e in events if e["type"] == "log"]
        assert (column["first_loss"], column["final_loss"]) == (losses[0], losses[-1])
        assert column["wall_seconds"] == pytest.approx(record["finished"] - record["started"])
        assert column["tokens_per_second"] > 0 and column["peak_memory_mb"] > 0
        assert [step for step, _ in diff.train[name]] == [1, 2, 3, 4]
        assert [step for step, _ in diff.eval[name]] == [0, 2, 4]
        last_probe = [e for e in events if e["type"] == "probe"][-1]
        assert last_probe["step"] == 4 and diff.probes.loc[PROMPT, name] == last_probe["adapter"]
        assert diff.probes.loc[PROMPT, "base"] == last_probe["base"]
    assert diff.metrics.loc["trainable_params", "large"] == 2 * diff.metrics.loc["trainable_params", "small"]
    assert diff.samples.empty  # no evaluation yet

    page = diff._repr_html_()
    png = base64.b64decode(re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page).group(1))
    assert png.startswith(b"\x89PNG") and diff.png().startswith(b"\x89PNG")
    assert "<script" not in page and "Settings that differ" in page and "Probe answers" in page
    assert html.escape(PROMPT) in page
    for name in diff.runs:
        assert answer_html(diff.probes.loc[PROMPT, name]) in page
    text = repr(diff)
    assert text.startswith("Runs small, large") and f"--- {PROMPT}" in text
    assert re.search(r"^\s+r\s+4\s+8$", text, re.MULTILINE)
    small, large = (f"{diff.metrics.loc['final_eval_loss', name]:.4f}" for name in diff.runs)
    assert re.search(rf"^  final_eval_loss +{small} +{large}$", text, re.MULTILINE)


def test_an_evaluation_shows_its_metrics_and_answers_beside_the_other_runs(store):
    evaluation = {
        "rows": 2,
        "max_new_tokens": 16,
        "metrics": {
            "base": {"eval_loss": 10.8, "token_f1": 0.05, "exact_match": 0.0},
            "large": {"eval_loss": 10.7, "perplexity": 44355.9, "token_f1": 0.25, "exact_match": 0.5},
        },
        "samples": [
            {
                "prompt": "Describe the <b>blue</b> lamp.",
                "reference": "A blue lamp & more.",
                "answers": {"base": "lamp lamp", "large": "A <i>blue</i> lamp."},
            },
            {
                "prompt": "Describe the kettle.",
                "reference": "A kettle.",
                "answers": {"base": "", "large": "A kettle."},
            },
        ],
    }
    store.file("large", "evaluation.json").write_text(json.dumps(evaluation))
    diff = lm.diff("small", "large", runs_dir=store.root)

    assert diff.metrics.loc["token_f1", "large"] == 0.25
    assert diff.metrics.loc["token_f1", "small"] is None  # not evaluated
    assert diff.samples.columns.tolist() == ["reference", "base", "small", "large"]
    row = diff.samples.loc["Describe the <b>blue</b> lamp."]
    assert row.tolist() == ["A blue lamp & more.", "lamp lamp", None, "A <i>blue</i> lamp."]

    page = diff._repr_html_()
    assert "Evaluation answers" in page and "<b>blue</b>" not in page and "<i>blue</i>" not in page
    assert "Describe the &lt;b&gt;blue&lt;/b&gt; lamp." in page and "A &lt;i&gt;blue&lt;/i&gt; lamp." in page
    assert "A blue lamp &amp; more." in page and "(empty answer)" in page
    assert re.search(r"exact_match</th><td[^>]*>—</td><td[^>]*>50%</td>", page)
    assert "  large: A <i>blue</i> lamp." in repr(diff) and "  small: —" in repr(diff)


def test_a_failed_run_shows_what_it_has(store):
    config = store.read("small")["config"]
    store.create("broken", {"name": "broken", "status": "failed", "config": {**config, "learning_rate": 1.0}})
    diff = lm.diff("small", "broken", runs_dir=store.root)
    assert diff.settings.index.tolist() == ["learning_rate"]
    assert diff.metrics.loc["status", "broken"] == "failed" and diff.metrics.loc["steps", "broken"] == "0/?"
    assert diff.metrics.loc["final_loss", "broken"] is None and diff.train["broken"] == []
    assert diff.probes.columns.tolist() == ["base", "small", "broken"]
    assert diff.probes.loc[PROMPT, "broken"] is None
    assert "data:image/png;base64," in diff._repr_html_()


def test_unknown_duplicate_and_single_runs_are_refused(store):
    with pytest.raises(RunError, match=r"no run named 'smal' in .* \(did you mean 'small'\?\)"):
        lm.diff("smal", "large", runs_dir=store.root)
    with pytest.raises(RunError, match=r"at least two runs, got 1"):
        lm.diff("small", runs_dir=store.root)
    with pytest.raises(RunError, match=r"run 'small' is named more than once"):
        lm.diff("small", "large", "small", runs_dir=store.root)
