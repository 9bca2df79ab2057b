# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The single door to writing a disk. Private to the collection: not a public API.

Every open of a block device for writing goes through `open_target`, which refuses the boot medium,
mounted, held or busy devices (also through partitions and loop devices stacked on them) and paths
that do not exist. Regular files (raw disk images) are allowed.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Optional

from .._errors import UnsafeTargetError, ValidationError
from . import discover


def check_target(path: str, sysfs: str = "/sys", mountinfo: str = "/proc/self/mountinfo",
                 swaps: str = "/proc/swaps", dev: str = "/dev") -> Optional[discover.BlockDevice]:
    """Raise unless `path` may be written; return its BlockDevice (None for a regular file).

    A partition, or a loop device over part of a disk, is judged together with every disk below it.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        raise ValidationError(f"Target {path} does not exist or cannot be read: {err.strerror}.") from err
    if stat.S_ISREG(mode):
        return None
    if not stat.S_ISBLK(mode):
        raise ValidationError(f"Target {path} is neither a block device nor a regular file.")
    devices = discover.list_block_devices(sysfs, mountinfo, swaps, dev)
    device = discover.find_device(devices, path)
    owners = []
    if device is None:
        found = discover.find_partition(devices, path)
        if found is None:
            raise ValidationError(f"Target {path} is not a block device known to this host.")
        disk, part = found
        if part.mountpoints:
            raise UnsafeTargetError(f"Target {path} is mounted at {', '.join(part.mountpoints)}.")
        owners.append(disk)
    else:
        owners.append(device)
        owners += [d for d in devices if d.name in device.stacked_on]
    for owner in owners:
        reason = discover.refusal(owner)
        if reason:
            prefix = "" if owner is device else f"Target {path} lies on {owner.path}, and "
            raise UnsafeTargetError(prefix + reason)
    _check_not_claimed(path)
    return device


def _check_not_claimed(path: str) -> None:
    """Ask the kernel whether anyone holds the device exclusively (a mount, RAID, LVM, a running
    mkfs...): an exclusive open fails then. Read-only, and closed at once, so validation and check
    mode find a busy target before anything is written."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
    except OSError as err:
        if err.errno == errno.EBUSY:
            raise UnsafeTargetError(_busy(path)) from err
        raise ValidationError(f"Target {path} cannot be opened: {err.strerror}.") from err
    os.close(fd)


def _busy(path: str) -> str:
    return f"Target {path} is busy: the kernel reports it mounted or claimed by another program."


def open_target(path: str, write: bool = True, **views: str) -> int:
    """Open a disk or disk image and return the file descriptor (the caller closes it).

    For writing, the target is checked first (`check_target`) and a block device is opened with
    O_EXCL, so that the kernel also refuses it while anything mounts or claims it meanwhile.
    """
    if not write:
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            raise ValidationError(f"Cannot open {path} for reading: {err.strerror}.") from err
    device = check_target(path, **views)
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_EXCL if device is not None or _is_block(path) else 0)
    try:
        return os.open(path, flags)
    except OSError as err:
        if err.errno == errno.EBUSY:
            raise UnsafeTargetError(_busy(path)) from err
        raise ValidationError(f"Cannot open {path} for writing: {err.strerror}.") from err


def _is_block(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False
