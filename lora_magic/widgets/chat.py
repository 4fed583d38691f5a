"""The chat panel (`%lora chat`): a conversation with the base model or an adapter.

Each message goes to the model with the whole conversation, through the tokenizer's chat template.
The model can be switched between turns (each answer is labelled with who gave it), and Clear
starts over. Answers stream in as they are decoded.
"""

from __future__ import annotations

import html

import ipywidgets as w

from ..core.config import MAX_NEW_TOKENS, Sampling
from ..core.errors import LoraMagicError
from ..core.format import answer_html
from ..model.generation import Answer, Conversation
from ..model.session import BASE, session


class ChatPanel:
    def __init__(self, conversation: Conversation | None = None, sampling: Sampling | None = None):
        how = sampling or Sampling()
        self.conversation = conversation or Conversation()
        names = [BASE, *session().adapters]
        current = self.conversation.adapter or session().active
        self.adapter = w.Dropdown(
            options=names, value=current if current in names else BASE, description="talk to"
        )
        self.max_new_tokens = w.BoundedIntText(
            value=how.max_new_tokens,
            min=1,
            max=MAX_NEW_TOKENS,
            description="max tokens",
            style={"description_width": "auto"},
        )
        self.temperature = w.FloatSlider(
            value=how.temperature,
            min=0.0,
            max=2.0,
            step=0.05,
            description="temperature (0: greedy)",
            style={"description_width": "auto"},
        )
        self.transcript = w.HTML()
        self.message = w.Textarea(placeholder="Your message", layout=w.Layout(width="auto"))
        self.send_button = w.Button(description="Send", icon="paper-plane", button_style="primary")
        self.clear_button = w.Button(description="Clear", icon="eraser", tooltip="Start a new conversation")
        self.status = w.HTML()
        self.send_button.on_click(lambda _: self.send())
        self.clear_button.on_click(lambda _: self.clear())
        self.widget = w.VBox(
            [
                w.HBox(
                    [self.adapter, self.max_new_tokens, self.temperature],
                    layout=w.Layout(flex_flow="row wrap"),
                ),
                self.transcript,
                self.message,
                w.HBox([self.send_button, self.clear_button, self.status]),
            ]
        )
        self.widget.add_class("lora-magic-chat")
        self._render()

    def send(self) -> Answer | None:
        """Say the message box's text to the chosen model; its answer streams into the transcript."""
        text = self.message.value.strip()
        if not text:
            self.status.value = "Write a message first."
            return None
        streamed: list[str] = []
        self.send_button.disabled, self.status.value = True, ""
        self._render(pending=(text, streamed))
        try:
            answer = self.conversation.say(
                text,
                self.adapter.value,
                max_new_tokens=self.max_new_tokens.value,
                temperature=self.temperature.value,
                on_text=lambda piece: (streamed.append(piece), self._render(pending=(text, streamed))),
            )
        except LoraMagicError as error:  # shown in the panel: a click handler has nowhere else to say it
            self.status.value = f"<span style='color:#b00020'>{html.escape(str(error))}</span>"
            self._render()
            return None
        finally:
            self.send_button.disabled = False
        self.message.value = ""
        self._render()
        return answer

    def clear(self) -> None:
        self.conversation.clear()
        self.status.value = ""
        self._render()

    def _render(self, pending: tuple[str, list[str]] | None = None) -> None:
        turns = [(t["role"], t.get("adapter", ""), t["content"]) for t in self.conversation.turns]
        if pending:
            turns += [("user", "", pending[0]), ("assistant", self.adapter.value, "".join(pending[1]) or "…")]
        if not turns:
            self.transcript.value = "<i style='color:#888'>No messages yet.</i>"
            return
        rows = []
        for role, adapter, content in turns:
            who = "you" if role == "user" else adapter
            text = (
                f"<div style='white-space:pre-wrap'>{html.escape(content)}</div>"
                if role == "user"
                else answer_html(content)
            )
            rows.append(
                f"<div class='lora-magic-turn lora-magic-{role}'><b>{html.escape(who)}</b>{text}</div>"
            )
        self.transcript.value = "".join(rows)
