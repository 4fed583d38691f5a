"""The answering engine: many prompts, each for the base or an adapter, answered in as few batched
generations as memory allows. Evaluation, comparison, the probes during training and conversations
all answer through `answer_all`.

Decoding a small model is bound by reading its weights, once per generated token, so a batch of
prompts answers many times the tokens a second of one prompt, with the same greedy answers. So the
prompts are left-padded into batches, one model's together and the longest first (padding wastes
least), as many to a batch as the memory left allows. A batch whose prompts are all for one model
answers with that adapter folded into the weights (`session.folded`: the base's speed); a batch
that mixes models gives PEFT each row's adapter (a mixed-adapter batch), so the base and several
adapters answer a prompt in one pass. Where PEFT cannot mix a base's adapters (a LoRA variant),
each model gets its own batches. A batch that runs out of memory is answered again in halves, with
a note.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from ..core.config import Sampling
from ..core.errors import ConfigError
from .memory import answering_bytes
from .session import BASE, available_memory, session

# Prompts in one batch at most. On a 2-core CPU a batch of 64 generates about nine times the tokens
# a second of one prompt (benchmarks/answering.py --cases throughput, docs/performance.md).
MOST_AT_ONCE = 64
MEMORY_SHARE = 0.25  # of the memory left, what a batch may plan to take
PEFT_BASE = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch


@dataclass(frozen=True)
class Question:
    model: str  # BASE or an adapter's name
    text: str  # the prompt as the model reads it (in its template)


@dataclass
class Answer:
    name: str  # the model that answered
    text: str
    tokens: int  # new tokens, the end-of-sequence token included when the model ended the answer
    seconds: float  # from its batch's start until the answer was complete
    ended: bool = False  # the model ended the answer itself, rather than running out of tokens

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def answer_all(
    questions: list[Question],
    sampling: Sampling,
    *,
    add_special_tokens: bool = True,
    batch_size: int | None = None,
    on_text: Callable[[int, str], None] | None = None,
    stop: Callable[[], bool] | None = None,
    note: Callable[[str], None] = print,
) -> list[Answer]:
    """Every question's answer, in the order asked, on the session's model.

    `batch_size`: prompts answered together at most (default: what the memory left allows, up to
    64); `on_text(i, piece)` hears each piece of question i's answer as it is decoded;
    `stop()`, asked at every token, ends the answering: what is unanswered then stays empty. The
    caller holds the session's lease (or is the run that holds it)."""
    check_batch_size(batch_size)
    shared = session()
    model, tokenizer = shared.model, shared.tokenizer
    lengths = [len(tokenizer(q.text, add_special_tokens=add_special_tokens)["input_ids"]) for q in questions]
    # One model's prompts together (a batch of them folds that adapter), longest first within it.
    order = sorted(
        range(len(questions)), key=lambda i: (questions[i].model != BASE, questions[i].model, -lengths[i])
    )
    size = batch_size or _batch_size(model, max(lengths, default=1) + sampling.max_new_tokens)
    answers = [Answer(q.model, "", 0, 0.0) for q in questions]
    mixable = _mixable(model)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    was_training = model.training
    model.eval()  # no dropout; and PEFT mixes adapters only in evaluation mode
    try:
        pending = list(order)
        while pending and not (stop and stop()):
            rows = _next_batch(pending, questions, size, mixable)
            try:
                replies = _generate(
                    [questions[i] for i in rows], sampling, add_special_tokens, stop, on_text, rows
                )
            except torch.OutOfMemoryError:
                if len(rows) == 1:
                    raise
                size = len(rows) // 2
                _free_cache(model)
                note(f"answering {len(rows)} prompts at once ran out of memory; answering {size} at a time")
                continue
            for i, reply in zip(rows, replies):
                answers[i] = reply
            answered = set(rows)
            pending = [i for i in pending if i not in answered]
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return answers


def check_batch_size(batch_size: Any) -> None:
    if batch_size is not None and not (
        isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size >= 1
    ):
        raise ConfigError(
            f"batch_size={batch_size!r} is not valid; it must be a whole number of at least 1, or None"
        )


def _next_batch(pending: list[int], questions: list[Question], size: int, mixable: bool) -> list[int]:
    """The next at most `size` of the pending questions; of one model only, where models cannot mix."""
    if mixable:
        return pending[:size]
    first = questions[pending[0]].model
    return [i for i in pending if questions[i].model == first][:size]


