"""Answers: the base and adapters answering a prompt side by side, and conversations, on the
session's model. How an answer is sampled is a `Sampling` (greedy by default)."""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..core.config import Sampling
from ..core.errors import RunError
from ..data.templates import prompt_for
from .answering import Answer, Question, answer_all
from .session import BASE, session

ANSWERING = "a prompt is being answered"  # the lease's reason while generation uses the model


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


class Comparisons(list):
    """Several prompts' comparisons: a row per prompt, a column per model."""

    def __repr__(self) -> str:
        return "\n\n".join(repr(c) for c in self)

    def _repr_html_(self) -> str:
        names = [a.name for a in self[0].answers] if self else []
        cell = "vertical-align:top;white-space:pre-wrap;text-align:left"
        heads = "".join(f"<th>{html.escape(n)}</th>" for n in ["prompt", *names])
        rows = "".join(
            f"<tr><td style='{cell}'>{html.escape(c.prompt)}</td>"
            + "".join(f"<td style='{cell}'>{html.escape(a.text)}</td>" for a in c.answers)
            + "</tr>"
            for c in self
        )
        return f"<table style='table-layout:fixed;width:100%'><tr>{heads}</tr>{rows}</table>"


def answer(name: str, text: str, sampling: Sampling, on_text: Callable[[str], None] | None = None) -> Answer:
    """`name`'s answer to `text` (the base with adapters off) on the session's model; the adapter in
    use stays in use. The caller holds the session's lease."""
    stream = (lambda _, piece: on_text(piece)) if on_text else None
    return answer_all([Question(name, text)], sampling, on_text=stream)[0]


def compare(
    prompt: str | list[str],
    adapters: list[str] | None = None,
    *,
    raw: bool = False,
    on_text: Callable[[str, str], None] | None = None,
    batch_size: int | None = None,
    **sampling: Any,
) -> Comparison | Comparisons:
    """Answer `prompt` with the base model and each adapter (default: all loaded), side by side;
    given a list of prompts, every one of them, in as few batched generations as memory allows.

    Each prompt is put in the template the adapters were trained with (unless raw), the same text
    for every column. `sampling`: max_new_tokens (96), temperature (0: greedy), top_p;
    `batch_size`: prompts answered at once at most (default: what memory allows); `on_text(name,
    piece)` hears one prompt's answers as they are decoded."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise RunError("give a prompt, or a list of prompts, none of them empty")
    how = Sampling(**sampling)
    shared = session()
    shared.require_model()
    names = adapters or [BASE, *shared.adapters]
    shared.check_names(names)
    shared.refuse_while_leased("generate")
    configs = [shared.adapters[n].config for n in names if n != BASE and shared.adapters[n].config]
    texts = [prompt_for(p, configs[0], shared.tokenizer) if configs and not raw else p for p in prompts]
    questions = [Question(name, text) for text in texts for name in names]
    stream = (lambda i, piece: on_text(questions[i].model, piece)) if on_text and len(prompts) == 1 else None
    with shared.leased(ANSWERING):  # nothing loads, frees or trains meanwhile (a button, a subshell)
        answers = answer_all(questions, how, batch_size=batch_size, on_text=stream)
    each = [Comparison(p, answers[k * len(names) : (k + 1) * len(names)]) for k, p in enumerate(prompts)]
    return each[0] if isinstance(prompt, str) else Comparisons(each)


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
