# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Wiping a disk: every partition and every filesystem, RAID, LVM and table signature.

Private to the collection: not a public API. `plan_wipe` lists exactly what `wipe` removes and
writes nothing, which is what check and diff mode show. Signatures inside partitions are found by
probing each partition on its own (its node, or a loop device over its byte range), so that md
superblocks at the end of a partition are found too.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, List, Optional

from .._errors import FleetcastError, UnsafeTargetError, ValidationError
from . import erase, rawlabel, stacked
from .blockdev import partition_path, reread_partitions, zero_range
from .command import run
from .discover import EXCLUDED, BlockDevice, select_disks
from .safety import check_target, open_target
from .table import PartitionLayout, read_layout, usable_range


@dataclass
class Signature:
    where: str  # "disk" or "partition N"
    offset: int  # bytes from the start of the disk
    type: str
    length: int = 0  # bytes of magic that wipe zeroes
    uuid: Optional[str] = None
    label: Optional[str] = None
    detail: Optional[str] = None  # what it is, when known (md 1.2 superblock, LUKS2 secondary header...)


@dataclass
class Region:
    offset: int  # bytes from the start of the disk
    length: int
    what: str


@dataclass
class WipePlan:
    path: str
    label: str  # the partition table found: gpt | msdos | none
    partitions: List[dict] = field(default_factory=list)  # number, start, end (sectors), fs
    signatures: List[Signature] = field(default_factory=list)
    regions: List[Region] = field(default_factory=list)  # partition table areas zeroed as a whole

    @property
    def empty(self) -> bool:
        """Nothing to remove: the disk is already blank."""
        return not (self.partitions or self.signatures)

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> List[str]:
        """One line per thing that goes, for diff output."""
        lines = [f"partition table: {self.label}"] if self.label != "none" else []
        lines += [f"partition {p['number']}: sectors {p['start']}-{p['end']}"
                  + (f" ({p['fs']})" if p.get("fs") else "") for p in self.partitions]
        lines += [f"signature {s.type} on {s.where} at byte {s.offset}"
                  + (f" ({s.detail})" if s.detail else "") + (f" (UUID {s.uuid})" if s.uuid else "") + (f" (label {s.label})" if s.label else "")
                  for s in self.signatures]
        return lines


def _signatures(device: str, where: str, base: int, about: str) -> List[Signature]:
    """What `wipefs` finds on one device (the disk, or one partition of it at byte `base`)."""
    out = run(["wipefs", "--no-act", "--json", "--output", "OFFSET,TYPE,LENGTH,UUID,LABEL", device],
              device=about).stdout.strip()
    if not out:
        return []
    return [Signature(where=where, offset=base + int(sig["offset"], 16), type=sig.get("type") or "unknown",
                      length=int(sig.get("length") or 0), uuid=sig.get("uuid"), label=sig.get("label"))
            for sig in json.loads(out).get("signatures", [])]


MAGIC_WINDOW = 4096  # wipefs reports a header's magic within its first 4 KiB (LVM: 24 bytes into the label)


def _stacked(device: str, where: str, base: int, size: int, found: List[Signature]) -> List[Region]:
    """md, LVM, LUKS and BitLocker headers of one device (the disk, or a partition at byte `base`):
    those wipefs did not report are added to `found`, those it did get their description, and every
    one becomes a region to zero, key material included (see `stacked`)."""
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        headers = stacked.find_headers(fd, 0, size)
    finally:
        os.close(fd)
    regions = []
    for header in headers:
        start = base + header.offset
        same = [sig for sig in found if sig.type == header.kind and sig.where == where
                and start <= sig.offset < start + MAGIC_WINDOW]
        for sig in same:
            sig.detail = sig.detail or header.version
        if not same:
            found.append(Signature(where=where, offset=start, type=header.kind, length=header.length,
                                   uuid=header.uuid, detail=header.version))
        regions.append(Region(start, header.length, f"{header.version} on {where}"))
    return regions


def _table_regions(path: str, label: str, size: int, sector: int) -> List[Region]:
    """The sectors holding the partition table itself: zeroed whole, not just their magic."""
    if label == "gpt":
        first = usable_range("gpt", size, sector)[0]
        return [Region(0, first * sector, "protective MBR and primary GPT"),
                Region(size - (first - 1) * sector, (first - 1) * sector, "backup GPT")]
    if label == "msdos":
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            found = rawlabel.read_mbr(fd, sector)
        finally:
            os.close(fd)
        ebrs = found[2] if found else []
        return [Region(0, sector, "MBR")] + [Region(ebr * sector, sector, "extended boot record") for ebr in ebrs]
    return []


def plan_wipe(path: str) -> WipePlan:
    """Everything `wipe(path)` would remove; writes nothing."""
    layout = read_layout(path)
    plan = WipePlan(path=path, label=layout.label)
    plan.regions = _table_regions(path, layout.label, layout.size, layout.sector_size)
    plan.signatures = _signatures(path, "disk", 0, path)
    plan.regions += _stacked(path, "disk", 0, layout.size, plan.signatures)
    for part in layout.partitions:
        plan.partitions.append({"number": part.number, "start": part.start, "end": part.end, "fs": part.fs})
        if part.kind == "extended":
            continue
        base, where = part.start * layout.sector_size, f"partition {part.number}"
        with partition_path(path, part, read_only=True) as node:
            found = _signatures(node, where, base, f"partition {part.number} of {path}")
            plan.regions += _stacked(node, where, base, (part.end - part.start + 1) * layout.sector_size, found)
        plan.signatures += found
    return plan


