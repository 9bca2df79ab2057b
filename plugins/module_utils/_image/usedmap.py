# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which byte ranges of a volume hold data: ext2/3/4 block bitmaps, the FAT, the NTFS `$Bitmap`,
the XFS free-space B+trees, the btrfs extent tree; else everything.
Private to the collection: not a public API.

A map is a sorted list of (offset, length) extents relative to the volume start. Bytes outside
the map are free in the filesystem's own accounting and may keep old contents on a target. Every
parser errs on the side of storing more: anything it does not understand (an unclean journal or
log, a layout it does not know) makes it store the whole volume, which zero-run skipping still
shrinks.
"""

from __future__ import annotations

import os
import struct
import traceback
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional, Tuple

try:
    import numpy
except ImportError:
    numpy = None
    NUMPY_IMPORT_ERROR: Optional[str] = traceback.format_exc()
else:
    NUMPY_IMPORT_ERROR = None

Extent = Tuple[int, int]
# Free gaps shorter than this are stored inside a larger extent, but as zeros (the capture blanks
# them: deleted data is never carried): fewer, larger chunks cost less than the gap.
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
    holes: List[Extent] = field(default_factory=list)   # free gaps merged into extents: stored as zeros
    # not cleanly unmounted (a journal or log to replay, a dirty mark): stored whole, `note` says why
    unclean: bool = False

    @property
    def used_bytes(self) -> int:
        return sum(length for dummy, length in self.extents)


def merge_extents(extents: List[Extent], size: int, gap: int = MERGE_GAP,
                  holes: Optional[List[Extent]] = None) -> List[Extent]:
    """Sort, clip to the volume, and join extents closer than `gap` bytes (the free bytes joined
    over are appended to `holes`)."""
    merged: List[Extent] = []
    for offset, length in sorted(extents):
        end = min(offset + length, size)
        if end <= offset:
            continue
        if merged and offset <= merged[-1][0] + merged[-1][1] + gap:
            last_offset, last_length = merged[-1]
            if holes is not None and offset > last_offset + last_length:
                holes.append((last_offset + last_length, offset - last_offset - last_length))
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

    def __init__(self, fd: int, size: int, base: int = 0, trust_dirty: bool = False):
        self.fd, self.size, self.base = fd, size, base
        self.trust_dirty = trust_dirty     # a dirty mark we set ourselves (ntfsresize's chkdsk request)

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
        return UsedMap(volume.size, fs_name, "all", unclean=True,
                       note="journal needs recovery: every block is stored")
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
    return UsedMap(volume.size, fs_name, "ext", merge_extents(extents, end, 0))


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
    return UsedMap(volume.size, "vfat", "fat", merge_extents(extents, total * sector, 0), note=name)


NTFS_VOLUME_DIRTY = 0x0001
NTFS_RECORD_BITMAP = 6
NTFS_RECORD_VOLUME = 3


def _ntfs_record(volume: _Volume, offset: int, size: int, magic: bytes = b"FILE") -> bytes:
    """One MFT record (or INDX block) with its update sequence (the last two bytes of every 512) put back."""
    record = bytearray(volume.read(offset, size))
    if record[:4] != magic:
        raise ValueError(f"no MFT record at {offset}")
    usa_offset, usa_count = struct.unpack_from("<HH", record, 4)
    check = record[usa_offset:usa_offset + 2]
    for number in range(1, usa_count):
        end = number * 512 - 2
        if end + 2 > size or record[end:end + 2] != check:
            raise ValueError(f"torn MFT record at {offset}")
        record[end:end + 2] = record[usa_offset + 2 * number:usa_offset + 2 * number + 2]
    return bytes(record)


def _ntfs_attributes(record: bytes) -> Iterator[Tuple[int, int, int]]:
    """(type, offset, length) of every attribute of a fixed-up MFT record."""
    at = struct.unpack_from("<H", record, 0x14)[0]
    while at + 8 <= len(record):
        kind, length = struct.unpack_from("<II", record, at)
        if kind == 0xFFFFFFFF or length < 16 or at + length > len(record):
            return
        yield kind, at, length
        at += length


def _ntfs_runs(record: bytes, at: int, length: int) -> List[Tuple[int, int]]:
    """The (first cluster, count) runs of a non-resident attribute's mapping pairs; sparse runs left out."""
    pairs = at + struct.unpack_from("<H", record, at + 32)[0]
    runs, lcn, end = [], 0, at + length
    while pairs < end and record[pairs]:
        header = record[pairs]
        size_len, size_off = header & 0x0F, header >> 4
        count = int.from_bytes(record[pairs + 1:pairs + 1 + size_len], "little")
        if size_off:
            lcn += int.from_bytes(record[pairs + 1 + size_len:pairs + 1 + size_len + size_off], "little", signed=True)
            runs.append((lcn, count))
        pairs += 1 + size_len + size_off
    return runs


