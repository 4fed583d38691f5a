"""From what a user types to run settings: flags built from `RunConfig`, the YAML body, `{var}`.

Every flag and YAML key comes from the fields of `RunConfig`, so a new setting needs no change here.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument, argument_group

from ..core.config import RunConfig, fields_by_section
from ..core.errors import did_you_mean

REFERENCE = re.compile(r"\{([A-Za-z_]\w*)\}")
FORMAT_SETTINGS = ("prompt_format", "response_format")  # their {field}s name record fields
METAVARS = {int: "N", float: "X", str: "TEXT", object: "DATA", list: "TEXT"}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def config_arguments(*, skip: tuple[str, ...] = (), sections: tuple[str, ...] | None = None) -> Callable:
    """A decorator adding one flag per `RunConfig` field (grouped by section) to a magic's parser."""

    def decorate(func: Callable) -> Callable:
        # magic_arguments builds the parser from the decorators in reverse order of application
        for section, fields in reversed(fields_by_section().items()):
            if sections is not None and section not in sections:
                continue
            for f in reversed([f for f in fields if f.name not in skip]):
                argument(flag(f.name), **_flag_options(f))(func)
            argument_group(f"{section} settings")(func)
        return func

    return decorate


def _flag_options(f: dataclasses.Field) -> dict[str, Any]:
    kind, choices = f.metadata["type"], f.metadata["choices"]
    default = "" if f.default in (None, dataclasses.MISSING) else f" Default: {f.default}."
    text = f.metadata["help"].replace("%", "%%")  # argparse %-formats help
    options: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
    if kind is bool:
        return {**options, "action": argparse.BooleanOptionalAction, "help": text}
    if kind is list:
        options.update(action="append", help=text + " Repeat the flag for several.")
    else:
        options["help"] = text + default
    options["metavar"] = "|".join(choices) if choices else METAVARS[kind]
    return options


def split(line: str) -> list[str]:
    """Shell-like words; `--some_flag` is read as `--some-flag`."""
    try:
        words = shlex.split(line)
    except ValueError as error:
        raise UsageError(f"cannot read the options {line!r}: {error}") from None
    return [_dashed(w) if w.startswith("--") else w for w in words]


def _dashed(word: str) -> str:
    name, sep, value = word.partition("=")
    return name.replace("_", "-") + sep + value


def parse(parser: argparse.ArgumentParser, words: list[str]) -> argparse.Namespace:
    """Parse, refusing unknown options in one line that names the valid ones."""
    try:
        args, extra = parser.parse_known_args(words)
    except UsageError as error:  # raised by IPython's parser for a missing or malformed value
        raise UsageError(f"%{parser.prog}: {error} (see %{parser.prog} --help)") from None
    if extra:
        options = {o for a in parser._actions for o in a.option_strings}
        valid = sorted(o for o in options if o.startswith("--") and not o.startswith("--no-"))
        unknown = extra[0].partition("=")[0]
        what = "option" if unknown.startswith("-") else "argument"
        raise UsageError(
            f"%{parser.prog}: unknown {what} {unknown!r}{did_you_mean(unknown, valid)}; "
            f"valid options: {', '.join(valid) or 'none'} (see %{parser.prog} --help)"
        )
    return args


# -- the YAML body -----------------------------------------------------------------------------------
MAX_DEPTH = 20  # of nested lists and mappings in a cell body: settings need two or three


class _TextLoader(yaml.SafeLoader):
    """YAML that leaves scalars as text (bar null): each setting's type comes from RunConfig, so
    `gradient_checkpointing: on` stays 'on' and `name: 007` stays '007'. Settings are written out
    plainly: aliases (`*name`, which can multiply a few lines into billions of values), nesting
    deeper than MAX_DEPTH and a key given twice are refused."""

    depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in settings", mark)
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(key, deep=True) for key, _ in node.value]
        twice = next((key for index, key in enumerate(keys) if key in keys[:index]), None)
        if twice is not None:
            raise yaml.constructor.ConstructorError(None, None, f"{twice!r} is given twice", node.start_mark)
        return super().construct_mapping(node, deep)


_TextLoader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag == "tag:yaml.org,2002:null"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def read_body(body: str | None) -> dict[str, Any]:
    """Settings from a `%%finetune` cell body: YAML with the keys of the run configuration."""
    if not body or not body.strip():
        return {}
    try:
        loaded = yaml.load(body, Loader=_TextLoader)
    except yaml.YAMLError as error:
        raise UsageError(f"the cell body is not valid YAML: {' '.join(str(error).split())}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise UsageError("the cell body must be YAML settings, one 'key: value' per line, e.g. 'steps: 20'")
    return {str(key).replace("-", "_"): value for key, value in loaded.items()}


# -- notebook variables ------------------------------------------------------------------------------
class NotebookVariables:
    """Resolves `{var}` references and bare data variable names against the notebook namespace."""

    def __init__(self, user_ns: dict[str, Any], hidden: dict[str, Any]):
        self.user_ns, self.hidden = user_ns, hidden

    def names(self) -> list[str]:
        return [n for n in self.user_ns if not n.startswith("_") and n not in self.hidden]

    def lookup(self, name: str, setting: str) -> Any:
        if name not in self.user_ns:
            raise UsageError(
                f"{setting}: no notebook variable named {name!r}{did_you_mean(name, self.names())}"
            )
        return self.user_ns[name]

    def expand(self, value: Any, setting: str) -> Any:
        """`{x}` alone is the object `x`; inside text, `{x}` is replaced by str(x) when `x` is a
        notebook variable and kept otherwise. Template formats are left alone."""
        if setting in FORMAT_SETTINGS:
            return value
        if isinstance(value, list):
            return [self.expand(item, setting) for item in value]
        if isinstance(value, dict) and len(value) == 1 and None in value.values():
            # YAML reads `data: {df}` as the mapping {df: None}; it was meant as a reference
            return self.lookup(str(next(iter(value))), setting)
        if not isinstance(value, str):
            return value
        whole = REFERENCE.fullmatch(value.strip())
        if whole:
            return self.lookup(whole.group(1), setting)
        return REFERENCE.sub(
            lambda m: str(self.user_ns[m.group(1)]) if m.group(1) in self.user_ns else m.group(0), value
        )

    def data_source(self, value: Any, setting: str) -> Any:
        """A data setting given as text: a notebook variable's name, else a path."""
        if not isinstance(value, str):
            return value
        if value in self.user_ns:
            return self.user_ns[value]
        if value.isidentifier() and not Path(value).exists():
            raise UsageError(
                f"{setting}={value!r} is neither a notebook variable nor a file"
                f"{did_you_mean(value, self.names())}; pass a variable holding the data or a path"
            )
        return value


DATA_SETTINGS = tuple(f.name for f in dataclasses.fields(RunConfig) if f.metadata["type"] is object)


def config_values(args: argparse.Namespace) -> dict[str, Any]:
    """The run settings given as flags (positional arguments named after a setting included)."""
    names = {f.name for f in dataclasses.fields(RunConfig)}
    return {key: value for key, value in vars(args).items() if key in names and value is not None}
