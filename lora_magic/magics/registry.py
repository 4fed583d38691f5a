"""The `%lora` subcommands' registry. A subcommand is a function of (magics, parsed options),
registered with `@command`; its docstring and `@argument`s make its `--help`, `%lora help` and the
magic reference in docs/magics.md. Each group of subcommands is a module of this package, listed
once in `lora_magic/magics/__init__.py`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from IPython.core.error import UsageError
from IPython.core.magic_arguments import MagicHelpFormatter, argument, magic_arguments

from ..core.config import RunConfig
from ..core.errors import LoraMagicError, did_you_mean
from ..core.store import RunStore
from ..training.run import Run
from .options import NotebookVariables

FORMATTER = functools.partial(MagicHelpFormatter, width=100, max_help_position=34)
COMMANDS: dict[str, Callable] = {}


class Magics(Protocol):
    """What a subcommand uses of the magics (lora_magic.magics.LoraMagics)."""

    shell: Any
    last_config: RunConfig | None  # of the last %%finetune
    conversation: Any  # the %lora chat conversation, once one started

    @property
    def store(self) -> RunStore: ...
    @property
    def runs_root(self) -> str | None: ...
    @property
    def variables(self) -> NotebookVariables: ...
    def run_config(self, given: dict[str, Any]) -> RunConfig: ...
    def use_widgets(self) -> bool: ...
    def watch(self, run: Run, background: bool) -> None: ...


@contextlib.contextmanager
def user_errors(context: str) -> Iterator[None]:
    """The engine's errors about what the user asked become one-line UsageErrors; anything else
    is re-raised with the magic it happened in."""
    try:
        yield
    except UsageError:
        raise
    except LoraMagicError as error:
        raise UsageError(str(error)) from None
    except Exception as error:
        raise RuntimeError(f"{context} failed: {type(error).__name__}: {error}") from error


def command(name: str, *aliases: str) -> Callable:
    def register(func: Callable) -> Callable:
        func.argcmd_kwds = {"formatter_class": FORMATTER}
        func = magic_arguments(f"lora {name}")(func)
        func.summary = func.parser.description.strip().splitlines()[0]
        for key in (name, *aliases):
            COMMANDS[key] = func
        return func

    return register


def lookup(name: str) -> Callable:
    if name not in COMMANDS:
        raise UsageError(
            f"%lora: unknown subcommand {name!r}{did_you_mean(name, COMMANDS)}; "
            f"subcommands: {', '.join(COMMANDS)} (see %lora help)"
        )
    return COMMANDS[name]


def arguments(*options: argument) -> Callable:
    """Apply several `@argument`s at once, in the order given (shared by several magics)."""

    def decorate(func: Callable) -> Callable:
        for option in reversed(options):
            option(func)
        return func

    return decorate


def help_text(magic: Callable) -> str:
    return magic.parser.format_help().removeprefix("::\n\n  ").rstrip()


def overview() -> str:
    """The `%lora?` / `%lora help` page: every subcommand with its one-line summary."""
    width = max(len(name) for name in COMMANDS)
    lines = [
        "Fine-tuning runs, models and adapters: %lora SUBCOMMAND [OPTIONS].",
        "",
        "Subcommands (%lora SUBCOMMAND --help explains one):",
    ]
    aliases: dict[Callable, list[str]] = {}
    for name, func in COMMANDS.items():
        aliases.setdefault(func, []).append(name)
    for func, names in aliases.items():
        also = f" (also: {', '.join(names[1:])})" if names[1:] else ""
        lines.append(f"  {names[0]:<{width}}  {func.summary}{also}")
    lines += [
        "",
        "Train with %%finetune, compare answers with %%compare; settings: %config LoraMagics.",
    ]
    return "\n".join(lines)


@command("help")
@argument("subcommand", nargs="?", help="A subcommand to explain.")
def help_(magics: Magics, args: Any) -> None:
    """List the subcommands, or explain one."""
    print(help_text(lookup(args.subcommand)) if args.subcommand else overview())
