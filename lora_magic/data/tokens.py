"""Tokens: a (prompt, completion) as token ids with a loss mask, and the tokenizer of a model.

`tokenize_example` is a plain function that `lm.script` (`%lora show --code`) prints into its
script, so the script tokenizes as the engine does.
"""

from __future__ import annotations

from typing import Any

from ..core.catalogue import hub_offline, resolve_model
from ..core.config import RunConfig


def tokenize_example(prompt, completion, tokenizer, max_length, loss_on_prompt, special_tokens):
    """input_ids and labels (-100 where no loss), EOS appended, truncated to max_length; and the
    full length before truncation."""
    prompt_ids = tokenizer(prompt, add_special_tokens=special_tokens)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None and completion_ids[-1:] != [tokenizer.eos_token_id]:
        completion_ids = [*completion_ids, tokenizer.eos_token_id]
    ids = prompt_ids + completion_ids
    labels = (list(prompt_ids) if loss_on_prompt else [-100] * len(prompt_ids)) + completion_ids
    return {"input_ids": ids[:max_length], "labels": labels[:max_length], "length": len(ids)}


def encode(prompt: str, completion: str, tokenizer: Any, config: RunConfig) -> dict[str, Any]:
    """The run's tokens of an example: the loss on the completion only unless train_on_prompt; a
    chat template writes its own special tokens, the other templates get the tokenizer's."""
    return tokenize_example(
        prompt, completion, tokenizer, config.max_length, config.train_on_prompt, config.template != "chat"
    )


def load_tokenizer(config: RunConfig) -> Any:
    """The tokenizer of the configured model, without loading the model."""
    from transformers import AutoTokenizer

    resolved = resolve_model(config.model)
    return AutoTokenizer.from_pretrained(
        resolved,
        trust_remote_code=config.trust_remote_code,
        local_files_only=hub_offline(resolved, config.model),
    )
