"""The `%lora` subcommands. Each is a function of (magics, parsed options) whose docstring and
`@argument`s make its `--help`, `%lora help` and the magic reference in docs/magics.md."""

from __future__ import annotations

import contextlib
import functools
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import MagicHelpFormatter, argument, magic_arguments
from IPython.display import display

from ..config import fields_by_section
from ..errors import LoraMagicError, did_you_mean
from ..events import ACTIVE
from ..runs import WORKER_LOG
from .code import plain_code
from .options import config_arguments, config_values

if TYPE_CHECKING:
    from . import LoraMagics

FORMATTER = functools.partial(MagicHelpFormatter, width=100, max_help_position=34)
COMMANDS: dict[str, Callable] = {}
BASE = "base"


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
    aliases = {}
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


# -- the session -------------------------------------------------------------------------------------
@command("help")
@argument("subcommand", nargs="?", help="A subcommand to explain.")
def help_(magics: LoraMagics, args: Any) -> None:
    """List the subcommands, or explain one."""
    print(help_text(lookup(args.subcommand)) if args.subcommand else overview())


@command("model")
@argument("model", nargs="?", metavar="MODEL", help="Model to load. Default: show the loaded one.")
@config_arguments(skip=("model",), sections=("model",))
def model(magics: LoraMagics, args: Any) -> Any:
    """Load a base model into the session, or show the one loaded."""
    from ..generation import session

    given = config_values(args)
    if given:
        session().ensure_base(magics.run_config(given))
    return session()


@command("preview")
@argument(
    "data",
    nargs="?",
    metavar="DATA",
    help="A notebook variable or a file. Default: the data of the last %%%%finetune.",
)
@argument("-n", "--examples", type=int, default=3, help="How many examples to render. Default: 3.")
@config_arguments(skip=("data",), sections=("model", "data"))
def preview(magics: LoraMagics, args: Any) -> Any:
    """Show training examples as they will be trained: templated text, token counts, loss mask."""
    from ..data import preview as render

    given = config_values(args)
    if magics.last_config and not given:
        return render(magics.last_config, n=args.examples)
    return render(magics.run_config(given), n=args.examples)


@command("free")
def free(magics: LoraMagics, args: Any) -> None:
    """Release the model and adapters from memory (adapters saved on disk stay)."""
    from ..generation import session

    session().free()
    print("Freed the model and its adapters; the next magic that needs a model loads it again.")


# -- runs ----------------------------------------------------------------------------------------------
@command("runs")
def runs(magics: LoraMagics, args: Any) -> Any:
    """Table of the runs in the run store, newest first (loss: the last logged training loss)."""
    import pandas as pd

    store = magics.store
    records = store.list()
    if not records:
        print(f"No runs in {store.root} yet; start one with %%finetune.")
        return None
    table = pd.DataFrame([run_row(record) for record in records]).set_index("name")
    return table if table["error"].any() else table.drop(columns="error")


def run_row(record: dict[str, Any]) -> dict[str, Any]:
    """One run as a row of `%lora runs`: losses to 4 decimals, counts with thousands separators."""
    import pandas as pd

    metrics = record.get("metrics") if isinstance(record.get("metrics"), dict) else {}
    created = record.get("created")
    # an eval at step 0 is the base model's loss, not the adapter's
    evaluated = _number(metrics.get("eval_step")) != 0
    return {
        "name": record["name"],
        "status": record["status"],
        "step": f"{_count(record.get('step') or 0)}/{_count(record.get('total_steps') or '?')}",
        "loss": _rounded(record.get("loss")),
        "eval_loss": _rounded(metrics.get("eval_loss")) if evaluated else None,
        "model": record.get("model"),
        "quantization": record.get("quantization"),
        "created": pd.to_datetime(created, unit="s").floor("s") if _number(created) is not None else pd.NaT,
        "error": record.get("error") or "",
    }


def _number(value: Any) -> float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _rounded(value: Any) -> float | None:
    return None if _number(value) is None else round(value, 4)


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(_number(value), int) else str(value)


