"""Taking a fine-tuned model home: the adapter merged into its base and written as one GGUF file
for llama.cpp and Ollama (weights, tokenizer, chat template, provenance), with an Ollama Modelfile
in the template the run was trained with. `format="safetensors"` is the plain merge.

The GGUF is written with the `gguf` package (its writer, tensor names and quantisers), laid out
as llama.cpp's own converter lays out these architectures, so llama.cpp, Ollama and transformers'
GGUF loader read it back.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.config import RunConfig
from ..core.errors import ConfigError, ModelError
from ..core.record import stored_config
from ..core.store import check_new_folder, new_folder
from ..data.templates import format_fields, prompt_for, render
from ..model.merging import Merged, adapter_base, export_folder, merge, merged_model
from ..model.session import session

FORMATS = ("gguf", "safetensors")
GGUF_TYPES = ("f16", "q8_0")
# transformers' model_type -> (llama.cpp architecture, whether llama.cpp stores q/k rows permuted)
ARCHITECTURES = {"llama": ("llama", True), "mistral": ("llama", True), "qwen2": ("qwen2", False)}
# The regex a byte-level BPE tokenizer splits text with before merging -> llama.cpp's name for it
# (`tokenizer.ggml.pre`), which is how llama.cpp knows to split the same way.
SPLIT_REGEXES = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
}
MARK = "\x00text\x00"  # stands for the user's text while a template is rendered


@dataclass
class Exported:
    """A GGUF export written by `export`."""

    path: Path  # the folder: the GGUF, the Modelfile and a README
    gguf: Path
    name: str
    base: str
    adapter: Path
    type: str
    template: str

    def __repr__(self) -> str:
        return (
            f"GGUF ({self.type}, template {self.template}) written to {self.gguf} "
            f"(base {self.base} + adapter {self.adapter}).\n"
            f"  Ollama:    ollama create {self.name} -f {self.path / 'Modelfile'}\n"
            f"  llama.cpp: llama-cli -m {self.gguf} --jinja"
        )


def export(
    source: str | Path,
    out: str | Path | None = None,
    format: str = "gguf",
    type: str = "f16",
    runs_dir: str | Path | None = None,
) -> Exported | Merged:
    """Merge a run's adapter (or a loaded adapter, or an adapter folder) into a full-precision copy
    of its base and write it to the new folder `out`: one GGUF file (`type` f16 or q8_0) with an
    Ollama Modelfile and a README (default folder: exports/NAME-gguf), or for `format="safetensors"`
    the merged model as `merge` saves it.

    Everything is checked before anything is written, and the folder appears complete or not at all.
    """
    from transformers import AutoConfig, AutoTokenizer

    if format not in FORMATS:
        raise ConfigError(f"format={format!r} is not one of: {', '.join(FORMATS)}")
    if format == "safetensors":
        return merge(str(source), out, runs_dir=runs_dir)
    if type not in GGUF_TYPES:
        raise ConfigError(
            f"type={type!r} is not a GGUF type this export writes; choose one of: {', '.join(GGUF_TYPES)}"
        )
    out = export_folder(source, "gguf") if out is None else Path(out).expanduser()
    check_new_folder(out)  # said before the model is merged
    folder = session().adapter_folder(str(source), runs_dir)
    base = adapter_base(folder)
    check_architecture(AutoConfig.from_pretrained(base), base)
    settings = run_settings(str(source), folder)
    name = settings.name or folder.name
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = merged_model(folder)[0]

    gguf_name = f"{name}.{type}.gguf"
    provenance = {"base": base, "adapter": str(folder), "type": type, "template": settings.template}
    with new_folder(out) as staging:
        write_gguf(
            model,
            tokenizer,
            staging / gguf_name,
            type,
            name,
            gguf_chat_template(settings, tokenizer),
            provenance,
        )
        (staging / "Modelfile").write_text(modelfile(gguf_name, settings, tokenizer))
        (staging / "README.md").write_text(readme(gguf_name, name, settings, tokenizer, provenance))
    return Exported(out, out / gguf_name, name, base, folder, type, settings.template)


def run_settings(source: str, folder: Path) -> RunConfig:
    """The settings the adapter was trained with (for its template), else the defaults."""
    loaded = session().adapters.get(source)
    if loaded and loaded.config:
        return loaded.config
    record = folder.parent / "run.json"
    if record.is_file():
        return stored_config(json.loads(record.read_text()))
    return RunConfig(model=adapter_base(folder))


def check_architecture(config: Any, base: str) -> None:
    """Refuse, before anything is loaded or written, a model this export cannot lay out."""
    if config.model_type not in ARCHITECTURES:
        raise ModelError(
            f"GGUF export supports Llama-family models ({', '.join(ARCHITECTURES)}; SmolLM is llama), "
            f"but {base} is {config.model_type!r}; format='safetensors' exports any model"
        )
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ModelError(
            f"{base} uses {rope['rope_type']!r} RoPE scaling, which this GGUF export does not write; "
            "only models without RoPE scaling are supported (format='safetensors' exports any model)"
        )


# -- the GGUF file ---------------------------------------------------------------------------------
def write_gguf(
    model: Any,
    tokenizer: Any,
    path: Path,
    type: str,
    name: str,
    chat_template: str,
    provenance: dict[str, str],
) -> None:
    import gguf

    config = model.config
    architecture, permuted = ARCHITECTURES[config.model_type]
    writer = gguf.GGUFWriter(path, architecture)
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if type == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for key, value in provenance.items():
        writer.add_string(f"lora_magic.{key}", value)
    add_hyperparameters(writer, config)
    add_tokenizer(writer, tokenizer, config.vocab_size, chat_template)
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == architecture)
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp reads a tied output head from the embeddings
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ModelError(f"{name}: no GGUF tensor name for {hf_name!r} of a {config.model_type} model")
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if permuted and gguf_name.endswith(("attn_q.weight", "attn_k.weight")):
            heads = config.num_attention_heads if "attn_q" in gguf_name else config.num_key_value_heads
            data = rotary_pairs_interleaved(data, heads)
        add_tensor(writer, gguf_name, data, type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def rotary_pairs_interleaved(weight: np.ndarray, heads: int) -> np.ndarray:
    """The rows of a q/k projection in llama.cpp's rotary layout.

    transformers rotates each head's first half of dimensions against its second half; llama.cpp
    rotates neighbouring pairs, so its converter reorders each head's rows (0, d/2, 1, d/2+1, ...).
    transformers' GGUF loader undoes exactly this.
    """
    rows = weight.shape[0]
    return (
        weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def add_tensor(writer: Any, name: str, data: np.ndarray, type: str) -> None:
    """Matrices in the export's type; vectors (norms, biases) stay float32, as llama.cpp keeps them."""
    import gguf

    if data.ndim == 1:
        writer.add_tensor(name, data)
    elif type == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        quantized = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:  # f16, and rows too short for Q8_0's 32-value blocks (llama.cpp does the same)
        writer.add_tensor(name, data.astype(np.float16))


