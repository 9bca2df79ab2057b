# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The single door to writing a disk: one held claim per physical device. Private to the collection.

`claim(paths)` checks every target together and then holds each one: a block device opened
read-write with O_EXCL (the kernel then refuses any mount, RAID, LVM or mkfs until it is released),
a regular file opened read-write and flock'ed. The `Claim` (its file descriptor plus the resolved
footprint) is what `wipe.wipe`, `table.write_layout` and the restore's chunk writes accept; nothing
else in the engine opens a target for writing.

The checks (`check_targets`, which check mode and validation use without holding anything):
- the path exists and is a block device or a regular file;
- not the boot medium, not mounted, not held, not read-only (`discover`, through partitions and
  loop windows down to every disk below);
- no two targets name the same bytes, by any name: symlinks, a bind-mounted device node, a partition
  of a selected disk, a loop device over a selected disk or file (either way round), two loop
  devices over one file (`aliases.footprint`);
- no target reaches the protected files (the image being restored, in any of those ways);
- no device over or under a target's bytes is mounted in any mount namespace, swapped on, held, or
  opened exclusively by another program (so the backing file of a loop device with a mounted
  filesystem, or a disk with a mounted loop window, is refused).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence

from .._errors import UnsafeTargetError, ValidationError
from . import aliases, discover


@dataclass
class Target:
    """A checked, not (yet) held target."""

    path: str
    footprint: aliases.Footprint
    device: Optional[discover.BlockDevice]  # None for a regular file or a partition

    @property
    def is_block(self) -> bool:
        return self.footprint.kind == "block"


class Claim:
    """One target held for writing: its file descriptor and what it resolved to.

    `path` is the name the user gave (for messages and for tools that need a path), `fd` the held
    descriptor every write goes through."""

    def __init__(self, target: Target, fd: int):
        self.path = target.path
        self.footprint = target.footprint
        self.device = target.device
        self.is_block = target.is_block
        self._fd: Optional[int] = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise ValidationError(f"The claim on {self.path} was released; claim it again before writing.")
        return self._fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __repr__(self) -> str:
        return f"Claim({self.path!r}, {'held' if self.held else 'released'})"


