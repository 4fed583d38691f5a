"""Prompt templates: a record's fields as the (prompt, completion) text a model is trained on.

`render` checks a record's fields (naming the row and the field) and renders it. The rendering
itself is the plain functions `alpaca_example`, `chat_example` and `custom_example`, which
`lm.script` (`%lora show --code`) prints into its script: the script renders as the engine does.
"""

from __future__ import annotations

import string
from typing import Any

from ..core.config import RunConfig
from ..core.errors import DataError

ALPACA_PREAMBLE = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
ALPACA_END = "### End"


# -- the templates, as the script prints them ------------------------------------------------------
def alpaca_prompt(instruction, context=""):
    extra = f"### Input:\n{context}\n\n" if context.strip() else ""
    return f"{ALPACA_PREAMBLE}\n\n### Instruction:\n{instruction}\n\n{extra}### Response:\n"


def alpaca_example(instruction, context, response):
    """The Alpaca template of the source experiment: the response ends with '### End'."""
    return alpaca_prompt(instruction, context), f"{response}\n\n{ALPACA_END}"


def chat_messages(instruction, context, system_prompt=None):
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    content = f"{instruction}\n\n{context}" if context.strip() else instruction
    return [*system, {"role": "user", "content": content}]


def chat_example(instruction, context, response, tokenizer, system_prompt=None):
    """The tokenizer's chat template: the completion is what follows the prompt in the full chat."""
    messages = chat_messages(instruction, context, system_prompt)
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    answer = {"role": "assistant", "content": response}
    full = tokenizer.apply_chat_template([*messages, answer], tokenize=False)
    if not full.startswith(prompt):
        raise ValueError(
            "this tokenizer's chat template does not render the prompt as a prefix of the full chat"
        )
    return prompt, full[len(prompt) :].rstrip()


def custom_example(fields, prompt_format, response_format):
    """The user's own format strings of {field}s."""
    return prompt_format.format(**fields), response_format.format(**fields)


# -- records to text ---------------------------------------------------------------------------------
def format_fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def template_fields(config: RunConfig) -> tuple[list[str], list[str]]:
    """(prompt fields, response fields): the record fields the template reads."""
    if config.template == "custom":
        response = list(dict.fromkeys(format_fields(config.response_format)))
        prompt = [name for name in dict.fromkeys(format_fields(config.prompt_format)) if name not in response]
        return prompt, response
    return [config.instruction_field, config.input_field], [config.response_field]


def field_values(record: dict, row: int, config: RunConfig) -> dict[str, str]:
    """The text of each field the template reads, prompt fields first; blank values are kept."""
    prompt, response = template_fields(config)
    optional = config.input_field if config.template != "custom" else None
    return {
        name: _text(record, name, row, optional=name == optional, blank=True) for name in prompt + response
    }


def render(record: dict, row: int, config: RunConfig, tokenizer: Any) -> tuple[str, str]:
    """(prompt, completion) text of one record in the configured template."""
    if config.template == "custom":
        values = {
            name: _text(record, name, row)
            for name in format_fields(config.prompt_format + config.response_format)
        }
        return custom_example(values, config.prompt_format, config.response_format)
    instruction = _text(record, config.instruction_field, row)
    context = _text(record, config.input_field, row, optional=True)
    response = _text(record, config.response_field, row)
    if config.template == "alpaca":
        return alpaca_example(instruction, context, response)
    _require_chat_template(tokenizer)
    try:
        return chat_example(instruction, context, response, tokenizer, config.system_prompt)
    except ValueError as error:
        raise DataError(str(error)) from None


def prompt_for(text: str, config: RunConfig, tokenizer: Any) -> str:
    """A user's prompt in the template a run was trained with, so base and adapter see the same input."""
    if config.template == "alpaca":
        return alpaca_prompt(text)
    if config.template == "chat":
        _require_chat_template(tokenizer)
        messages = chat_messages(text, "", config.system_prompt)
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    fields = format_fields(config.prompt_format)
    return config.prompt_format.format(**{fields[0]: text}) if len(set(fields)) == 1 else text


def _require_chat_template(tokenizer: Any) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            "template='chat' needs a tokenizer with a chat template; this one has none (use 'alpaca' or 'custom')"
        )


def _text(record: dict, field_name: str, row: int, optional: bool = False, blank: bool = False) -> str:
    if field_name not in record:
        if optional:
            return ""
        raise DataError(
            f"row {row} has no field {field_name!r}; its fields are: {', '.join(map(str, record))}"
        )
    value = record[field_name]
    if optional and value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(
            f"row {row}, field {field_name!r}: expected text, got {type(value).__name__} {value!r:.60}"
        )
    if not (optional or blank) and not value.strip():
        raise DataError(f"row {row}, field {field_name!r} is empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:  # a lone surrogate: half of a character that was cut
        raise DataError(
            f"row {row}, field {field_name!r} holds {value[error.start]!r} at position {error.start}, half "
            "of a character, which no text encoding writes; fix or drop that row"
        ) from None
    return value
