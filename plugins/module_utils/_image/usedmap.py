# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which byte ranges of a volume hold data: ext2/3/4 block bitmaps, the FAT, else everything.
Private to the collection: not a public API.

A map is a sorted list of (offset, length) extents relative to the volume start. Bytes outside
the map are free in the filesystem's own accounting and may keep old contents on a target.
"""

from __future__ import annotations

import os
import struct
import traceback
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

try:
    import numpy
except ImportError:
    numpy = None
    NUMPY_IMPORT_ERROR: Optional[str] = traceback.format_exc()
else:
    NUMPY_IMPORT_ERROR = None

Extent = Tuple[int, int]
# Free gaps shorter than this are stored anyway: fewer, larger chunks cost less than the gap.
MERGE_GAP = 128 << 10

EXT_MAGIC = 0xEF53
EXT_INCOMPAT_RECOVER = 0x4
EXT_INCOMPAT_META_BG = 0x10
EXT_INCOMPAT_64BIT = 0x80
EXT_INCOMPAT_FLEX_BG = 0x200
EXT_RO_COMPAT_SPARSE_SUPER = 0x1
EXT_RO_COMPAT_BIGALLOC = 0x200
EXT_BG_BLOCK_UNINIT = 0x2
EXT_RO_COMPAT_GDT_CSUM = 0x10
EXT_RO_COMPAT_METADATA_CSUM = 0x400
EXT_COMPAT_SPARSE_SUPER2 = 0x200
EXT_COMPAT_RESIZE_INODE = 0x10


@dataclass
class UsedMap:
    """What a volume's filesystem uses; `method` says how it was found (ext, fat, all)."""

    size: int
    filesystem: Optional[str]
    method: str
    extents: List[Extent] = field(default_factory=list)
    note: str = ""

    @property
    def used_bytes(self) -> int:
        return sum(length for dummy, length in self.extents)


def merge_extents(extents: List[Extent], size: int, gap: int = MERGE_GAP) -> List[Extent]:
    """Sort, clip to the volume, and join extents closer than `gap` bytes."""
    merged: List[Extent] = []
    for offset, length in sorted(extents):
        end = min(offset + length, size)
        if end <= offset:
            continue
        if merged and offset <= merged[-1][0] + merged[-1][1] + gap:
            last_offset, last_length = merged[-1]
            merged[-1] = (last_offset, max(last_offset + last_length, end) - last_offset)
        else:
            merged.append((offset, end - offset))
    return merged


def _runs(bits: "numpy.ndarray") -> List[Tuple[int, int]]:
    """(first, count) of every run of ones in a 0/1 array, without a Python loop per bit."""
    padded = numpy.concatenate(([0], bits.astype(numpy.int8), [0]))
    edges = numpy.flatnonzero(numpy.diff(padded))
    return list(zip(edges[0::2].tolist(), (edges[1::2] - edges[0::2]).tolist()))


class _Volume:
    """A byte range of an open disk or file (a partition read through its disk)."""

    def __init__(self, fd: int, size: int, base: int = 0):
        self.fd, self.size, self.base = fd, size, base

    def read(self, offset: int, length: int) -> bytes:
        if offset + length > self.size:
            raise ValueError(f"read past the end at {offset}")
        data = os.pread(self.fd, length, self.base + offset)
        if len(data) != length:
            raise ValueError(f"short read at {offset}")
        return data


def _has_super_backup(group: int, sparse: bool, backup_groups: Optional[Tuple[int, int]] = None) -> bool:
    if group == 0 or not sparse:
        return True
    if backup_groups is not None:   # sparse_super2: backups only where the superblock says
        return group in backup_groups
    if group == 1:
        return True
    for base in (3, 5, 7):
        power = base
        while power < group:
            power *= base
        if power == group:
            return True
    return False


