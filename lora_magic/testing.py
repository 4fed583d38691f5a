"""A tiny random Llama with the built-in model's real tokenizer, for trying the whole pipeline in
seconds: tests, benchmarks of the notebook layer, and dry runs of a notebook before the real model.
It learns formats within a few dozen steps but knows no language."""

from __future__ import annotations

from pathlib import Path


def tiny_llama(folder: str | Path, seed: int = 0) -> str:
    """Save a 2-layer, 64-wide random Llama and SmolLM2's tokenizer in `folder`; returns its path."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from .models import builtin_checkpoint

    tokenizer = AutoTokenizer.from_pretrained(builtin_checkpoint("smollm2-135m"))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
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
