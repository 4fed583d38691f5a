"""`%lora runs`, `show`, `stop`, `pause`, `resume`, `rollback`, `watch` and `ui`: the runs of the
store and of this kernel."""

from __future__ import annotations

import sys
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument
from IPython.display import display

from ..core.events import ACTIVE
from ..training.run import Run
from .registry import Magics, command, user_errors


def kernel_runs() -> tuple[Run | None, Run | None]:
    """(training run, last run) of this kernel, counting one it launched in worker processes; none
    before the engine was first imported."""
    if "lora_magic.training.trainer" not in sys.modules:
        return None, None
    from ..training.trainer import manager

    active, last = manager().active, manager().last
    return next((run for run in (active, last) if run and not run.done), None), last


def last_run_name(magics: Magics, name: str | None) -> str:
    if name:
        return name
    _, last = kernel_runs()
    names = magics.store.names()
    if last is None and not names:
        raise UsageError(f"no runs in {magics.store.root} yet; start one with %%finetune")
    return last.name if last else names[0]


def kernel_run(name: str | None, action: str) -> Run:
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


def any_run(magics: Magics, name: str | None, action: str) -> Run:
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
    from ..training.run import follow

    return follow(magics.store, name)


@command("runs")
def runs(magics: Magics, args: Any) -> Any:
    """Table of the runs in the run store, newest first (loss: the last logged training loss)."""
    from ..core.listing import runs as table

    found = table(magics.runs_root)
    if found.empty:
        print(f"No runs in {magics.store.root} yet; start one with %%finetune.")
        return None
    return found


@command("show")
@argument("run", nargs="?", metavar="RUN", help="Run name. Default: the last run.")
@argument("--code", action="store_true", help="Print the run as plain transformers/peft/trl code.")
def show(magics: Magics, args: Any) -> None:
    """A run's settings, progress, metrics and where its files are."""
    name = last_run_name(magics, args.run)
    if args.code:
        from ..training.script import script

        print(script(name, magics.runs_root), end="")
    else:
        from ..core.listing import show as describe

        print(describe(name, magics.runs_root), end="")


@command("stop")
@argument("run", nargs="?", metavar="RUN", help="Run to stop, also one training in another process.")
def stop(magics: Magics, args: Any) -> None:
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
def pause(magics: Magics, args: Any) -> None:
    """Hold a run after the current step, keeping its state, until %lora resume."""
    run = any_run(magics, args.run, "pause")
    run.pause()
    print(f"Pausing run {run.name!r} after the current step; %lora resume continues it.")


@command("rollback")
@argument("run", nargs="?", metavar="RUN", help="This kernel's run. Default: the training or last one.")
def rollback(magics: Magics, args: Any) -> None:
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
@argument(
    "--trust-remote-code",
    action="store_true",
    help="Allow a run trained with trust_remote_code to run its model's code (a run folder never allows it).",
)
def resume(magics: Magics, args: Any) -> Any:
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
    from ..training.start import resume as resume_run

    run = resume_run(name, runs_dir=magics.runs_root, trust_remote_code=args.trust_remote_code)
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
def watch(magics: Magics, args: Any) -> Any:
    """Show a run's live dashboard until it ends (interrupt: a kernel's run stops, a worker's trains on)."""
    run = any_run(magics, args.run, "watch")
    magics.watch(run, background=args.background)
    return run


@command("ui")
def ui(magics: Magics, args: Any) -> None:
    """A form for the run settings that writes the equivalent %%finetune cell."""
    if not magics.use_widgets():
        raise UsageError("the settings form needs a widget frontend; %%finetune --help lists the settings")
    from ..widgets import ConfigForm

    # the last run's settings (or the %config defaults), under a new name: run names are unique
    config = (magics.last_config or magics.run_config({})).replace(name=None)
    display(ConfigForm(magics.shell.user_ns, config=config).widget)
