"""A tiny random Llama with a small tokenizer of its own, for trying the whole pipeline in seconds:
tests, benchmarks of the notebook layer, and dry runs of a notebook before a real model. It learns
formats within a few dozen steps but knows no language. It needs nothing downloaded: the tokenizer
is a byte-level BPE learnt from the bundled products and the templates' own text, with a chat
template in the ChatML form that SmolLM2 uses."""

from __future__ import annotations

import json
from pathlib import Path

from ..data.sources import bundled_dataset
from ..data.templates import ALPACA_END, alpaca_prompt

VOCABULARY = 2048
SPECIAL = {"unk_token": "<|endoftext|>", "bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tiny_tokenizer() -> object:
    """A byte-level BPE tokenizer of VOCABULARY tokens: any text encodes, the products' words in few tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    lines = bundled_dataset().read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    texts = [alpaca_prompt(r["instruction"]) + r["response"] + f"\n\n{ALPACA_END}" for r in records]
    bpe = Tokenizer(models.BPE(unk_token=SPECIAL["unk_token"]))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=VOCABULARY,
            special_tokens=list(SPECIAL.values()),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token=SPECIAL["eos_token"], **SPECIAL)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_llama(folder: str | Path, seed: int = 0, vocab_size: int | None = None, **shape: int) -> str:
    """Save a 2-layer, 64-wide random Llama and its tokenizer in `folder`; returns its path.
    `vocab_size`: the rows of its embedding and output head (default: the tokenizer's); a real
    model's vocabulary (e.g. 49152) makes the vocabulary projection the bulk of its work.
    `shape`: other sizes of LlamaConfig instead (hidden_size, num_hidden_layers, ...)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    sizes = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        **shape,
    }
    config = LlamaConfig(
        vocab_size=vocab_size or len(tokenizer),
        **sizes,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)
