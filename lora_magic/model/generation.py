"""Answers: the base and adapters answering a prompt side by side, and conversations, on the
session's model. How an answer is sampled is a `Sampling` (greedy by default)."""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

from ..core.config import Sampling
from ..core.errors import RunError
from ..data.templates import prompt_for
from .session import BASE, session

ANSWERING = "a prompt is being answered"  # the lease's reason while generation uses the model


@dataclass
class Answer:
    name: str
    text: str
    tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


@dataclass
class Comparison:
    """Answers of the base and adapters to one prompt, side by side."""

    prompt: str
    answers: list[Answer] = field(default_factory=list)

    def __getitem__(self, name: str) -> str:
        return next(a.text for a in self.answers if a.name == name)

    def __repr__(self) -> str:
        blocks = [f"Prompt: {self.prompt}"]
        for a in self.answers:
            blocks.append(
                f"--- {a.name} ({a.tokens} tokens, {a.tokens_per_second:.1f} tokens/s) ---\n{a.text}"
            )
        return "\n".join(blocks)

    def _repr_html_(self) -> str:
        heads = "".join(
            f"<th>{html.escape(a.name)}<br><small>{a.tokens} tokens, {a.tokens_per_second:.1f} tokens/s</small></th>"
            for a in self.answers
        )
        cells = "".join(
            f"<td style='vertical-align:top;white-space:pre-wrap;text-align:left'>{html.escape(a.text)}</td>"
            for a in self.answers
        )
        return (
            f"<p><b>Prompt:</b> {html.escape(self.prompt)}</p>"
            f"<table style='table-layout:fixed;width:100%'><tr>{heads}</tr><tr>{cells}</tr></table>"
        )


class _CallbackStreamer(TextStreamer):
    """Hands each newly decoded piece of text to a callback as generation goes."""

    def __init__(self, tokenizer: Any, on_text: Callable[[str], None]):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.on_text = on_text

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.on_text(text)


class _Until(StoppingCriteria):
    """Ends generation at the next token once `wanted()` says so (a run's Stop, say)."""

    def __init__(self, wanted: Callable[[], bool]):
        self.wanted = wanted

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        return torch.full((input_ids.shape[0],), self.wanted(), dtype=torch.bool, device=input_ids.device)


def generate_text(
    model: Any,
    tokenizer: Any,
    text: str,
    sampling: Sampling,
    on_text: Callable[[str], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> tuple[str, int]:
    """(answer, number of new tokens) for `text` with whatever adapter is active on `model`;
    `stop()`, asked at every token, ends it early."""
    inputs = tokenizer(text, return_tensors="pt").to(model.device)
    with torch.no_grad():
        output = model.generate(
            **inputs,
            **sampling.generate_arguments(),
            pad_token_id=tokenizer.pad_token_id,
            streamer=_CallbackStreamer(tokenizer, on_text) if on_text else None,
            stopping_criteria=StoppingCriteriaList([_Until(stop)]) if stop else None,
            use_cache=True,  # the trainer may have switched the cache off in the model config
        )
    new = output[0, inputs["input_ids"].shape[1] :]
    return tokenizer.decode(new, skip_special_tokens=True), len(new)


def answer(name: str, text: str, sampling: Sampling, on_text: Callable[[str], None] | None = None) -> Answer:
    """`name`'s answer to `text` (the base with adapters off) on the session's model; the adapter in
    use stays in use. The caller holds the session's lease."""
    shared = session()
    shared.model.eval()
    start = time.perf_counter()
    with shared.answering_as(name):
        text, count = generate_text(shared.model, shared.tokenizer, text, sampling, on_text)
    return Answer(name, text, count, time.perf_counter() - start)


def compare(
    prompt: str,
    adapters: list[str] | None = None,
    *,
    raw: bool = False,
    on_text: Callable[[str, str], None] | None = None,
    **sampling: Any,
) -> Comparison:
    """Answer `prompt` with the base model and each adapter (default: all loaded), side by side.

    The prompt is put in the template the adapters were trained with (unless raw), the same text
    for every column. `sampling`: max_new_tokens (96), temperature (0: greedy), top_p."""
    how = Sampling(**sampling)
    shared = session()
    shared.require_model()
    names = adapters or [BASE, *shared.adapters]
    shared.check_names(names)
    shared.refuse_while_leased("generate")
    configs = [shared.adapters[n].config for n in names if n != BASE and shared.adapters[n].config]
    text = prompt_for(prompt, configs[0], shared.tokenizer) if configs and not raw else prompt
    result = Comparison(prompt)
    with shared.leased(ANSWERING):  # nothing loads, frees or trains meanwhile (a button, a subshell)
        for name in names:
            stream = (lambda piece, name=name: on_text(name, piece)) if on_text else None
            result.answers.append(answer(name, text, how, stream))
    return result


def chat_text(messages: list[dict[str, str]], tokenizer: Any) -> str:
    """A conversation as the model reads it: the tokenizer's chat template with the assistant's
    turn opened, or for a tokenizer without one, a plain 'User:' / 'Assistant:' transcript."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n".join([*lines, "Assistant:"])


class Conversation:
    """A chat with the base model or an adapter. Every turn is sent with the whole history; the
    adapter can change between turns (each answer records who gave it); `clear` starts over."""

    def __init__(self, adapter: str | None = None, system_prompt: str | None = None):
        self.adapter = adapter  # None: the session's adapter in use
        self.system_prompt = system_prompt
        self.turns: list[dict[str, str]] = []  # role, content, and for answers the adapter

    def say(
        self,
        message: str,
        adapter: str | None = None,
        on_text: Callable[[str], None] | None = None,
        **sampling: Any,
    ) -> Answer:
        """Add `message` and the model's answer to the conversation; returns the answer."""
        if not message.strip():
            raise RunError("say something: the message is empty")
        how = Sampling(**sampling)
        shared = session()
        shared.require_model()
        self.adapter = adapter or self.adapter
        name = self.adapter or shared.active
        shared.check_names([name])
        shared.refuse_while_leased("generate")
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        history = [{"role": t["role"], "content": t["content"]} for t in self.turns]
        messages = [*system, *history, {"role": "user", "content": message}]
        with shared.leased(ANSWERING):
            reply = answer(name, chat_text(messages, shared.tokenizer), how, on_text)
        self.turns += [
            {"role": "user", "content": message},
            {"role": "assistant", "content": reply.text, "adapter": reply.name},
        ]
        return reply

    def clear(self) -> None:
        self.turns.clear()

    def __repr__(self) -> str:
        lines = [
            f"[{t['adapter']}] {t['content']}" if t["role"] == "assistant" else f"> {t['content']}"
            for t in self.turns
        ]
        return "\n".join(lines) or "<Conversation: no turns yet>"
