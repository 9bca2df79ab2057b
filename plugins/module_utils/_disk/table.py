# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Partition tables: read a disk's layout and recreate it exactly on another disk.

Private to the collection: not a public API. Reading parses GPT and MBR directly (`rawlabel`). For
writing, libparted (pyparted) lays out the partitions and `rawlabel` then patches what libparted
cannot set (GUIDs, MBR type ids and disk identifier, partition numbers with gaps). The label type
always comes from the layout: a GPT is never silently turned into an msdos table.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Dict, List, Optional

from .._errors import FleetcastError, ValidationError
from . import rawlabel
from .blockdev import device_size, reread_partitions, sector_size, zero_range
from .command import run

LABELS = ("gpt", "msdos", "none")
GPT_ENTRIES_BYTES = 128 * 128
MSDOS_MAX_SECTOR = 2 ** 32 - 1


@dataclass
class PartitionLayout:
    number: int
    start: int  # sector
    end: int  # sector, inclusive
    type_guid: Optional[str] = None  # GPT partition type
    mbr_type: Optional[int] = None  # MBR type id (0x83, 0x0c...)
    part_uuid: Optional[str] = None  # GPT unique partition GUID
    name: str = ""
    flags: List[str] = field(default_factory=list)
    fs: Optional[str] = None
    fs_uuid: Optional[str] = None
    fs_label: Optional[str] = None
    kind: str = "primary"  # primary | extended | logical (msdos)
    gpt_attributes: Optional[int] = None

    @property
    def sectors(self) -> int:
        return self.end - self.start + 1


@dataclass
class DiskLayout:
    size: int  # bytes
    sector_size: int
    label: str  # gpt | msdos | none
    guid: Optional[str] = None  # GPT disk GUID, or MBR disk identifier as "0x…"
    partitions: List[PartitionLayout] = field(default_factory=list)
    first_usable: int = 0
    last_usable: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "DiskLayout":
        known = {f.name for f in fields(PartitionLayout)}
        parts = [PartitionLayout(**{k: v for k, v in part.items() if k in known})
                 for part in data.get("partitions", [])]
        top = {f.name for f in fields(cls)} - {"partitions"}
        return cls(partitions=parts, **{k: v for k, v in data.items() if k in top})

    def partition(self, number: int) -> Optional[PartitionLayout]:
        return next((part for part in self.partitions if part.number == number), None)


