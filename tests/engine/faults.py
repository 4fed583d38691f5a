"""A full disk, injected where the run store meets the file system: `open` in lora_magic.core.store."""

from __future__ import annotations

import builtins
import errno
from collections.abc import Callable
from pathlib import Path


class FullDisk:
    """Files opened for writing take `room` bytes in all, then fail as a full disk does (ENOSPC),
    having written what fitted. `where(path)` picks the files that are on this disk."""

    def __init__(self, room: int = 0, where: Callable[[Path], bool] = lambda path: True):
        self.room, self.where = room, where

    def open(self, file, mode="r", *args, **kwargs):
        stream = builtins.open(file, mode, *args, **kwargs)  # noqa: SIM115 (returned to the caller)
        if not any(flag in mode for flag in "wax+") or not self.where(Path(file)):
            return stream
        return _Filling(stream, self)


class _Filling:
    def __init__(self, stream, disk: FullDisk):
        self.stream, self.disk = stream, disk

    def write(self, data):
        if len(data) > self.disk.room:
            self.stream.write(data[: self.disk.room])
            self.stream.flush()
            self.disk.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.disk.room -= len(data)
        return self.stream.write(data)

    def __getattr__(self, name):
        return getattr(self.stream, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stream.close()
