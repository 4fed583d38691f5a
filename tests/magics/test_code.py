"""`%lora show --code`: the plain code's templates render exactly what lora_magic trains on."""

from __future__ import annotations

import pytest

from lora_magic.config import RunConfig
from lora_magic.data import render
from lora_magic.magics.code import _model, _template


@pytest.mark.parametrize(
    ("settings", "record"),
    [
        ({}, {"instruction": "Name it.", "input": "", "response": "A lamp."}),
        ({}, {"instruction": "Name it.", "input": "Red, small.", "response": "A lamp."}),
        (
            {"instruction_field": "q", "input_field": "ctx", "response_field": "a"},
            {"q": "Why?", "a": "Because."},
        ),
        (
            {"template": "custom", "prompt_format": "Q: {q}\nA: ", "response_format": "{a}"},
            {"q": "Why?", "a": "Because."},
        ),
    ],
)
def test_plain_template_matches_the_engine(settings, record):
    config = RunConfig(**settings)
    namespace: dict = {}
    exec("\n".join(_template(config)), namespace)
    example = namespace["to_example"](record)
    assert (example["prompt"], example["completion"]) == render(record, 0, config, tokenizer=None)


def test_chat_template_is_conversational():
    config = RunConfig(template="chat", system_prompt="Be brief.")
    namespace: dict = {}
    exec("\n".join(_template(config)), namespace)
    example = namespace["to_example"]({"instruction": "Hi", "input": "there", "response": "Hello"})
    assert example == {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi\n\nthere"}],
        "completion": [{"role": "assistant", "content": "Hello"}],
    }


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_quantized_runs_load_through_bitsandbytes(quantization):
    code = "\n".join(_model(RunConfig(quantization=quantization), on_gpu=True))
    compile(code, "model.py", "exec")
    assert "quantization_config=quantization" in code
    assert ("load_in_4bit=True" in code) == (quantization == "4bit")
    assert "bnb_4bit_use_double_quant=True" in code or quantization == "8bit"
