"""An adapter answers merged into copies of the weights it adapts (model/session.py's folded): the same
answers as unmerged, at the base's speed, and the base's own weights untouched."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import lora_magic as lm  # noqa: E402
from lora_magic.core.config import Sampling  # noqa: E402
from lora_magic.model.generation import generate_text  # noqa: E402
from lora_magic.model.session import folded, session  # noqa: E402

PROMPT = "Describe the blue lamp."


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    """An adapter on q/v of the tiny Llama whose B matrices are random, so it changes the answers."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    folder = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(folder)
    return folder


def load(tiny_model_dir, adapter_dir, quantization="none"):
    shared = session()
    shared.ensure_base(lm.RunConfig(model=tiny_model_dir, quantization=quantization))
    shared.load_adapter(adapter_dir, name="tuned")
    return shared


def logits(model, tokenizer) -> torch.Tensor:
    inputs = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits


def adapter_calls(model) -> list[int]:
    """Counts the calls of the adapter's own path (its A matrices), to tell merged from unmerged."""
    calls = [0]
    for name, module in model.named_modules():
        if name.endswith("lora_A.tuned"):
            module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_a_merged_answer_is_the_unmerged_answer_and_the_base_stays_untouched(tiny_model_dir, adapter_dir):
    shared = load(tiny_model_dir, adapter_dir)
    model, tokenizer = shared.model, shared.tokenizer
    model.eval()
    base_weights = {name: p for name, p in model.named_parameters() if "lora_" not in name}
    saved = {name: p.detach().clone() for name, p in base_weights.items()}
    with model.disable_adapter():
        base_logits = logits(model, tokenizer)
    model.set_adapter("tuned")
    unmerged = logits(model, tokenizer)
    calls = adapter_calls(model)
    with folded(model, "tuned"):
        merged = logits(model, tokenizer)
    assert calls[0] == 0  # no layer took the adapter's own path
    assert not torch.allclose(unmerged, base_logits, atol=1e-2)  # the adapter matters
    assert torch.allclose(merged, unmerged, atol=1e-5)
    after = dict((name, p) for name, p in model.named_parameters() if "lora_" not in name)
    for name, weight in base_weights.items():
        assert after[name] is weight and torch.equal(weight, saved[name]), name
    comparison = lm.compare(PROMPT, adapters=["base", "tuned"], raw=True, max_new_tokens=12)
    with model.disable_adapter():
        assert comparison["base"] == generate_text(model, tokenizer, PROMPT, Sampling(max_new_tokens=12))[0]
    model.set_adapter("tuned")
    assert comparison["tuned"] == generate_text(model, tokenizer, PROMPT, Sampling(max_new_tokens=12))[0]
    assert calls[0] > 0  # generate_text alone answers unmerged: the check above compared both paths


def test_a_quantised_base_or_too_little_memory_answers_unmerged(tiny_model_dir, adapter_dir, monkeypatch):
    shared = load(tiny_model_dir, adapter_dir, quantization="8bit")
    model = shared.model
    model.eval()
    model.set_adapter("tuned")
    calls = adapter_calls(model)
    with folded(model, "tuned"):
        logits(model, shared.tokenizer)
    assert calls[0] > 0
    lm.free()
    shared = load(tiny_model_dir, adapter_dir)
    shared.model.eval()
    calls = adapter_calls(shared.model)
    monkeypatch.setattr("lora_magic.model.session._available_memory", lambda device: 1024)
    with folded(shared.model, "tuned"):
        logits(shared.model, shared.tokenizer)
    assert calls[0] > 0