def ext_map(volume: _Volume) -> Optional[UsedMap]:
    """Used blocks of an ext2/3/4 filesystem from its block bitmaps; None if it is not one we can read."""
    sb = volume.read(1024, 1024)
    if struct.unpack_from("<H", sb, 56)[0] != EXT_MAGIC:
        return None
    (blocks_lo, _r, _f, _fi, first_data_block, log_block, log_cluster, blocks_per_group,
     clusters_per_group) = struct.unpack_from("<IIIIIIIII", sb, 4)
    compat, incompat, ro_compat = struct.unpack_from("<III", sb, 92)
    block_size = 1024 << log_block
    is_64 = bool(incompat & EXT_INCOMPAT_64BIT)
    blocks = blocks_lo | ((struct.unpack_from("<I", sb, 336)[0] << 32) if is_64 else 0)
    desc_size = struct.unpack_from("<H", sb, 254)[0] if is_64 else 32
    reserved_gdt = struct.unpack_from("<H", sb, 206)[0] if compat & EXT_COMPAT_RESIZE_INODE else 0
    fs_name = "ext4" if incompat & (EXT_INCOMPAT_64BIT | EXT_INCOMPAT_FLEX_BG | 0x40) else (
        "ext3" if compat & 0x4 else "ext2")
    if incompat & EXT_INCOMPAT_RECOVER:
        return UsedMap(volume.size, fs_name, "all", note="journal needs recovery: every block is stored")
    if incompat & EXT_INCOMPAT_META_BG:
        return UsedMap(volume.size, fs_name, "all", note="meta_bg layout: every block is stored")
    # Without bigalloc a cluster is a block; the bitmap has one bit per cluster either way.
    unit = block_size << (log_cluster - log_block) if ro_compat & EXT_RO_COMPAT_BIGALLOC else block_size
    per_group = clusters_per_group if ro_compat & EXT_RO_COMPAT_BIGALLOC else blocks_per_group
    if not (1024 <= block_size <= 65536) or not per_group or desc_size < 32 or blocks * block_size > volume.size:
        return UsedMap(volume.size, fs_name, "all", note="superblock out of range: every block is stored")
    groups = -(-(blocks - first_data_block) // blocks_per_group)
    gdt_blocks = -(-(groups * desc_size) // block_size)
    table = volume.read((first_data_block + 1) * block_size, gdt_blocks * block_size)
    inodes_per_group = struct.unpack_from("<I", sb, 40)[0]
    inode_size = struct.unpack_from("<H", sb, 88)[0] if struct.unpack_from("<I", sb, 76)[0] else 128
    inode_table_blocks = -(-(inodes_per_group * inode_size) // block_size)
    sparse = bool(ro_compat & EXT_RO_COMPAT_SPARSE_SUPER) or bool(compat & EXT_COMPAT_SPARSE_SUPER2)
    backup_groups = struct.unpack_from("<II", sb, 0x24C) if compat & EXT_COMPAT_SPARSE_SUPER2 else None
    # Group flags mean something only when descriptors carry checksums; otherwise bitmaps are real.
    uninit_valid = bool(ro_compat & (EXT_RO_COMPAT_GDT_CSUM | EXT_RO_COMPAT_METADATA_CSUM))
    extents: List[Extent] = [(0, (first_data_block + 1 + gdt_blocks + reserved_gdt) * block_size)]
    for group in range(groups):
        desc = table[group * desc_size:(group + 1) * desc_size]
        block_bitmap, inode_bitmap, inode_table = struct.unpack_from("<III", desc, 0)
        flags = struct.unpack_from("<H", desc, 18)[0]
        if is_64 and desc_size >= 64:
            hi = struct.unpack_from("<III", desc, 32)
            block_bitmap |= hi[0] << 32
            inode_bitmap |= hi[1] << 32
            inode_table |= hi[2] << 32
        # Every group's own metadata, wherever flex_bg put it, is used whatever the bitmaps say.
        extents += [(block_bitmap * block_size, block_size), (inode_bitmap * block_size, block_size),
                    (inode_table * block_size, inode_table_blocks * block_size)]
        group_start = first_data_block + group * blocks_per_group
        if uninit_valid and flags & EXT_BG_BLOCK_UNINIT:
            if _has_super_backup(group, sparse, backup_groups):
                extents.append((group_start * block_size, (1 + gdt_blocks + reserved_gdt) * block_size))
            continue
        bits = numpy.unpackbits(numpy.frombuffer(volume.read(block_bitmap * block_size, per_group // 8),
                                                 dtype=numpy.uint8), bitorder="little")
        base = group_start * block_size
        for first, count in _runs(bits):
            extents.append((base + first * unit, count * unit))
    end = blocks * block_size
    return UsedMap(volume.size, fs_name, "ext", merge_extents(extents, end))


def _fat_entries(fat: bytes, bits: int, count: int) -> "numpy.ndarray":
    if bits == 32:
        return numpy.frombuffer(fat, dtype="<u4", count=count) & 0x0FFFFFFF
    if bits == 16:
        return numpy.frombuffer(fat, dtype="<u2", count=count)
    raw = numpy.frombuffer(fat, dtype=numpy.uint8, count=(count * 3 + 1) // 2).astype(numpy.uint16)
    raw = numpy.concatenate((raw, [0, 0]))
    index = numpy.arange(count)
    at = index * 3 // 2
    even = raw[at] | ((raw[at + 1] & 0x0F) << 8)
    odd = (raw[at] >> 4) | (raw[at + 1] << 4)
    return numpy.where(index % 2 == 0, even, odd)


def fat_map(volume: _Volume) -> Optional[UsedMap]:
    """Used areas of a FAT12/16/32 volume: reserved sectors, FATs, root directory, used clusters."""
    boot = volume.read(0, 512)
    if boot[510:512] != b"\x55\xaa" or boot[0] not in (0xEB, 0xE9):
        return None
    sector, per_cluster, reserved, fats, root_entries, total16, _media, fat16 = struct.unpack_from(
        "<HBHBHHBH", boot, 11)
    total = total16 or struct.unpack_from("<I", boot, 32)[0]
    fat_sectors = fat16 or struct.unpack_from("<I", boot, 36)[0]
    if sector not in (512, 1024, 2048, 4096) or per_cluster not in (1, 2, 4, 8, 16, 32, 64, 128) \
            or not reserved or fats not in (1, 2) or not fat_sectors or total * sector > volume.size:
        return None
    root_sectors = -(-(root_entries * 32) // sector)
    data_start = reserved + fats * fat_sectors + root_sectors
    if data_start >= total:
        return None
    clusters = (total - data_start) // per_cluster
    bits, name = (12, "fat12") if clusters < 4085 else ((16, "fat16") if clusters < 65525 else (32, "fat32"))
    if bits * (clusters + 2) > fat_sectors * sector * 8:
        return None
    fat = volume.read(reserved * sector, fat_sectors * sector)
    entries = _fat_entries(fat, bits, clusters + 2)[2:]
    cluster_size = per_cluster * sector
    extents: List[Extent] = [(0, data_start * sector)]
    for first, count in _runs(entries != 0):
        extents.append((data_start * sector + first * cluster_size, count * cluster_size))
    return UsedMap(volume.size, "vfat", "fat", merge_extents(extents, total * sector), note=name)


PARSERS: List[Callable[[_Volume], Optional[UsedMap]]] = [ext_map, fat_map]


def used_map(fd: int, size: int, base: int = 0) -> UsedMap:
    """The used extents of the volume of `size` bytes at byte `base` of the open `fd`; when no
    filesystem we understand is found, the whole volume (zero runs are dropped later, by content)."""
    volume = _Volume(fd, size, base)
    for parser in PARSERS:
        try:
            found = parser(volume)
        except (ValueError, struct.error, OSError):
            found = None
        if found is not None:
            if found.method == "all":
                found.extents = [(0, size)] if size else []
            return found
    return UsedMap(size, None, "all", [(0, size)] if size else [])
