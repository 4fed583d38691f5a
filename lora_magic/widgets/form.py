"""The configuration form (`%lora ui`), generated from RunConfig's field metadata.

Each RunConfig field becomes one input with its help text: a dropdown where the field has choices,
a checkbox for booleans, number boxes, text. Data is chosen among the notebook's DataFrames, lists
of records and Datasets (or a path). The form renders one example in the chosen template with its
token count, starts the same engine as `%%finetune`, and writes itself out as a `%%finetune` cell.
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Mapping
from typing import Any

import ipywidgets as w
import yaml

from ..core.config import RunConfig, coerce, describe_source, fields_by_section
from ..core.errors import LoraMagicError

SOURCES = ("data", "eval_data")
TEMPLATE_TEXT = ("prompt_format", "response_format", "system_prompt")  # multi-line: a text area each
PATH = "a file path"  # the data dropdown's choice for typing a path instead of a variable
NO_EVAL = "none (split from data)"
LABEL = {"description_width": "140px"}
# ipywidgets 8 renamed description_tooltip to tooltip; hosted runtimes still run 7
TOOLTIP = "tooltip" if int(w.__version__.split(".")[0]) >= 8 else "description_tooltip"
_tokenizers: dict[str, Any] = {}


class CellDumper(yaml.SafeDumper):
    """Writes multi-line text as one double-quoted line ("Q: {q}\\nA: "), the way it is typed."""


CellDumper.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar(
        "tag:yaml.org,2002:str", text, style='"' if "\n" in text else None
    ),
)


def data_sources(namespace: Mapping[str, Any]) -> dict[str, str]:
    """Variables that can be training data: name -> a short description."""
    found = {}
    for name, value in namespace.items():
        if name.startswith("_"):
            continue
        kind = type(value).__name__
        records = isinstance(value, list) and value and isinstance(value[0], Mapping)
        if kind in ("DataFrame", "Dataset", "DatasetDict") or records:
            found[name] = describe_source(value)
    return found


def default(field: dataclasses.Field) -> Any:
    return field.default_factory() if field.default is dataclasses.MISSING else field.default


def is_default(value: Any, field: dataclasses.Field) -> bool:
    """Whether a setting has its default. Data (a DataFrame, a Dataset) is compared by identity:
    `==` on a DataFrame compares its cells."""
    if field.metadata["type"] is object:
        return value is default(field)
    return value == default(field)


class ConfigForm:
    def __init__(self, namespace: dict, config: RunConfig | None = None):
        self.namespace = namespace
        config = config or RunConfig()
        self.inputs: dict[str, w.Widget] = {}
        self.paths: dict[str, w.Text] = {}
        sections = fields_by_section()
        tabs = [
            w.VBox([self._row(f, getattr(config, f.name)) for f in fields]) for fields in sections.values()
        ]
        self.tabs = w.Tab(children=tabs)
        for index, section in enumerate(sections):
            self.tabs.set_title(index, section)  # ipywidgets 7 has no `titles`
        self.example = w.HTML()
        self.train_button = w.Button(description="Train", icon="play", button_style="primary")
        self.copy_button = w.Button(
            description="Copy as %%finetune cell", icon="copy", layout=w.Layout(width="auto")
        )
        self.cell = w.Textarea(layout=w.Layout(width="100%", height="10em", display="none"))
        self.output = w.Output()
        self.run = None
        self.train_button.on_click(lambda _: self.train())
        self.copy_button.on_click(lambda _: self._show_cell())
        shaping = ["model", "trust_remote_code", *(f.name for f in sections["data"])]
        for widget in [*(self.inputs[name] for name in shaping), *self.paths.values()]:
            widget.observe(lambda _: self.update_example(), "value")
        self.widget = w.VBox(
            [
                self.tabs,
                w.HTML("<b>Example, as it will be trained</b>"),
                self.example,
                w.HBox([self.train_button, self.copy_button]),
                self.cell,
                self.output,
            ]
        )
        self.widget.add_class("lora-magic-form")
        self.update_example()

    # -- building ------------------------------------------------------------------------------
    def _row(self, field: dataclasses.Field, value: Any) -> w.Widget:
        meta, name = field.metadata, field.name
        common = {"description": name, "style": LABEL, TOOLTIP: meta["help"]}
        extra: list[w.Widget] = []
        if name in SOURCES:
            sources = data_sources(self.namespace)
            options = [(f"{n} — {d}", n) for n, d in sources.items()]
            options += [(NO_EVAL, None)] if name == "eval_data" else []
            options.append((PATH, PATH))
            chosen = next((n for n in sources if self.namespace[n] is value), None)
            if isinstance(value, str):
                chosen = PATH
            elif chosen is None and name == "data" and sources:
                chosen = next(iter(sources))
            path = w.Text(
                value=value if isinstance(value, str) else "",
                placeholder="data.jsonl",
                continuous_update=False,
            )
            widget = w.Dropdown(options=options, value=chosen, **common)
            self.paths[name] = path
            widget.observe(lambda change, path=path: self._show_path(path, change["new"]), "value")
            self._show_path(path, widget.value)
            extra.append(path)
        elif meta["choices"]:
            widget = w.Dropdown(options=list(meta["choices"]), value=value, **common)
        elif meta["type"] is bool:
            widget = w.Checkbox(value=value, indent=True, **common)
        elif meta["type"] is int and value is not None:
            widget = w.IntText(value=value, **common)
        elif meta["type"] is float:
            widget = w.FloatText(value=value, **common)
        elif meta["type"] is list:
            widget = w.Textarea(value="\n".join(value), placeholder="one per line", **common)
        elif name in TEMPLATE_TEXT:
            widget = w.Textarea(value=value or "", continuous_update=False, **common)
        else:
            text = ", ".join(value) if isinstance(value, list) else "" if value is None else str(value)
            widget = w.Text(value=text, continuous_update=False, **common)
        self.inputs[name] = widget
        help_text = w.HTML(f"<small style='color:#666'>{html.escape(meta['help'])}</small>")
        return w.VBox([w.HBox([widget, *extra]), help_text])

    @staticmethod
    def _show_path(path: w.Text, choice: Any) -> None:
        path.layout.display = None if choice == PATH else "none"

    # -- reading -------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """The form's values as flat settings, data sources named (a variable name or a path)."""
        out = {}
        for field in dataclasses.fields(RunConfig):
            widget, name = self.inputs[field.name], field.name
            value = widget.value
            if name in SOURCES:
                value = self.paths[name].value.strip() or None if value == PATH else value
            elif isinstance(widget, w.Textarea) and field.metadata["type"] is list:
                value = [line.strip() for line in value.splitlines() if line.strip()]
            elif isinstance(widget, w.Text | w.Textarea):
                value = value if name in TEMPLATE_TEXT else value.strip()
                value = coerce(name, value) if value else None
            out[name] = value
        return out

    def config(self) -> RunConfig:
        """The RunConfig the form describes, with the named variables as data."""
        settings = self.settings()
        for name in SOURCES:
            if settings[name] in self.namespace and self.inputs[name].value != PATH:
                settings[name] = self.namespace[settings[name]]
        return RunConfig.from_dict(settings)

    def to_cell(self) -> str:
        """A `%%finetune` cell with the settings that differ from the defaults."""
        config, settings = self.config(), self.settings()
        lines = ["%%finetune"]
        for field in dataclasses.fields(RunConfig):
            if is_default(getattr(config, field.name), field):
                continue
            value = settings[field.name] if field.name in SOURCES else getattr(config, field.name)
            lines.append(yaml.dump({field.name: value}, Dumper=CellDumper, width=10**6).rstrip())
        return "\n".join(lines)

    # -- acting --------------------------------------------------------------------------------
    def update_example(self) -> None:
        """Render the first training example in the chosen template, with its token count."""
        from ..data.prepare import preview

        try:
            config = self.config()
            self.example.value = preview(config, n=1, tokenizer=tokenizer_for(config))._repr_html_()
        except (LoraMagicError, OSError, ValueError) as error:
            self.example.value = f"<span style='color:#b00020'>{html.escape(str(error))}</span>"

    def train(self) -> Any:
        """Start the engine with the form's settings; the dashboard appears below the form."""
        from ..training.start import train
        from .watch import watch

        with self.output:
            self.output.clear_output()
            try:
                self.run = train(self.config())
            except LoraMagicError as error:
                print(error)
                return None
            watch(self.run, background=True, widgets=True)
        return self.run

    def _show_cell(self) -> None:
        try:
            self.cell.value = self.to_cell()
        except LoraMagicError as error:
            self.cell.value = str(error)
        self.cell.layout.display = None


def tokenizer_for(config: RunConfig) -> Any:
    """The session's tokenizer when it is for this model, else one loaded once per model."""
    from ..model.session import session

    shared = session()
    if shared.tokenizer is not None and shared.base and shared.base.model == config.model:
        return shared.tokenizer
    if config.model not in _tokenizers:
        from ..data.tokens import load_tokenizer

        _tokenizers[config.model] = load_tokenizer(config)
    return _tokenizers[config.model]
