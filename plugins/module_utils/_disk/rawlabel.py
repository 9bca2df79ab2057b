# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading and patching GPT and MBR structures byte by byte. Private to the collection.

libparted 3.5 (pyparted 3.12) can neither read nor set partition type GUIDs, unique GUIDs, the GPT
disk GUID, MBR type ids or the MBR disk identifier, and always numbers partitions from the lowest
free slot. `table` lets libparted lay out the partitions and then patches those fields here, keeping
both GPT copies and their CRCs consistent.
"""

from __future__ import annotations

import os
import struct
import uuid
import zlib
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Tuple

GPT_SIGNATURE = b"EFI PART"
GPT_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")  # 92 bytes, up to the entries CRC
GPT_ENTRY = struct.Struct("<16s16sQQQ72s")
GPT_ENTRY_SIZE = 128
MBR_ENTRY = struct.Struct("<B3xB3xII")  # status, type id, first sector, sector count (CHS skipped)
MBR_TABLE = 446
MBR_DISK_ID = 440
EXTENDED_TYPES = (0x05, 0x0F, 0x85)


@dataclass
class GptHeader:
    current_lba: int
    backup_lba: int
    first_usable: int
    last_usable: int
    disk_guid: str
    entries_lba: int
    entry_count: int
    entry_size: int
    raw: bytes
    entries_crc: int = 0


@dataclass
class GptEntry:
    slot: int  # 0-based; the partition number is slot + 1
    type_guid: str
    part_guid: str
    first: int
    last: int
    attributes: int
    name: str


@dataclass
class MbrEntry:
    number: int
    bootable: bool
    type_id: int
    start: int  # absolute sector
    sectors: int
    ebr: Optional[int]  # the EBR sector that describes a logical partition


def _guid(raw: bytes) -> str:
    return str(uuid.UUID(bytes_le=raw))


def _guid_bytes(text: str) -> bytes:
    return uuid.UUID(text).bytes_le


def _pread(fd: int, length: int, offset: int) -> bytes:
    data = os.pread(fd, length, offset)
    return data + bytes(length - len(data))


def _parse_gpt_header(sector: bytes) -> Optional[GptHeader]:
    if sector[:8] != GPT_SIGNATURE:
        return None
    fields = GPT_HEADER.unpack_from(sector)
    header_size = fields[2]
    if not 92 <= header_size <= len(sector):
        return None
    check = bytearray(sector[:header_size])
    check[16:20] = b"\0\0\0\0"
    if zlib.crc32(bytes(check)) != fields[3]:
        return None
    return GptHeader(current_lba=fields[5], backup_lba=fields[6], first_usable=fields[7], last_usable=fields[8],
                     disk_guid=_guid(fields[9]), entries_lba=fields[10], entry_count=fields[11],
                     entry_size=fields[12], raw=sector[:header_size], entries_crc=fields[13])


MAX_ENTRIES_BYTES = 1 << 20  # far above any real table (128 x 128 bytes), below a hostile one


def _valid_gpt(fd: int, sector_size: int, disk_size: int, lba: int) -> Optional[Tuple[GptHeader, bytes]]:
    """The header at `lba` and its entry array, when both are valid the way the kernel checks them
    (block/partitions/efi.c is_gpt_valid): signature, header size and CRC, the header's own LBA,
    usable range inside the disk, 128-byte entries, and the entry array's CRC."""
    last_lba = disk_size // sector_size - 1
    if not 1 <= lba <= last_lba:
        return None
    header = _parse_gpt_header(_pread(fd, sector_size, lba * sector_size))
    if header is None or header.current_lba != lba:
        return None
    if not header.first_usable <= header.last_usable <= last_lba or header.entry_size != GPT_ENTRY_SIZE:
        return None
    length = header.entry_count * header.entry_size
    if not 0 < length <= MAX_ENTRIES_BYTES or header.entries_lba > last_lba:
        return None
    table = _pread(fd, length, header.entries_lba * sector_size)
    if zlib.crc32(table) != header.entries_crc:
        return None
    return header, table


