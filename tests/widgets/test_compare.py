"""The comparison panel with real generation from the tiny model and a trained adapter."""

from __future__ import annotations

import pytest
import torch

import lora_magic
from lora_magic.core.config import Sampling
from lora_magic.core.format import answer_html
from lora_magic.widgets import ComparePanel

PROMPT = "Describe the red lamp."


@pytest.fixture
def trained(tiny_model_dir, records, runs_dir):
    run = lora_magic.train(model=tiny_model_dir, data=records, steps=2, eval_fraction=0, runs_dir=runs_dir)
    return run.wait(60)


def test_generate_fills_one_column_per_model(trained):
    panel = ComparePanel(PROMPT, sampling=Sampling(max_new_tokens=6))
    assert list(panel.choices) == ["base", trained.name]
    comparison = panel.generate()
    columns = panel.columns.children
    assert [c.children[0].value for c in columns] == ["<b>base</b>", f"<b>{trained.name}</b>"]
    for column, answer in zip(columns, comparison.answers):
        assert column.children[1].value == answer_html(answer.text)  # "(empty answer)" when blank
        assert (
            f"{answer.tokens} tokens" in column.children[2].value and "tokens/s" in column.children[2].value
        )
    assert panel.history.options == (PROMPT,)
    assert not panel.generate_button.disabled


def test_text_streams_into_the_column_piece_by_piece(trained):
    torch.manual_seed(0)  # sampled, so the random tiny model writes visible text rather than blank lines
    panel = ComparePanel(
        PROMPT, adapters=[trained.name], sampling=Sampling(max_new_tokens=8, temperature=1.0)
    )
    shown = []

    def follow_column(change):
        change["new"][0].children[1].observe(lambda c: shown.append(c["new"]), "value")

    panel.columns.observe(follow_column, "children")
    comparison = panel.generate()
    assert len(shown) >= 3  # several pieces as they decode, then the final text
    assert shown[-1] == answer_html(comparison.answers[0].text) and comparison.answers[0].text.strip()


def test_sampling_controls_and_model_choice(trained):
    panel = ComparePanel(PROMPT, sampling=Sampling(max_new_tokens=4, temperature=0.8, top_p=0.9))
    assert panel.sampling.value == "sample" and panel.temperature.layout.display is None
    panel.sampling.value = "greedy"  # temperature and top-p mean nothing then: hidden
    assert panel.temperature.layout.display == panel.top_p.layout.display == "none"
    panel.choices["base"].value = False
    comparison = panel.generate()
    assert [a.name for a in comparison.answers] == [trained.name]
    panel.choices[trained.name].value = False
    assert panel.generate() is None and "choose at least one" in panel.message.value


def test_history_recalls_an_earlier_prompt(trained):
    panel = ComparePanel("first prompt", sampling=Sampling(max_new_tokens=2))
    panel.generate()
    panel.prompt.value = "second prompt"
    panel.generate()
    assert panel.history.options == ("first prompt", "second prompt")
    panel.history.value = "first prompt"
    assert panel.prompt.value == "first prompt"


def test_generation_refused_while_training_is_shown_in_the_panel(trained, tiny_model_dir, records, runs_dir):
    panel = ComparePanel(PROMPT, sampling=Sampling(max_new_tokens=2))
    run = lora_magic.train(model=tiny_model_dir, data=records, steps=30, eval_fraction=0, runs_dir=runs_dir)
    assert panel.generate() is None
    assert "while run" in panel.message.value and run.name in panel.message.value
    run.stop()
    run.wait(60)
