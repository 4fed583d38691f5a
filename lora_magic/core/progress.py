"""The progress bars of transformers (loading weights, writing model shards) as one line of text.

Inside `with one_line(show):` every bar that transformers starts on this thread is drawn by calling
`show(text)` with its current state ("Loading weights: 120/272 [00:01]") instead of as a bar of its
own; outside it, and on other threads, bars are left as they are. The magics use it to keep a cell's
output to one updating line. The engine calls `route_transformers()` once transformers is loaded.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any

FORMAT = "{desc}: {n_fmt}/{total_fmt} [{elapsed}]"
_receiver: tuple[int, Callable[[str], None]] | None = None  # (thread id, show) while one_line is open
_routed = False
_previous_hook: Callable[..., Any] | None = None  # a hook set before ours, still used outside one_line


@contextlib.contextmanager
def one_line(show: Callable[[str], None]) -> Iterator[None]:
    global _receiver
    previous, _receiver = _receiver, (threading.get_ident(), show)
    try:
        yield
    finally:
        _receiver = previous


def route_transformers() -> None:
    """Have transformers create its progress bars through `_bar` (once; older versions have no hook)."""
    global _routed, _previous_hook
    from transformers.utils import logging

    if not _routed and hasattr(logging, "set_tqdm_hook"):
        _previous_hook, _routed = logging.set_tqdm_hook(_bar), True


def _bar(factory: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    from transformers.utils import logging

    receiver = _receiver
    if receiver is None or receiver[0] != threading.get_ident() or not logging.is_progress_bar_enabled():
        return _previous_hook(factory, args, kwargs) if _previous_hook else factory(*args, **kwargs)
    return _line_bar()(*args, show=receiver[1], **kwargs)


class _Nowhere:
    """Where the line bar's own writes go: it shows itself through `show` only."""

    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


@functools.cache
def _line_bar() -> type:
    from tqdm.std import tqdm

    class LineBar(tqdm):
        def __init__(self, *args: Any, show: Callable[[str], None], **kwargs: Any):
            self.show = show
            super().__init__(*args, **{**kwargs, "file": _Nowhere(), "bar_format": FORMAT})

        def display(self, msg: str | None = None, pos: int | None = None) -> bool:
            self.show(str(self))
            return True

    return LineBar
