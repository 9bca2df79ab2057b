# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The tools a lab disk is made with: sgdisk for its GPT, mkfs.ext4 for a root filled from a tree.
Private to the collection.

Shared by the standing lab's disks (``standing``: the toy master, the dirty participants) and the
Debian master (``debian_disk``). Every tool runs with a C locale; a failure is one sentence naming
the tool and the disk (or host) it was working on.
"""

from __future__ import annotations

import os
import re
import subprocess
from typing import List, Tuple

from .._errors import FleetcastError
from . import loopdisk

MiB = 1024 * 1024
SECTOR = 512


class LabError(FleetcastError):
    """The lab could not be built (a tool failed on one of its disks)."""


def run(argv: List[str], device: str) -> subprocess.CompletedProcess:
    """Run one tool while building `device`; a failure is one sentence naming both."""
    proc = subprocess.run([str(arg) for arg in argv], capture_output=True, text=True, check=False,
                          env=dict(os.environ, LC_ALL="C", LANG="C"))
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        reason = detail[-1].rstrip(".") if detail else f"exit code {proc.returncode}"
        raise LabError(f"{os.path.basename(argv[0])} failed on {device}: {reason}.")
    return proc


def sgdisk(path: str, *args: str) -> str:
    """sgdisk's output for `args` on the disk file `path`."""
    return run(["sgdisk", *args, path], device=path).stdout


def partition_bounds(path: str, number: int) -> Tuple[int, int]:
    """(offset, size) in bytes of partition `number`, read back from the table just written."""
    info = sgdisk(path, "-i", str(number))
    first = int(re.search(r"First sector: (\d+)", info).group(1))
    last = int(re.search(r"Last sector: (\d+)", info).group(1))
    return first * SECTOR, (last - first + 1) * SECTOR


def make_ext4(path: str, offset: int, size: int, tree: str, label: str) -> None:
    """An ext4 labelled `label` holding `tree`, in the partition at `offset` (`size` bytes) of `path`."""
    window = loopdisk.attach(path, offset=offset, sizelimit=size)
    try:
        run(["mkfs.ext4", "-F", "-q", "-L", label, "-d", tree, window], device=window)
    finally:
        loopdisk.detach(window)
