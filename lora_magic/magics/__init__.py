"""The notebook interface: `%%finetune`, `%lora SUBCOMMAND` and `%%compare`, over the engine's API.

Loading the extension imports nothing heavy: the engine (torch, transformers) is imported by the
first magic that needs it. User mistakes surface as IPython's `UsageError`: one line, no traceback.
"""

from __future__ import annotations

import sys
from typing import Any

from IPython.core.magic import Magics, cell_magic, line_cell_magic, line_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import argument, kwds, magic_arguments
from traitlets import Enum, Unicode

from ..core.config import RunConfig, check_names, choices
from ..core.events import FAILED
from ..core.store import RunStore
from ..training.run import Run
from . import answers, data, experiments, runs, session  # the groups of %lora subcommands
from .answers import compare_arguments, run_compare
from .cells import cell_output
from .options import (
    DATA_SETTINGS,
    NotebookVariables,
    config_arguments,
    config_values,
    parse,
    read_body,
    split,
)
from .registry import FORMATTER, help_text, lookup, overview, user_errors

__all__ = ["LoraMagics"]
SUBCOMMANDS = (session, runs, answers, data, experiments)


@magics_class
class LoraMagics(Magics):
    """LoRA / QLoRA fine-tuning magics. Settings: `%config LoraMagics`."""

    runs_dir = Unicode(
        "", help="Folder of the run store. Empty: $LORA_MAGIC_RUNS, else lora_runs/ beside the notebook."
    ).tag(config=True)
    default_model = Unicode(
        "smollm2-135m", help="Base model used when a magic names none (a built-in name, Hub id or folder)."
    ).tag(config=True)
    device = Enum(
        choices("device"),
        "auto",
        help="Device used when a magic names none: 'auto' (the GPU when there is one), 'cuda' or 'cpu'.",
    ).tag(config=True)
    widgets = Enum(
        ("auto", "on", "off"),
        "auto",
        help="Live widgets: 'auto' where the frontend shows widgets, 'on', or 'off' for text output.",
    ).tag(config=True)

    def __init__(self, shell=None, **kwargs: Any):
        super().__init__(shell, **kwargs)
        self.last_config: RunConfig | None = None  # of the last %%finetune, for %lora preview and ui
        self.conversation: Any = None  # the %lora chat conversation, once one started
        self.cells = cell_output(shell)  # what a cell shows around the magics' output (cells.py)

    # -- %%finetune ------------------------------------------------------------------------------
    @no_var_expand
    @line_cell_magic
    @magic_arguments()
    @kwds(
        formatter_class=FORMATTER,
        usage="%(prog)s [OPTIONS]\n  %%%%%(prog)s [OPTIONS] + YAML settings in the cell body",
    )
    @argument("--background", action="store_true", help="Return at once; the dashboard keeps updating.")
    @argument("--preview", action="store_true", help="Show the templated examples instead of training.")
    @argument(
        "--plan",
        nargs="?",
        const="auto",
        metavar="GPU",
        help="Estimate parameters and memory instead of training: for this machine, or a named GPU or "
        "GiB as in %%lora plan --gpu.",
    )
    @config_arguments()
    def finetune(self, line: str, cell: str | None = None) -> Any:
        """Fine-tune a model with LoRA / QLoRA and return the run.

        Settings come from the options and/or a YAML body with the same names (options win),
        e.g. `%%finetune --steps 60` over `data: df` / `template: alpaca` / `r: 16`. A value
        `{x}` is the notebook variable x; data may also name a variable plainly (`data: df`).
        A `sweep:` block of settings with lists of values (`sweep: {r: [8, 16]}`) trains every
        combination one after another and returns the sweep, whose table compares them.
        Training blocks with a live dashboard (interrupt = graceful stop) unless --background.
        """
        args = self.parse(self.finetune, split(line))
        if args is None:
            return None
        with user_errors("%%finetune"), self.cells.progress_line():
            body = read_body(cell)
            grid = body.pop("sweep", None)
            check_names(body)  # before notebook variables are looked up in it
            body = {key: self.variables.expand(value, key) for key, value in body.items()}
            config = self.run_config({**body, **config_values(args)})
            if args.preview:
                from ..data.prepare import preview

                return preview(config)
            if args.plan:
                from ..experiments.plan import plan

                return plan(config, gpu=args.plan)
            if grid is not None:
                return self.run_sweep(config, grid, args.background)
            from ..training.start import train

            run = train(config, runs_dir=self.runs_root)
            self.last_config = config
            self.watch(run, background=args.background)
        return run

    # -- %lora ---------------------------------------------------------------------------------
    @no_var_expand
    @line_magic
    def lora(self, line: str) -> Any:
        words = split(line)
        name = words[0] if words else "help"
        command = lookup(name)
        args = self.parse(command, words[1:])
        if args is None:
            return None
        with user_errors(f"%lora {name}"), self.cells.progress_line():
            return command(self, args)

    lora.__doc__ = overview()

    # -- %%compare -----------------------------------------------------------------------------
    @no_var_expand
    @cell_magic
    @magic_arguments()
    @kwds(formatter_class=FORMATTER, usage="%%%(prog)s [OPTIONS]\n  PROMPT (the cell body)")
    @compare_arguments
    def compare(self, line: str, cell: str) -> Any:
        """Answer the cell's text with the base model and adapters, side by side.

        Adapters are named as loaded (%lora load) or as runs of the store, which are loaded on
        first use. The prompt is put in the template the adapters were trained with unless --raw.
        Several prompts, split by lines of '---', are answered together in batches (a table, a row
        per prompt): 30 prompts on the base and an adapter took a tenth of the time of 30 cells.
        """
        args = self.parse(self.compare, split(line))
        if args is None:
            return None
        with user_errors("%%compare"), self.cells.progress_line():
            return run_compare(self, self.variables.expand(cell, "prompt"), args)

    # -- shared by the magics ------------------------------------------------------------------
    def parse(self, magic: Any, words: list[str]) -> Any:
        """Parsed options with `{var}` references resolved; None when help was asked for."""
        if "--help" in words or "-h" in words:
            print(help_text(magic))
            return None
        args = parse(magic.parser, words)
        for key, value in vars(args).items():
            setattr(args, key, self.variables.expand(value, key))
        return args

    @property
    def variables(self) -> NotebookVariables:
        return NotebookVariables(self.shell.user_ns, self.shell.user_ns_hidden)

    @property
    def runs_root(self) -> str | None:
        return self.runs_dir or None

    @property
    def store(self) -> RunStore:
        return RunStore(self.runs_root)

    def run_config(self, given: dict[str, Any]) -> RunConfig:
        """A RunConfig from settings typed in a magic: data variables resolved, the default model."""
        settings = {"model": self.default_model, "device": self.device, **given}
        for key in DATA_SETTINGS:
            if key in settings:
                settings[key] = self.variables.data_source(settings[key], key)
        return RunConfig.from_dict(settings)

    def use_widgets(self) -> bool:
        if self.widgets == "auto":
            from ..widgets import use_widgets

            return use_widgets()
        return self.widgets == "on"

    def run_sweep(self, config: RunConfig, grid: Any, background: bool) -> Any:
        """Train the runs of a `sweep:` block one after another, with one view that follows them."""
        from ..experiments.sweep import sweep
        from ..widgets import watch_sweep

        started = sweep(config, grid=grid, runs_dir=self.runs_root)
        self.last_config = config
        watch_sweep(started, background=background, widgets=self.use_widgets())
        self.cells.shown.append(started)
        return started

    def watch(self, run: Run, background: bool) -> None:
        from ..widgets import watch

        watch(run, background=background, widgets=self.use_widgets())
        self.cells.shown.append(run)  # so the run this magic returns is not echoed under its view
        if run.status == FAILED:
            print(f"Run {run.name!r} failed: {run.error}", file=sys.stderr)
