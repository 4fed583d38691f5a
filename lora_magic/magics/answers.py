"""`%lora compare` (and the `%%compare` cell) and `%lora chat`: the base model and adapters answering."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument

from ..core.config import Sampling
from .registry import Magics, arguments, command
from .runs import kernel_runs

DEFAULT = Sampling()
PROMPT_BREAK = re.compile(r"^---[ \t]*$", re.MULTILINE)  # a %%compare cell's prompts are split by '---' lines
SAMPLING = [
    argument(
        "--max-new-tokens",
        type=int,
        default=DEFAULT.max_new_tokens,
        metavar="N",
        help=f"New tokens per answer. Default: {DEFAULT.max_new_tokens}.",
    ),
    argument(
        "--temperature",
        type=float,
        default=DEFAULT.temperature,
        metavar="X",
        help=f"0 for greedy. Default: {DEFAULT.temperature:g}.",
    ),
    argument(
        "--top-p",
        type=float,
        default=DEFAULT.top_p,
        metavar="X",
        help=f"Nucleus sampling. Default: {DEFAULT.top_p:g}.",
    ),
]

compare_arguments = arguments(
    argument(
        "--adapters",
        metavar="A,B",
        help="Comma-separated adapters or runs, 'base' for the base model. Default: base and all loaded.",
    ),
    *SAMPLING,
    argument("--raw", action="store_true", help="Send the prompt as is, without the template."),
    argument(
        "--batch-size",
        type=int,
        metavar="N",
        help="Prompts answered at once at most. Default: as many as the memory left allows (64 at most).",
    ),
)


def sampling(args: Any) -> Sampling:
    """The sampling options given, checked."""
    return Sampling(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Sampling)})


@command("compare")
@argument("prompt", nargs="*", metavar="PROMPT", help="The prompt; a %%%%compare cell takes it as its body.")
@compare_arguments
def compare(magics: Magics, args: Any) -> Any:
    """Answer a prompt with the base model and adapters side by side."""
    return run_compare(magics, " ".join(args.prompt), args)


def run_compare(magics: Magics, prompt: str, args: Any) -> Any:
    if not prompt.strip():
        raise UsageError("no prompt given: write it after %lora compare, or as the body of a %%compare cell")
    prompts = [p.strip() for p in PROMPT_BREAK.split(prompt) if p.strip()]
    names = [n.strip() for n in args.adapters.split(",") if n.strip()] if args.adapters else None
    how = sampling(args)
    load_runs(magics, names or [])
    if magics.use_widgets() and not args.raw and len(prompts) == 1:
        from ..widgets import ComparePanel, Shown

        panel = ComparePanel(prompt, names, how)
        shown = Shown(panel.widget)
        shown.display()
        try:
            panel.generate()
        finally:
            shown.freeze()  # the answers stay in the saved notebook; %lora chat talks on
        return None
    from ..model.generation import compare as answer

    return answer(
        prompts[0] if len(prompts) == 1 else prompts,
        names,
        raw=args.raw,
        batch_size=args.batch_size,
        **dataclasses.asdict(how),
    )


def load_runs(magics: Magics, names: list[str]) -> None:
    """Load the adapters of runs named here that the session does not hold yet. Named none, the
    kernel's last run when it trained in another process: its adapter is on disk, not in memory."""
    from ..model.session import BASE, session

    _, last = kernel_runs()
    if not names and last is not None and last.adapter_path and last.trainer is None:
        names = [last.name]
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
def chat(magics: Magics, args: Any) -> Any:
    """Talk with the base model or an adapter: the conversation goes on from call to call."""
    from ..model.generation import Conversation

    how = sampling(args)
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

        panel = ChatPanel(magics.conversation, how)
        if args.adapter:
            panel.adapter.value = args.adapter
        Shown(panel.widget).display()
        return None
    answer = magics.conversation.say(message, args.adapter, **dataclasses.asdict(how))
    print(answer.text)
    return None
