"""Behaviour on the built-in SmolLM2-135M: LoRA and QLoRA learn the trained format; exports agree."""

import pytest

import lora_magic as lm
from lora_magic.data import bundled_dataset, load_records

pytestmark = pytest.mark.real_model

HELD_OUT = [
    "Create a detailed description for the following product: Zenith Desk Lamp, belonging to category: Lighting",
    "Create a detailed description for the following product: Polar Kettle, belonging to category: Kitchen Appliance",
]


def fine_tune(quantization: str, name: str):
    records = load_records(str(bundled_dataset()))
    run = lm.train(
        model="smollm2-135m",
        quantization=quantization,
        data=records[:120],
        eval_data=records[120:128],
        steps=24,
        learning_rate=1e-3,
        eval_every=24,
        name=name,
    )
    return run.wait()


@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_tuned_model_follows_the_trained_format_and_eval_loss_falls(quantization, runs_dir):
    run = fine_tune(quantization, f"products-{quantization}")
    assert run.status == "completed", run.error
    first, last = run.eval_losses[0][1], run.eval_losses[-1][1]
    assert last < 0.6 * first, (first, last)
    answers = [lm.compare(prompt, max_new_tokens=60) for prompt in HELD_OUT]
    assert not any("### End" in a["base"] for a in answers), answers
    # 24 CPU steps: the tuned model ends with the trained terminator on at least half the held-out prompts
    assert sum(a[run.name].rstrip().endswith("### End") for a in answers) >= len(HELD_OUT) / 2, answers


def test_merged_export_gives_the_same_greedy_answer(runs_dir, tmp_path):
    run = fine_tune("none", "products-merge")
    answer = lm.compare(HELD_OUT[0], adapters=[run.name], max_new_tokens=40)[run.name]
    merged = lm.session().merge(run.name, tmp_path / "merged")
    assert (merged.path / "model.safetensors").is_file() and (merged.path / "tokenizer.json").is_file()
    lm.free()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lora_magic.data import alpaca_prompt
    from lora_magic.generation import generate_text

    model = AutoModelForCausalLM.from_pretrained(merged.path)
    tokenizer = AutoTokenizer.from_pretrained(merged.path)
    assert generate_text(model, tokenizer, alpaca_prompt(HELD_OUT[0]), 40)[0] == answer
