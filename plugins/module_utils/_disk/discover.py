# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Block device discovery and disk selection. Private to the collection: not a public API.

Everything is read from an injectable view of ``/sys``, ``/proc/self/mountinfo`` and ``/proc/swaps``
so that "all fixed disks" is tested against fake trees, never against the machine's own disks.

Devices stack: a partition sits on its disk, a device-mapper or RAID device on its ``slaves``, and a
loop device on its backing file. A loop device whose backing file is a block device is how a
partition is reached on kernels without partition support, so whatever is mounted or held on such a
loop device (or on another loop device over the same backing file) makes every device below it busy.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, List, Optional, Set

SECTOR = 512  # sysfs counts sizes and starts in 512-byte units whatever the device's sector size
BOOT_MOUNTPOINTS = ("/", "/boot", "/boot/efi", "/efi")
SWAP = "[SWAP]"
# Kernel devices that are never "a fixed disk" in an all-disks selection.
EXCLUDED = "is listed in exclude."  # the end of the refusal for an excluded disk
VIRTUAL_PREFIXES = ("loop", "ram", "zram", "dm-", "md", "sr", "fd", "nbd", "drbd", "rbd")


@dataclass
class PartitionNode:
    name: str
    path: str
    number: int
    offset: int  # bytes from the start of the disk
    size: int  # bytes
    mountpoints: List[str] = field(default_factory=list)
    holders: List[str] = field(default_factory=list)


@dataclass
class BlockDevice:
    name: str
    path: str
    size: int  # bytes
    sector_size: int
    removable: bool
    read_only: bool
    rotational: bool
    model: str
    serial: str
    transport: str
    is_loop: bool
    backing_file: Optional[str]
    partitions: List[PartitionNode] = field(default_factory=list)
    mountpoints: List[str] = field(default_factory=list)  # on it, its partitions or devices stacked on it
    holders: List[str] = field(default_factory=list)  # RAID/LVM/dm devices using it or its partitions
    is_boot_medium: bool = False
    boot_mountpoints: List[str] = field(default_factory=list)  # which of /, /boot, swap... it holds
    stacked_on: List[str] = field(default_factory=list)  # devices below it (a loop window's disk...)

    @property
    def busy(self) -> bool:
        return bool(self.mountpoints or self.holders)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["mounted"] = bool(self.mountpoints)
        return data


@dataclass
class Selection:
    selected: List[BlockDevice] = field(default_factory=list)
    refused: Dict[str, str] = field(default_factory=dict)  # path (as given) -> one-sentence reason


@dataclass
class _Node:
    name: str
    disk: str  # the whole-disk name this node belongs to (itself for a disk)
    major_minor: str
    holders: List[str]
    slaves: List[str]
    backing_file: Optional[str]


def _read(path: str, default: str = "") -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return default


def _read_int(path: str, default: int = 0) -> int:
    try:
        return int(_read(path) or default)
    except ValueError:
        return default