def read_gpt(fd: int, sector_size: int, disk_size: int) -> Optional[Tuple[GptHeader, List[GptEntry]]]:
    """The GPT header and its used entries: the primary when it and its entry array are valid, else
    the backup (at the primary's alternate LBA, else the last sector), like the kernel; None when
    neither copy is valid. An md 1.2 superblock written over the primary entry array (at 4 KiB)
    thus reads as the backup table, not as garbage entries."""
    found = _valid_gpt(fd, sector_size, disk_size, 1)
    if found is None:
        last_lba = disk_size // sector_size - 1
        primary = _parse_gpt_header(_pread(fd, sector_size, sector_size))
        candidates = ([primary.backup_lba] if primary is not None and primary.backup_lba != last_lba else [])
        for lba in candidates + [last_lba]:
            found = _valid_gpt(fd, sector_size, disk_size, lba)
            if found is not None:
                break
    if found is None:
        return None
    header, table = found
    entries = []
    for slot in range(header.entry_count):
        raw = table[slot * header.entry_size: slot * header.entry_size + GPT_ENTRY.size]
        type_raw, part_raw, first, last, attributes, name = GPT_ENTRY.unpack(raw)
        if type_raw != bytes(16):
            entries.append(GptEntry(slot, _guid(type_raw), _guid(part_raw), first, last, attributes,
                                    name.decode("utf-16-le", "replace").split("\0", 1)[0]))
    return header, entries