def usable_range(label: str, size: int, sector: int) -> tuple:
    """(first, last) usable sector of a disk of `size` bytes carrying `label`."""
    total = size // sector
    if label == "gpt":
        entries = -(-GPT_ENTRIES_BYTES // sector)
        return 2 + entries, total - 2 - entries
    if label == "msdos":
        return 1, min(total - 1, MSDOS_MAX_SECTOR)
    return 0, total - 1


def probe_filesystem(path: str, offset: int, size: int) -> Dict[str, str]:
    """What blkid finds at one byte range (TYPE, UUID, LABEL...), or {} when nothing is there."""
    proc = run(["blkid", "-p", "-o", "export", "-O", offset, "-S", size, path], device=path,
               ok_codes=(0, 2, 8))
    if proc.returncode != 0:
        return {}
    found = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    found.pop("DEVNAME", None)
    return found


# Flags as libparted names them, derived from the type (GPT type GUID, MBR type id) and attribute
# bits, so that reading never needs libparted (which opens devices read-write).
_GPT_TYPE_FLAGS = {
    "c12a7328-f81f-11d2-ba4b-00a0c93ec93b": ["boot", "esp"],
    "21686148-6449-6e6f-744e-656564454649": ["bios_grub"],
    "e3c9e316-0b5c-4db8-817d-f92df00215ae": ["msftres"],
    "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7": ["msftdata"],
    "de94bba4-06d1-4d40-a16a-bfd50179d6ac": ["diag"],
    "e6d6d379-f507-44c2-a23c-238f2a3df928": ["lvm"],
    "a19d880f-05fc-4d3b-a006-743f0f84911e": ["raid"],
    "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f": ["swap"],
    "933ac7e1-2eb4-4f13-b844-0e14e2aef915": ["linux-home"],
    "9e1a2d38-c612-4316-aa26-8b49521e5a8b": ["prep"],
    "bc13c2ff-59e6-4262-a352-b275fd6f7172": ["bls_boot"],
}
_GPT_ATTRIBUTE_FLAGS = {2: "legacy_boot"}
_MBR_TYPE_FLAGS = {0x0C: ["lba"], 0x0E: ["lba"], 0x0F: ["lba"], 0x82: ["swap"], 0xEF: ["esp"], 0x8E: ["lvm"],
                   0xFD: ["raid"], 0x41: ["prep"], 0x12: ["diag"], 0x27: ["diag"]}
_MBR_HIDDEN = (0x11, 0x14, 0x16, 0x17, 0x1B, 0x1C, 0x1E)


def _gpt_flags(entry: rawlabel.GptEntry) -> List[str]:
    flags = list(_GPT_TYPE_FLAGS.get(entry.type_guid, []))
    flags += [name for bit, name in _GPT_ATTRIBUTE_FLAGS.items() if entry.attributes >> bit & 1]
    return sorted(flags)


def _mbr_flags(entry: rawlabel.MbrEntry) -> List[str]:
    flags = list(_MBR_TYPE_FLAGS.get(entry.type_id, []))
    flags += (["boot"] if entry.bootable else []) + (["hidden"] if entry.type_id in _MBR_HIDDEN else [])
    return sorted(flags)


def read_layout(path: str) -> DiskLayout:
    """The partition table of a disk or disk image, with the filesystem found in each partition.

    Reads only (GPT and MBR are parsed directly; blkid probes each partition's byte range).
    """
    size, sector = device_size(path), sector_size(path)
    if size < 2 * sector:
        raise ValidationError(f"{path} is too small to hold a partition table ({size} bytes).")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        layout = _read_table(fd, size, sector)
    finally:
        os.close(fd)
    if layout.label == "msdos" and not layout.partitions and probe_filesystem(path, 0, size).get("TYPE"):
        # A FAT or NTFS boot sector on the whole disk, not an empty partition table.
        layout = replace(layout, label="none", guid=None, first_usable=0)
    for part in layout.partitions:
        if part.kind != "extended":
            found = probe_filesystem(path, part.start * sector, part.sectors * sector)
            part.fs, part.fs_uuid, part.fs_label = found.get("TYPE"), found.get("UUID"), found.get("LABEL")
    return layout


def _read_table(fd: int, size: int, sector: int) -> DiskLayout:
    mbr = rawlabel.read_mbr(fd, sector)
    protective = mbr is not None and any(entry.type_id == 0xEE for entry in mbr[1] if entry.number <= 4)
    gpt = rawlabel.read_gpt(fd, sector, size) if mbr is None or protective else None
    if gpt is not None:
        header, entries = gpt
        parts = [PartitionLayout(number=entry.slot + 1, start=entry.first, end=entry.last,
                                 type_guid=entry.type_guid, part_uuid=entry.part_guid, name=entry.name,
                                 flags=_gpt_flags(entry), gpt_attributes=entry.attributes)
                 for entry in entries]
        return DiskLayout(size=size, sector_size=sector, label="gpt", guid=header.disk_guid, partitions=parts,
                          first_usable=header.first_usable, last_usable=header.last_usable)
    if mbr is not None and not protective and _plausible_mbr(mbr[1], size // sector):
        first, last = usable_range("msdos", size, sector)
        parts = [PartitionLayout(number=entry.number, start=entry.start, end=entry.start + entry.sectors - 1,
                                 mbr_type=entry.type_id, flags=_mbr_flags(entry),
                                 kind=("logical" if entry.ebr is not None else
                                       "extended" if entry.type_id in rawlabel.EXTENDED_TYPES else "primary"))
                 for entry in mbr[1]]
        return DiskLayout(size=size, sector_size=sector, label="msdos", guid=mbr[0], partitions=parts,
                          first_usable=first, last_usable=last)
    first, last = usable_range("none", size, sector)
    return DiskLayout(size=size, sector_size=sector, label="none", first_usable=first, last_usable=last)


def _plausible_mbr(entries: List[rawlabel.MbrEntry], total_sectors: int) -> bool:
    """A FAT or NTFS boot sector also ends in 55 AA: only a table whose entries fit is one."""
    return all(entry.sectors > 0 and entry.start > 0 and entry.start + entry.sectors <= total_sectors
               for entry in entries)


def plan_layout(path: str, layout: DiskLayout, grow_last: bool = False) -> DiskLayout:
    """Check that `layout` fits the disk at `path` and return exactly what `write_layout` would write
    there (grown last partition, the target's size and usable range). Raises ValidationError."""
    if layout.label not in LABELS:
        raise ValidationError(f"Cannot write a partition table of unknown type {layout.label!r} to {path}.")
    size, sector = device_size(path), sector_size(path)
    if sector != layout.sector_size:
        layout = convert_sector_size(layout, sector, path)
    first, last = usable_range(layout.label, size, sector)
    parts = [replace(part, flags=list(part.flags)) for part in layout.partitions]
    numbers = [part.number for part in parts]
    if len(set(numbers)) != len(numbers):
        raise ValidationError(f"The layout for {path} numbers two partitions alike.")
    if layout.label == "msdos":
        _check_msdos(path, parts)
    if grow_last and parts:
        _grow_last(path, parts, last)
    for part in parts:
        if part.start < first or part.end > last or part.end < part.start:
            raise ValidationError(
                f"{path} is too small for the layout: partition {part.number} spans sectors {part.start}-"
                f"{part.end} but the usable sectors are {first}-{last}.")
    outer = sorted((p for p in parts if p.kind != "logical"), key=lambda p: p.start)
    for before, after in zip(outer, outer[1:]):
        if after.start <= before.end:
            raise ValidationError(f"Partitions {before.number} and {after.number} of the layout for {path} overlap.")
    return replace(layout, size=size, partitions=parts, first_usable=first, last_usable=last)


def convert_sector_size(layout: DiskLayout, sector: int, path: str) -> DiskLayout:
    """The GPT `layout` in units of `sector`-byte sectors, for a target whose logical sector size
    differs (512 <-> 4096). Partition contents are byte ranges and move unchanged; every partition
    must start on a multiple of the new sector size, and its end is rounded up (never down: the
    last bytes of a volume, an NTFS backup boot sector or an md 1.0 superblock, must stay inside).
    Filesystems that depend on the sector size are checked by the caller (`_image.sectors`)."""
    if layout.label != "gpt":
        raise ValidationError(f"{path} has {sector}-byte sectors but the image's {layout.label} partition table "
                              f"was made for {layout.sector_size}-byte sectors; only GPT tables are converted "
                              f"between sector sizes.")
    parts = []
    for part in layout.partitions:
        start, end = part.start * layout.sector_size, (part.end + 1) * layout.sector_size
        if start % sector:
            raise ValidationError(f"{path} has {sector}-byte sectors, but partition {part.number} of the image starts "
                                  f"at byte {start}, which is not a multiple of {sector}, so the table cannot be "
                                  f"converted from {layout.sector_size}-byte sectors.")
        parts.append(replace(part, start=start // sector, end=-(-end // sector) - 1, flags=list(part.flags)))
    return replace(layout, sector_size=sector, partitions=parts)


def _check_msdos(path: str, parts: List[PartitionLayout]) -> None:
    extended = [part for part in parts if part.kind == "extended"]
    logical = sorted((part for part in parts if part.kind == "logical"), key=lambda part: part.start)
    if len(extended) > 1 or (logical and not extended):
        raise ValidationError(f"The msdos layout for {path} needs exactly one extended partition around its "
                              f"logical partitions.")
    for part in parts:
        if (part.kind == "logical") != (part.number >= 5) or part.number < 1:
            raise ValidationError(f"Partition {part.number} of the msdos layout for {path} has a number "
                                  f"its kind ({part.kind}) cannot have.")
    if [part.number for part in logical] != list(range(5, 5 + len(logical))):
        raise ValidationError(f"The logical partitions of the msdos layout for {path} are not numbered from 5 "
                              f"in disk order.")
    for part in logical:
        if not extended[0].start < part.start <= part.end <= extended[0].end:
            raise ValidationError(f"Logical partition {part.number} of the layout for {path} lies outside the "
                                  f"extended partition.")


def last_partition(parts: List[PartitionLayout]) -> PartitionLayout:
    """The partition that ends last; of an extended partition and a logical one ending with it,
    the logical one (it holds the filesystem)."""
    return max(parts, key=lambda part: (part.end, part.kind != "extended"))


def _grow_last(path: str, parts: List[PartitionLayout], last_usable: int) -> None:
    """Let the partition that ends last end at the disk's last usable sector (with its extended)."""
    tail = last_partition(parts)
    grown = [tail] + [part for part in parts if part.kind == "extended" and tail.kind == "logical"]
    if last_usable < tail.end:
        raise ValidationError(f"{path} is too small for the layout: partition {tail.number} ends at sector "
                              f"{tail.end} but the last usable sector is {last_usable}.")
    for part in grown:
        part.end = last_usable


def clear_labels(fd: int, size: int, sector: int) -> None:
    """Zero the MBR and both GPT copies (the first and last 34 sectors' worth for 512-byte sectors)."""
    first = usable_range("gpt", size, sector)[0]
    span = min(first * sector, size)
    zero_range(fd, 0, span)
    tail = max(size - (first - 1) * sector, span)
    zero_range(fd, tail, size - tail)
    os.fsync(fd)


def write_layout(path: str, layout: DiskLayout, grow_last: bool = False) -> DiskLayout:
    """Recreate `layout` on the disk at `path` (same label, numbers, sectors, types, names, flags and
    GUIDs; with `grow_last` the last partition ends at the disk's last usable sector). Returns the
    layout read back from the disk."""
    from .safety import check_target  # safety uses discover only; imported here to keep table light

    plan = plan_layout(path, layout, grow_last)
    check_target(path)
    if plan.label == "none":
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            clear_labels(fd, plan.size, plan.sector_size)
        finally:
            os.close(fd)
        reread_partitions(path)
        return read_layout(path)
    created = _create_with_parted(path, plan)
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        _patch_raw_fields(fd, plan, created)
    finally:
        os.close(fd)
    reread_partitions(path)
    return read_layout(path)


def _creation_order(plan: DiskLayout) -> List[PartitionLayout]:
    return sorted(plan.partitions, key=lambda part: (part.kind == "logical", part.number))


def _create_with_parted(path: str, plan: DiskLayout) -> Dict[int, int]:
    """Lay out the partitions with libparted; return {number parted gave: number wanted}."""
    # Imported here: only writing needs libparted (python3-parted), reading and disk_info do not.
    import parted

    flag_numbers = {name: number for number, name in parted.partitionFlag.items()}
    device = parted.getDevice(path)
    try:
        disk = parted.freshDisk(device, plan.label)
        created: Dict[int, int] = {}
        for part in _creation_order(plan):
            kind = {"primary": parted.PARTITION_NORMAL, "extended": parted.PARTITION_EXTENDED,
                    "logical": parted.PARTITION_LOGICAL}.get(part.kind)
            if kind is None:
                raise ValidationError(f"Partition {part.number} of the layout for {path} has an unknown kind "
                                      f"{part.kind!r}.")
            geometry = parted.Geometry(device=device, start=part.start, end=part.end)
            new = parted.Partition(disk=disk, type=kind, geometry=geometry)
            try:
                disk.addPartition(new, parted.Constraint(exactGeom=geometry))
            except parted.PartitionException as err:
                raise ValidationError(f"Cannot place partition {part.number} at sectors {part.start}-{part.end} "
                                      f"on {path}: {err}.") from err
            if plan.label == "gpt" and part.name:
                new.set_name(part.name)
            for flag in part.flags:
                number = flag_numbers.get(flag)
                if number is not None and new.isFlagAvailable(number):
                    new.setFlag(number)
            created[new.number] = part.number
        try:
            disk.commitToDevice()
        except (parted.DiskException, parted.IOException) as err:
            raise FleetcastError(f"Cannot write the partition table of {path}: {err}.") from err
    finally:
        device.removeFromCache()
    return created


def _patch_raw_fields(fd: int, plan: DiskLayout, created: Dict[int, int]) -> None:
    by_number = {part.number: part for part in plan.partitions}
    if plan.label == "gpt":
        found = rawlabel.read_gpt(fd, plan.sector_size, plan.size)
        if found is None:
            raise FleetcastError(f"The GPT just written to {_name(fd)} cannot be read back.")
        changes = {}
        for entry in found[1]:
            wanted = by_number[created[entry.slot + 1]]
            changes[entry.slot] = rawlabel.gpt_entry(wanted.number - 1, entry, wanted.type_guid,
                                                     wanted.part_uuid, wanted.gpt_attributes)
        rawlabel.patch_gpt(fd, plan.sector_size, plan.size, plan.guid, changes)
    else:
        slots = {got: wanted for got, wanted in created.items() if got <= 4}
        types = {part.number: part.mbr_type for part in plan.partitions if part.mbr_type}
        rawlabel.patch_mbr(fd, plan.sector_size, plan.guid, slots, types)


def _name(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "the disk"
