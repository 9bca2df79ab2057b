# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Capture: turn disks, partitions or raw disk-image files into a layout and a stream of chunks.
Private to the collection: not a public API.

The layout is known before the first chunk; the chunks are produced while the source is read
(reader in the consumer's thread, compression in a bounded pool), so a live sender can send them
as they come and memory stays at about (threads * 2 + 1) chunks whatever the disk size.
"""

from __future__ import annotations

import bisect
import os
import stat
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from .._errors import ValidationError
from . import sectors
from .format import ChunkRecord
from .usedmap import used_map

DEFAULT_CHUNK_SIZE = 4 << 20
# Independent 4 MiB chunks lose the cross-chunk history a zstd stream has. Measured against
# `partclone.ntfs | zstd -3` on 200 MiB used (bench_image.py, 2026-12-01): level 3 is 0.24% larger,
# level 4 0.13% larger (0.47 s CPU), level 5 0.47% smaller (0.84 s CPU); partclone's own pipeline
# takes about 1.1 s CPU and at least 2 s wall, so level 5 stays within its time and wins on size.
DEFAULT_LEVEL = 5
# a live master feeds a network session: level 3 captures about 1.3x faster for 0.7 % more bytes
LIVE_LEVEL = 3
MAX_CHUNK_SIZE = 32 << 20
LAYOUT_FORMAT = "fleetcast-image"
BOOT_CODE_BYTES = 440   # the MBR's boot code; the disk identifier and table after it are rebuilt
# Bytes outside partitions are stored up to this much per gap (boot loaders keep data at a gap's
# start: GRUB's core image after the MBR, vendor tools after the last partition); the rest of a
# larger gap is recorded in the layout as skipped rather than read.
GAP_LIMIT = 64 << 20


@dataclass
class CaptureSource:
    """One thing to image: `kind` "disk" (a whole disk or raw disk-image file, with its partition
    table) or "partition" (one volume on its own, restored onto a partition or device)."""

    path: str
    kind: str = "disk"


def _open_source(path: str) -> Tuple[int, int]:
    try:
        info = os.stat(path)
    except OSError as err:
        raise ValidationError(f"Source {path} cannot be read: {err.strerror}.") from None
    if not (stat.S_ISBLK(info.st_mode) or stat.S_ISREG(info.st_mode)):
        raise ValidationError(f"Source {path} is neither a block device nor a regular file.")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise ValidationError(f"Source {path} cannot be opened: {err.strerror}.") from None
    return fd, os.lseek(fd, 0, os.SEEK_END)


Extents = List[Tuple[int, int]]


def _stacked_region(name: str, offset: int, length: int, fd: int, extents: Extents) -> Optional[Dict[str, Any]]:
    """Refuse an encrypted volume that cannot be read without its key; store an md RAID or LVM
    member (or a suspended BitLocker volume) whole, since no filesystem map reads through it and
    its own metadata (an md superblock at the end, LVM metadata areas) must move unchanged."""
    from .._disk import stacked

    headers = stacked.find_headers(fd, offset, length)
    try:
        source = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        source = "the source"
    refusal = stacked.capture_refusal(headers, f"{name[0].upper()}{name[1:]} of {source}")
    if refusal:
        raise ValidationError(refusal)
    note = stacked.stored_whole_note(headers)
    if not note:
        return None
    region = _raw_region(name, offset, length, extents)
    region.update(filesystem=headers[0].kind, note=note)
    array = stacked.md_array(headers)
    if array:
        region["md_array"] = array  # checked across all sources by describe()
    return region


class DiskPlan(list):
    """The sorted used extents of one disk to read, and `holes`: free ranges inside them (joined
    over to make fewer chunks) whose bytes are replaced by zeros before compression."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.holes: Extents = []


def _region(name: str, offset: int, length: int, fd: int, extents: Extents, **extra: Any) -> Dict[str, Any]:
    """A region of the disk; its used extents (absolute) are appended to `extents`, its holes
    to `extents.holes` where that is a DiskPlan."""
    whole = _stacked_region(name, offset, length, fd, extents)
    if whole is not None:
        whole.update(extra)
        return whole
    found = used_map(fd, length, base=offset)
    extents.extend((offset + start, size) for start, size in found.extents)
    if isinstance(extents, DiskPlan):
        extents.holes.extend((offset + start, size) for start, size in found.holes)
    region = {"name": name, "offset": offset, "length": length, "filesystem": found.filesystem,
              "map": found.method, "used_bytes": found.used_bytes}
    unit = sectors.filesystem_unit(fd, offset)
    if unit:  # what a restore onto a disk with another sector size checks
        region["fs_sector_of"], region["fs_sector_size"] = unit
    if found.note:
        region["note"] = found.note
    if found.unclean:
        region["unclean"] = True
    region.update(extra)
    return region


# What to do about a filesystem that was not cleanly unmounted, to get its used-block map (and a
# smaller image) next time. Measured on this kernel (6.18): a mounted ext4, XFS or btrfs has its
# journal or log live; remounted read-only, ext4 and XFS are clean; fsfreeze makes ext4 clean but
# leaves XFS's log covered by a dummy record, which still reads as needing replay.
_LIVE = "unmount it or remount it read-only if it is mounted, else mount and unmount it"
UNCLEAN_ADVICE = {
    "ext2": f"{_LIVE} (or run e2fsck -p) to replay its journal",
    "xfs": f"{_LIVE} to replay its log (not xfs_repair -L, which throws the log away)",
    "btrfs": f"{_LIVE} to replay its log tree",
    "ntfs": "shut Windows down fully (fast startup off) or run chkdsk /f, which clears the mark",
}


def unclean_warnings(layout: Dict[str, Any]) -> List[str]:
    """One sentence per filesystem that a capture stored whole because it was not cleanly unmounted:
    which one, and what to do for a smaller image (used by image_capture as warnings)."""
    lines = []
    for disk in layout["disks"]:
        for region in disk["regions"]:
            if region.get("unclean"):
                fs = region.get("filesystem") or "filesystem"
                advice = UNCLEAN_ADVICE.get("ext2" if fs.startswith("ext") else fs, _LIVE)
                why = region.get("note", "log needs replay").split(":")[0]
                where = f"in {region['name']} of {disk['source']}" if region.get("partition") else f"on {disk['source']}"
                lines.append(f"The {fs} {where} is mounted or was not cleanly "
                             f"unmounted ({why}), so every block of it was stored; for a smaller image, {advice}, "
                             "then capture again.")
    return lines


def _raw_region(name: str, offset: int, length: int, extents: Extents) -> Dict[str, Any]:
    """A region stored whole (zero runs still become zero chunks): boot code, gaps."""
    extents.append((offset, length))
    return {"name": name, "offset": offset, "length": length, "filesystem": None, "map": "all",
            "used_bytes": length}


def _gap_regions(name: str, start: int, end: int, extents: Extents) -> List[Dict[str, Any]]:
    """A gap outside every partition: its first GAP_LIMIT bytes are stored (zero runs as zero chunks;
    boot loaders keep their data at a gap's start), the rest of a larger gap is recorded as skipped
    so that an image of a disk with a large unpartitioned tail does not read it all."""
    if end <= start:
        return []
    kept = min(end - start, GAP_LIMIT)
    regions = [_raw_region(name, start, kept, extents)]
    if end - start > kept:
        regions.append({"name": f"{name} (rest)", "offset": start + kept, "length": end - start - kept,
                        "filesystem": None, "map": "skipped", "used_bytes": 0,
                        "note": f"not read: only the first {GAP_LIMIT} bytes of a gap are stored"})
    return regions


def _disk_regions(path: str, fd: int, size: int, extents: Extents) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """The partition table (from _disk) and the regions: boot code, the gaps outside partitions
    (before the first, where GRUB's core image lives; between; after the last), every partition."""
    from .._disk import table

    layout = table.read_layout(path)
    sector = layout.sector_size
    regions: List[Dict[str, Any]] = []
    if layout.label not in ("gpt", "msdos"):
        return layout.to_dict(), [_region("whole disk", 0, size, fd, extents)]
    regions.append(_raw_region("boot code", 0, BOOT_CODE_BYTES, extents))
    # Gaps are counted between the outer partitions (an extended partition covers its logical ones
    # and the EBRs, which the table writer rebuilds). GPT: from the first usable LBA (after the entry
    # array) to the last usable one (the backup table is rebuilt); MBR: from sector 1 to the disk's end.
    outer = sorted((part for part in layout.partitions if part.kind != "logical"), key=lambda part: part.start)
    at = (layout.first_usable if layout.label == "gpt" else 1) * sector
    limit = min((layout.last_usable + 1) * sector, size) if layout.label == "gpt" else size
    for number, part in enumerate(outer):
        name = "gap before the first partition" if not number else f"gap before partition {part.number}"
        regions += _gap_regions(name, at, min(part.start * sector, limit), extents)
        at = max(at, (part.end + 1) * sector)
    if outer:
        regions += _gap_regions(f"gap after partition {outer[-1].number}", at, limit, extents)
    for part in layout.partitions:
        if part.kind == "extended" or part.mbr_type in (0x05, 0x0F, 0x85):   # logical partitions follow
            continue
        start, end = part.start * sector, min((part.end + 1) * sector, size)
        regions.append(_region(f"partition {part.number}", start, end - start, fd, extents, partition=part.number))
    return layout.to_dict(), regions


def _check_arrays(disks: List[Dict[str, Any]]) -> None:
    """Refuse a capture that holds only some members of a RAID 0/4/5/6/10 or linear md array."""
    from .._disk import stacked

    members = [(f"{region['name']} of {disk['source']}", region["md_array"])
               for disk in disks for region in disk["regions"] if region.get("md_array")]
    refusal = stacked.check_arrays(members)
    if refusal:
        raise ValidationError(refusal[0].upper() + refusal[1:])


def describe(sources: Sequence[Union[str, CaptureSource]], chunk_size: int = DEFAULT_CHUNK_SIZE,
             description: Optional[str] = None) -> Tuple[Dict[str, Any], List[Extents]]:
    """The layout dict of an image of `sources` (disks, tables, regions, and where and when it was
    captured: `catalogue.origin`) and, per disk, the sorted used extents to read."""
    from .catalogue import origin

    if not sources:
        raise ValidationError("Nothing to capture: give at least one disk, partition or image file.")
    if not 4096 <= chunk_size <= MAX_CHUNK_SIZE or chunk_size % 4096:
        raise ValidationError(f"Chunk size {chunk_size} is not a multiple of 4096 between 4 KiB and 32 MiB.")
    disks, plan = [], []
    for number, source in enumerate(sources):
        source = source if isinstance(source, CaptureSource) else CaptureSource(str(source))
        if source.kind not in ("disk", "partition"):
            raise ValidationError(f"Source {source.path} has unknown kind {source.kind!r} (disk or partition).")
        fd, size = _open_source(source.path)
        extents = DiskPlan()
        try:
            entry: Dict[str, Any] = {"index": number, "source": source.path, "kind": source.kind, "size": size}
            if source.kind == "disk":
                entry["table"], entry["regions"] = _disk_regions(source.path, fd, size, extents)
            else:
                entry["table"], entry["regions"] = None, [_region("volume", 0, size, fd, extents)]
        finally:
            os.close(fd)
        disks.append(entry)
        ordered = DiskPlan(sorted(extents))
        ordered.holes = sorted(extents.holes)
        plan.append(ordered)
    _check_arrays(disks)
    return {"format": LAYOUT_FORMAT, "chunk_size": chunk_size, "disks": disks,
            "origin": origin([disk["source"] for disk in disks], description)}, plan


def plan_pieces(plan: List[Extents], chunk_size: int) -> Iterator[Tuple[int, int, int]]:
    """(disk, offset, length) of every chunk, in order: each used extent cut at multiples of the
    chunk size, so that chunks of one disk line up whatever the extents."""
    for disk, extents in enumerate(plan):
        for offset, length in extents:
            end = offset + length
            while offset < end:
                stop = min(end, (offset // chunk_size + 1) * chunk_size)
                yield disk, offset, stop - offset
                offset = stop


def iter_chunks(layout: Dict[str, Any], plan: List[Extents], level: int = DEFAULT_LEVEL,
                threads: int = 0) -> Iterator[ChunkRecord]:
    """Read every planned piece and yield its ChunkRecord, in index order. Reading happens in the
    caller's thread; digests and compression in `threads` workers, at most 2 * threads ahead."""
    threads = threads or os.cpu_count() or 1
    fds: Dict[int, int] = {}
    pending: deque = deque()
    try:
        for disk in layout["disks"]:
            fds[disk["index"]], _size = _open_source(disk["source"])
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fleetcast-compress") as pool:
            for index, (disk, offset, length) in enumerate(plan_pieces(plan, layout["chunk_size"])):
                raw = os.pread(fds[disk], length, offset)
                if len(raw) != length:
                    raise ValidationError(f"Source {layout['disks'][disk]['source']} ended early: {length} bytes "
                                          f"wanted at offset {offset}, {len(raw)} read.")
                raw = _blank_holes(raw, offset, getattr(plan[disk], "holes", ()))
                pending.append(pool.submit(ChunkRecord.from_raw, index, disk, offset, raw, level))
                if len(pending) > 2 * threads:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        for fd in fds.values():
            os.close(fd)


def _blank_holes(raw: bytes, offset: int, holes: Extents) -> bytes:
    """`raw` (read at `offset`) with every byte of `holes` inside it set to zero: free space joined
    into a chunk carries no deleted data."""
    end = offset + len(raw)
    first = bisect.bisect_right(holes, (offset, -1)) - 1
    inside = [hole for hole in holes[max(first, 0):bisect.bisect_left(holes, (end, -1))]
              if hole[0] < end and hole[0] + hole[1] > offset]
    if not inside:
        return raw
    out = bytearray(raw)
    for start, length in inside:
        lo, hi = max(start, offset) - offset, min(start + length, end) - offset
        out[lo:hi] = bytes(hi - lo)
    return bytes(out)


def capture(sources: Sequence[Union[str, CaptureSource]], chunk_size: int = DEFAULT_CHUNK_SIZE,
            level: int = DEFAULT_LEVEL, threads: int = 0,
            description: Optional[str] = None) -> Tuple[Dict[str, Any], Iterator[ChunkRecord]]:
    """The layout of `sources` at once, and an iterator that reads and compresses their chunks."""
    if not 1 <= level <= 19:
        raise ValidationError(f"Compression level {level} is outside 1..19.")
    layout, plan = describe(sources, chunk_size, description)
    return layout, iter_chunks(layout, plan, level, threads)


def check_destination(dest: str) -> None:
    """Raise unless an image file can be written at `dest` (checked before any source is read)."""
    directory = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(directory):
        raise ValidationError(f"Image {dest} cannot be written: directory {directory} does not exist.")
    if not os.access(directory, os.W_OK):
        raise ValidationError(f"Image {dest} cannot be written: directory {directory} is not writable.")
    if os.path.isdir(dest):
        raise ValidationError(f"Image {dest} cannot be written: it is a directory.")


def capture_to_file(sources: Sequence[Union[str, CaptureSource]], dest: str, chunk_size: int = DEFAULT_CHUNK_SIZE,
                    level: int = DEFAULT_LEVEL, threads: int = 0, mode: int = 0o600, durable: bool = True,
                    description: Optional[str] = None):
    """Capture into an image file written beside `dest` and renamed into place when complete
    (after an fsync unless `durable` is off, as benchmarks against pipelines without one do)."""
    from .format import ImageWriter

    check_destination(dest)
    layout, records = capture(sources, chunk_size, level, threads, description)
    partial = f"{dest}.partial"
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), mode)
    except OSError as err:
        raise ValidationError(f"Image {dest} cannot be written: {err.strerror}.") from None
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as handle:
            writer = ImageWriter(handle, layout)
            for record in records:
                writer.add(record)
            manifest = writer.close()
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.chmod(partial, mode)
        os.replace(partial, dest)
    except BaseException:
        if os.path.exists(partial):
            os.unlink(partial)
        raise
    return manifest