def _wipe_partition(path: str, part: PartitionLayout) -> None:
    with partition_path(path, part) as node:
        run(["wipefs", "--all", node], device=f"partition {part.number} of {path}")


def wipe(path: str) -> WipePlan:
    """Remove every partition and signature from the disk at `path`; return what was removed.

    The target is checked (boot medium, mounted, held) before the first byte is written.
    """
    check_target(path)
    plan = plan_wipe(path)
    if plan.empty:
        return plan
    layout_parts = {part.number: part for part in read_layout(path).partitions}
    for entry in plan.partitions:
        part = layout_parts[entry["number"]]
        if part.kind != "extended":
            _wipe_partition(path, part)
    run(["wipefs", "--all", path], device=path)
    fd = open_target(path)
    try:
        for region in plan.regions:
            zero_range(fd, region.offset, region.length)
        os.fsync(fd)
    finally:
        os.close(fd)
    # With the table gone, libblkid no longer hides signatures that lay inside former partitions
    # but belong to the whole disk (an old whole-disk filesystem): one more pass removes those too.
    late = _signatures(path, "disk", 0, path)
    if late:
        run(["wipefs", "--all", path], device=path)
        plan.signatures += late
    reread_partitions(path)
    return plan


@dataclass
class WipeRun:
    """What `wipe_disks` did (or, in check mode, would do) to each selected disk."""

    plans: List[WipePlan] = field(default_factory=list)
    removed: List[WipePlan] = field(default_factory=list)  # filled unless check mode
    refused: Dict[str, str] = field(default_factory=dict)
    check_mode: bool = False
    erasing: Dict[str, erase.EraseChoice] = field(default_factory=dict)  # path -> secure erase method
    erased: Dict[str, erase.EraseResult] = field(default_factory=dict)  # filled unless check mode

    def erases(self, path: str) -> bool:
        return path in self.erasing and self.erasing[path].method != "none"

    @property
    def changed(self) -> bool:
        done = self.plans if self.check_mode else self.removed
        return any(not plan.empty or self.erases(plan.path) for plan in done)

    def results(self) -> List[dict]:
        done = self.plans if self.check_mode else self.removed
        found = []
        for plan in done:
            entry = dict(device=plan.path, changed=not plan.empty or self.erases(plan.path), label=plan.label,
                         partitions=plan.partitions, signatures=[asdict(sig) for sig in plan.signatures])
            if plan.path in self.erasing:
                entry["secure_erase"] = self.erasing[plan.path].to_dict()
                if plan.path in self.erased:
                    entry["secure_erase"].update(self.erased[plan.path].to_dict())
            found.append(entry)
        return found

    def diff(self) -> List[dict]:
        diffs = []
        for plan in self.plans:
            lines = plan.describe()
            if self.erases(plan.path):
                lines.append(f"all data: secure erase by {self.erasing[plan.path].method} "
                             f"({self.erasing[plan.path].reason})")
            if lines:
                diffs.append(dict(before_header=plan.path, after_header=plan.path,
                                  before="".join(line + "\n" for line in lines), after=""))
        return diffs


def wipe_disks(devices: List[BlockDevice], explicit: Optional[List[str]] = None, all_fixed: bool = False,
               exclude: Iterable[str] = (), force: bool = False, check_mode: bool = False,
               secure_erase: str = "none", sysfs: str = "/sys") -> WipeRun:
    """Select disks (named ones, or all fixed writable disks minus `exclude`), plan every wipe (and
    the secure erase method of each disk, read from the `sysfs` view), and unless in check mode wipe
    (and erase) them. Raises before writing anything when a named disk is refused, when a requested
    erase method is not available for a disk, or when "all fixed disks" picked a disk that is not
    blank (or is to be erased) and `force` is not set (check mode then still reports what would go)."""
    if not explicit and not all_fixed:
        raise ValidationError("Nothing to wipe: name devices, or select all fixed disks.")
    selection = select_disks(devices, explicit=explicit, all_fixed=all_fixed, exclude=exclude)
    if explicit:
        unsafe = [reason for reason in selection.refused.values() if not reason.endswith(EXCLUDED)]
        if unsafe:
            raise UnsafeTargetError(" ".join(unsafe) + " Nothing was wiped.")
    run_ = WipeRun(refused=selection.refused, check_mode=check_mode)
    run_.plans = [plan_wipe(device.path) for device in selection.selected]
    if secure_erase != "none":
        run_.erasing = {device.path: erase.choose(device.path, secure_erase, sysfs, device)
                        for device in selection.selected}
    dirty = [plan.path for plan in run_.plans if not plan.empty or run_.erases(plan.path)]
    unsafe = []
    for path in dirty:  # every disk that will be written, before the first one is (also busy ones)
        try:
            check_target(path)
        except FleetcastError as err:
            unsafe.append(str(err))
    if unsafe:
        raise UnsafeTargetError(" ".join(unsafe) + " Nothing was wiped.")
    if check_mode:
        return run_
    if all_fixed and dirty and not force:
        raise ValidationError(f"Refusing to wipe {', '.join(dirty)}, selected as all fixed disks and not blank, "
                              f"without force; check mode shows what would go. Nothing was wiped.")
    for plan in run_.plans:
        try:
            run_.removed.append(wipe(plan.path) if not plan.empty else plan)
            if run_.erases(plan.path):
                run_.erased[plan.path] = erase.secure_erase(plan.path, run_.erasing[plan.path], open_target)
        except FleetcastError as err:
            done = [p.path for p in run_.removed if not p.empty]
            raise FleetcastError(f"{str(err).rstrip('.')} (already wiped: {', '.join(done) or 'none'}).") from err
    return run_
