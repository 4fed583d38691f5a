"""`%lora model`, `free`, `load`, `use` and `merge`: the session's base model and its adapters."""

from __future__ import annotations

from typing import Any

from IPython.core.magic_arguments import argument

from .options import config_arguments, config_values
from .registry import Magics, command


@command("model")
@argument("model", nargs="?", metavar="MODEL", help="Model to load. Default: show the loaded one.")
@config_arguments(skip=("model",), sections=("model",))
def model(magics: Magics, args: Any) -> Any:
    """Load a base model into the session, or show the one loaded."""
    from ..model.session import session

    given = config_values(args)
    if given:
        session().ensure_base(magics.run_config(given))
    return session()


@command("free")
def free(magics: Magics, args: Any) -> None:
    """Release the model and adapters from memory (adapters saved on disk stay)."""
    from ..model.session import session

    session().free()
    print("Freed the model and its adapters; the next magic that needs a model loads it again.")


@command("load")
@argument("path", metavar="PATH", help="A run of the store or a folder with a PEFT adapter.")
@argument("--name", help="Name to use it under. Default: the run's or the folder's name.")
@argument(
    "--trust-remote-code",
    action="store_true",
    help="Allow a run trained with trust_remote_code to run its model's code (a run folder never allows it).",
)
def load(magics: Magics, args: Any) -> None:
    """Load a saved adapter next to the others, on the shared base model."""
    from ..model.session import session

    name = session().load_adapter(
        str(args.path), args.name, runs_dir=magics.runs_root, trust_remote_code=args.trust_remote_code
    )
    print(f"Loaded adapter {name!r}; %lora use {name} makes it the default, %%compare compares it.")


@command("use")
@argument("name", metavar="NAME", help="A loaded adapter, or 'base'.")
def use(magics: Magics, args: Any) -> None:
    """Choose the adapter that generation uses (no reload)."""
    from ..model.session import session

    session().use(args.name)
    print(f"Generation now uses {args.name!r}.")


@command("merge")
@argument("run", metavar="RUN", help="A run, a loaded adapter or an adapter folder.")
@argument(
    "--out",
    metavar="DIR",
    help="New folder for the merged model. Default: exports/RUN-merged, beside the notebook.",
)
def merge(magics: Magics, args: Any) -> Any:
    """Merge an adapter into its base and save a standalone model (safetensors + tokenizer)."""
    from ..model.merging import merge as merge_adapter

    return merge_adapter(str(args.run), args.out, runs_dir=magics.runs_root)
