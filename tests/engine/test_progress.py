"""transformers' progress bars as one line while a magic runs, and untouched elsewhere."""

from __future__ import annotations

import threading

from transformers.utils import logging

from lora_magic.core import progress


def test_bars_become_lines_on_the_thread_that_asked_and_stay_bars_elsewhere(capsys):
    progress.route_transformers()
    progress.route_transformers()  # once is enough: a second call changes nothing
    shown: list[str] = []
    with progress.one_line(shown.append):
        for _ in logging.tqdm(range(5), desc="Loading weights"):
            pass
        other = []
        thread = threading.Thread(target=lambda: other.append(type(logging.tqdm(range(2)))))
        thread.start()
        thread.join()
    assert shown[-1].startswith("Loading weights: 5/5 [00:0")
    assert "Loading weights" not in capsys.readouterr().err  # not drawn as a bar
    assert other[0].__name__ != "LineBar"  # another thread (the trainer's) keeps its bars
    assert type(logging.tqdm(range(2))).__name__ != "LineBar"  # and so does code outside a magic
