"""Held-out evaluation: the scores, what is saved, a run that evaluates itself, and bad requests.

Whether a tuned model beats its base is shown on the built-in model (test_real_model.py); the tiny
model here checks the mechanics and the scoring against answers whose scores are known.
"""

import json

import pytest

import lora_magic as lm
from lora_magic.core.config import RunConfig
from lora_magic.core.errors import DataError, RunError
from lora_magic.model.answering import Answer
from lora_magic.model.scoring import Example, _metrics, token_f1

REFERENCE = "Product 5 is a teal kettle for every day."


def example(reference=REFERENCE):
    return Example("### Response:\n", f"{reference}\n\n### End", reference)


def scores(answers, stopped=None, template="alpaca"):
    config = RunConfig(template=template, prompt_format="{q}", response_format="{a}")
    stopped = stopped or [True] * len(answers)
    replies = [Answer("tuned", text, 10, 1.0, ended) for text, ended in zip(answers, stopped)]
    return _metrics(2.0, replies, [example()] * len(answers), config)


def test_an_answer_equal_to_the_reference_scores_full_marks():
    result = scores([f"{REFERENCE}\n\n### End"])
    assert result["token_f1"] == result["rouge_l"] == result["exact_match"] == result["terminated"] == 1.0
    assert result["eval_loss"] == 2.0 and result["perplexity"] == pytest.approx(7.389, abs=1e-3)


def test_partial_and_unterminated_answers_score_in_between():
    result = scores(["Product 5 is a red lamp", f"{REFERENCE}\n\n### End\n\n### End", ""])
    f1 = token_f1(
        ["product", "5", "is", "a", "red", "lamp"],
        ["product", "5", "is", "a", "teal", "kettle", "for", "every", "day"],
    )
    assert f1 == pytest.approx(2 * (4 / 6) * (4 / 9) / (4 / 6 + 4 / 9))  # 4 words shared of 6 and 9
    assert result["token_f1"] == pytest.approx((f1 + 1.0 + 0.0) / 3)
    assert 0 < result["rouge_l"] < 1 and result["exact_match"] == pytest.approx(1 / 3)
    assert result["terminated"] == 0.0  # no terminator; one that went on past it; an empty answer


def test_other_templates_end_with_the_end_of_sequence_token():
    result = scores([REFERENCE, REFERENCE], stopped=[True, False], template="custom")
    assert result["terminated"] == 0.5 and result["exact_match"] == 1.0


@pytest.fixture
def trained(tiny_model_dir, records, runs_dir):
    """Two finished tiny-model runs with a held-out split of 6 rows; one evaluated itself."""
    common = {"model": tiny_model_dir, "data": records, "eval_fraction": 0.25, "steps": 3}
    first = lm.train(name="first", evaluate=True, **common).wait()
    second = lm.train(name="second", r=4, **common).wait()
    assert first.status == second.status == "completed", (first.error, second.error)
    return first, second


def test_a_run_with_evaluate_on_scores_itself_at_the_end(trained):
    run = trained[0]
    saved = json.loads((run.path / "evaluation.json").read_text())
    assert saved["rows"] == 6 and set(saved["metrics"]) == {"base", "first"}
    assert {s["reference"] for s in saved["samples"]} == {
        r["response"] for r in (json.loads(line) for line in (run.path / "data" / "eval.jsonl").open())
    }
    record = lm.RunStore().read("first")
    for key in ("token_f1", "rouge_l", "exact_match", "terminated", "answer_tokens", "perplexity"):
        assert record["metrics"][key] == saved["metrics"]["first"][key]
    started, scored = [e for e in run.events if e["type"] == "evaluation"]
    assert started["rows"] == 6 and "metrics" not in started and scored["metrics"] == saved["metrics"]
    assert run.events[-1]["status"] == "completed"  # the evaluation comes before the end


def test_evaluate_scores_the_base_and_each_run_and_saves_the_results(trained, records):
    evaluation = lm.evaluate("first", "second", limit=4)
    assert list(evaluation.table.index) == ["base", "first", "second"]
    assert len(evaluation.samples) == 4 and evaluation.answers.shape == (4, 5)
    for model, scores_ in evaluation.metrics.items():
        assert scores_["eval_loss"] > 0 and 0 <= scores_["token_f1"] <= 1, model
        assert scores_["answer_tokens"] <= evaluation.max_new_tokens
    saved = json.loads((trained[1].path / "evaluation.json").read_text())
    assert (
        set(saved["metrics"]) == {"base", "second"}
        and saved["metrics"]["second"] == evaluation.metrics["second"]
    )
    assert "first" not in saved["samples"][0]["answers"]
    html = evaluation._repr_html_()
    assert "token_f1" in html and "The first 4 answers" in html

    other = lm.evaluate("second", data=records[:2], max_new_tokens=5)
    assert other.data == "<list: 2 rows>" and len(other.samples) == 2 and other.max_new_tokens == 5
    assert all(m["answer_tokens"] <= 5 for m in other.metrics.values())


def test_bad_evaluation_requests_say_what_is_wrong(trained, tiny_model_dir, records):
    with pytest.raises(RunError, match=r"no run named 'frist'.*first"):
        lm.evaluate("frist")
    with pytest.raises(DataError, match="limit=0 is not valid"):
        lm.evaluate("first", limit=0)
    lm.train(model=tiny_model_dir, data=records, eval_fraction=0, steps=1, name="no-split").wait()
    with pytest.raises(DataError, match=r"held no data out for evaluation.*--data"):
        lm.evaluate("no-split")
    lm.train(model=tiny_model_dir, data=records, steps=1, name="chat", template="chat").wait()
    with pytest.raises(RunError, match="different templates"):
        lm.evaluate("first", "chat")
