# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restore: lay an image down onto target disks, or find that they already hold it.
Private to the collection: not a public API.

`RestoreSession` is the sink both for an image file (`restore_image`) and for the multicast
receiver: validate (nothing touched), prepare (wipe, partition table), write chunks in any order
from any number of threads, finish (grow, re-read the table, check the image id).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from .._errors import FleetcastError, ImageError, ValidationError
from .._writeback import DiskWriter, pwrite_all, scratch
from .capture import LAYOUT_FORMAT
from . import sectors
from .format import ChunkEntry, ChunkRecord, ImageReader, Manifest, image_id

GROWABLE = ("ext2", "ext3", "ext4")
# The tools finish() calls to grow a filesystem of each kind (checked in validate, before any wipe).
GROW_TOOLS = {"ext2": ("e2fsck", "resize2fs"), "ext3": ("e2fsck", "resize2fs"), "ext4": ("e2fsck", "resize2fs")}
SHRINKABLE = ("ext2", "ext3", "ext4", "ntfs")
# Room a shrunk filesystem needs beyond its used bytes (ext4's new group tables, NTFS's slack).
SHRINK_MARGIN = 32 << 20


@dataclass
class TargetPlan:
    """What restoring one image disk onto one target means."""

    target: str
    disk: int
    kind: str
    target_size: int
    image_size: int
    label: Optional[str] = None
    partitions: List[Dict[str, Any]] = field(default_factory=list)
    current: Optional[Dict[str, Any]] = None
    grow_partition: Optional[int] = None
    grow_filesystem: Optional[str] = None
    # shrink: the last partition cut back to `shrink_bytes` and its filesystem resized to match
    shrink_partition: Optional[int] = None
    shrink_filesystem: Optional[str] = None
    shrink_bytes: Optional[int] = None
    skipped: List[str] = field(default_factory=list)    # image regions not written, with why
    wipe: List[str] = field(default_factory=list)
    sector_conversion: Optional[str] = None  # "512 -> 4096": the table is rewritten in the target's sectors
    state: str = "restore"      # restore | unchanged
    reason: str = ""


@dataclass
class RestorePlan:
    targets: List[TargetPlan]

    @property
    def changed(self) -> bool:
        return any(target.state != "unchanged" for target in self.targets)

    def to_dict(self) -> Dict[str, Any]:
        return {"changed": self.changed, "targets": [asdict(target) for target in self.targets]}


@dataclass
class RestoreResult:
    image_id: str
    changed: bool
    chunks_written: int
    data_bytes_written: int
    zero_bytes_written: int
    targets: List[Dict[str, Any]]

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _table_key(table: Dict[str, Any], ignore_last_end: bool = False) -> Dict[str, Any]:
    """What must match for a disk to count as holding the image's table (not sizes or probes)."""
    parts = sorted(table.get("partitions") or [], key=lambda part: part["start"])
    keep = ("number", "start", "end", "type_guid", "mbr_type", "part_uuid", "name", "flags", "kind")
    rows = [{key: part.get(key) for key in keep} for part in parts]
    if ignore_last_end and rows:
        rows[-1]["end"] = None
    return {"label": table.get("label"), "guid": (table.get("guid") or "").lower() or None,
            "sector_size": table.get("sector_size"), "partitions": rows}


def _summary(layout: Any) -> Dict[str, Any]:
    return {"label": layout.label, "partitions": [{"number": p.number, "start": p.start, "end": p.end,
                                                   "name": p.name, "fs": p.fs} for p in layout.partitions]}


def _current(target: str) -> Optional[Dict[str, Any]]:
    """What the target holds now (for the plan and diff); None when it has no readable table."""
    from .._disk import table

    try:
        return _summary(table.read_layout(target))
    except FleetcastError:
        return None