def add_hyperparameters(writer: Any, config: Any) -> None:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(rope.get("rope_theta", 10000.0))
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(config.vocab_size)
    if head_dim != config.hidden_size // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)


def add_tokenizer(writer: Any, tokenizer: Any, vocab_size: int, chat_template: str) -> None:
    """The vocabulary, merges, token types, special tokens and chat template, as llama.cpp reads
    them: 'gpt2' for byte-level BPE (SmolLM, Llama 3, Qwen2), 'llama' for SentencePiece-style BPE
    with byte fallback (Llama 2, Mistral), which also needs scores."""
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec["model"]
    if model["type"] != "BPE":
        raise ModelError(f"GGUF export supports BPE tokenizers; this one is {model['type']}")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    if len(by_id) > vocab_size or sorted(by_id) != list(range(len(by_id))):
        raise ModelError(
            f"the tokenizer's ids are not 0..{len(by_id) - 1} within the model's {vocab_size} rows"
        )
    added = tokenizer.added_tokens_decoder
    sentencepiece = bool(model.get("byte_fallback"))

    def kind(i: int) -> gguf.TokenType:
        if i in added:
            return gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED
        if sentencepiece and re.fullmatch(r"<0x[0-9A-F]{2}>", by_id[i]):
            return gguf.TokenType.BYTE
        return gguf.TokenType.NORMAL

    tokens = [by_id[i] for i in range(len(by_id))]
    types = [kind(i) for i in range(len(by_id))]
    padding = range(len(tokens), vocab_size)  # embedding rows the tokenizer never produces
    tokens += [f"[PAD{i}]" for i in padding]
    types += [gguf.TokenType.UNUSED for _ in padding]
    if sentencepiece:
        # SentencePiece merges the pair whose result scores highest: score a token by the earliest
        # merge that makes it.
        rank = {"".join(m.split(" ")): -float(r) for r, m in reversed(list(enumerate(merges)))}
        writer.add_tokenizer_model("llama")
        writer.add_token_scores(
            [rank.get(t, 0.0) if k == gguf.TokenType.NORMAL else 0.0 for t, k in zip(tokens, types)]
        )
    else:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(split_name(spec["pre_tokenizer"]))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for role in ("bos", "eos", "unk", "pad"):
        if (token_id := getattr(tokenizer, f"{role}_token_id")) is not None:
            getattr(writer, f"add_{role}_token_id")(token_id)
    ids = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(tokenizer.eos_token_id is not None and ids[-1] == tokenizer.eos_token_id)
    first = tokenizer.convert_ids_to_tokens(tokenizer("a", add_special_tokens=False)["input_ids"])[0]
    writer.add_add_space_prefix(first.startswith("\u2581"))  # SentencePiece's '▁' before the text
    writer.add_chat_template(chat_template)