@command("show")
@argument("run", nargs="?", metavar="RUN", help="Run name. Default: the last run.")
@argument("--code", action="store_true", help="Print the run as plain transformers/peft/trl code.")
def show(magics: LoraMagics, args: Any) -> None:
    """A run's settings, progress, metrics and where its files are."""
    store = magics.store
    name = last_run_name(magics, args.run)
    print(plain_code(store, name) if args.code else describe(store, name), end="")


def describe(store: Any, name: str) -> str:
    record, folder = store.read(name), store.path(name)
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(record.get("created", 0)))
    lines = [
        f"Run {name!r}: {record['status']}, step {record.get('step', 0)}/{record.get('total_steps') or '?'}"
        f" (started {when})",
        f"  model        {record.get('model')} ({record.get('quantization')}, on {record.get('device')})",
    ]
    if record.get("metrics"):
        lines.append("  metrics      " + ", ".join(f"{k} {v:.4g}" for k, v in record["metrics"].items()))
    if record.get("total_params"):
        share = record["trainable_params"] / record["total_params"]
        lines.append(
            f"  parameters   {record['trainable_params']:,} trained of {record['total_params']:,} ({share:.2%})"
        )
    lines.append(f"  targets      {', '.join(record.get('targets') or [])}")
    if record.get("error"):
        lines.append(f"  error        {record['error']}")
    checkpoint = store.last_checkpoint(name)
    adapter = folder / "adapter"
    lines += [
        f"  folder       {folder}",
        f"  adapter      {adapter if (adapter / 'adapter_config.json').is_file() else 'not saved yet'}",
        f"  checkpoint   {checkpoint or 'none'}",
        f"  events       {folder / 'events.jsonl'}",
        *([f"  worker log   {folder / WORKER_LOG}"] if (folder / WORKER_LOG).is_file() else []),
        f"  data         {folder / 'data'}",
        "  settings",
    ]
    config = record.get("config", {})
    for section, fields in fields_by_section().items():
        values = " ".join(f"{f.name}={config.get(f.name)!r}" for f in fields if f.name in config)
        lines.append(f"    {section:<6} {values}")
    return "\n".join(lines) + "\n"


def kernel_runs() -> tuple[Any, Any]:
    """(training run, last run) of this kernel, counting one it launched in worker processes; none
    before the engine was first imported."""
    if "lora_magic.training" not in sys.modules:
        return None, None
    from ..training import manager

    active, last = manager().active, manager().last
    return next((run for run in (active, last) if run and not run.done), None), last


def last_run_name(magics: LoraMagics, name: str | None) -> str:
    if name:
        return name
    _, last = kernel_runs()
    names = magics.store.names()
    if last is None and not names:
        raise UsageError(f"no runs in {magics.store.root} yet; start one with %%finetune")
    return last.name if last else names[0]


def kernel_run(name: str | None, action: str) -> Any:
    """The run of this kernel that `name` means (default: the training or last one)."""
    active, last = kernel_runs()
    run = active or last
    if run is None:
        raise UsageError(f"no run has been started in this kernel, so there is nothing to {action}")
    if name not in (None, run.name):
        raise UsageError(
            f"run {name!r} is not the run of this kernel ({run.name!r}); %lora show {name} shows its progress"
        )
    return run


def any_run(magics: LoraMagics, name: str | None, action: str) -> Any:
    """This kernel's run (default: the training or last one), or any run of the store by name,
    followed through its folder (a run training in another process, or one that has ended)."""
    active, last = kernel_runs()
    run = active or last
    if run is not None and name in (None, run.name):
        return run
    if name is None:
        raise UsageError(
            f"no run has been started in this kernel; name the run to {action} (%lora runs lists them)"
        )
    from ..detached import Detached

    return Detached(magics.store, name)


@command("stop")
@argument("run", nargs="?", metavar="RUN", help="Run to stop, also one training in another process.")
def stop(magics: LoraMagics, args: Any) -> None:
    """Stop a run after its current step; its adapter and a resumable checkpoint are saved."""
    active, _ = kernel_runs()
    if active and args.run in (None, active.name):
        active.stop()
        print(f"Stopping run {active.name!r} after the current step.")
    elif args.run:
        magics.store.request_stop(args.run)
        print(f"Asked run {args.run!r} to stop after its current step.")
    else:
        raise UsageError("no run is training in this kernel; name the run to stop: %lora stop RUN")