class RestoreSession:
    """Lay one image (its layout dict) onto `targets` (one per image disk, in order)."""

    def __init__(self, layout: Dict[str, Any], targets: List[str], grow_last: bool = False,
                 check_mode: bool = False, protect: Iterable[str] = (), libraries: Iterable[str] = (),
                 shrink_last: bool = False, scratch_dir: Optional[str] = None):
        """`protect`: files no target may reach (the image being read); `libraries`: Python
        libraries the caller needs besides the restore's own (the receiver's numpy, cryptography),
        checked in validate() with the rest; `shrink_last`: cut the last partition back to a smaller
        target (its filesystem shrunk in a sparse file in `scratch_dir`)."""
        self.layout = layout
        self.targets = list(targets)
        self.grow_last = grow_last
        self.shrink_last = shrink_last
        self.scratch_dir = scratch_dir or tempfile.gettempdir()
        self.check_mode = check_mode
        self.protect = list(protect)
        self.libraries = list(libraries)
        self._claims: List[Any] = []
        self._shrink = _Shrink()
        self.plan: Optional[RestorePlan] = None
        self._fds: Dict[int, int] = {}
        self._sizes: Dict[int, int] = {}
        self._written: Dict[int, ChunkEntry] = {}
        self._claimed: set = set()
        self._kept: set = set()     # image disks whose target already holds them: never written
        self._kept_chunks = 0
        self._lock = threading.Lock()
        self._data_bytes = 0
        self._zero_bytes = 0
        self._tables: Dict[int, Dict[str, Any]] = {}
        # per image disk converted to another sector size: the target's own table areas, which
        # chunks captured around the master's (smaller) table must not overwrite
        self._guard: Dict[int, List[Any]] = {}
        self._writers: Dict[int, DiskWriter] = {}   # per descriptor written: direct or behind (_writeback)

    # -- validation: reads only -------------------------------------------------------------
    def validate(self) -> RestorePlan:
        """Check the layout and every target; raise before anything is touched."""
        from .._disk import blockdev, safety, table

        if self.layout.get("format") != LAYOUT_FORMAT or not isinstance(self.layout.get("disks"), list):
            raise ImageError("The image layout is not a fleetcast image layout.")
        disks = self.layout["disks"]
        if len(self.targets) != len(disks):
            raise ValidationError(f"The image holds {len(disks)} disk(s) but {len(self.targets)} target(s) were "
                                  f"given ({', '.join(self.targets) or 'none'}): give one target per image disk.")
        self.check_requirements()
        # Every target together: one claim per physical device, whatever the names (symlinks, loop
        # devices and their files, partitions of a listed disk), and none reaching the image itself.
        safety.check_targets(self.targets, self.protect)
        plans = []
        for disk, target in zip(disks, self.targets):
            size = blockdev.device_size(target)
            target_sector = blockdev.sector_size(target)
            image_sector = (disk.get("table") or {}).get("sector_size")
            if image_sector is None or image_sector != target_sector:  # a volume image: sector unknown
                sectors.check_conversion(disk, target_sector, target, known_only=image_sector is None)
            plan = TargetPlan(target, disk["index"], disk["kind"], size, disk["size"], current=_current(target))
            if disk["kind"] == "disk" and disk.get("table") and disk["table"]["label"] != "none":
                written = table.plan_layout(target, table.DiskLayout.from_dict(disk["table"]), self.grow_last,
                                            self.shrink_last)
                plan.label = written.label
                plan.partitions = _summary(written)["partitions"]
                if written.partitions and (self.grow_last or self.shrink_last):
                    last = table.last_partition(written.partitions)
                    source = next(p for p in disk["table"]["partitions"] if p["number"] == last.number)
                    # compared in bytes: a table converted between sector sizes counts in other units
                    new_end = (last.end + 1) * written.sector_size
                    old_end = (source["end"] + 1) * disk["table"]["sector_size"]
                    if self.grow_last and new_end > old_end:
                        plan.grow_partition = last.number
                        fs = self._region_fs(disk, last.number)
                        plan.grow_filesystem = fs if fs in GROWABLE else None
                    elif self.shrink_last and new_end < old_end:
                        self._plan_shrink(plan, disk, last, written.sector_size)
                    if new_end != old_end:
                        # the gap is named after the last outer partition (a logical one's extended)
                        outer = max((p for p in written.partitions if p.kind != "logical"), key=lambda p: p.end)
                        plan.skipped += [f"{region['name']}: the partition before it was resized" for region
                                         in disk["regions"] if region["name"] == f"gap after partition {outer.number}"]
                self._tables[disk["index"]] = written.to_dict()
                if written.sector_size != disk["table"]["sector_size"]:
                    self._guard[disk["index"]] = sectors.table_areas(written.to_dict(), size)
                    plan.sector_conversion = f"{disk['table']['sector_size']} -> {written.sector_size}"
            if size < disk["size"] and plan.shrink_partition is None:
                raise ValidationError(f"Target {target} is too small: {size} bytes, the image's disk "
                                      f"{disk['index']} needs {disk['size']} bytes (only image_restore, from the image "
                                      "file, shrinks the last partition onto a smaller disk: shrink_last_partition).")
            plans.append(plan)
        self.plan = RestorePlan(plans)
        return self.plan

    def requirements(self) -> Tuple[List[str], List[str]]:
        """(Python libraries, tools) this restore calls, up to growing the last filesystem."""
        from .._disk import requirements

        libraries = ["zstandard"] + self.libraries
        tools = list(requirements.WIPE_TOOLS)
        for disk in self.layout.get("disks") or []:
            if disk.get("kind") == "disk" and disk.get("table") and disk["table"].get("label") != "none":
                libraries.append("parted")
                if self.grow_last and disk["table"].get("partitions"):
                    last = max(disk["table"]["partitions"], key=lambda part: (part["end"], part.get("kind") != "extended"))
                    tools += GROW_TOOLS.get(self._region_fs(disk, last["number"]) or "", ())
        return libraries, tools

    def check_requirements(self) -> None:
        """Raise (one sentence) when this host lacks a library or tool the restore will need."""
        from .._disk import requirements

        libraries, tools = self.requirements()
        requirements.require(libraries, tools, f"restore onto {', '.join(self.targets)}")

    @staticmethod
    def _region_fs(disk: Dict[str, Any], number: int) -> Optional[str]:
        region = next((r for r in disk["regions"] if r.get("partition") == number), None)
        return region.get("filesystem") if region else None

    def _plan_shrink(self, plan: TargetPlan, disk: Dict[str, Any], last: Any, sector: int) -> None:
        """Refuse, before anything is written, a shrink that cannot work: a filesystem we cannot
        shrink, used data that does not fit the smaller partition, no scratch room to shrink it in."""
        region = next(r for r in disk["regions"] if r.get("partition") == last.number)
        fs, used = region.get("filesystem"), region["used_bytes"]
        new_bytes, old_bytes = last.sectors * sector, region["length"]
        where = (f"target {plan.target} ({plan.target_size} bytes) is smaller than the image's disk "
                 f"{disk['index']} ({disk['size']} bytes)")
        if fs not in SHRINKABLE:
            raise ValidationError(f"Cannot restore: {where} and its last partition {last.number} holds "
                                  f"{fs or 'no filesystem found'}, which cannot be shrunk (ext2/3/4 and NTFS can).")
        if region.get("unclean"):
            why = region.get("note", "log needs replay").split(":")[0]
            raise ValidationError(f"Cannot restore: {where}, and its last partition {last.number} holds an {fs} that "
                                  f"was not cleanly unmounted at capture ({why}), so it was stored whole and cannot "
                                  "be shrunk: capture the master again once it is cleanly unmounted.")
        needed = used + SHRINK_MARGIN
        if new_bytes < needed:
            raise ValidationError(f"Cannot restore: {where}, so partition {last.number} would have {new_bytes} "
                                  f"bytes, but its {fs} holds {used} bytes of used data and needs at least {needed}.")
        # The filesystem is laid down in a sparse scratch file and shrunk there (resize2fs and
        # ntfsresize move what lies past the new end), then its used blocks are copied.
        room = used + min(used, old_bytes - new_bytes) + SHRINK_MARGIN
        try:
            stats = os.statvfs(self.scratch_dir)
        except OSError as err:
            raise ValidationError(f"Scratch directory {self.scratch_dir} for shrinking onto {plan.target} cannot "
                                  f"be used: {err.strerror}.") from None
        free = stats.f_bavail * stats.f_frsize
        if free < room:
            raise ValidationError(f"Cannot restore: {where} and shrinking partition {last.number} needs {room} "
                                  f"bytes of scratch space in {self.scratch_dir}, which has {free} free.")
        plan.shrink_partition, plan.shrink_filesystem, plan.shrink_bytes = last.number, fs, new_bytes

    def already_holds(self, manifest: Manifest, threads: int = 0) -> bool:
        """True when every target already holds the image: same partition table and every data and
        zero range reads back with its digest. Reads only; marks each target plan unchanged or not."""
        from .._disk import table

        plan = self.plan or self.validate()
        by_disk: Dict[int, List[ChunkEntry]] = {}
        for entry in manifest.chunks:
            by_disk.setdefault(entry.disk, []).append(entry)
        for target_plan, disk in zip(plan.targets, self.layout["disks"]):
            if disk["kind"] == "disk" and disk.get("table") and disk["table"]["label"] != "none":
                try:
                    present = table.read_layout(target_plan.target).to_dict()
                except FleetcastError:
                    present = {}
                want = self._tables[disk["index"]]
                if _table_key(present) != _table_key(want):
                    target_plan.reason = "its partition table differs from the image's"
                    continue
            bad = _first_mismatch(target_plan.target, by_disk.get(disk["index"], []), threads,
                                  self._guard.get(disk["index"], []))
            if bad is not None:
                target_plan.reason = f"chunk {bad.index} (offset {bad.offset}) differs from the image"
                if target_plan.grow_partition is not None or target_plan.shrink_partition is not None:
                    # a resized partition never reads back as the image's chunks: only the stamp of
                    # the run that resized it can say that the target is still as that run left it
                    target_plan.reason += (f" (partition {target_plan.grow_partition or target_plan.shrink_partition} "
                                           "is resized on this target, and no stamp of the run that resized it was found)")
                continue
            target_plan.state = "unchanged"
            target_plan.reason = "it already holds this image"
        return not plan.changed

    def plan_wipes(self) -> None:
        """Fill in what wiping would remove from every target still to be restored (reads only)."""
        from .._disk import wipe

        for target_plan in (self.plan or self.validate()).targets:
            if target_plan.state != "unchanged":
                target_plan.wipe = wipe.plan_wipe(target_plan.target).describe()

    # -- writing -----------------------------------------------------------------------------
    def prepare(self) -> None:
        """Wipe every target still to be restored, recreate its partition table, and open it for the
        chunks; a target already_holds() found unchanged is not touched."""
        from .._disk import safety, table, wipe

        if self.check_mode:
            raise ValidationError("A check-mode restore session cannot write.")
        plan = self.plan or self.validate()
        # Claimed again (the image check since validate() can take minutes) and held until finish():
        # every write below goes through these descriptors.
        writing = [(target_plan, disk) for target_plan, disk in zip(plan.targets, self.layout["disks"])
                   if target_plan.state != "unchanged"]
        for target_plan, disk in zip(plan.targets, self.layout["disks"]):
            if target_plan.state == "unchanged":   # found by already_holds(): leave it alone
                self._kept.add(disk["index"])
        self._claims = safety.claim([target_plan.target for target_plan, disk in writing], self.protect)
        for (target_plan, disk), held in zip(writing, self._claims):
            target_plan.wipe = wipe.wipe(held).describe()
            if disk["index"] in self._tables:
                written = table.write_layout(held, table.DiskLayout.from_dict(disk["table"]), self.grow_last,
                                             self.shrink_last)
                self._tables[disk["index"]] = written.to_dict()
            self._fds[disk["index"]] = held.fd
            self._sizes[disk["index"]] = target_plan.target_size
            self._shrink.prepare(target_plan, disk, self.scratch_dir)

    def resume(self, held: List[ChunkEntry], threads: int = 0) -> List[ChunkEntry]:
        """Continue an interrupted restore of this same image instead of prepare(): nothing is
        wiped; every target must still carry the partition table the image gives it, and each chunk
        of `held` whose range reads back with its digest counts as written (the others come again).
        Returns the chunks kept. Raises ValidationError when the targets cannot be resumed."""
        from .._disk import safety, table

        if self.check_mode:
            raise ValidationError("A check-mode restore session cannot write.")
        plan = self.plan or self.validate()
        for target_plan, disk in zip(plan.targets, self.layout["disks"]):
            if disk["index"] in self._tables:
                try:
                    present = table.read_layout(target_plan.target).to_dict()
                except FleetcastError:
                    present = {}
                if _table_key(present) != _table_key(self._tables[disk["index"]]):
                    raise ValidationError(f"{target_plan.target} no longer carries the image's partition table, "
                                          "so the interrupted restore cannot be resumed there.")
        kept: List[ChunkEntry] = []
        for target_plan, disk in zip(plan.targets, self.layout["disks"]):
            entries = [entry for entry in held if entry.disk == disk["index"]]
            kept += _matching(target_plan.target, entries, threads)
        self._claims = safety.claim([target_plan.target for target_plan in plan.targets], self.protect)
        for target_plan, held_target in zip(plan.targets, self._claims):
            self._fds[target_plan.disk] = held_target.fd
            self._sizes[target_plan.disk] = target_plan.target_size
        with self._lock:
            for entry in kept:
                self._written[entry.index] = entry
                self._kept_chunks += 1
        return kept

    def write(self, record: ChunkRecord) -> bool:
        """Verify one chunk and write it (data) or zero its range (zero); thread-safe. A chunk
        already written is skipped (False)."""
        if record.disk in self._kept:
            # Its target holds this chunk already (digest checked by already_holds): count it as
            # present, so that completeness and the image id are checked over the whole image.
            with self._lock:
                if record.index in self._written:
                    return False
                self._written[record.index] = record.entry()
                self._kept_chunks += 1
            return True
        fd = self._fds.get(record.disk)
        if fd is None:
            raise ImageError(f"Chunk {record.index} names disk {record.disk}, which this restore has no target for.")
        fd, offset, where = self._shrink.route(record, fd)
        if where == "drop" or (where == "scratch" and record.kind == "zero"):
            # a gap the resized partition took over, or zeros a sparse scratch file reads already:
            # verified (it counts towards the image id) but not written
            record.decompress_verified()
            with self._lock:
                if record.index in self._written:
                    return False
                self._written[record.index] = record.entry()
            return True
        if where == "target" and (record.offset < 0 or record.offset + record.length > self._sizes[record.disk]):
            raise ImageError(f"Chunk {record.index} (disk {record.disk}, offset {record.offset}) lies beyond the "
                             f"end of target {self.targets[record.disk]}.")
        with self._lock:
            # A resend may arrive while the first copy is still being written: claim the index.
            if record.index in self._written or record.index in self._claimed:
                return False
            self._claimed.add(record.index)
        try:
            self._write_verified(fd, record, offset, self._guard.get(record.disk, []) if where == "target" else [],
                                 behind=where == "target")
        except BaseException:
            with self._lock:
                self._claimed.discard(record.index)
            raise
        with self._lock:
            self._claimed.discard(record.index)
            self._written[record.index] = record.entry()
            if record.kind == "zero":
                self._zero_bytes += record.length
            else:
                self._data_bytes += record.length
        return True

    def _write_verified(self, fd: int, record: ChunkRecord, offset: int, guard: List[Any], behind: bool = True) -> None:
        """Write `record` at `offset` of `fd`, except bytes inside `guard` (the target's own table
        areas after a sector conversion, never written by chunks); `behind`: written behind (a
        target, not the shrink's scratch file, which is read back later)."""
        from .._disk import blockdev

        raw = record.decompress_verified(into=scratch(record.length) if record.kind != "zero" else None)
        target = self.targets[record.disk]
        try:
            pieces = sectors.outside(record.offset, record.length, guard)
            for start, length in pieces:
                if record.kind == "zero":
                    blockdev.zero_range(fd, offset + start, length)
                elif behind:
                    self._writer(fd).write(memoryview(raw)[start:start + length], offset + start)
                else:
                    pwrite_all(fd, memoryview(raw)[start:start + length], offset + start)
        except OSError as err:
            raise FleetcastError(f"Writing chunk {record.index} at offset {record.offset} of {target} failed: "
                                 f"{err.strerror}.") from None

    def _writer(self, fd: int) -> DiskWriter:
        """The writer of a target: chunks go to the disk direct where aligned, else written behind,
        bounding what waits in the page cache (finish() still fsyncs every target before it reports)."""
        with self._lock:
            writer = self._writers.get(fd)
            if writer is None:
                writer = self._writers[fd] = DiskWriter(fd)
            return writer

    def written_image_id(self) -> str:
        """The image id of what this session verified and wrote (the receiver's digest)."""
        with self._lock:
            return image_id(self.layout, list(self._written.values()))

    def finish(self, manifest: Manifest) -> RestoreResult:
        """Check completeness and the image id, grow the last filesystem, re-read the tables."""
        from .._disk import blockdev

        missing = [entry.index for entry in manifest.chunks if entry.index not in self._written]
        if missing:
            raise ImageError(f"The restore is incomplete: {len(missing)} chunk(s) never arrived, first chunk "
                             f"{missing[0]}.")
        got = self.written_image_id()
        if got != manifest.image_id:
            raise ImageError(f"What was written has image id {got}, not the image's {manifest.image_id}.")
        for disk, fd in self._fds.items():
            self._shrink.finish(disk, fd, self.plan.targets)
            os.fsync(fd)
        plan = self.plan
        held = {one.path: one for one in self._claims}
        for target_plan in plan.targets:
            if target_plan.disk in self._kept:
                continue
            if target_plan.grow_filesystem:
                self._grow(target_plan, held[target_plan.target])
            blockdev.reread_partitions(held[target_plan.target].fd)
        self._close()
        return RestoreResult(got, True, len(self._written) - self._kept_chunks, self._data_bytes, self._zero_bytes,
                             [asdict(target) for target in plan.targets])

    def _grow(self, target_plan: TargetPlan, held: Any) -> None:
        from .._disk import blockdev, table
        from .._disk.command import run

        layout = table.DiskLayout.from_dict(self._tables[target_plan.disk])
        part = layout.partition(target_plan.grow_partition)
        with blockdev.partition_path(held, part) as node:
            # resize2fs insists on a freshly checked filesystem; exit codes 1 and 2 mean "fixed".
            run(["e2fsck", "-f", "-p", node], node, ok_codes=(0, 1, 2))
            run(["resize2fs", node], node)

    def _close(self) -> None:
        self._fds.clear()
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
        for held in self._claims:
            held.release()
        self._claims = []
        self._shrink.close()

    def abort(self) -> None:
        self._close()