NTFS_RECORD_ROOT = 5
# Files whose contents Windows never reads back across a boot: the paging files, and the hibernation
# file once its header is gone (a zeroed header means "no image to resume"). They stay allocated.
NTFS_SKIPPED = ("pagefile.sys", "swapfile.sys", "hiberfil.sys")


def _ntfs_root_names(volume: _Volume, mft: int, record_size: int, cluster: int) -> Iterator[Tuple[int, str]]:
    """(MFT record number, name) of the entries of the root directory's $I30 index: those in
    $INDEX_ROOT and in every INDX block of $INDEX_ALLOCATION (stale blocks too: callers check the
    record they are led to)."""
    root = _ntfs_record(volume, mft + NTFS_RECORD_ROOT * record_size, record_size)
    blocks: List[bytes] = []
    block_size = 4096
    for kind, at, length in _ntfs_attributes(root):
        if kind == 0x90 and not root[at + 8]:          # $INDEX_ROOT: its own entries
            value = at + struct.unpack_from("<H", root, at + 20)[0]
            block_size = struct.unpack_from("<I", root, value + 8)[0]
            blocks.append(root[value + 16:value + struct.unpack_from("<I", root, at + 16)[0]])
    for kind, at, length in _ntfs_attributes(root):
        if kind == 0xA0 and root[at + 8]:              # $INDEX_ALLOCATION: INDX blocks
            for lcn, count in _ntfs_runs(root, at, length):
                for offset in range(lcn * cluster, (lcn + count) * cluster, block_size):
                    try:
                        block = _ntfs_record(volume, offset, block_size, b"INDX")
                    except ValueError:
                        continue
                    blocks.append(block[24:])
    for header in blocks:
        at, end = struct.unpack_from("<II", header, 0)
        while at + 16 <= min(end, len(header)):
            reference, length, key_length, flags = struct.unpack_from("<QHHH", header, at)
            if flags & 2 or length < 16:                # the last entry carries no name
                break
            if key_length >= 66:
                count = header[at + 16 + 64]
                name = header[at + 16 + 66:at + 16 + 66 + 2 * count].decode("utf-16-le", "replace")
                yield reference & 0xFFFFFFFFFFFF, name
            at += length


