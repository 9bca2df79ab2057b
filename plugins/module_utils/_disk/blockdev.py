# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Low-level block device operations: sizes, zeroing, partition re-read, partition access.

Private to the collection: not a public API. Every function also accepts a regular file (a raw disk
image) where that makes sense, so images and loop-device lab disks behave like real disks.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import shutil
import stat
import struct
import subprocess
import time
from contextlib import contextmanager
from typing import Iterator, Optional, Union

from .._errors import FleetcastError
from . import rawlabel
from .command import run

BLKRRPART = 0x125F
BLKSSZGET = 0x1268
BLKGETSIZE64 = 0x80081272
BLKDISCARD = 0x1277
BLKZEROOUT = 0x127F
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
ALIGN = 512  # BLKZEROOUT and BLKDISCARD want 512-byte aligned ranges
WRITE_BLOCK = 4 << 20
_ZEROS = bytes(WRITE_BLOCK)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def is_block_device(path_or_fd: Union[str, int]) -> bool:
    mode = os.fstat(path_or_fd).st_mode if isinstance(path_or_fd, int) else os.stat(path_or_fd).st_mode
    return stat.S_ISBLK(mode)


def _fd_name(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return f"file descriptor {fd}"


@contextmanager
def _opened(path_or_fd: Union[str, int], flags: int = os.O_RDONLY) -> Iterator[int]:
    if isinstance(path_or_fd, int):
        yield path_or_fd
        return
    fd = os.open(path_or_fd, flags | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def device_size(path_or_fd: Union[str, int]) -> int:
    """Size in bytes of a block device or a regular file."""
    with _opened(path_or_fd) as fd:
        if is_block_device(fd):
            return struct.unpack("Q", fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8))[0]
        return os.fstat(fd).st_size


def sector_size(path_or_fd: Union[str, int]) -> int:
    """Logical sector size of a block device; 512 for a regular file."""
    with _opened(path_or_fd) as fd:
        if is_block_device(fd):
            return struct.unpack("i", fcntl.ioctl(fd, BLKSSZGET, b"\0" * 4))[0]
        return 512


def _write_zeros(fd: int, offset: int, length: int) -> None:
    end = offset + length
    while offset < end:
        count = min(WRITE_BLOCK, end - offset)
        written = os.pwrite(fd, _ZEROS[:count], offset)
        offset += written


def _rewrite_nonzero(fd: int, offset: int, length: int) -> None:
    """After a discard: read back and write zeros wherever the device did not return zeros."""
    end = offset + length
    while offset < end:
        count = min(WRITE_BLOCK, end - offset)
        if os.pread(fd, count, offset) != _ZEROS[:count]:
            _write_zeros(fd, offset, count)
        offset += count


def _block_ioctl_range(fd: int, request: int, offset: int, length: int) -> bool:
    try:
        fcntl.ioctl(fd, request, struct.pack("QQ", offset, length))
        return True
    except OSError as err:
        if err.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOTTY, errno.EIO):
            return False
        raise