class _Shrink:
    """The last partition of a smaller target: its chunks go to a sparse scratch file (offsets
    relative to the partition), the gap after it is dropped; at the end the filesystem is shrunk
    there and its used blocks (a fresh used-block map) are copied into the target's partition."""

    def __init__(self) -> None:
        self.routes: Dict[int, tuple] = {}     # disk -> (start, end, scratch fd, scratch path, plan)
        self.drops: Dict[int, List[tuple]] = {}

    def prepare(self, plan: TargetPlan, disk: Dict[str, Any], scratch_dir: str) -> None:
        regions = {region["name"]: region for region in disk["regions"]}
        for reason in plan.skipped:
            region = regions[reason.split(":")[0]]
            self.drops.setdefault(disk["index"], []).append((region["offset"], region["offset"] + region["length"]))
        if plan.shrink_partition is None:
            return
        region = next(r for r in disk["regions"] if r.get("partition") == plan.shrink_partition)
        fd, path = tempfile.mkstemp(prefix="fleetcast-shrink-", suffix=".img", dir=scratch_dir)
        os.ftruncate(fd, region["length"])
        self.routes[disk["index"]] = (region["offset"], region["offset"] + region["length"], fd, path, plan)

    def route(self, record: ChunkRecord, fd: int) -> tuple:
        """(fd, offset, where) to write `record` at: "target", "scratch" (offset in the scratch
        file), or "drop" (not written)."""
        for start, end in self.drops.get(record.disk, ()):
            if start <= record.offset < end:
                return None, 0, "drop"
        route = self.routes.get(record.disk)
        if route and route[0] <= record.offset < route[1]:
            if record.offset + record.length > route[1]:
                raise ImageError(f"Chunk {record.index} (offset {record.offset}) crosses the end of partition "
                                 f"{route[4].shrink_partition}.")
            return route[2], record.offset - route[0], "scratch"
        return fd, record.offset, "target"

    def finish(self, disk: int, target_fd: int, plans: List[TargetPlan]) -> None:
        """Shrink the filesystem in the scratch file and copy its used blocks onto the target."""
        from .._disk.command import run
        from .usedmap import used_map

        if disk not in self.routes:
            return
        start, dummy, fd, path, plan = self.routes[disk]
        os.fsync(fd)
        where = f"partition {plan.shrink_partition} of {plan.target}"
        if plan.shrink_filesystem == "ntfs":
            run(["ntfsresize", "--force", "--force", "--no-progress-bar", "--size", plan.shrink_bytes, path], where)
        else:
            # resize2fs insists on a freshly checked filesystem; exit codes 1 and 2 mean "fixed".
            run(["e2fsck", "-f", "-p", path], where, ok_codes=(0, 1, 2))
            run(["resize2fs", path, f"{plan.shrink_bytes // 1024}K"], where)
        # ntfsresize leaves the volume marked for a chkdsk at Windows' next boot (as GParted and
        # Clonezilla do): its bitmap is current all the same, it wrote it and closed the volume.
        found = used_map(fd, plan.shrink_bytes, trust_dirty=True)
        if found.method == "all" or found.filesystem != plan.shrink_filesystem:
            raise FleetcastError(f"The shrunk {plan.shrink_filesystem} for {where} cannot be mapped: "
                                 f"{found.note or 'no filesystem found'}.")
        for offset, length in found.extents:
            while length:
                piece = os.pread(fd, min(length, 4 << 20), offset)
                if not piece:
                    raise FleetcastError(f"The shrunk filesystem for {where} ended early at {offset}.")
                pwrite_all(target_fd, piece, start + offset)
                offset, length = offset + len(piece), length - len(piece)

    def close(self) -> None:
        for dummy, dummy2, fd, path, dummy3 in self.routes.values():
            os.close(fd)
            os.unlink(path)
        self.routes.clear()