def _generate(
    batch: list[Question],
    sampling: Sampling,
    add_special_tokens: bool,
    stop: Callable[[], bool] | None,
    on_text: Callable[[int, str], None] | None,
    numbers: list[int],
) -> list[Answer]:
    shared = session()
    model, tokenizer = shared.model, shared.tokenizer
    inputs = tokenizer(
        [q.text for q in batch], return_tensors="pt", padding=True, add_special_tokens=add_special_tokens
    ).to(model.device)
    ends = _end_tokens(model, tokenizer)
    streamer = _Rows(tokenizer, ends, (lambda row, piece: on_text(numbers[row], piece)) if on_text else None)
    start = time.perf_counter()
    with _answering_as(shared, [q.model for q in batch]) as mixed, torch.no_grad():
        output = model.generate(
            **inputs,
            **sampling.generate_arguments(),
            **mixed,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(ends),
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([_Until(stop)]) if stop else None,
            use_cache=True,  # the trainer may have switched the cache off in the model config
        )
    done = time.perf_counter()
    answers = []
    for row, (question, tokens) in enumerate(zip(batch, output[:, inputs["input_ids"].shape[1] :].tolist())):
        end = next((n for n, token in enumerate(tokens) if token in ends), None)
        tokens = tokens if end is None else tokens[: end + 1]
        seconds = (streamer.ended.get(row) or done) - start
        answers.append(
            Answer(
                question.model,
                tokenizer.decode(tokens, skip_special_tokens=True),
                len(tokens),
                seconds,
                end is not None,
            )
        )
    return answers


@contextlib.contextmanager
def _answering_as(shared: Any, models: list[str]) -> Iterator[dict[str, Any]]:
    """The model answers each row as its model; yields the generate keywords that take. A batch of
    one model folds its adapter; a mixed batch gives PEFT each row's adapter."""
    if len(set(models)) == 1:
        with shared.answering_as(models[0]):
            yield {}
    else:
        yield {"adapter_names": [PEFT_BASE if m == BASE else m for m in models]}


def _mixable(model: Any) -> bool:
    """Whether PEFT can answer this model's adapters in mixed batches: plain LoRA, no variant."""
    layers = [m for m in model.modules() if hasattr(m, "lora_A")]
    return all(not getattr(layer, "lora_variant", None) for layer in layers)


def _end_tokens(model: Any, tokenizer: Any) -> set[int]:
    """The tokens that end an answer: the tokenizer's end of sequence and the model's own."""
    configured = model.generation_config.eos_token_id
    ends = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    if tokenizer.eos_token_id is not None:
        ends.add(tokenizer.eos_token_id)
    return ends


def _batch_size(model: Any, tokens: int) -> int:
    """Prompts of `tokens` (prompt and answer) that fit a quarter of the memory left, 64 at most."""
    weight = next(model.parameters())
    element = weight.element_size() if weight.dtype.is_floating_point else 2
    per_row = answering_bytes(model.config.get_text_config(), tokens, element)
    fits = int(available_memory(weight.device) * MEMORY_SHARE // per_row)
    return max(1, min(MOST_AT_ONCE, fits))


def _free_cache(model: Any) -> None:
    gc.collect()
    if next(model.parameters()).device.type == "cuda":
        torch.cuda.empty_cache()


class _Rows(BaseStreamer):
    """Follows a batched generation token by token: hands each row's newly decoded text to
    `on_text(row, piece)` and notes when each row's answer ended."""

    def __init__(self, tokenizer: Any, ends: set[int], on_text: Callable[[int, str], None] | None):
        self.tokenizer, self.ends, self.on_text = tokenizer, ends, on_text
        self.tokens: list[list[int]] = []
        self.shown: list[int] = []  # characters of each row's text handed on
        self.ended: dict[int, float] = {}  # row -> when its answer ended
        self.prompt = True

    def put(self, value: torch.Tensor) -> None:
        if self.prompt:  # the first call brings the prompts
            self.prompt = False
            self.tokens = [[] for _ in range(value.shape[0])]
            self.shown = [0] * value.shape[0]
            return
        now = time.perf_counter()
        for row, token in enumerate(value.reshape(-1).tolist()):
            if row in self.ended:
                continue
            if token in self.ends:
                self.ended[row] = now
                continue
            self.tokens[row].append(token)
            self._hand_on(row, final=False)

    def end(self) -> None:
        for row in range(len(self.tokens)):
            self._hand_on(row, final=True)

    def _hand_on(self, row: int, final: bool) -> None:
        if not self.on_text:
            return
        text = self.tokenizer.decode(self.tokens[row], skip_special_tokens=True)
        if text.endswith("\ufffd") and not final:  # perhaps half a character: wait for the rest
            return
        if text[self.shown[row] :]:
            self.on_text(row, text[self.shown[row] :])
        self.shown[row] = len(text)


class _Until(StoppingCriteria):
    """Ends generation at the next token once `wanted()` says so (a run's Stop, say)."""

    def __init__(self, wanted: Callable[[], bool]):
        self.wanted = wanted

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        return torch.full((input_ids.shape[0],), self.wanted(), dtype=torch.bool, device=input_ids.device)
