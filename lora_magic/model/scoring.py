"""Scoring on held-out prompts: the base and adapters answer them greedily and are scored against
the references.

Per model: eval loss and perplexity (teacher-forced, on the response tokens the training scores),
token-F1, ROUGE-L (rouge-score), exact match, the share of answers that end with the template's
terminator, and the mean answer length. `lm.evaluate` (`%lora eval`) and a run with
`evaluate: true` both score with `score()`; each run's results go to its `evaluation.json`, which
the run comparison and the sweep table read.
"""

from __future__ import annotations

import html
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.config import RunConfig, Sampling
from ..core.errors import DataError
from ..core.format import answer_html
from ..core.results import EVALUATION_FILE
from ..core.store import RunStore, write_json_atomic
from ..data.sources import fingerprint
from ..data.templates import ALPACA_END, render
from ..data.tokens import encode
from .answering import Answer, Question, answer_all
from .session import BASE, session

METRICS = ("eval_loss", "perplexity", "token_f1", "rouge_l", "exact_match", "terminated", "answer_tokens")
BATCH = 8  # examples per teacher-forced loss forward
SAMPLES_SHOWN = 5

# The base model's results, by (base, quantisation, prompts, answer length): a sweep scores it once.
_base_results: dict[tuple, tuple[dict, list[str]]] = {}


@dataclass
class Example:
    prompt: str  # in the template
    completion: str  # what the training scores, terminator included
    reference: str  # the answer to compare with (no terminator)


@dataclass
class Evaluation:
    """Scores of the base and each adapter on the same held-out prompts, and their answers."""

    data: str
    max_new_tokens: int
    metrics: dict[str, dict[str, float]]  # model -> metric -> value
    samples: list[dict[str, Any]] = field(repr=False)  # prompt, reference, answers {model: text}

    @property
    def table(self) -> Any:
        """The metrics as a DataFrame, a row per model."""
        import pandas as pd

        return pd.DataFrame.from_dict(self.metrics, orient="index")[list(METRICS)]

    @property
    def answers(self) -> Any:
        """Each prompt's reference and every model's answer, as a DataFrame."""
        import pandas as pd

        return pd.DataFrame(
            [{"prompt": s["prompt"], "reference": s["reference"], **s["answers"]} for s in self.samples]
        )

    @classmethod
    def of(
        cls, data: str, max_new_tokens: int, examples: list[Example], results: dict[str, tuple[dict, list]]
    ) -> Evaluation:
        """From what `score` gives: {model: (metrics, answers)}."""
        samples = [
            {
                "prompt": e.prompt,
                "reference": e.reference,
                "answers": {m: a[i] for m, (_, a) in results.items()},
            }
            for i, e in enumerate(examples)
        ]
        return cls(data, max_new_tokens, {m: metrics for m, (metrics, _) in results.items()}, samples)

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": self.data,
            "rows": len(self.samples),
            "max_new_tokens": self.max_new_tokens,
            "created": time.time(),
            "metrics": self.metrics,
            "samples": self.samples,
        }

    def summary(self) -> str:
        return f"{len(self.samples)} held-out prompts from {self.data}, answered greedily (at most {self.max_new_tokens} new tokens)"

    def __repr__(self) -> str:
        lines = [self.summary(), self.table.round(4).to_string(), ""]
        for sample in self.samples[:SAMPLES_SHOWN]:
            lines.append(f"--- {sample['prompt'][:200]}")
            lines.append(f"  reference: {sample['reference'][:200]}")
            lines += [f"  {name}: {text[:200]}" for name, text in sample["answers"].items()]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        cell = "vertical-align:top;text-align:left"
        models = list(self.metrics)
        heads = "".join(f"<th style='{cell}'>{html.escape(m)}</th>" for m in ["prompt", "reference", *models])
        rows = "".join(
            f"<tr><td style='{cell}'>{answer_html(s['prompt'])}</td>"
            + "".join(
                f"<td style='{cell}'>{answer_html(text)}</td>"
                for text in [s["reference"], *(s["answers"][m] for m in models)]
            )
            + "</tr>"
            for s in self.samples[:SAMPLES_SHOWN]
        )
        return (
            f"<p>{html.escape(self.summary())}</p>{self.table.to_html(float_format=lambda x: f'{x:.4g}')}"
            f"<p>The first {min(SAMPLES_SHOWN, len(self.samples))} answers:</p>"
            f"<table class='lora-magic-eval' style='table-layout:fixed;width:100%'><tr>{heads}</tr>{rows}</table>"
        )


def save(store: RunStore, name: str, evaluation: Evaluation, models: list[str]) -> None:
    """Write `name`'s evaluation.json with the scores and answers of `models` (its base and itself)."""
    result = evaluation.to_dict()
    result["metrics"] = {m: evaluation.metrics[m] for m in models}
    result["samples"] = [{**s, "answers": {m: s["answers"][m] for m in models}} for s in evaluation.samples]
    write_json_atomic(store.path(name) / EVALUATION_FILE, result)