def zero_range(fd: int, offset: int, length: int) -> None:
    """Make [offset, offset+length) read back as zeros, as cheaply as the device allows.

    Block devices: BLKZEROOUT, else discard and rewrite what does not read back as zeros, else
    writes. Regular files: punch a hole (extending the file first if needed), else writes.
    """
    if length <= 0:
        return
    try:
        if not is_block_device(fd):
            end = offset + length
            if os.fstat(fd).st_size < end:
                os.ftruncate(fd, end)
            if _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) != 0:
                _write_zeros(fd, offset, length)
            return
        # The kernel calls need 512-byte alignment: write the odd head and tail by hand.
        start = -(-offset // ALIGN) * ALIGN
        stop = (offset + length) // ALIGN * ALIGN
        if stop <= start:
            _write_zeros(fd, offset, length)
            return
        _write_zeros(fd, offset, start - offset)
        _write_zeros(fd, stop, offset + length - stop)
        if _block_ioctl_range(fd, BLKZEROOUT, start, stop - start):
            return
        if _block_ioctl_range(fd, BLKDISCARD, start, stop - start):
            _rewrite_nonzero(fd, start, stop - start)
            return
        _write_zeros(fd, start, stop - start)
    except OSError as err:
        raise FleetcastError(f"Cannot zero {length} bytes at offset {offset} of {_fd_name(fd)}: "
                             f"{err.strerror}.") from err


REREAD_PAUSES = (0.1, 0.3, 0.6, 1.0, 1.5)   # seconds between retries of a busy re-read (3.5 s in all)


def _settle() -> None:
    """Wait for udev's queued events, where udev is there (never in this lab's containers)."""
    if shutil.which("udevadm"):
        subprocess.run(["udevadm", "settle", "--timeout=5"], check=False, capture_output=True)


def reread_partitions(path_or_fd: Union[str, int]) -> bool:
    """Tell the kernel the partition table changed (BLKRRPART). False where it cannot (no partition
    support for this device, e.g. a loop device without partscan); regular files need nothing."""
    name = path_or_fd if isinstance(path_or_fd, str) else _fd_name(path_or_fd)
    with _opened(path_or_fd) as fd:
        if not is_block_device(fd):
            return False
        os.fsync(fd)
        for pause in REREAD_PAUSES + (None,):
            try:
                fcntl.ioctl(fd, BLKRRPART)
                return True
            except OSError as err:
                if err.errno in (errno.EINVAL, errno.ENOTTY, errno.ENOSYS):
                    return False
                if err.errno != errno.EBUSY:
                    raise FleetcastError(f"Cannot re-read the partition table of {name}: {err.strerror}.") from err
                if pause is None:
                    raise FleetcastError(f"The kernel cannot re-read the partition table of {name} because one "
                                         f"of its partitions is in use.") from err
                # Busy for a moment, most likely udev probing a partition (blkid opens it) after a
                # change or an unmount, which a slow machine takes its time over (two of three VMs
                # failed their wipe so once, under load). A partition that stays busy (mounted,
                # swap, an assembled array) still fails, REREAD_PAUSES later.
                _settle()
                time.sleep(pause)
        return False


def partition_node(disk_path: str, number: int, offset: int, size: int, sysfs: str = "/sys",
                   dev: str = "/dev") -> Optional[str]:
    """The kernel's node for partition `number` of a disk, if it exists and matches (offset, size).

    A node whose start or size differs is stale (the kernel did not take the new table) and is not used.
    """
    disk = os.path.basename(os.path.realpath(disk_path))
    base = os.path.join(sysfs, "block", disk)
    try:
        entries = sorted(os.listdir(base))
    except OSError:
        return None
    for entry in entries:
        try:
            with open(os.path.join(base, entry, "partition"), encoding="ascii") as handle:
                if int(handle.read()) != number:
                    continue
            with open(os.path.join(base, entry, "start"), encoding="ascii") as handle:
                start = int(handle.read()) * 512
            with open(os.path.join(base, entry, "size"), encoding="ascii") as handle:
                length = int(handle.read()) * 512
        except (OSError, ValueError):
            continue
        node = os.path.join(dev, entry)
        if start == offset and length == size and os.path.exists(node):
            return node
    return None


def _sysfs_sector_size(disk_path: str, sysfs: str) -> Optional[int]:
    name = os.path.basename(os.path.realpath(disk_path))
    try:
        with open(os.path.join(sysfs, "block", name, "queue", "logical_block_size"), encoding="ascii") as handle:
            return int(handle.read())
    except (OSError, ValueError):
        return None


@contextmanager
def partition_path(disk, number_or_layout, read_only: bool = False, sysfs: str = "/sys",
                   dev: str = "/dev") -> Iterator[str]:
    """A path to one partition of a disk or disk image: the kernel's partition node where it exists,
    else a loop device over the partition's byte range, detached on exit.

    `disk` is a path, or a held `safety.Claim`: under a claim (the whole disk opened O_EXCL) the
    partition is always reached through a loop window, because the kernel refuses exclusive opens
    of a partition node (e2fsck, resize2fs, wipefs) while its disk is claimed.
    `number_or_layout` is a partition number (looked up in the disk's table) or a PartitionLayout.
    """
    claimed = hasattr(disk, "footprint")
    disk_path = disk.path if claimed else disk
    if isinstance(number_or_layout, int):
        sector = sector_size(disk_path)
        with _opened(disk_path) as fd:
            bounds = rawlabel.partition_bounds(fd, sector, device_size(fd), number_or_layout)
        if bounds is None:
            raise FleetcastError(f"{disk_path} has no partition {number_or_layout}.")
        number, (first, last) = number_or_layout, bounds
    else:
        part = number_or_layout
        sector = _sysfs_sector_size(disk_path, sysfs) or sector_size(disk_path)
        number, first, last = part.number, part.start, part.end
    offset, size = first * sector, (last - first + 1) * sector
    if not claimed and not os.path.isfile(disk_path):
        node = partition_node(disk_path, number, offset, size, sysfs, dev)
        if node:
            yield node
            return
    argv = ["losetup", "--find", "--show", "--offset", offset, "--sizelimit", size]
    if sector != 512:
        argv += ["--sector-size", sector]
    if read_only:
        argv.append("--read-only")
    loop = run(argv + [disk_path], device=f"partition {number} of {disk_path}").stdout.strip()
    try:
        yield loop
    finally:
        run(["losetup", "--detach", loop], device=loop, ok_codes=(0, 1))
