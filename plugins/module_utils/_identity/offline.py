# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Mounting an offline root (a partition of a disk) for the time of a snapshot or an apply.

Private to the collection. ext2/3/4, xfs and btrfs mount natively; NTFS goes through ntfs-3g.
Without a partition number, the root is found: a filesystem on the whole device, else the first
partition holding a Linux root (``etc/os-release``) or a Windows one (a SYSTEM hive).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from contextlib import contextmanager
from typing import Iterator, Optional, Tuple

from .._errors import FleetcastError, IdentityError
from .rootfs import Root
from .windows import is_windows_root

NATIVE = ("ext2", "ext3", "ext4", "xfs", "btrfs")


class NoSystemError(IdentityError):
    """The device holds no Linux or Windows root at all (a new or wiped disk), as opposed to one
    that could not be read."""


def _run(argv, what: str) -> str:
    env = dict(os.environ, LC_ALL="C", LANG="C")
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        # mount adds a hint about dmesg after the reason: the first line is the one that says why
        detail = [line.strip() for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
        reason = detail[0].rstrip(".") if detail else f"exit code {proc.returncode}"
        raise IdentityError(f"{argv[0]} failed on {what}: {reason}.")
    return proc.stdout


def filesystem_type(node: str) -> Optional[str]:
    env = dict(os.environ, LC_ALL="C", LANG="C")
    proc = subprocess.run(["blkid", "-p", "-o", "value", "-s", "TYPE", node], capture_output=True, text=True,
                          env=env, check=False)
    return proc.stdout.strip() or None


@contextmanager
def mounted(node: str, what: str, writable: bool) -> Iterator[str]:
    """Mount one filesystem on a private temporary directory; unmount and remove it afterwards."""
    fs = filesystem_type(node)
    if fs not in NATIVE + ("ntfs",):
        raise IdentityError(f"{what} holds {fs or 'no known filesystem'}; an offline root must be "
                            f"{', '.join(NATIVE)} or ntfs.")
    mountpoint = tempfile.mkdtemp(prefix="fleetcast-root-")
    try:
        if fs == "ntfs":
            argv = ["ntfs-3g", "-o", "rw" if writable else "ro", node, mountpoint]
        else:
            options = "rw" if writable else ("ro,noload" if fs in ("ext3", "ext4") else "ro")
            argv = ["mount", "-t", fs, "-o", options, node, mountpoint]
        _run(argv, what)
        try:
            yield mountpoint
        finally:
            _run(["umount", mountpoint], what)
    finally:
        os.rmdir(mountpoint)


def _looks_like_root(path: str) -> bool:
    # os-release is often a symlink into usr/lib: lexists, as its target is relative to the root
    return os.path.lexists(os.path.join(path, "etc", "os-release")) or is_windows_root(Root(path))


@contextmanager
def offline_root(device: str, partition: Optional[int] = None, writable: bool = False) -> Iterator[Tuple[str, str]]:
    """(mount point, description) of the root filesystem on ``device``; unmounted on exit."""
    if not os.path.exists(device):
        raise IdentityError(f"The device {device} does not exist.")
    if writable:
        from .._disk import safety
        try:
            safety.check_target(device)
        except FleetcastError as err:
            raise IdentityError(str(err)) from None
    if partition is None and filesystem_type(device):
        with mounted(device, device, writable) as path:
            yield path, device
        return
    try:
        from .._disk import blockdev
        from .._disk.table import read_layout
    except ImportError:
        raise IdentityError(f"Reading the partition table of {device} needs the collection's _disk.table "
                            "engine, which is not available; pass root instead.") from None
    try:
        try:
            layout = read_layout(device)
        except OSError as err:
            raise IdentityError(f"Cannot read the partition table of {device}: {err.strerror}.") from None
        numbers = [partition] if partition is not None else [part.number for part in layout.partitions]
        if partition is not None and partition not in [part.number for part in layout.partitions]:
            raise IdentityError(f"{device} has no partition {partition}.")
        for number in numbers:
            what = f"partition {number} of {device}"
            with blockdev.partition_path(device, number, read_only=not writable) as node:
                if partition is None and filesystem_type(node) not in NATIVE + ("ntfs",):
                    continue
                with mounted(node, what, writable) as path:
                    if partition is not None or _looks_like_root(path):
                        yield path, what
                        return
    except IdentityError:
        raise
    except FleetcastError as err:
        raise IdentityError(str(err)) from None
    raise NoSystemError(f"No partition of {device} holds a Linux or Windows root; name it with partition.")
