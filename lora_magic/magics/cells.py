"""What a cell shows around a magic's own output, in a kernel (a notebook frontend):

- transformers' progress bars (loading weights, writing model shards) as one updating line;
- no `<Run ...>` (or sweep) echo under the dashboard or text progress that the same cell shows of
  it (it is still the cell's result: `_`, `Out[n]`, `run = %finetune ...`);
- dashboards of background runs frozen into their static picture once the run has ended, at the
  end of the next cell (widgets/watch.py).

A terminal IPython is left alone: its progress bars are terminal bars, and its `Out[n]:` echo
follows the text progress as its users expect.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

from IPython.display import display

from ..core import progress

_by_shell: dict[int, CellOutput] = {}


class CellOutput:
    def __init__(self, shell: Any):
        self.shell = shell
        self.in_kernel = getattr(shell, "kernel", None) is not None
        self.shown: list[Any] = []  # runs and sweeps that this cell already shows

    def register(self) -> None:
        if not self.in_kernel:
            return
        self.shell.events.register("pre_run_cell", self._new_cell)
        self.shell.events.register("post_run_cell", self._cell_done)
        formatter = self.shell.display_formatter.ipython_display_formatter
        formatter.for_type_by_name("lora_magic.training.run", "Run", self._display_run)
        formatter.for_type_by_name("lora_magic.experiments.sweep", "Sweep", self._display_run)

    @contextlib.contextmanager
    def progress_line(self) -> Iterator[None]:
        """While the block runs, transformers' progress bars update one line of the cell."""
        if not self.in_kernel:
            yield
            return
        handle = None

        def show(text: str) -> None:
            nonlocal handle
            if handle is None:
                handle = display({"text/plain": text}, raw=True, display_id=True)
            else:
                handle.update({"text/plain": text}, raw=True)

        with progress.one_line(show):
            yield

    def _new_cell(self, info: Any = None) -> None:
        self.shown.clear()

    def _cell_done(self, result: Any = None) -> None:
        watch = sys.modules.get("lora_magic.widgets.watch")  # no dashboard was shown before it is
        if watch is not None:
            watch.freeze_finished()

    def _display_run(self, run: Any) -> None:
        if not any(run is shown for shown in self.shown):
            data = {"text/plain": repr(run)}
            if hasattr(run, "_repr_html_"):  # a sweep's table
                data["text/html"] = run._repr_html_()
            display(data, raw=True)


def cell_output(shell: Any) -> CellOutput:
    """The shell's one CellOutput (a reloaded extension reuses it rather than hooking in twice)."""
    if id(shell) not in _by_shell:
        _by_shell[id(shell)] = CellOutput(shell)
        _by_shell[id(shell)].register()
    return _by_shell[id(shell)]
