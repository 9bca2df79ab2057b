# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which bytes a path really names. Private to the collection: not a public API.

A target is a name; the bytes behind it can have many names: symlinks (/dev/disk/by-id/...), a
device node bind-mounted elsewhere, a partition (a window of its disk), a loop device (a window of
its backing file or block device, set up in any mount namespace), a RAID or device-mapper device
(its members), or the regular file itself. `footprint()` follows all of them down to the bottom:
extents of whole disks (by device number) and of regular files (by device and inode number), so
two names alias when their footprints overlap, whatever they are called.

The kernel is asked directly (stat, sysfs by device number, LOOP_GET_STATUS64), never by name, so
a loop device set up inside another mount namespace, whose backing file path means nothing here,
still resolves to the right inode. `mounts()` reads the mount table of every mount namespace.
"""

from __future__ import annotations

import fcntl
import os
import stat
import struct
from dataclasses import dataclass
from typing import Iterable, List, Optional, Tuple

from .discover import unescape_mountinfo

SECTOR = 512
EVERYTHING = 1 << 62  # the end of an extent that runs to the end of its object
LOOP_GET_STATUS64 = 0x4C05
# struct loop_info64: lo_device, lo_inode, lo_rdevice, lo_offset, lo_sizelimit (u64 each), lo_number,
# lo_encrypt_type, lo_encrypt_key_size, lo_flags (u32 each), then names and keys (232 bytes).
_LOOP_INFO = struct.Struct("=QQQQQIIII64s64s32s2Q")


@dataclass(frozen=True)
class Extent:
    """Bytes [start, end) of one bottom object: ("disk", major, minor) or ("file", st_dev, st_ino)."""

    base: Tuple
    start: int
    end: int

    def overlaps(self, other: "Extent") -> bool:
        return self.base == other.base and self.start < other.end and other.start < self.end


@dataclass
class Footprint:
    path: str  # as given
    kind: str  # "block" | "file"
    rdev: Optional[int]  # the block device number (None for a file)
    extents: List[Extent]

    def overlaps(self, other: "Footprint") -> bool:
        return any(mine.overlaps(theirs) for mine in self.extents for theirs in other.extents)


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _decode_huge(dev: int) -> int:
    """The kernel's "huge" dev_t encoding (loop_info64) as Python's st_dev."""
    major = (dev & 0xFFF00) >> 8
    minor = (dev & 0xFF) | ((dev >> 12) & 0xFFF00)
    return os.makedev(major, minor)


def sys_dir(rdev: int, sysfs: str = "/sys") -> Optional[str]:
    """The sysfs directory of a block device number, or None."""
    path = os.path.join(sysfs, "dev", "block", f"{os.major(rdev)}:{os.minor(rdev)}")
    return os.path.realpath(path) if os.path.exists(path) else None


def node_name(rdev: int, sysfs: str = "/sys") -> str:
    """The kernel name of a block device number (loop3, sda2), or MAJOR:MINOR."""
    base = sys_dir(rdev, sysfs)
    return os.path.basename(base) if base else f"{os.major(rdev)}:{os.minor(rdev)}"


def _loop_info(rdev: int, sysfs: str) -> Optional[tuple]:
    """(backing block device number or 0, backing file (st_dev, st_ino), offset, sizelimit) of a
    bound loop device, asked of the kernel; None when it is not bound or cannot be opened."""
    try:
        fd = os.open(os.path.join("/dev", node_name(rdev, sysfs)), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISBLK(os.fstat(fd).st_mode) or os.fstat(fd).st_rdev != rdev:
            return None
        raw = fcntl.ioctl(fd, LOOP_GET_STATUS64, bytes(_LOOP_INFO.size))
    except OSError:
        return None  # ENXIO: not bound
    finally:
        os.close(fd)
    info = _LOOP_INFO.unpack(raw)
    return info[2], (_decode_huge(info[0]), info[1]), info[3], info[4]


def block_extents(rdev: int, offset: int = 0, length: int = EVERYTHING, sysfs: str = "/sys",
                  depth: int = 0) -> List[Extent]:
    """The bottom extents of bytes [offset, offset+length) of a block device."""
    end = offset + length if length < EVERYTHING else EVERYTHING
    base = sys_dir(rdev, sysfs)
    if base is None or depth > 16:
        return [Extent(("disk", os.major(rdev), os.minor(rdev)), offset, end)]
    if os.path.exists(os.path.join(base, "partition")):
        disk = os.path.dirname(base)
        start = int(_read(os.path.join(base, "start")) or 0) * SECTOR
        disk_dev = _read(os.path.join(disk, "dev"))
        if disk_dev:
            major, minor = (int(n) for n in disk_dev.split(":"))
            size = int(_read(os.path.join(base, "size")) or 0) * SECTOR
            return block_extents(os.makedev(major, minor), start + offset,
                                 min(length, max(size - offset, 0)), sysfs, depth + 1)
    if os.path.isdir(os.path.join(base, "loop")) or os.path.basename(base).startswith("loop"):
        info = _loop_info(rdev, sysfs)
        if info is not None:
            backing_rdev, file_id, lo_offset, sizelimit = info
            window = min(length, sizelimit - offset) if sizelimit else length
            if backing_rdev:
                return block_extents(backing_rdev, lo_offset + offset, window, sysfs, depth + 1)
            stop = lo_offset + offset + window if window < EVERYTHING else EVERYTHING
            return [Extent(("file",) + file_id, lo_offset + offset, stop)]
    slaves = sorted(os.listdir(os.path.join(base, "slaves"))) if os.path.isdir(os.path.join(base, "slaves")) else []
    if slaves:  # RAID or device-mapper: every byte of every member may be behind it
        found: List[Extent] = []
        for slave in slaves:
            dev = _read(os.path.join(base, "slaves", slave, "dev"))
            if dev:
                major, minor = (int(n) for n in dev.split(":"))
                found += block_extents(os.makedev(major, minor), 0, EVERYTHING, sysfs, depth + 1)
        return found
    return [Extent(("disk", os.major(rdev), os.minor(rdev)), offset, end)]


def footprint(path: str, sysfs: str = "/sys") -> Footprint:
    """The bottom extents a path names (raises OSError when it cannot be stat'ed)."""
    info = os.stat(path)
    if stat.S_ISBLK(info.st_mode):
        return Footprint(path, "block", info.st_rdev, block_extents(info.st_rdev, sysfs=sysfs))
    return Footprint(path, "file", None, [Extent(("file", info.st_dev, info.st_ino), 0, EVERYTHING)])


def file_name(base: Tuple, sysfs: str = "/sys") -> Optional[str]:
    """A path to the file ("file", st_dev, st_ino) as some loop device over it names it, when that
    path still leads to the same inode here (another mount namespace's path may not)."""
    root = os.path.join(sysfs, "block")
    try:
        names = sorted(name for name in os.listdir(root) if name.startswith("loop"))
    except OSError:
        return None
    for name in names:
        backing = _read(os.path.join(root, name, "loop", "backing_file"))
        try:
            info = os.stat(backing)
        except OSError:
            continue
        if ("file", info.st_dev, info.st_ino) == base:
            return backing
    return None


def all_block_devices(sysfs: str = "/sys") -> List[Tuple[str, int]]:
    """(kernel name, device number) of every block device and partition the kernel knows."""
    found = []
    root = os.path.join(sysfs, "class", "block")
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return found
    for name in names:
        dev = _read(os.path.join(root, name, "dev"))
        if dev:
            major, minor = (int(n) for n in dev.split(":"))
            found.append((name, os.makedev(major, minor)))
    return found


@dataclass(frozen=True)
class Mount:
    rdev: int  # the device number of the mounted filesystem's source
    mountpoint: str
    namespace: str  # "" for ours, else "the mount namespace of process PID"


def mountinfo_files(proc: str = "/proc") -> List[Tuple[str, str]]:
    """(mountinfo path, namespace description) once per mount namespace, ours first."""
    files, seen = [], set()
    try:
        ours = os.readlink(os.path.join(proc, "self", "ns", "mnt"))
    except OSError:
        ours = None
    files.append((os.path.join(proc, "self", "mountinfo"), ""))
    seen.add(ours)
    try:
        pids = sorted((entry for entry in os.listdir(proc) if entry.isdigit()), key=int)
    except OSError:
        pids = []
    for pid in pids:
        try:
            namespace = os.readlink(os.path.join(proc, pid, "ns", "mnt"))
        except OSError:
            continue
        if namespace in seen:
            continue
        seen.add(namespace)
        files.append((os.path.join(proc, pid, "mountinfo"), f"the mount namespace of process {pid}"))
    return files


def mounts(files: Optional[Iterable[Tuple[str, str]]] = None) -> List[Mount]:
    """Every mount of a block device in every mount namespace (a filesystem with a real device)."""
    found = []
    for path, namespace in (mountinfo_files() if files is None else files):
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                lines = handle.read().splitlines()
        except OSError:
            continue  # the process ended meanwhile
        for line in lines:
            fields = line.split()
            if len(fields) < 5 or ":" not in fields[2]:
                continue
            major, minor = (int(n) for n in fields[2].split(":", 1))
            if major == 0:
                continue  # tmpfs, proc, overlay...: no block device behind it
            found.append(Mount(os.makedev(major, minor), unescape_mountinfo(fields[4]), namespace))
    return found


def swap_footprints(swaps: str = "/proc/swaps", sysfs: str = "/sys") -> List[Footprint]:
    """The footprint of every active swap area (device or file)."""
    found = []
    try:
        with open(swaps, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()[1:]
    except OSError:
        return found
    for line in lines:
        if line.strip():
            try:
                found.append(footprint(unescape_mountinfo(line.split()[0]), sysfs))
            except OSError:
                continue
    return found
