"""Shared fixtures: the built-in model, a tiny random Llama with a real tokenizer, an isolated run store."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def builtin_model_dir() -> str:
    """The built-in SmolLM2-135M-Instruct as a plain checkpoint (converted once per machine)."""
    from lora_magic.models import builtin_checkpoint

    return builtin_checkpoint("smollm2-135m")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, builtin_model_dir) -> str:
    """A 2-layer random Llama using SmolLM2's real tokenizer: trains hundreds of steps per minute."""
    from lora_magic.testing import tiny_llama

    return tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    """A fresh run store for each test, also the default for code that reads $LORA_MAGIC_RUNS."""
    folder = tmp_path / "runs"
    monkeypatch.setenv("LORA_MAGIC_RUNS", str(folder))
    return folder


@pytest.fixture(autouse=True)
def clean_session():
    """Each test starts with no run training and no model loaded in the shared session."""
    yield
    import sys

    if "lora_magic.training" in sys.modules:
        from lora_magic.generation import session
        from lora_magic.training import manager

        active = manager().active
        if active and not active.done:
            active.stop()
            active.wait()
        session().free()


@pytest.fixture
def records() -> list[dict[str, str]]:
    """24 short instruction/response records for fast tests."""
    colours = ["red", "blue", "green", "amber", "violet", "teal"]
    things = ["lamp", "kettle", "chair", "bottle"]
    return [
        {
            "instruction": f"Describe product {i}, the {colours[i % 6]} {things[i % 4]}.",
            "response": f"Product {i} is a {colours[i % 6]} {things[i % 4]} for every day.",
        }
        for i in range(24)
    ]