def _first_mismatch(target: str, entries: List[ChunkEntry], threads: int = 0,
                    guard: Optional[List[Any]] = None) -> Optional[ChunkEntry]:
    """The first chunk whose range on `target` does not hash to its digest (None: all match).
    Bytes inside `guard` (the target's own table areas, never written by chunks) count as zeros."""
    try:
        fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return entries[0] if entries else None

    def check(entry: ChunkEntry) -> bool:
        data = os.pread(fd, entry.length, entry.offset)
        if guard and len(data) == entry.length:
            kept, data = sectors.outside(entry.offset, entry.length, guard), bytearray(entry.length)
            for start, length in kept:
                data[start:start + length] = os.pread(fd, length, entry.offset + start)
        return len(data) == entry.length and hashlib.sha256(data).digest() == entry.digest

    try:
        return _first_false(check, entries, threads)
    finally:
        os.close(fd)


def _matching(target: str, entries: List[ChunkEntry], threads: int = 0) -> List[ChunkEntry]:
    """The chunks whose range on `target` hashes to their digest."""
    fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
    good: List[ChunkEntry] = []

    def check(entry: ChunkEntry) -> bool:
        data = os.pread(fd, entry.length, entry.offset)
        if len(data) == entry.length and hashlib.sha256(data).digest() == entry.digest:
            good.append(entry)
        return True

    try:
        _first_false(check, entries, threads)
    finally:
        os.close(fd)
    return sorted(good, key=lambda entry: entry.index)