class Claims(list):
    """The claims of one run, released together (also as a context manager)."""

    def release(self) -> None:
        for one in self:
            one.release()

    def __enter__(self) -> "Claims":
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def _stat(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except OSError as err:
        raise ValidationError(f"Target {path} does not exist or cannot be read: {err.strerror}.") from err


def _discover_checks(path: str, devices: List[discover.BlockDevice], rdev: int) -> Optional[discover.BlockDevice]:
    """Boot medium, mounted, held, read-only: for the device and every disk below it."""
    device = discover.find_device(devices, path) or discover.find_device(devices, aliases.node_name(rdev))
    owners = []
    if device is None:
        found = discover.find_partition(devices, path) or discover.find_partition(devices, aliases.node_name(rdev))
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
    return device


def _where(extent: aliases.Extent, targets: Sequence[Target]) -> str:
    if extent.base[0] == "disk":
        return "/dev/" + aliases.node_name(os.makedev(extent.base[1], extent.base[2]))
    for target in targets:
        if not target.is_block and target.footprint.extents[0].base == extent.base:
            return target.path
    return aliases.file_name(extent.base) or f"the file with inode {extent.base[2]}"


def _check_aliases(targets: List[Target]) -> None:
    for index, first in enumerate(targets):
        for second in targets[index + 1:]:
            shared = next((mine for mine in first.footprint.extents for theirs in second.footprint.extents
                           if mine.overlaps(theirs)), None)
            if shared is not None:
                raise ValidationError(
                    f"Targets {first.path} and {second.path} are two names for the same bytes (both reach "
                    f"{_where(shared, targets)}): give each disk once.")


def _check_protected(targets: List[Target], protect: Iterable[str]) -> None:
    for path in protect:
        try:
            guarded = aliases.footprint(path)
        except OSError:
            continue
        for target in targets:
            if target.footprint.overlaps(guarded):
                how = "is" if not target.is_block else "reaches"
                raise UnsafeTargetError(f"Target {target.path} {how} the image {path} being read: writing it would "
                                        f"destroy the image.")


def _busy(path: str) -> str:
    return f"Target {path} is busy: the kernel reports it mounted or claimed by another program."


def _probe_exclusive(node: str) -> bool:
    """True when another program holds the device exclusively (a read-only O_EXCL open fails)."""
    try:
        fd = os.open(node, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as err:
        return err.errno == errno.EBUSY
    os.close(fd)
    return False


def _relation(user: aliases.Footprint, target: Target, targets: Sequence[Target]) -> Optional[str]:
    """How a device in use touches a target: "over its bytes", "beside it on /dev/sda" (the same
    disk or file, other bytes: a disk is judged as a whole, as `discover` does), or None."""
    if user.overlaps(target.footprint):
        return "over its bytes"
    bases = {extent.base for extent in target.footprint.extents}
    shared = next((extent for extent in user.extents if extent.base in bases), None)
    return f"beside it on {_where(shared, targets)}" if shared is not None else None


def _check_users(targets: List[Target], swaps: str, probe: bool) -> None:
    """No device on the same disk or file as a target may be in use: mounted (any mount namespace),
    swap, held by RAID/LVM/device-mapper; nor (with `probe`) any device over a target's bytes be
    opened exclusively by another program."""
    own = {target.footprint.rdev for target in targets if target.is_block}
    cache: Dict[int, aliases.Footprint] = {}

    def extents_of(rdev: int) -> aliases.Footprint:
        if rdev not in cache:
            cache[rdev] = aliases.Footprint("", "block", rdev, aliases.block_extents(rdev))
        return cache[rdev]

    for mount in aliases.mounts():
        for target in targets:
            how = _relation(extents_of(mount.rdev), target, targets)
            if how:
                where = f" in {mount.namespace}" if mount.namespace else ""
                raise UnsafeTargetError(f"Target {target.path} is in use: /dev/{aliases.node_name(mount.rdev)} {how} "
                                        f"is mounted at {mount.mountpoint}{where}.")
    for swap in aliases.swap_footprints(swaps):
        for target in targets:
            how = _relation(swap, target, targets)
            if how:
                raise UnsafeTargetError(f"Target {target.path} is in use: the swap area {swap.path} {how} is active.")
    for name, rdev in aliases.all_block_devices():
        if rdev in own:
            continue
        other = extents_of(rdev)
        for target in targets:
            how = _relation(other, target, targets)
            if not how:
                continue
            base = aliases.sys_dir(rdev)
            holders = sorted(os.listdir(os.path.join(base, "holders"))) if base and os.path.isdir(
                os.path.join(base, "holders")) else []
            if holders:
                raise UnsafeTargetError(f"Target {target.path} is in use: /dev/{name} {how} is held by "
                                        f"{', '.join(holders)} (RAID, LVM or device-mapper).")
            if probe and how == "over its bytes" and _probe_exclusive(os.path.join("/dev", name)):
                raise UnsafeTargetError(f"Target {target.path} is in use: /dev/{name} over its bytes is claimed by "
                                        f"another program.")


def check_targets(paths: Sequence[str], protect: Iterable[str] = (), sysfs: str = "/sys",
                  mountinfo: str = "/proc/self/mountinfo", swaps: str = "/proc/swaps",
                  dev: str = "/dev") -> List[Target]:
    """Check every target together; raise (one sentence naming the paths) unless all may be written.
    Reads only and holds nothing: validation and check mode use it, `claim` runs it first.

    `sysfs`, `mountinfo`, `swaps` and `dev` are the views `discover` judges the boot medium, mounts
    and holders from (tests inject fake trees); footprints and the mount namespaces are always
    asked of the running kernel."""
    targets: List[Target] = []
    devices = None
    protect = list(protect)
    for path in paths:
        info = _stat(path)
        if stat.S_ISREG(info.st_mode):
            targets.append(Target(path, aliases.footprint(path), None))
            continue
        if not stat.S_ISBLK(info.st_mode):
            raise ValidationError(f"Target {path} is neither a block device nor a regular file.")
        if devices is None:
            devices = discover.list_block_devices(sysfs, mountinfo, swaps, dev)
        device = _discover_checks(path, devices, info.st_rdev)
        targets.append(Target(path, aliases.footprint(path), device))
    _check_aliases(targets)
    _check_protected(targets, protect)
    _check_users(targets, swaps, probe=True)
    for target in targets:
        if target.is_block and _probe_exclusive(target.path):
            raise UnsafeTargetError(_busy(target.path))
    return targets


def check_target(path: str, **views: str) -> Optional[discover.BlockDevice]:
    """`check_targets` for one path; its BlockDevice (None for a regular file or a partition)."""
    return check_targets([path], **views)[0].device


def claim(paths: Sequence[str], protect: Iterable[str] = (), **views: str) -> Claims:
    """Check every target together (`check_targets`), then hold each one for writing.

    Block devices are opened read-write with O_EXCL, regular files read-write with an exclusive
    flock; each descriptor is checked to be the device or inode that was checked. The caller
    releases the claims (`Claims.release()` or a `with` block)."""
    protect = list(protect)
    targets = check_targets(paths, protect, **views)
    held = Claims()
    try:
        for target in targets:
            held.append(Claim(target, _hold(target)))
        # Between the checks and the exclusive opens a loop device could have been set up over a file
        # target and mounted: look again (without the exclusive probe, which our own claims now fail).
        _check_users(targets, views.get("swaps", "/proc/swaps"), probe=False)
    except BaseException:
        held.release()
        raise
    return held


def _hold(target: Target) -> int:
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_EXCL if target.is_block else 0)
    try:
        fd = os.open(target.path, flags)
    except OSError as err:
        if err.errno == errno.EBUSY:
            raise UnsafeTargetError(_busy(target.path)) from err
        raise ValidationError(f"Cannot open {target.path} for writing: {err.strerror}.") from err
    try:
        info = os.fstat(fd)
        expected = target.footprint
        same = (info.st_rdev == expected.rdev) if target.is_block else (
            ("file", info.st_dev, info.st_ino) == expected.extents[0].base)
        if not same:
            raise ValidationError(f"Target {target.path} changed while it was being claimed.")
        if not target.is_block:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                raise UnsafeTargetError(f"Target {target.path} is locked by another program.") from err
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_for_reading(path: str) -> int:
    """A read-only descriptor (the caller closes it); reading needs no claim."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise ValidationError(f"Cannot open {path} for reading: {err.strerror}.") from err
