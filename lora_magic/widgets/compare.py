"""The comparison panel (`%%compare`, `%lora compare`, `%lora chat`): one prompt, answered by the base
and chosen adapters side by side, streaming as tokens decode, with the panel's prompt history."""

from __future__ import annotations

import html
import time

import ipywidgets as w

from ..core.config import MAX_NEW_TOKENS, Sampling
from ..core.errors import LoraMagicError
from ..core.format import answer_html
from ..model.generation import Comparison, compare
from ..model.session import BASE, session

WRAP = {"flex_flow": "row wrap"}  # rows of controls wrap rather than overflow a narrow output


class Column:
    """One model's answer: a title, the text as it streams, and its speed."""

    def __init__(self, name: str):
        self.name, self.text, self.started = name, "", time.perf_counter()
        self.title = w.HTML(f"<b>{html.escape(name)}</b>")
        self.body = w.HTML()
        self.speed = w.HTML("<small>waiting…</small>")
        self.widget = w.VBox(
            [self.title, self.body, self.speed], layout=w.Layout(flex="1 1 0", min_width="0")
        )
        self.widget.add_class("lora-magic-column")

    def add(self, piece: str) -> None:
        if not self.text:
            self.started = time.perf_counter()
            self.speed.value = "<small>generating…</small>"
        self.text += piece
        self.body.value = answer_html(self.text) if self.text.strip() else ""

    def done(self, text: str, tokens: int, seconds: float) -> None:
        self.text = text
        self.body.value = answer_html(text)
        rate = tokens / seconds if seconds else 0.0
        self.speed.value = f"<small>{tokens} tokens, {rate:.1f} tokens/s</small>"


class ComparePanel:
    def __init__(self, prompt: str = "", adapters: list[str] | None = None, sampling: Sampling | None = None):
        how = sampling or Sampling()
        names = [BASE, *session().adapters]
        chosen = adapters or names
        self.prompt = w.Textarea(value=prompt, placeholder="A prompt", layout=w.Layout(width="auto"))
        self.max_new_tokens = w.BoundedIntText(
            value=how.max_new_tokens,
            min=1,
            max=MAX_NEW_TOKENS,
            description="max tokens",
            style={"description_width": "auto"},
        )
        self.sampling = w.ToggleButtons(
            options=["greedy", "sample"],
            value="greedy" if how.greedy else "sample",
            style={"button_width": "70px"},
        )
        self.temperature = w.FloatSlider(
            value=how.temperature or 0.7,
            min=0.05,
            max=2.0,
            step=0.05,
            description="temperature",
            style={"description_width": "auto"},
        )
        self.top_p = w.FloatSlider(
            value=how.top_p,
            min=0.05,
            max=1.0,
            step=0.05,
            description="top-p",
            style={"description_width": "auto"},
        )
        self.choices = {
            name: w.Checkbox(value=name in chosen, description=name, indent=False) for name in names
        }
        self.generate_button = w.Button(description="Generate", icon="play", button_style="primary")
        self.generate_button.on_click(lambda _: self.generate())
        self.message = w.HTML()
        self.columns = w.HBox()  # stretched by the panel; a width of 100% plus margins overflowed it
        self.history = w.Dropdown(options=[], value=None, description="history")
        self.history.observe(self._recall, "value")
        self.sampling.observe(lambda _: self._show_sampling(), "value")
        self._show_sampling()
        self.widget = w.VBox(
            [
                self.prompt,
                w.HBox(
                    [self.max_new_tokens, self.sampling, self.temperature, self.top_p],
                    layout=w.Layout(**WRAP),
                ),
                w.HBox(list(self.choices.values()), layout=w.Layout(**WRAP)),
                w.HBox([self.generate_button, self.message]),
                self.columns,
                self.history,
            ]
        )
        self.widget.add_class("lora-magic-compare")

    def _show_sampling(self) -> None:
        """Temperature and top-p only mean something when sampling: greedy hides them."""
        shown = None if self.sampling.value == "sample" else "none"
        self.temperature.layout.display = self.top_p.layout.display = shown

    def chosen(self) -> list[str]:
        return [name for name, box in self.choices.items() if box.value]

    def generate(self) -> Comparison | None:
        """Answer the prompt with every chosen model, streaming into the columns."""
        prompt, names = self.prompt.value.strip(), self.chosen()
        if not prompt or not names:
            self.message.value = "Write a prompt and choose at least one model."
            return None
        columns = {name: Column(name) for name in names}
        self.columns.children = [c.widget for c in columns.values()]
        self.generate_button.disabled, self.message.value = True, ""
        sampled = self.sampling.value == "sample"
        try:
            comparison = compare(
                prompt,
                names,
                max_new_tokens=self.max_new_tokens.value,
                temperature=self.temperature.value if sampled else 0.0,
                top_p=self.top_p.value if sampled else 1.0,
                on_text=lambda name, piece: columns[name].add(piece),
            )
        except LoraMagicError as error:  # shown in the panel: a click handler has nowhere else to say it
            self.message.value = f"<span style='color:#b00020'>{html.escape(str(error))}</span>"
            self.columns.children = ()  # no column waits for an answer that will not come
            return None
        finally:
            self.generate_button.disabled = False
        for answer in comparison.answers:
            columns[answer.name].done(answer.text, answer.tokens, answer.seconds)
        if prompt not in self.history.options:
            self.history.options = [*self.history.options, prompt]
        self.history.value = prompt
        return comparison

    def _recall(self, change: dict) -> None:
        if change["new"]:
            self.prompt.value = change["new"]