# -- scoring ----------------------------------------------------------------------------------------
def examples_for(records: list[dict], config: RunConfig, tokenizer: Any, limit: int | None) -> list[Example]:
    """The records as prompts in the run's template, with what the training scores and the reference."""
    examples = []
    for row, record in enumerate(records[:limit]):
        prompt, completion = render(record, row, config, tokenizer)
        if config.template == "alpaca":
            reference = completion.removesuffix(f"\n\n{ALPACA_END}")
        elif config.template == "chat":  # the completion holds the chat template's own end markers
            reference = str(record[config.response_field])
        else:
            reference = completion
        examples.append(Example(prompt, completion, reference.strip()))
    if not examples:
        raise DataError("there are no prompts to evaluate: the data has no rows")
    return examples


def answer_budget(examples: list[Example], tokenizer: Any) -> int:
    """New tokens enough for the longest reference answer with its terminator, and some slack."""
    longest = max(len(tokenizer(e.completion, add_special_tokens=False)["input_ids"]) for e in examples)
    return longest + 16


def score(
    names: list[str],
    examples: list[Example],
    config: RunConfig,
    max_new_tokens: int,
    batch_size: int | None = None,
) -> dict[str, tuple[dict[str, float], list[str]]]:
    """(metrics, answers) of the base and of each adapter in `names`, on the session's model. Every
    model's answers come from one batched answering (model/answering.py); `batch_size` caps it.

    The caller holds the session's lease: a run scoring itself, or `evaluate`."""
    shared = session()
    model, tokenizer = shared.model, shared.tokenizer
    key = (shared.resolved, shared.base, fingerprint([e.__dict__ for e in examples]), max_new_tokens)
    models = [name for name in [BASE, *names] if not (name == BASE and key in _base_results)]
    questions = [Question(name, e.prompt) for name in models for e in examples]
    replies = answer_all(
        questions,
        Sampling(max_new_tokens=max_new_tokens),
        add_special_tokens=config.template != "chat",  # the chat template writes its own
        batch_size=batch_size,
    )
    results = {BASE: _base_results[key]} if BASE not in models else {}
    was_training = model.training
    model.eval()
    try:
        for k, name in enumerate(models):
            answers = replies[k * len(examples) : (k + 1) * len(examples)]
            with shared.answering_as(name):
                loss = _loss(model, tokenizer, examples, config)
            results[name] = (_metrics(loss, answers, examples, config), [a.text for a in answers])
            if name == BASE:
                _base_results[key] = results[name]
    finally:
        model.train(was_training)
    return {name: results[name] for name in [BASE, *names]}


def _loss(model: Any, tokenizer: Any, examples: list[Example], config: RunConfig) -> float:
    """Mean cross-entropy over every scored (response) token of the examples."""
    total, count = 0.0, 0
    for start in range(0, len(examples), BATCH):
        encoded = [encode(e.prompt, e.completion, tokenizer, config) for e in examples[start : start + BATCH]]
        width = max(len(e["input_ids"]) for e in encoded)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        ids = torch.tensor([e["input_ids"] + [pad] * (width - len(e["input_ids"])) for e in encoded])
        labels = torch.tensor([e["labels"] + [-100] * (width - len(e["labels"])) for e in encoded])
        mask = torch.tensor(
            [[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in encoded]
        )
        with torch.no_grad():
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
        targets = labels[:, 1:].to(logits.device)
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), targets, ignore_index=-100, reduction="sum"
        )
        total += losses.item()
        count += int((targets != -100).sum())
    return total / max(count, 1)


def _metrics(
    loss: float, answers: list[Answer], examples: list[Example], config: RunConfig
) -> dict[str, float]:
    from rouge_score import rouge_scorer, tokenizers

    words = tokenizers.DefaultTokenizer(use_stemmer=False).tokenize
    rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    f1, rouge_l, exact, ended = [], [], [], []
    for answer, example in zip(answers, examples):
        text = answer.text.strip()
        if config.template == "alpaca":  # its terminator is a line of text; the others' is the end token
            ended.append(text.endswith(ALPACA_END) and text.count(ALPACA_END) == 1)  # and it stopped there
            text = text.split(ALPACA_END)[0].strip()
        else:
            ended.append(answer.ended)
        f1.append(token_f1(words(text), words(example.reference)))
        rouge_l.append(rouge.score(example.reference, text)["rougeL"].fmeasure)
        exact.append(words(text) == words(example.reference))
    n = len(answers)
    return {
        "eval_loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "token_f1": sum(f1) / n,
        "rouge_l": sum(rouge_l) / n,
        "exact_match": sum(exact) / n,
        "terminated": sum(ended) / n,
        "answer_tokens": sum(a.tokens for a in answers) / n,
    }


def token_f1(answer: list[str], reference: list[str]) -> float:
    """F1 of the answer's words against the reference's, counting repeated words (as SQuAD does)."""
    common = sum((Counter(answer) & Counter(reference)).values())
    if not answer or not reference or common == 0:
        return float(answer == reference)
    precision, recall = common / len(answer), common / len(reference)
    return 2 * precision * recall / (precision + recall)