def _first_false(check: Callable[[Any], bool], items: Iterable[Any], threads: int = 0) -> Optional[Any]:
    """Run `check` over `items` in a bounded thread pool; the first item it rejects, or None."""
    threads = threads or min(4, os.cpu_count() or 1)
    pending: deque = deque()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for item in items:
            pending.append((item, pool.submit(check, item)))
            if len(pending) > 2 * threads:
                item_done, future = pending.popleft()
                if not future.result():
                    return item_done
        for item_done, future in pending:
            if not future.result():
                return item_done
    return None


def _state_file(state_dir: str, targets: List[str]) -> str:
    """Where the stamp of a resizing restore onto `targets` is kept: one file per set of targets."""
    key = hashlib.sha256("\0".join(os.path.realpath(target) for target in targets).encode()).hexdigest()[:32]
    return os.path.join(state_dir, f"{key}.json")


def _load_stamp(state_dir: Optional[str], targets: List[str]) -> Optional[Dict[str, Any]]:
    if not state_dir:
        return None
    try:
        with open(_state_file(state_dir, targets), encoding="utf-8") as handle:
            found = json.load(handle)
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _keep_stamp(state_dir: Optional[str], targets: List[str], stamp: Dict[str, Any]) -> Optional[str]:
    """Write the stamp where the next run looks for it (0600, atomically); None if it cannot be kept,
    which costs only that run's idempotence (the next run restores again)."""
    if not state_dir:
        return None
    path = _state_file(state_dir, targets)
    try:
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        fd = os.open(path + ".new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(stamp, handle, sort_keys=True)
        os.replace(path + ".new", path)
    except OSError:
        return None
    return path


def restore_image(path: str, targets: List[str], grow_last: bool = False, check_mode: bool = False,
                  threads: int = 0, recorded: Optional[Dict[str, Any]] = None,
                  check_signature: Optional[Callable[[Manifest], Any]] = None,
                  shrink_last: bool = False, scratch_dir: Optional[str] = None,
                  state_dir: Optional[str] = None) -> Dict[str, Any]:
    """Restore an image file: check its signature (`check_signature(manifest)` raises to refuse),
    validate the targets, verify the image whole, then (unless the targets already hold it, or in
    check mode) wipe, partition, write and finish. Returns what the module reports.

    A grown or shrunk target no longer reads back as the image's chunks, so with `grow_last` or
    `shrink_last` the report carries a `stamp` (fingerprint.stamp of the targets as restored and
    resized); given back as `recorded` on a later run (check mode too), targets that still match it
    are unchanged: nothing is read from the image and nothing is written. With `state_dir`, the
    stamp is also kept there (one file per set of targets) and read back when `recorded` is not
    given, so that a plain re-run of the same restore is unchanged."""
    from . import fingerprint

    with ImageReader(path) as reader:
        manifest = reader.manifest
        if check_signature is not None:
            check_signature(manifest)
        session = RestoreSession(manifest.layout, targets, grow_last, check_mode, protect=[path],
                                 shrink_last=shrink_last, scratch_dir=scratch_dir)
        plan = session.validate()     # the cheap checks first: a wrong target fails at once
        if recorded is None and (grow_last or shrink_last):
            recorded = _load_stamp(state_dir, targets)
        if recorded:
            state = fingerprint.deployed_state(recorded, targets, manifest.image_id, None, threads)
            if state["unchanged"]:
                for target_plan in plan.targets:
                    target_plan.state, target_plan.reason = "unchanged", state["reason"]
                return {"image_id": manifest.image_id, "chunk_count": manifest.chunk_count, "changed": False,
                        "chunks_written": 0, "data_bytes_written": 0, "zero_bytes_written": 0,
                        "plan": plan.to_dict(), "stamp": recorded}
        reader.verify(threads)
        unchanged = session.already_holds(manifest, threads)
        report: Dict[str, Any] = {"image_id": manifest.image_id, "chunk_count": manifest.chunk_count}
        if unchanged or check_mode:
            if not unchanged:
                session.plan_wipes()
            report.update(changed=not unchanged, chunks_written=0, data_bytes_written=0, zero_bytes_written=0,
                          plan=plan.to_dict())
            return report
        session.prepare()
        try:
            _write_all(session, reader, threads)
            result = session.finish(manifest)
        finally:
            session.abort()
        report.update(result.to_dict())
        report["plan"] = plan.to_dict()
        if grow_last or shrink_last:
            report["stamp"] = fingerprint.stamp(targets, manifest.image_id, None, threads)
            report["state_file"] = _keep_stamp(state_dir, targets, report["stamp"])
        return report


def _write_all(session: RestoreSession, reader: ImageReader, threads: int = 0) -> None:
    """Feed every record to the session: reads in this thread, verify+write in a bounded pool."""
    def write(index: int) -> bool:
        session.write(reader.record(index))
        return True
    _first_false(write, range(reader.chunk_count), threads)