def _listdir(path: str) -> List[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def unescape_mountinfo(text: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040)."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and text[i + 1:i + 4].isdigit():
            out.append(chr(int(text[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def parse_mountinfo(path: str) -> List[tuple]:
    """(major:minor, mountpoint, source) per mount."""
    mounts = []
    for line in _read(path).splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        after = line.split(" - ", 1)[1].split()
        mounts.append((fields[2], unescape_mountinfo(fields[4]), unescape_mountinfo(after[1]) if len(after) > 1 else ""))
    return mounts


def parse_swaps(path: str) -> List[str]:
    return [unescape_mountinfo(line.split()[0]) for line in _read(path).splitlines()[1:] if line.strip()]


def _serial(base: str) -> str:
    """sysfs serial (NVMe, virtio, USB), else the SCSI unit serial number VPD page (SATA/SAS)."""
    text = _read(os.path.join(base, "device", "serial")) or _read(os.path.join(base, "serial"))
    if text:
        return text
    try:
        with open(os.path.join(base, "device", "vpd_pg80"), "rb") as handle:
            page = handle.read()
    except OSError:
        return ""
    return page[4:4 + page[3]].decode("ascii", "replace").strip() if len(page) > 4 else ""


def _transport(sys_dev: str, name: str) -> str:
    if name.startswith("loop"):
        return "loop"
    target = os.path.realpath(os.path.join(sys_dev, "device"))
    for marker, kind in (("/usb", "usb"), ("/nvme", "nvme"), ("/mmc", "mmc"), ("/ata", "sata"),
                         ("virtio", "virtio"), ("/host", "scsi")):
        if marker in target:
            return kind
    return ""


class _Tree:
    """The stacking graph of one sysfs view plus the mounts and swaps on it."""

    def __init__(self, sysfs: str, mountinfo: str, swaps: str, dev: str):
        self.block = os.path.join(sysfs, "block")
        self.dev = dev
        self.nodes: Dict[str, _Node] = {}
        self.by_major_minor: Dict[str, str] = {}
        for name in _listdir(self.block):
            base = os.path.join(self.block, name)
            self._add(name, name, base)
            for sub in _listdir(base):
                if os.path.exists(os.path.join(base, sub, "partition")):
                    self._add(sub, name, os.path.join(base, sub))
        self.mounts = parse_mountinfo(mountinfo)
        self.swaps = parse_swaps(swaps)

    def _add(self, name: str, disk: str, base: str) -> None:
        backing = _read(os.path.join(base, "loop", "backing_file")) or None
        if backing and backing.endswith(" (deleted)"):
            backing = backing[: -len(" (deleted)")]
        node = _Node(name, disk, _read(os.path.join(base, "dev")), _listdir(os.path.join(base, "holders")),
                     _listdir(os.path.join(base, "slaves")), backing)
        self.nodes[name] = node
        if node.major_minor:
            self.by_major_minor[node.major_minor] = name

    def name_of(self, path: str) -> Optional[str]:
        """The node a /dev path names (following symlinks such as /dev/disk/by-id/...)."""
        for candidate in (path, os.path.realpath(path)):
            base = os.path.basename(candidate)
            if candidate.startswith("/dev/") or candidate.startswith(self.dev + "/"):
                if base in self.nodes:
                    return base
        return None

    def device_holding_file(self, path: str) -> Optional[str]:
        """The node whose filesystem holds a regular file (the longest mountpoint prefix)."""
        best, best_len = None, -1
        for major_minor, mountpoint, source in self.mounts:
            prefix = mountpoint.rstrip("/") + "/"
            if (path == mountpoint or path.startswith(prefix) or mountpoint == "/") and len(mountpoint) > best_len:
                name = self.by_major_minor.get(major_minor) or self.name_of(source)
                best, best_len = name, len(mountpoint)
        return best

    def lower(self, name: str, through_files: bool) -> Set[str]:
        """The nodes `name` is stacked on directly."""
        node = self.nodes[name]
        below = set(node.slaves)
        if node.disk != name:
            below.add(node.disk)
        if node.backing_file:
            backing = self.name_of(node.backing_file)
            if backing:
                below.add(backing)
            else:
                # Loop devices over the same file see the same bytes: they are one device.
                below |= {other.name for other in self.nodes.values()
                          if other.backing_file == node.backing_file and other.name != name}
                if through_files:
                    holder = self.device_holding_file(node.backing_file)
                    if holder:
                        below.add(holder)
        return {n for n in below if n in self.nodes}

    def closure(self, name: str, through_files: bool = False) -> Set[str]:
        seen, todo = set(), [name]
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            todo.extend(self.lower(current, through_files) - seen)
        return seen

    def uses(self) -> List[tuple]:
        """(node, mountpoint) for every mount and swap area that sits on a known node."""
        found = []
        for major_minor, mountpoint, source in self.mounts:
            name = self.by_major_minor.get(major_minor) or self.name_of(source)
            if name:
                found.append((name, mountpoint))
        for swap in self.swaps:
            name = self.name_of(swap) or self.device_holding_file(swap)
            if name:
                found.append((name, SWAP))
        return found


def list_block_devices(sysfs: str = "/sys", mountinfo: str = "/proc/self/mountinfo",
                       swaps: str = "/proc/swaps", dev: str = "/dev") -> List[BlockDevice]:
    """Every block device (whole disks and virtual devices) with its partitions and its users."""
    tree = _Tree(sysfs, mountinfo, swaps, dev)
    mountpoints: Dict[str, List[str]] = {name: [] for name in tree.nodes}
    holders: Dict[str, List[str]] = {name: [] for name in tree.nodes}
    boot: Dict[str, List[str]] = {name: [] for name in tree.nodes}
    for name, mountpoint in tree.uses():
        for below in tree.closure(name):
            if mountpoint not in mountpoints[below]:
                mountpoints[below].append(mountpoint)
        if mountpoint in BOOT_MOUNTPOINTS or mountpoint == SWAP:
            for below in tree.closure(name, through_files=True):
                if mountpoint not in boot[below]:
                    boot[below].append(mountpoint)
    for node in tree.nodes.values():
        for below in tree.closure(node.name):
            holders[below].extend(h for h in node.holders if h not in holders[below])

    devices = []
    # Only the nodes read above: loop devices come and go while we look, and one that appeared
    # since has no entry in the tree.
    for name in sorted(n for n, node in tree.nodes.items() if node.disk == n):
        base = os.path.join(tree.block, name)
        partitions = []
        for sub in _listdir(base):
            if sub in tree.nodes and tree.nodes[sub].disk == name and sub != name:
                partitions.append(PartitionNode(
                    name=sub, path=os.path.join(dev, sub), number=_read_int(os.path.join(base, sub, "partition")),
                    offset=_read_int(os.path.join(base, sub, "start")) * SECTOR,
                    size=_read_int(os.path.join(base, sub, "size")) * SECTOR,
                    mountpoints=mountpoints[sub], holders=holders[sub]))
        partitions.sort(key=lambda part: part.number)
        devices.append(BlockDevice(
            name=name, path=os.path.join(dev, name),
            size=_read_int(os.path.join(base, "size")) * SECTOR,
            sector_size=_read_int(os.path.join(base, "queue", "logical_block_size"), SECTOR),
            removable=_read(os.path.join(base, "removable")) == "1",
            read_only=_read(os.path.join(base, "ro")) == "1",
            rotational=_read(os.path.join(base, "queue", "rotational")) == "1",
            model=_read(os.path.join(base, "device", "model")),
            serial=_serial(base),
            transport=_transport(base, name),
            is_loop=name.startswith("loop"),
            backing_file=tree.nodes[name].backing_file,
            partitions=partitions,
            mountpoints=mountpoints[name],
            holders=holders[name],
            is_boot_medium=bool(boot[name]),
            boot_mountpoints=boot[name],
            stacked_on=sorted(n for n in tree.closure(name) if n != name and tree.nodes[n].disk == n)))
    return devices


def find_device(devices: Iterable[BlockDevice], path: str) -> Optional[BlockDevice]:
    """The whole device a path names (/dev/sdb, sdb, or a symlink to it)."""
    real = os.path.realpath(path) if path.startswith("/") else path
    wanted = {path, real, os.path.basename(path), os.path.basename(real)}
    for device in devices:
        if device.path in wanted or device.name in wanted:
            return device
    return None


def find_partition(devices: Iterable[BlockDevice], path: str) -> Optional[tuple]:
    """(disk, partition) when a path names a partition node."""
    names = {os.path.basename(path), os.path.basename(os.path.realpath(path))}
    for device in devices:
        for part in device.partitions:
            if part.name in names:
                return device, part
    return None


def refusal(device: BlockDevice) -> Optional[str]:
    """Why a device must never be written, whoever asks: one sentence, or None."""
    if device.is_boot_medium:
        return f"{device.path} is the boot medium of this host (it holds {', '.join(device.boot_mountpoints)})."
    if device.mountpoints:
        return f"{device.path} is in use: mounted at {', '.join(device.mountpoints)}."
    if device.holders:
        return f"{device.path} is held by {', '.join(device.holders)} (RAID, LVM or device-mapper)."
    if device.read_only:
        return f"{device.path} is read-only."
    if device.size <= 0:
        return f"{device.path} has no medium (size 0)."
    return None


def _refusal_for_all(device: BlockDevice) -> Optional[str]:
    """Why a device is not one of "all fixed writable disks" (it may still be named explicitly)."""
    if device.name.startswith(VIRTUAL_PREFIXES):
        return f"{device.path} is a virtual device, not a fixed disk; name it in devices to use it."
    if device.removable:
        return f"{device.path} is removable, not a fixed disk; name it in devices to use it."
    return refusal(device)


def select_disks(devices: List[BlockDevice], explicit: Optional[List[str]] = None, all_fixed: bool = False,
                 exclude: Iterable[str] = ()) -> Selection:
    """The disks to write: the named ones, or all fixed writable disks, minus `exclude`; with reasons."""
    selection = Selection()
    excluded = {dev.path for dev in (find_device(devices, path) for path in exclude) if dev}
    if all_fixed:
        candidates = [(dev.path, dev) for dev in devices]
    else:
        candidates = [(path, find_device(devices, path)) for path in explicit or []]
    seen: Dict[str, str] = {}
    for given, device in candidates:
        if device is None:
            if find_partition(devices, given):
                selection.refused[given] = f"{given} is a partition; name the whole disk instead."
            else:
                selection.refused[given] = f"{given} is not a block device on this host."
            continue
        if device.path in seen:
            if not all_fixed:
                selection.refused[given] = (f"{seen[device.path]} and {given} both name {device.path}; "
                                            f"give each disk once.")
            continue
        seen[device.path] = given
        if device.path in excluded:
            reason = f"{device.path} {EXCLUDED}"
        else:
            reason = _refusal_for_all(device) if all_fixed else refusal(device)
        if reason:
            selection.refused[given] = reason
        else:
            selection.selected.append(device)
    return selection
