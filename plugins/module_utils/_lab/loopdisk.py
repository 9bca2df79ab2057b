# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sparse files on loop devices, standing in for disks. Private to the collection."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from typing import List, Optional

MiB = 1024 * 1024


def _run(argv: List[str]) -> str:
    env = dict(os.environ, LC_ALL="C")
    return subprocess.run(argv, check=True, capture_output=True, text=True, env=env).stdout.strip()


def attach(path: str, offset: int = 0, sizelimit: int = 0, read_only: bool = False) -> str:
    """Attach a file (or a window of it) to a free loop device; return the device path."""
    argv = ["losetup", "--find", "--show"]
    if offset:
        argv += ["--offset", str(offset)]
    if sizelimit:
        argv += ["--sizelimit", str(sizelimit)]
    if read_only:
        argv.append("--read-only")
    return _run(argv + [path])


def detach(device: str) -> None:
    """Detach a loop device; quiet if it is already gone."""
    subprocess.run(["losetup", "--detach", device], capture_output=True, check=False)


def backing_file(device: str) -> Optional[str]:
    """The file behind a loop device, or None if it is not one of ours / not attached."""
    name = os.path.basename(device)
    try:
        with open(f"/sys/block/{name}/loop/backing_file", encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError:
        return None


def detach_all_backed_by(path: str) -> None:
    """Detach every loop device whose backing file is `path` (whole-disk and partition windows)."""
    real = os.path.realpath(path)
    for name in os.listdir("/sys/block"):
        if name.startswith("loop") and backing_file(name) in (path, real):
            detach("/dev/" + name)


@dataclass
class LoopDisk:
    """A sparse backing file attached to a loop device; `close()` detaches and removes it."""

    path: str
    size: int
    device: str = ""
    _windows: List[str] = field(default_factory=list)

    @classmethod
    def create(cls, path: str, size: int) -> "LoopDisk":
        with open(path, "wb") as handle:
            handle.truncate(size)
        disk = cls(path=path, size=size)
        try:
            disk.device = attach(path)
        except Exception:
            os.unlink(path)
            raise
        return disk

    def window(self, offset: int, size: int) -> str:
        """A loop device over one byte range of this disk (how tests reach a partition here)."""
        dev = attach(self.path, offset=offset, sizelimit=size)
        self._windows.append(dev)
        return dev

    def close(self) -> None:
        for dev in self._windows:
            detach(dev)
        self._windows.clear()
        if self.device:
            detach(self.device)
            self.device = ""
        detach_all_backed_by(self.path)
        if os.path.exists(self.path):
            os.unlink(self.path)

    def __enter__(self) -> "LoopDisk":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
