"""The errors a user can cause. Each message says what was wrong and what is valid."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LoraMagicError(Exception):
    """Base class of every error lora_magic raises on purpose."""


class ConfigError(LoraMagicError, ValueError):
    """A run setting has a bad value or an unknown name."""


class DataError(LoraMagicError, ValueError):
    """Training data is missing, empty or malformed (the message names the row and field)."""


class ModelError(LoraMagicError):
    """A model cannot be found, loaded or targeted as asked."""


class RunError(LoraMagicError):
    """A run cannot be started, found, resumed or controlled as asked."""


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for a close match among options, else ''."""
    match = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""