@command("pause")
@argument("run", nargs="?", metavar="RUN", help="Run to pause, also one training in another process.")
def pause(magics: LoraMagics, args: Any) -> None:
    """Hold a run after the current step, keeping its state, until %lora resume."""
    run = any_run(magics, args.run, "pause")
    run.pause()
    print(f"Pausing run {run.name!r} after the current step; %lora resume continues it.")


@command("rollback")
@argument("run", nargs="?", metavar="RUN", help="This kernel's run. Default: the training or last one.")
def rollback(magics: LoraMagics, args: Any) -> None:
    """Put a run's adapter back to its weights at the lowest eval loss (a training run stops first)."""
    run = kernel_run(args.run, "roll back")
    with user_errors("%lora rollback"):
        run.rollback()
    best = run.best
    if run.done:
        print(
            f"Run {run.name!r}'s adapter is back to step {best.step} (eval loss {best.eval_loss:.4f}) and saved."
        )
    else:
        print(f"Stopping run {run.name!r}; its adapter will be saved as it was at step {best.step}.")


@command("resume")
@argument("run", nargs="?", metavar="RUN", help="Run to continue. Default: the paused or last run.")
@argument("--background", action="store_true", help="Return at once; the dashboard keeps updating.")
def resume(magics: LoraMagics, args: Any) -> Any:
    """Continue a paused run, or a stopped/interrupted one from its last checkpoint."""
    active, _ = kernel_runs()
    if active and args.run in (None, active.name):
        active.resume()
        print(f"Resumed run {active.name!r}.")
        return None
    name = last_run_name(magics, args.run)
    if magics.store.read(name)["status"] in ACTIVE:  # paused in another process: let it go on
        magics.store.request_pause(name, paused=False)
        print(f"Resumed run {name!r}.")
        return None
    import lora_magic

    run = lora_magic.resume(name, runs_dir=magics.runs_root)
    magics.watch(run, background=args.background)
    return run


@command("watch")
@argument(
    "run",
    nargs="?",
    metavar="RUN",
    help="Run to follow, also one training in another process. Default: this kernel's training or last one.",
)
@argument("--background", action="store_true", help="Return at once; the dashboard keeps updating.")
def watch(magics: LoraMagics, args: Any) -> Any:
    """Show a run's live dashboard until it ends (interrupt: a kernel's run stops, a worker's trains on)."""
    run = any_run(magics, args.run, "watch")
    magics.watch(run, background=args.background)
    return run


@command("ui")
def ui(magics: LoraMagics, args: Any) -> None:
    """A form for the run settings that writes the equivalent %%finetune cell."""
    if not magics.use_widgets():
        raise UsageError("the settings form needs a widget frontend; %%finetune --help lists the settings")
    from ..widgets import ConfigForm

    # the last run's settings (or the %config defaults), under a new name: run names are unique
    config = (magics.last_config or magics.run_config({})).replace(name=None)
    display(ConfigForm(magics.shell.user_ns, config=config).widget)


# -- adapters and generation -----------------------------------------------------------------------
SAMPLING = [
    argument(
        "--max-new-tokens", type=int, default=96, metavar="N", help="New tokens per answer. Default: 96."
    ),
    argument("--temperature", type=float, default=0.0, metavar="X", help="0 for greedy. Default: 0."),
    argument("--top-p", type=float, default=1.0, metavar="X", help="Nucleus sampling. Default: 1."),
]


compare_arguments = arguments(
    argument(
        "--adapters",
        metavar="A,B",
        help="Comma-separated adapters or runs, 'base' for the base model. Default: base and all loaded.",
    ),
    *SAMPLING,
    argument("--raw", action="store_true", help="Send the prompt as is, without the template."),
)


@command("compare")
@argument("prompt", nargs="*", metavar="PROMPT", help="The prompt; a %%%%compare cell takes it as its body.")
@compare_arguments
def compare(magics: LoraMagics, args: Any) -> Any:
    """Answer one prompt with the base model and adapters side by side."""
    return run_compare(magics, " ".join(args.prompt), args)


