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


@contextlib.contextmanager
def one_line(show: Callable[[str], None]) -> Iterator[None]:
    global _receiver
    previous, _receiver = _receiver, (threading.get_ident(), show)
    try:
        yield
    finally:
        _receiver = previous


def route_transformers() -> None:
    """Have transformers create its progress bars through `_bar` (idempotent)."""
    from transformers.utils import logging

    if hasattr(logging, "set_tqdm_hook") and getattr(logging, "_tqdm_hook", None) is not _bar:
        logging.set_tqdm_hook(_bar)


def _bar(factory: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    from transformers.utils import logging

    receiver = _receiver
    if receiver is None or receiver[0] != threading.get_ident() or not logging.is_progress_bar_enabled():
        return factory(*args, **kwargs)
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
