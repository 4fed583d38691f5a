"""Answering on the tiny model: an adapter answers merged into copies of the weights it adapts
(model/session.py's folded), the same answers as unmerged, with the base's weights untouched; and the
answering engine (model/answering.py) answers batches that mix the base and adapters as each model
does alone, streams every answer, sizes its batches from the memory left and halves a batch that
runs out of memory. The same on the built-in model, and Stop, are in test_real_model.py."""

from __future__ import annotations

import collections

import pytest

torch = pytest.importorskip("torch")

import lora_magic as lm  # noqa: E402
from lora_magic.core.config import Sampling  # noqa: E402
from lora_magic.model.answering import MEMORY_SHARE, Question, answer_all  # noqa: E402
from lora_magic.model.memory import answering_bytes  # noqa: E402
from lora_magic.model.session import folded, session  # noqa: E402

PROMPT = "Describe the blue lamp."


def random_adapter(tiny_model_dir, folder, seed: int):
    """An adapter on q/v of the tiny Llama whose B matrices are random, so it changes the answers."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    return random_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter"), seed=0)


@pytest.fixture(scope="module")
def other_adapter_dir(tiny_model_dir, tmp_path_factory):
    return random_adapter(tiny_model_dir, tmp_path_factory.mktemp("other"), seed=1)


def load(tiny_model_dir, adapter_dir, quantization="none"):
    shared = session()
    shared.ensure_base(lm.RunConfig(model=tiny_model_dir, quantization=quantization))
    shared.load_adapter(adapter_dir, name="tuned")
    return shared


def logits(model, tokenizer) -> torch.Tensor:
    inputs = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits


def greedy(model, tokenizer, text: str, tokens: int) -> str:
    """Plain transformers' greedy answer, with whatever adapter is active: what the engine must match."""
    inputs = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=tokens, do_sample=False, top_k=None)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


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
        assert comparison["base"] == greedy(model, tokenizer, PROMPT, 12)
    model.set_adapter("tuned")
    assert comparison["tuned"] == greedy(model, tokenizer, PROMPT, 12)
    assert calls[0] > 0  # plain generate answers unmerged: the check above compared both paths


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
    monkeypatch.setattr("lora_magic.model.session.available_memory", lambda device: 1024)
    with folded(shared.model, "tuned"):
        logits(shared.model, shared.tokenizer)
    assert calls[0] > 0


PROMPTS = [
    "Describe the blue lamp.",
    "Describe product 3, the teal kettle, which goes in any kitchen.",
    "Lamp?",
    "What is the red chair made of?",
]


def generate_calls(model, monkeypatch, fail_above: int | None = None) -> list[int]:
    """The batch sizes `model.generate` is called with; above `fail_above` rows it runs out of memory
    (the allocator is the boundary that is faked)."""
    sizes, generate = [], model.generate

    def counted(*args, **kwargs):
        sizes.append(kwargs["input_ids"].shape[0])
        if fail_above is not None and sizes[-1] > fail_above:
            raise torch.OutOfMemoryError("out of memory (injected)")
        return generate(*args, **kwargs)

    monkeypatch.setattr(model, "generate", counted)
    return sizes


def test_a_mixed_batch_answers_as_each_model_does_alone(
    tiny_model_dir, adapter_dir, other_adapter_dir, monkeypatch
):
    shared = load(tiny_model_dir, adapter_dir)
    shared.load_adapter(other_adapter_dir, name="other")
    model, tokenizer = shared.model, shared.tokenizer
    questions = [Question(name, prompt) for prompt in PROMPTS for name in ("base", "tuned", "other")]
    how = Sampling(max_new_tokens=12)
    alone = []
    for question in questions:
        if question.model == "base":
            with model.disable_adapter():
                alone.append(greedy(model, tokenizer, question.text, 12))
        else:
            model.set_adapter(question.model)
            alone.append(greedy(model, tokenizer, question.text, 12))
    assert len(set(alone)) > len(PROMPTS)  # the adapters change the answers
    calls, sizes = adapter_calls(model), generate_calls(model, monkeypatch)
    streamed = collections.defaultdict(str)
    batched = answer_all(
        questions, how, on_text=lambda i, piece: streamed.__setitem__(i, streamed[i] + piece)
    )
    assert sizes == [12] and calls[0] > 0  # one batch, through PEFT's mixed-adapter path
    assert [a.text for a in batched] == alone
    assert [streamed[i] for i in range(len(questions))] == alone  # every answer streamed as it was decoded
    assert [a.name for a in batched] == [q.model for q in questions]
    assert all(a.tokens == 12 and not a.ended and a.seconds > 0 for a in batched)
    one_by_one = answer_all(questions, how, batch_size=1)
    assert sizes[1:] == [1] * len(questions) and [a.text for a in one_by_one] == alone
    several = lm.compare(PROMPTS, adapters=["base", "tuned"], raw=True, max_new_tokens=12)
    assert [c.prompt for c in several] == PROMPTS
    assert [[a.text for a in c.answers] for c in several] == [
        alone[3 * i : 3 * i + 2] for i in range(len(PROMPTS))
    ]
    assert "<table" in several._repr_html_() and PROMPTS[2] in repr(several)
    with pytest.raises(
        lm.ConfigError, match=r"batch_size=0 is not valid; it must be a whole number of at least 1"
    ):
        lm.compare(PROMPTS, batch_size=0)
    with pytest.raises(lm.RunError, match=r"give a prompt, or a list of prompts, none of them empty"):
        lm.compare(["a prompt", " "])


def test_batches_are_sized_from_the_memory_left_and_halved_when_it_runs_out(
    tiny_model_dir, adapter_dir, monkeypatch
):
    shared = load(tiny_model_dir, adapter_dir)
    questions = [Question(name, prompt) for prompt in PROMPTS for name in ("base", "tuned")]
    how = Sampling(max_new_tokens=8)
    alone = [a.text for a in answer_all(questions, how, batch_size=1)]
    longest = max(len(shared.tokenizer(q.text)["input_ids"]) for q in questions)
    row = answering_bytes(shared.model.config, longest + 8, 4)
    monkeypatch.setattr(
        "lora_magic.model.answering.available_memory", lambda device: 3.5 * row / MEMORY_SHARE
    )
    sizes = generate_calls(shared.model, monkeypatch)
    assert [a.text for a in answer_all(questions, how)] == alone
    assert sizes == [3, 3, 2]  # three rows fit
    monkeypatch.undo()
    sizes, notes = generate_calls(shared.model, monkeypatch, fail_above=2), []
    assert [a.text for a in answer_all(questions, how, note=notes.append)] == alone
    assert sizes == [8, 4, 2, 2, 2, 2]
    assert notes == [
        "answering 8 prompts at once ran out of memory; answering 4 at a time",
        "answering 4 prompts at once ran out of memory; answering 2 at a time",
    ]