def run_compare(magics: LoraMagics, prompt: str, args: Any) -> Any:
    if not prompt.strip():
        raise UsageError("no prompt given: write it after %lora compare, or as the body of a %%compare cell")
    names = [n.strip() for n in args.adapters.split(",") if n.strip()] if args.adapters else None
    load_runs(magics, names or [])
    from ..generation import session

    if magics.use_widgets() and not args.raw:
        from ..widgets import ComparePanel, Shown

        panel = ComparePanel(prompt, names, **sampling(args))
        shown = Shown(panel.widget)
        shown.display()
        try:
            panel.generate()
        finally:
            shown.freeze()  # the answers stay in the saved notebook; %lora chat talks on
        return None
    return session().compare(prompt, names, raw=args.raw, **sampling(args))


def sampling(args: Any) -> dict[str, Any]:
    return {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p}


def load_runs(magics: LoraMagics, names: list[str]) -> None:
    """Load the adapters of runs named here that the session does not hold yet. Named none, the
    kernel's last run when it trained in another process: its adapter is on disk, not in memory."""
    from ..generation import session

    _, last = kernel_runs()
    if not names and last is not None and last.adapter_path:
        from ..detached import Detached

        names = [last.name] if isinstance(last, Detached) else []
    stored = magics.store.names()
    for name in names:
        if name != BASE and name not in session().adapters and name in stored:
            session().load_adapter(name, runs_dir=magics.runs_root)


@command("chat")
@argument("message", nargs="*", metavar="MESSAGE", help="What to say. Without it: a chat panel (widgets).")
@argument(
    "--adapter",
    help="Adapter or run to talk to, or 'base'; it can change between turns. Default: the last one "
    "talked to, else the one in use (%%lora use).",
)
@argument("--clear", action="store_true", help="Forget the conversation and start a new one.")
@arguments(*SAMPLING)
def chat(magics: LoraMagics, args: Any) -> Any:
    """Talk with the base model or an adapter: the conversation goes on from call to call."""
    from ..generation import Conversation

    load_runs(magics, [args.adapter] if args.adapter else [])
    if magics.conversation is None or args.clear:
        magics.conversation = Conversation()
    message = " ".join(args.message)
    if not message:
        if args.clear:
            print("Started a new conversation.")
            return None
        if not magics.use_widgets():
            raise UsageError("no message given: %lora chat MESSAGE (the chat panel needs widgets)")
        from ..widgets import ChatPanel, Shown

        panel = ChatPanel(magics.conversation, args.max_new_tokens, args.temperature)
        if args.adapter:
            panel.adapter.value = args.adapter
        Shown(panel.widget).display()
        return None
    answer = magics.conversation.say(message, args.adapter, **sampling(args))
    print(answer.text)
    return None


@command("load")
@argument("path", metavar="PATH", help="A run of the store or a folder with a PEFT adapter.")
@argument("--name", help="Name to use it under. Default: the run's or the folder's name.")
def load(magics: LoraMagics, args: Any) -> None:
    """Load a saved adapter next to the others, on the shared base model."""
    from ..generation import session

    name = session().load_adapter(str(args.path), args.name, runs_dir=magics.runs_root)
    print(f"Loaded adapter {name!r}; %lora use {name} makes it the default, %%compare compares it.")


@command("use")
@argument("name", metavar="NAME", help="A loaded adapter, or 'base'.")
def use(magics: LoraMagics, args: Any) -> None:
    """Choose the adapter that generation uses (no reload)."""
    from ..generation import session

    session().use(args.name)
    print(f"Generation now uses {args.name!r}.")


@command("merge")
@argument("run", metavar="RUN", help="A run, a loaded adapter or an adapter folder.")
@argument("--out", required=True, metavar="DIR", help="New folder for the merged model.")
def merge(magics: LoraMagics, args: Any) -> Any:
    """Merge an adapter into its base and save a standalone model (safetensors + tokenizer)."""
    from ..generation import session

    return session().merge(str(args.run), args.out, runs_dir=magics.runs_root)


from . import data, diff, experiments, export, plan  # noqa: E402,F401  (each module registers its subcommands)