def _ntfs_skipped(volume: _Volume, mft: int, record_size: int, cluster: int) -> List[List[Extent]]:
    """Per file, the byte ranges of the root directory's pagefile.sys, swapfile.sys and hiberfil.sys (their
    unnamed $DATA runs, when the base record holds them all), each led to through the root index
    and checked in its own MFT record: in use, a file, named so, in the root directory."""
    found: List[List[Extent]] = []
    seen = set()
    for number, name in _ntfs_root_names(volume, mft, record_size, cluster):
        if name.lower() not in NTFS_SKIPPED or number in seen:
            continue
        seen.add(number)
        try:
            record = _ntfs_record(volume, mft + number * record_size, record_size)
        except ValueError:
            continue
        if struct.unpack_from("<H", record, 22)[0] & 3 != 1 or struct.unpack_from("<Q", record, 32)[0]:
            continue                                     # not in use, a directory, or an extension record
        names, data = set(), []
        for kind, at, length in _ntfs_attributes(record):
            if kind == 0x20:
                data = []                                # an attribute list: runs elsewhere, leave it
                break
            if kind == 0x30 and not record[at + 8]:      # $FILE_NAME: parent and name
                value = at + struct.unpack_from("<H", record, at + 20)[0]
                if struct.unpack_from("<Q", record, value)[0] & 0xFFFFFFFFFFFF == NTFS_RECORD_ROOT:
                    names.add(record[value + 66:value + 66 + 2 * record[value + 64]].decode("utf-16-le", "replace").lower())
            if kind == 0x80 and not record[at + 9] and record[at + 8] and not struct.unpack_from("<H", record, at + 12)[0]:
                data.append((at, length))                # unnamed, non-resident, neither compressed nor sparse
        if name.lower() in names and len(data) == 1:
            runs = [(lcn * cluster, count * cluster) for lcn, count in _ntfs_runs(record, *data[0])]
            if runs:
                found.append(runs)
    return found


def ntfs_map(volume: _Volume) -> Optional[UsedMap]:
    """Used clusters of an NTFS volume from `$Bitmap` (MFT record 6, one bit per cluster), plus the
    boot sector's backup at the volume's end. A volume marked dirty (Windows did not shut it down, or
    fast startup hibernated it) is stored whole: its bitmap may be behind its log."""
    boot = volume.read(0, 512)
    if boot[3:11] != b"NTFS    " or boot[510:512] != b"\x55\xaa":
        return None
    sector, per_cluster = struct.unpack_from("<HB", boot, 11)
    total_sectors, mft_lcn = struct.unpack_from("<QQ", boot, 0x28)
    per_record = struct.unpack_from("<b", boot, 0x40)[0]
    if per_cluster > 0x80:          # 2^(256-n) sectors: clusters of 128 KiB and more
        per_cluster = 1 << (256 - per_cluster)
    cluster = sector * per_cluster
    record_size = 1 << -per_record if per_record < 0 else per_record * cluster
    if sector not in (512, 1024, 2048, 4096) or not cluster or not 512 <= record_size <= 65536 \
            or total_sectors * sector > volume.size:
        return None
    clusters = total_sectors * sector // cluster
    mft = mft_lcn * cluster
    volume_record = _ntfs_record(volume, mft + NTFS_RECORD_VOLUME * record_size, record_size)
    for kind, at, dummy in _ntfs_attributes(volume_record):
        if kind == 0x70 and not volume_record[at + 8]:      # $VOLUME_INFORMATION, resident
            value = at + struct.unpack_from("<H", volume_record, at + 20)[0]
            if struct.unpack_from("<H", volume_record, value + 10)[0] & NTFS_VOLUME_DIRTY and not volume.trust_dirty:
                return UsedMap(volume.size, "ntfs", "all", unclean=True,
                               note="volume marked dirty: every cluster is stored")
    record = _ntfs_record(volume, mft + NTFS_RECORD_BITMAP * record_size, record_size)
    data = [(at, length) for kind, at, length in _ntfs_attributes(record)
            if kind == 0x80 and not record[at + 9]]          # the unnamed $DATA
    if len(data) != 1 or not record[data[0][0] + 8]:
        return UsedMap(volume.size, "ntfs", "all", note="$Bitmap not found where expected: every cluster is stored")
    at, length = data[0]
    bitmap = b"".join(volume.read(lcn * cluster, count * cluster) for lcn, count in _ntfs_runs(record, at, length))
    if len(bitmap) * 8 < clusters:
        return UsedMap(volume.size, "ntfs", "all", note="$Bitmap shorter than the volume: every cluster is stored")
    bits = numpy.unpackbits(numpy.frombuffer(bitmap, dtype=numpy.uint8), bitorder="little")[:clusters]
    extents: List[Extent] = [(0, cluster)]
    extents += [(first * cluster, count * cluster) for first, count in _runs(bits)]
    tail = clusters * cluster          # the backup boot sector sits in the volume's last sector
    extents.append((tail, volume.size - tail) if volume.size > tail else (volume.size - sector, sector))
    extents = merge_extents(extents, volume.size, 0)
    try:
        skipped = _ntfs_skipped(volume, mft, record_size, cluster)
    except (ValueError, struct.error):
        skipped = []
    if not skipped:
        return UsedMap(volume.size, "ntfs", "ntfs", extents)
    # Their contents are not stored; the first 4 KiB of each file are, as zeros (a "hole"), so that
    # no clone finds an old hibernation header in its hiberfil.sys and tries to resume from it.
    heads = [(runs[0][0], min(runs[0][1], 4096)) for runs in skipped]
    ranges = [extent for runs in skipped for extent in runs]
    total = sum(length for dummy, length in ranges)
    kept = _complement(_complement(extents, volume.size) + ranges, volume.size)     # extents minus ranges
    return UsedMap(volume.size, "ntfs", "ntfs", merge_extents(kept + heads, volume.size, 0),
                   note=f"pagefile.sys, swapfile.sys, hiberfil.sys: {total} bytes of contents not stored",
                   holes=heads)