def patch_gpt(fd: int, sector_size: int, disk_size: int, disk_guid: Optional[str],
              changes: Dict[int, GptEntry]) -> None:
    """Rewrite both GPT copies: each entry now in slot `old` moves to `changes[old]` (its slot, type
    GUID, unique GUID and attributes); the disk GUID is replaced when given. CRCs are recomputed."""
    found = read_gpt(fd, sector_size, disk_size)
    if found is None:
        raise ValueError("no GPT to patch")
    primary, entries = found
    table = bytearray(primary.entry_count * primary.entry_size)
    for entry in entries:
        new = changes.get(entry.slot, entry)
        name = (new.name or "").encode("utf-16-le")[:72]
        packed = GPT_ENTRY.pack(_guid_bytes(new.type_guid), _guid_bytes(new.part_guid), entry.first,
                                entry.last, new.attributes, name)
        table[new.slot * primary.entry_size: new.slot * primary.entry_size + len(packed)] = packed
    entries_crc = zlib.crc32(bytes(table))
    for header_lba, entries_lba in ((1, primary.entries_lba),
                                    (primary.backup_lba, primary.backup_lba - len(table) // sector_size)):
        header = _parse_gpt_header(_pread(fd, sector_size, header_lba * sector_size))
        if header is not None:
            entries_lba = header.entries_lba
        raw = bytearray(primary.raw)
        struct.pack_into("<QQ", raw, 24, header_lba, 1 if header_lba != 1 else primary.backup_lba)
        struct.pack_into("<Q", raw, 72, entries_lba)
        if disk_guid:
            raw[56:72] = _guid_bytes(disk_guid)
        struct.pack_into("<I", raw, 88, entries_crc)
        struct.pack_into("<I", raw, 16, 0)
        struct.pack_into("<I", raw, 16, zlib.crc32(bytes(raw)))
        os.pwrite(fd, bytes(table), entries_lba * sector_size)
        os.pwrite(fd, bytes(raw) + bytes(sector_size - len(raw)), header_lba * sector_size)
    os.fsync(fd)


def read_mbr(fd: int, sector_size: int) -> Optional[Tuple[str, List[MbrEntry], List[int]]]:
    """(disk identifier "0x…", primary and logical entries, every EBR sector) of an MBR, if any."""
    boot = _pread(fd, sector_size, 0)
    if boot[510:512] != b"\x55\xaa":
        return None
    disk_id = "0x%08x" % struct.unpack_from("<I", boot, MBR_DISK_ID)[0]
    entries, ebrs = [], []
    extended = None
    for slot in range(4):
        status, type_id, start, sectors = MBR_ENTRY.unpack_from(boot, MBR_TABLE + 16 * slot)
        if type_id:
            entries.append(MbrEntry(slot + 1, status == 0x80, type_id, start, sectors, None))
            if type_id in EXTENDED_TYPES and extended is None:
                extended = start
    ebr, number = extended, 5
    while ebr is not None and number < 5 + 256:
        sector = _pread(fd, sector_size, ebr * sector_size)
        if sector[510:512] != b"\x55\xaa":
            break
        ebrs.append(ebr)
        status, type_id, start, sectors = MBR_ENTRY.unpack_from(sector, MBR_TABLE)
        if type_id:
            entries.append(MbrEntry(number, status == 0x80, type_id, ebr + start, sectors, ebr))
            number += 1
        next_type, next_start = MBR_ENTRY.unpack_from(sector, MBR_TABLE + 16)[1:3]
        ebr = extended + next_start if next_type in EXTENDED_TYPES and next_start else None
    return disk_id, entries, ebrs


def patch_mbr(fd: int, sector_size: int, disk_id: Optional[str], slots: Dict[int, int],
              types: Dict[int, int]) -> None:
    """Move primary entries between slots (`slots[old number] = new number`), set type ids by final
    partition number (primaries and logicals) and the disk identifier."""
    found = read_mbr(fd, sector_size)
    if found is None:
        raise ValueError("no MBR to patch")
    boot = bytearray(_pread(fd, sector_size, 0))
    old = [bytes(boot[MBR_TABLE + 16 * i: MBR_TABLE + 16 * (i + 1)]) for i in range(4)]
    table = [bytes(16)] * 4
    for index, raw in enumerate(old):
        if raw != bytes(16):
            table[slots.get(index + 1, index + 1) - 1] = raw
    for index, raw in enumerate(table):
        entry = bytearray(raw)
        if entry != bytes(16) and (index + 1) in types:
            entry[4] = types[index + 1]
        boot[MBR_TABLE + 16 * index: MBR_TABLE + 16 * (index + 1)] = entry
    if disk_id:
        struct.pack_into("<I", boot, MBR_DISK_ID, int(disk_id, 16))
    os.pwrite(fd, bytes(boot), 0)
    for entry in found[1]:
        if entry.ebr is not None and entry.number in types:
            ebr = bytearray(_pread(fd, sector_size, entry.ebr * sector_size))
            ebr[MBR_TABLE + 4] = types[entry.number]
            os.pwrite(fd, bytes(ebr), entry.ebr * sector_size)
    os.fsync(fd)


def gpt_entry(slot: int, entry: GptEntry, type_guid: Optional[str], part_guid: Optional[str],
              attributes: Optional[int]) -> GptEntry:
    """`entry` moved to `slot`, with the given fields where they are known."""
    return replace(entry, slot=slot, type_guid=type_guid or entry.type_guid,
                   part_guid=part_guid or entry.part_guid,
                   attributes=entry.attributes if attributes is None else attributes)


def partition_bounds(fd: int, sector_size: int, disk_size: int, number: int) -> Optional[Tuple[int, int]]:
    """(first, last) sector of partition `number` in the GPT (behind a protective MBR) or the MBR,
    or None. The lookup `blockdev.partition_path` needs, without the whole `table` reader."""
    mbr = read_mbr(fd, sector_size)
    protective = mbr is not None and any(entry.type_id == 0xEE for entry in mbr[1] if entry.number <= 4)
    if mbr is None or protective:
        gpt = read_gpt(fd, sector_size, disk_size)
        if gpt is not None:
            return next(((entry.first, entry.last) for entry in gpt[1] if entry.slot + 1 == number), None)
    if mbr is not None and not protective:
        return next(((entry.start, entry.start + entry.sectors - 1) for entry in mbr[1]
                     if entry.number == number and entry.type_id not in EXTENDED_TYPES), None)
    return None