def split_name(pre_tokenizer: dict | None) -> str:
    """llama.cpp's name for how a byte-level BPE tokenizer splits text before merging."""
    steps = (pre_tokenizer or {}).get("pretokenizers", [pre_tokenizer])
    kinds = [step and step["type"] for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt2"
    if (
        kinds == ["Digits", "ByteLevel"]
        and steps[0].get("individual_digits")
        and steps[1].get("use_regex", True)
    ):
        return "smollm"
    regex = steps[0].get("pattern", {}).get("Regex") if kinds and kinds[0] == "Split" else None
    if regex in SPLIT_REGEXES:
        return SPLIT_REGEXES[regex]
    raise ModelError(
        "this tokenizer splits text in a way llama.cpp has no name for; GGUF export knows the splits of "
        f"GPT-2, SmolLM, {', '.join(SPLIT_REGEXES.values())} tokenizers"
    )


# -- templates ---------------------------------------------------------------------------------------
def prompt_around(settings: RunConfig, tokenizer: Any) -> tuple[str, str]:
    """(text before, text after) the user's text in a prompt of the run's template."""
    before, _, after = prompt_for(MARK, settings, tokenizer).partition(MARK)
    return before, after


def answer_around(settings: RunConfig, tokenizer: Any) -> tuple[str, str]:
    """(text before, text after) the answer in a trained completion, e.g. ('', '\\n\\n### End')."""
    if settings.template == "custom":
        record = {name: MARK for name in format_fields(settings.prompt_format + settings.response_format)}
    else:
        record = {settings.instruction_field: "x", settings.response_field: MARK}
    completion = render(record, 0, settings, tokenizer)[1]
    return completion.partition(MARK)[0], completion.rpartition(MARK)[2]


def stop_strings(settings: RunConfig, tokenizer: Any) -> list[str]:
    """What ends an answer in the run's template (e.g. '### End'), then the EOS token training appended."""
    stops = [answer_around(settings, tokenizer)[1].strip(), tokenizer.eos_token]
    return [s for i, s in enumerate(stops) if s and s not in stops[:i]]


def gguf_chat_template(settings: RunConfig, tokenizer: Any) -> str:
    """The Jinja chat template llama.cpp and transformers apply: the tokenizer's own for a chat run,
    else each user turn as the run's prompt and each answer as its trained completion."""
    if settings.template == "chat":
        return tokenizer.chat_template
    (before, after), (answer_before, answer_after) = (
        prompt_around(settings, tokenizer),
        answer_around(settings, tokenizer),
    )
    return (
        "{% for message in messages %}"
        f"{{% if message['role'] == 'user' %}}{before}{{{{ message['content'] }}}}{after}"
        f"{{% elif message['role'] == 'assistant' %}}{answer_before}{{{{ message['content'] }}}}{answer_after}"
        "{{ eos_token }}{% endif %}{% endfor %}"
    )


def modelfile(gguf_name: str, settings: RunConfig, tokenizer: Any) -> str:
    """An Ollama Modelfile: the GGUF, the run's template in Go template syntax, its stop strings."""
    (before, after), (answer_before, answer_after) = (
        prompt_around(settings, tokenizer),
        answer_around(settings, tokenizer),
    )
    template = f"{before}{{{{ .Prompt }}}}{after}{answer_before}{{{{ .Response }}}}{answer_after}"
    lines = [
        f"# ollama create NAME -f Modelfile   (template {settings.template!r}, as the run was trained)",
        f"FROM ./{gguf_name}",
        f'TEMPLATE """{template}"""',
        *(
            f"PARAMETER stop {json.dumps(stop, ensure_ascii=False)}"
            for stop in stop_strings(settings, tokenizer)
        ),
    ]
    return "\n".join(lines) + "\n"


def readme(gguf_name: str, name: str, settings: RunConfig, tokenizer: Any, provenance: dict[str, str]) -> str:
    stops = " ".join(f"-r {json.dumps(s, ensure_ascii=False)}" for s in stop_strings(settings, tokenizer))
    return f"""# {name}

`{gguf_name}`: {provenance["adapter"]} merged into {provenance["base"]}, {provenance["type"]}.
It carries its tokenizer, and its chat template is the run's prompt template (`{settings.template}`).

llama.cpp (the chat template is Jinja, hence `--jinja`):

```bash
llama-cli -m {gguf_name} --jinja {stops}
llama-server -m {gguf_name} --jinja   # OpenAI-compatible API on http://localhost:8080
```

Ollama:

```bash
ollama create {name} -f Modelfile
ollama run {name}
```
"""