XFS_BNO_MAGICS = (b"ABTB", b"AB3B")
XLOG_MAGIC = 0xFEEDBABE
XLOG_UNMOUNT_TRANS = 0x20
XLOG_HEADER_CYCLE_SIZE = 32 << 10


def _xfs_log_clean(volume: _Volume, sb: bytes, block: int) -> Optional[bool]:
    """Whether the internal log of an XFS ends with an unmount record (None: an external log, not
    on this volume). The log is a ring of 512-byte blocks, each stamped with the cycle (pass) that
    wrote it; the head is where the cycle number drops. The record just before the head is an
    unmount record on a clean filesystem, as the kernel's xlog_find_tail decides at mount."""
    logstart, agblocks, logblocks, agblklog = (struct.unpack_from(">Q", sb, 48)[0], struct.unpack_from(">I", sb, 84)[0],
                                               struct.unpack_from(">I", sb, 96)[0], sb[124])
    if not logstart:
        return None
    base = ((logstart >> agblklog) * agblocks + (logstart & ((1 << agblklog) - 1))) * block
    count = logblocks * block // 512

    def read(number: int, length: int = 512) -> bytes:
        return volume.read(base + number % count * 512, length)

    def cycle(number: int) -> int:
        first, second = struct.unpack_from(">II", read(number, 8))
        return second if first == XLOG_MAGIC else first    # a record header keeps its cycle second

    if not count:
        raise ValueError("XFS log of no blocks")
    first = cycle(0)
    if first == 0:
        return True                 # never written since mkfs zeroed it
    head = count
    if cycle(count - 1) != first:   # the head is the first block of an older pass (or never written)
        low, high = 0, count - 1
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if cycle(middle) == first else (low, middle)
        head = high
    for back in range(1, count + 1):     # the last record header before the head
        header = read(head - back)
        if struct.unpack_from(">I", header)[0] == XLOG_MAGIC:
            break
    else:
        return False
    version, length = struct.unpack_from(">ii", header, 8)
    operations, size = struct.unpack_from(">i", header, 40)[0], struct.unpack_from(">i", header, 320)[0]
    header_blocks = -(-size // XLOG_HEADER_CYCLE_SIZE) if version & 2 and size > XLOG_HEADER_CYCLE_SIZE else 1
    at = head - back
    ends = (at + header_blocks + -(-length // 512)) % count
    return operations == 1 and ends == head % count and bool(read(at + header_blocks)[9] & XLOG_UNMOUNT_TRANS)


def _xfs_free_extents(volume: _Volume, ag_offset: int, root: int, levels: int, block: int,
                      header: int) -> Iterator[Tuple[int, int]]:
    """(AG block, count) of every free extent in one AG's by-block-number free-space B+tree: down
    the leftmost pointers to the leaves, then along the right-sibling chain."""
    node, level = root, levels - 1
    while level > 0:
        data = volume.read(ag_offset + node * block, block)
        if data[:4] not in XFS_BNO_MAGICS or struct.unpack_from(">H", data, 4)[0] != level:
            raise ValueError("bad XFS free-space node")
        max_records = (block - header) // 12
        node = struct.unpack_from(">I", data, header + max_records * 8)[0]
        level -= 1
    seen = 0
    while node != 0xFFFFFFFF:
        data = volume.read(ag_offset + node * block, block)
        if data[:4] not in XFS_BNO_MAGICS or struct.unpack_from(">H", data, 4)[0] != 0:
            raise ValueError("bad XFS free-space leaf")
        count, right = struct.unpack_from(">HxxI", data, 6)[0], struct.unpack_from(">I", data, 12)[0]
        for start, length in struct.iter_unpack(">II", data[header:header + count * 8]):
            yield start, length
        node = right
        seen += 1
        if seen > volume.size // block:
            raise ValueError("looping XFS free-space tree")


def xfs_map(volume: _Volume) -> Optional[UsedMap]:
    """Used blocks of an XFS filesystem: everything but the extents its per-AG by-block free-space
    B+trees list. Blocks on the AG free lists, the log and every tree count as used."""
    sb = volume.read(0, 512)
    if sb[:4] != b"XFSB":
        return None
    block, dblocks = struct.unpack_from(">IQ", sb, 4)
    ag_blocks, ag_count = struct.unpack_from(">II", sb, 84)
    version, sect = struct.unpack_from(">HH", sb, 100)
    if not (512 <= block <= 65536) or not ag_blocks or not ag_count or dblocks * block > volume.size \
            or sect not in (512, 1024, 2048, 4096, 32768):
        return None
    try:
        clean = _xfs_log_clean(volume, sb, block)
    except (ValueError, struct.error):
        clean = False
    if clean is False:
        # The free-space trees on disk are behind what the log records: mapped by them, blocks the
        # log allocated would be left out. Stored whole, the log replays at the clone's first mount.
        return UsedMap(volume.size, "xfs", "all", unclean=True,
                       note="log needs replay: every block is stored")
    header = 56 if version & 0x0F >= 5 else 16     # CRC-enabled (v5) blocks carry a longer header
    free: List[Extent] = []
    for ag in range(ag_count):
        ag_offset = ag * ag_blocks * block
        agf = volume.read(ag_offset + sect, sect)
        if agf[:4] != b"XAGF" or struct.unpack_from(">I", agf, 8)[0] != ag:
            return UsedMap(volume.size, "xfs", "all", note=f"AG {ag} header unreadable: every block is stored")
        root, levels = struct.unpack_from(">I", agf, 16)[0], struct.unpack_from(">I", agf, 28)[0]
        if not 1 <= levels <= 9:
            return UsedMap(volume.size, "xfs", "all",
                           note=f"AG {ag} free-space tree out of range: every block is stored")
        free += [(ag_offset + start * block, length * block)
                 for start, length in _xfs_free_extents(volume, ag_offset, root, levels, block, header)]
    return UsedMap(volume.size, "xfs", "xfs", merge_extents(_complement(free, dblocks * block), dblocks * block, 0))


def _complement(free: List[Extent], size: int) -> List[Extent]:
    """The ranges of [0, size) that no extent of `free` covers."""
    used, at = [], 0
    for offset, length in sorted(free):
        if offset > at:
            used.append((at, offset - at))
        at = max(at, offset + length)
    if at < size:
        used.append((at, size - at))
    return used


BTRFS_MAGIC = b"_BHRfS_M"
BTRFS_SUPER_MIRRORS = (64 << 10, 64 << 20, 256 << 30)
BTRFS_CHUNK_ITEM, BTRFS_ROOT_ITEM = 228, 132
BTRFS_EXTENT_ITEM, BTRFS_METADATA_ITEM = 168, 169
BTRFS_EXTENT_TREE = 2
BTRFS_INCOMPAT_EXTENT_TREE_V2 = 1 << 13
BTRFS_HEADER = 101
BTRFS_STRIPED = (1 << 3) | (1 << 6) | (1 << 7) | (1 << 8)     # RAID0, RAID10, RAID5, RAID6: not offset + delta
BTRFS_ITEM = numpy.dtype([("objectid", "<u8"), ("type", "u1"), ("offset", "<u8"), ("data", "<u4"),
                          ("size", "<u4")]) if numpy is not None else None


class _Btrfs:
    """Just enough of one single-device btrfs to walk its trees: logical to physical through the
    chunk map, tree blocks read and checked (bytenr, fsid)."""

    def __init__(self, volume: _Volume, sb: bytes):
        self.volume, self.fsid = volume, sb[0x20:0x30]
        self.nodesize = struct.unpack_from("<I", sb, 0x94)[0]
        self.chunks: List[Tuple[int, int, List[int]]] = []   # (logical, length, device offsets)
        self.read_blocks: List[Extent] = []
        array_size = struct.unpack_from("<I", sb, 0xA0)[0]
        array, at = sb[0x32B:0x32B + array_size], 0
        while at + 17 + 48 <= len(array):
            key_type, logical = array[at + 8], struct.unpack_from("<Q", array, at + 9)[0]
            if key_type != BTRFS_CHUNK_ITEM:
                raise ValueError("unexpected item in the btrfs system chunk array")
            at += 17
            at += self._add_chunk(logical, array, at)

    def _add_chunk(self, logical: int, data: bytes, at: int) -> int:
        length, dummy, dummy, profile = struct.unpack_from("<QQQQ", data, at)
        stripes = struct.unpack_from("<H", data, at + 44)[0]
        if profile & BTRFS_STRIPED:
            raise ValueError("striped btrfs chunk")
        offsets = [struct.unpack_from("<Q", data, at + 48 + 32 * n + 8)[0] for n in range(stripes)]
        if not any(chunk[0] == logical for chunk in self.chunks):
            self.chunks.append((logical, length, offsets))
        return 48 + 32 * stripes

    def physical(self, logical: int) -> int:
        for start, length, offsets in self.chunks:
            if start <= logical < start + length and offsets:
                return offsets[0] + logical - start
        raise ValueError(f"btrfs logical address {logical} is in no chunk")

    def node(self, logical: int) -> bytes:
        physical = self.physical(logical)
        data = self.volume.read(physical, self.nodesize)
        if data[0x20:0x30] != self.fsid or struct.unpack_from("<Q", data, 0x30)[0] != logical:
            raise ValueError(f"btrfs tree block {logical} does not check out")
        self.read_blocks.append((physical, self.nodesize))
        return data

    def leaves(self, root: int) -> Iterator[Tuple[bytes, "numpy.ndarray"]]:
        """Every leaf of the tree at logical `root`, left to right, with its item table."""
        pending = [root]
        while pending:
            data = self.node(pending.pop())
            count, level = struct.unpack_from("<IB", data, 0x60)
            if level:
                pointers = [struct.unpack_from("<Q", data, BTRFS_HEADER + 33 * n + 17)[0] for n in range(count)]
                pending.extend(reversed(pointers))
            else:
                yield data, numpy.frombuffer(data, dtype=BTRFS_ITEM, count=count, offset=BTRFS_HEADER)

    def load_chunk_tree(self, root: int) -> None:
        for data, items in self.leaves(root):
            for item in items[items["type"] == BTRFS_CHUNK_ITEM]:
                self._add_chunk(int(item["offset"]), data, BTRFS_HEADER + int(item["data"]))

    def to_physical(self, logical: int, length: int) -> List[Extent]:
        """Every device range holding [logical, logical+length): each copy (DUP keeps two)."""
        for start, chunk_length, offsets in self.chunks:
            if start <= logical < start + chunk_length:
                return [(offset + logical - start, length) for offset in offsets]
        raise ValueError(f"btrfs extent {logical} is in no chunk")


def btrfs_map(volume: _Volume) -> Optional[UsedMap]:
    """Used bytes of a single-device btrfs: every extent the extent tree holds (data and tree
    blocks, all copies), the superblock and its mirrors, and the first MiB (btrfs leaves it to boot
    loaders). A filesystem with a log tree to replay, or on several devices, is stored whole."""
    if volume.size < (64 << 10) + 4096:
        return None
    sb = volume.read(64 << 10, 4096)
    if sb[0x40:0x48] != BTRFS_MAGIC:
        return None
    root, chunk_root, log_root, total = struct.unpack_from("<QQQQ", sb, 0x50)
    devices = struct.unpack_from("<Q", sb, 0x88)[0]
    incompat = struct.unpack_from("<Q", sb, 0xBC)[0]
    if devices != 1:
        return UsedMap(volume.size, "btrfs", "all", note=f"{devices} devices: every byte is stored")
    if log_root:
        return UsedMap(volume.size, "btrfs", "all", unclean=True,
                       note="log tree to replay: every byte is stored")
    if incompat & BTRFS_INCOMPAT_EXTENT_TREE_V2 or total > volume.size:
        return UsedMap(volume.size, "btrfs", "all", note="layout not understood: every byte is stored")
    fs = _Btrfs(volume, sb)
    fs.load_chunk_tree(chunk_root)
    extent_root = None
    for data, items in fs.leaves(root):
        found = items[(items["objectid"] == BTRFS_EXTENT_TREE) & (items["type"] == BTRFS_ROOT_ITEM)]
        if len(found):
            extent_root = struct.unpack_from("<Q", data, BTRFS_HEADER + int(found[0]["data"]) + 176)[0]
    if extent_root is None:
        return UsedMap(volume.size, "btrfs", "all", note="no extent tree found: every byte is stored")
    extents: List[Extent] = [(0, 1 << 20)]
    extents += [(mirror, 4096) for mirror in BTRFS_SUPER_MIRRORS if mirror + 4096 <= volume.size]
    for data, items in fs.leaves(extent_root):
        for kind, size_of in ((BTRFS_EXTENT_ITEM, None), (BTRFS_METADATA_ITEM, fs.nodesize)):
            chosen = items[items["type"] == kind]
            lengths = chosen["offset"] if size_of is None else numpy.full(len(chosen), size_of)
            for logical, length in zip(chosen["objectid"].tolist(), lengths.tolist()):
                extents += fs.to_physical(logical, length)
    extents += fs.read_blocks
    return UsedMap(volume.size, "btrfs", "btrfs", merge_extents(extents, volume.size, 0))


PARSERS: List[Callable[[_Volume], Optional[UsedMap]]] = [ext_map, fat_map, ntfs_map, xfs_map, btrfs_map]


def used_map(fd: int, size: int, base: int = 0, trust_dirty: bool = False) -> UsedMap:
    """The used extents of the volume of `size` bytes at byte `base` of the open `fd`; when no
    filesystem we understand is found, the whole volume (zero runs are dropped later, by content).
    `trust_dirty`: map an NTFS marked dirty from its bitmap anyway (only for one we just resized)."""
    volume = _Volume(fd, size, base, trust_dirty)
    for parser in PARSERS:
        try:
            found = parser(volume)
        except (ValueError, struct.error, OSError):
            found = None
        if found is not None:
            if found.method == "all":
                found.extents = [(0, size)] if size else []
            else:
                found.extents = merge_extents(found.extents, size, MERGE_GAP, found.holes)
            return found
    return UsedMap(size, None, "all", [(0, size)] if size else [])
