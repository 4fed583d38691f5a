"""Shared fixtures: the built-in model, a tiny random Llama with a tokenizer of its own, an isolated
run store; and the order of the work when the suite runs on several workers."""

from __future__ import annotations

import pytest

# scripts/test.sh runs the suite on two pytest-xdist workers (--dist loadgroup). Each test module
# goes to one worker as a whole, so its module-scoped fixtures (trained runs) are made once; the
# example notebooks go one by one. The longest work starts first (seconds from --durations on the
# 2-core machine, one thread a worker: the built-in model's runs 480 and 420 in two groups that share
# no run, data_efficiency 410, the hosted runtime 280, the LoRA variants on the built-in model 280,
# the other notebooks 90 to 220 each), so that none of it is left to start last.
LONGEST_FIRST = (
    "tests/engine/test_real_model.py",
    "tests/engine/test_variants_real_model.py",
    "tests/notebooks/test_examples.py::test_example_notebook_runs_headless[data_efficiency]",
    "tests/hosted/",
    "tests/notebooks/test_examples.py",
)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        grouped = item.get_closest_marker("xdist_group") is not None  # a module's own finer groups
        if not grouped and not item.nodeid.startswith("tests/notebooks/test_examples.py"):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
    items.sort(
        key=lambda item: next((i for i, p in enumerate(LONGEST_FIRST) if item.nodeid.startswith(p)), 99)
    )


@pytest.fixture(scope="session")
def builtin_model_dir() -> str:
    """The built-in SmolLM2-135M-Instruct as a plain checkpoint (converted once per machine)."""
    from lora_magic.core.catalogue import builtin_checkpoint

    return builtin_checkpoint("smollm2-135m")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A 2-layer random Llama with a small tokenizer of its own: trains hundreds of steps per minute."""
    from lora_magic.model.tiny import tiny_llama

    return tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def wide_tiny_model_dir(tmp_path_factory) -> str:
    """The tiny Llama with SmolLM2's vocabulary size (49,152 rows): its vocabulary projection is
    most of its memory and work, as in a small real model."""
    from lora_magic.model.tiny import tiny_llama

    return tiny_llama(tmp_path_factory.mktemp("wide-tiny-llama"), vocab_size=49152)


@pytest.fixture(scope="session")
def smollm2_layers_dir(tmp_path_factory) -> str:
    """Four random decoder layers of SmolLM2-135M's shape with the tiny model's small vocabulary:
    the layers' activations are most of its memory, and a step of 4 x 256 tokens takes seconds."""
    from lora_magic.model.tiny import tiny_llama

    return tiny_llama(
        tmp_path_factory.mktemp("smollm2-layers"),
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=4,
        num_attention_heads=9,
        num_key_value_heads=3,
    )


# The source experiment's model, OpenLLaMA-3B-v2: its published config.json, without the weights.
OPENLLAMA_3B_V2 = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 3200,
    "intermediate_size": 8640,
    "num_hidden_layers": 26,
    "num_attention_heads": 32,
    "vocab_size": 32000,
    "max_position_embeddings": 2048,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-06,
    "initializer_range": 0.02,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "torch_dtype": "float16",
    "use_cache": True,
}


@pytest.fixture(scope="session")
def openllama_3b_dir(tmp_path_factory) -> str:
    """A folder holding OpenLLaMA-3B-v2's config.json and no weights."""
    import json

    folder = tmp_path_factory.mktemp("open_llama_3b_v2")
    (folder / "config.json").write_text(json.dumps(OPENLLAMA_3B_V2, indent=2))
    return str(folder)


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

    if "lora_magic.training.trainer" in sys.modules:
        from lora_magic.training.trainer import manager

        active = manager().active
        if active and not active.done:
            active.stop()
            active.wait()
    if "lora_magic.model.session" in sys.modules:
        from lora_magic.model.session import session

        if session().model is not None:
            session().free()


@pytest.fixture(scope="session")
def records() -> list[dict[str, str]]:
    """24 short instruction/response records for fast tests (shared: do not modify them)."""
    colours = ["red", "blue", "green", "amber", "violet", "teal"]
    things = ["lamp", "kettle", "chair", "bottle"]
    return [
        {
            "instruction": f"Describe product {i}, the {colours[i % 6]} {things[i % 4]}.",
            "response": f"Product {i} is a {colours[i % 6]} {things[i % 4]} for every day.",
        }
        for i in range(24)
    ]
