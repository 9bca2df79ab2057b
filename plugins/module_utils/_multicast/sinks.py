# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where a receiver's objects go: disks (RestoreSession) or an image file (ImageWriter), with a
resume journal. Private to the collection: not a public API.

The receiver calls a sink from its writer thread with (index, bytes): object 0 is the layout,
object i is chunk i - 1. ``finish(announced image id)`` runs once everything arrived and returns
the digest this host reports. ``held(image id)`` answers, once the sender announced its image id,
which objects an interrupted receive of that same image already verified here (resume).

The journal is a JSON-lines file: a header naming the image id, the layout and the output, then
one chunk entry per line as chunks are written. It only names candidates: on resume every listed
chunk is read back and checked against its SHA-256 first (what a crash did not make durable comes
again), so the journal itself needs no fsync.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Dict, Iterable, List, Optional, Sequence

from .._errors import ChunkCorruptError, FleetcastError, ImageError, ValidationError
from .._image import format as image_format     # its zstandard: None where missing (session.missing_library)
from .._image.format import (RECORD, RECORD_CRC, ChunkEntry, ChunkRecord, ImageWriter, Manifest, canonical_json,
                             header_bytes, zero_digest)
from .._image.restore import RestoreSession
from .._writeback import WriteBehind

JOURNAL_VERSION = 1


def _layout_digest(layout: Dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(layout)).hexdigest()


class Journal:
    """What this host has written for one image, appended as it goes; read back to resume."""

    def __init__(self, path: str):
        self.path = path
        self.handle = None
        self.pending: List[str] = []      # entries written before the image id was known
        self.lock = threading.Lock()
        self.broken = False

    def load(self) -> Optional[Dict[str, Any]]:
        """{"image_id", "layout", "output", "entries": {index: ChunkEntry}} or None (absent, foreign)."""
        try:
            with open(self.path, encoding="utf-8") as handle:
                lines = handle.read().splitlines()
        except OSError:
            return None
        try:
            head = json.loads(lines[0])
            if head.get("journal") != JOURNAL_VERSION:
                return None
            entries: Dict[int, ChunkEntry] = {}
            for line in lines[1:]:
                try:
                    row = json.loads(line)
                except ValueError:
                    break                 # a line cut by the interruption: the rest never came
                entries[row[0]] = ChunkEntry.from_row(row[0], row[1:])
        except (ValueError, IndexError, KeyError, TypeError):
            return None
        return {"image_id": head["image_id"], "layout": head["layout"], "output": head["output"],
                "entries": entries}

    def start(self, image_id: str, layout: Dict[str, Any], output: Any, kept: Iterable[ChunkEntry] = ()) -> None:
        """Begin (or, with `kept`, rewrite for a resume) the journal of this image."""
        try:
            self._start(image_id, layout, output, kept)
        except OSError:
            with self.lock:
                self._give_up()

    def _start(self, image_id: str, layout: Dict[str, Any], output: Any, kept: Iterable[ChunkEntry]) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        temporary = self.path + ".new"
        with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as out:
            out.write(json.dumps({"journal": JOURNAL_VERSION, "image_id": image_id, "layout": layout,
                                  "output": output}, sort_keys=True) + "\n")
            for entry in kept:
                out.write(self._line(entry))
        os.replace(temporary, self.path)
        with self.lock:
            self.handle = open(self.path, "a", encoding="utf-8")
            for line in self.pending:
                self.handle.write(line)
            self.pending = []
            self.handle.flush()

    @staticmethod
    def _line(entry: ChunkEntry) -> str:
        return json.dumps([entry.index] + entry.to_row()) + "\n"

    def add(self, entry: ChunkEntry) -> None:
        line = self._line(entry)
        with self.lock:
            if self.broken:
                return
            if self.handle is None:
                self.pending.append(line)
                return
            try:
                self.handle.write(line)
                self.handle.flush()
            except OSError:
                self._give_up()

    def _give_up(self) -> None:
        """A journal that cannot be written (a full disk) only costs the resume: stop keeping it."""
        self.broken = True
        self.pending = []
        try:
            self.handle.close()
        except (OSError, AttributeError):
            pass
        self.handle = None
        for path in (self.path, self.path + ".new"):
            try:
                os.unlink(path)
            except OSError:
                pass

    def close(self) -> None:
        with self.lock:
            if self.handle is not None:
                try:
                    self.handle.close()
                except OSError:
                    pass
                self.handle = None

    def remove(self) -> None:
        self.close()
        for path in (self.path, self.path + ".new"):
            if os.path.exists(path):
                os.unlink(path)


class _Pipeline:
    """Chunks decompressed, verified and written by a few threads while the receiver reassembles
    the next ones. The receiver's writer thread hands the sink one object at a time and reuses its
    buffer as soon as the sink returns; alone, decompressing and hashing each chunk there made a
    session with the lab's Debian image 2.5 times as long as the same bytes sent as plain objects
    (6.1 s against 2.4 s, one receiver, flow control holding the sender 26-34 times; 3.0-4.4 s with
    two threads). The sink copies the record once a thread is free for it and returns: at most one
    chunk per thread is in the pipeline (onto disks each holds its compressed and its raw bytes; into
    an image file only its record, whose digest is checked 1 MiB at a time). The first error is
    raised by the next call or by drain()."""

    def __init__(self, threads: int = 0):
        threads = threads or max(1, min(2, (os.cpu_count() or 1)))
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fleetcast-sink")
        self.slots = threading.BoundedSemaphore(threads)
        self.error: Optional[BaseException] = None

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def submit(self, work, make) -> None:
        """Run work(make()) in a thread; `make` (the copy of the receiver's buffer) runs only once a
        thread is free, so that no more copies than threads are ever held."""
        self.check()
        self.slots.acquire()
        try:
            item = make()
        except BaseException:
            self.slots.release()
            raise
        future = self.pool.submit(work, item)
        future.add_done_callback(self._done)

    def _done(self, future: "Future") -> None:
        self.slots.release()
        if future.cancelled():  # stop() after an error: nothing ran, nothing to report
            return
        error = future.exception()
        if error is not None and self.error is None:
            self.error = error

    def drain(self) -> None:
        self.pool.shutdown(wait=True)
        self.check()

    def stop(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


_local = threading.local()
VERIFY_PIECE = 1 << 20


class _Received(ChunkRecord):
    """A chunk record as received, kept as one copy of its bytes: written to an image file as is
    (not framed again) and verified without holding its raw bytes (an image file stores them
    compressed). Per pipeline thread that is one record (up to 4 MiB) where parsing, decompressing
    and framing it again held three."""

    blob = b""

    @classmethod
    def from_received(cls, data) -> "_Received":
        """One copy of `data` (the receiver reuses its buffer), parsed in place."""
        blob = bytes(data)
        view = memoryview(blob)
        fixed = RECORD.size + RECORD_CRC.size
        if len(view) >= fixed:
            parsed, payload_len = ChunkRecord._parse_head(view[:RECORD.size], view[RECORD.size:fixed])
            if len(view) == fixed + payload_len:
                record = cls(parsed.index, parsed.disk, parsed.offset, parsed.length, parsed.kind, parsed.digest,
                             view[fixed:])
                record.blob = blob
                return record
        ChunkRecord.from_bytes(view)                # raises its error: truncated or framed wrongly
        raise ImageError(f"A chunk record of {len(view)} bytes is framed wrongly.")

    def to_bytes(self) -> bytes:
        return self.blob

    def verify(self) -> None:
        """The chunk's SHA-256 over its decompressed bytes, 1 MiB at a time into a buffer of this
        thread's; ChunkCorruptError when it does not match (as ChunkRecord.decompress_verified)."""
        where = f"Chunk {self.index} (disk {self.disk}, offset {self.offset})"
        if self.kind == "zero":
            if self.digest != zero_digest(self.length):
                raise ChunkCorruptError(f"{where} is a zero chunk whose digest is not that of {self.length} zero bytes.")
            return
        if getattr(_local, "buffer", None) is None:
            _local.buffer = bytearray(VERIFY_PIECE)
            _local.dctx = image_format.zstandard.ZstdDecompressor()
        buffer, view, digest, total = _local.buffer, memoryview(_local.buffer), hashlib.sha256(), 0
        try:
            with _local.dctx.stream_reader(self.payload) as reader:
                while total <= self.length:
                    got = reader.readinto(buffer)
                    if not got:
                        break
                    digest.update(view[:got])
                    total += got
        except image_format.zstandard.ZstdError as err:
            raise ChunkCorruptError(f"{where} cannot be decompressed: {err}.") from None
        if total != self.length or digest.digest() != self.digest:
            raise ChunkCorruptError(f"{where} failed its SHA-256 check ({total} of {self.length} bytes decoded).")


class _Sink:
    """What both sinks share: the announced image id, the candidates for resume, the journal."""

    def __init__(self, host: str, journal: Optional[Journal]):
        self.pipeline = _Pipeline()
        self.host = host
        self.journal = journal
        self.lock = threading.Lock()
        self.image_id = ""               # announced by the sender; "" until then (or a live capture)
        self.candidate: Optional[Dict[str, Any]] = None   # a journal of an interrupted receive
        self.resuming = False
        self.held_objects: List[int] = []   # handed to the receiver; narrowed when the layout arrives
        self.resumed = 0
        self.chunks = 0
        self.layout: Optional[Dict[str, Any]] = None

    # -- resume ---------------------------------------------------------------------------
    def look_for_resume(self) -> None:
        if self.journal is not None:
            self.candidate = self.journal.load()

    def held(self, announced: bytes) -> List[int]:
        """Called by the receiver once the sender's image id is known: the object indices this host
        may hold of that image, per its journal. The receiver counts them only once object 0 was
        delivered; by then the sink has narrowed the list, in place, to the chunks that verified
        (or emptied it: another layout, another output, a changed partition table)."""
        with self.lock:
            self.image_id = announced.hex()
            if self.layout is not None:
                # the layout came first (a live capture announces its id only at the end)
                if self.journal is not None and self.journal.handle is None:
                    self.journal.start(self.image_id, self.layout, self.output_name())
                return []
            candidate = self.candidate
            if candidate is None or not self.image_id or candidate["image_id"] != self.image_id:
                return []
            self.resuming = True
            self.held_objects[:] = [entry.index + 1 for entry in candidate["entries"].values()]
            return self.held_objects

    def output_name(self) -> Any:
        raise NotImplementedError

    def layout_arrived(self, layout: Dict[str, Any]) -> bool:
        """Record the layout; True when this is a resume of the same image onto the same output."""
        with self.lock:
            self.layout = layout
            resume = (self.resuming and self.candidate is not None
                      and _layout_digest(self.candidate["layout"]) == _layout_digest(layout)
                      and self.candidate["output"] == self.output_name())
            if not resume:
                self.resuming = False
                self.held_objects.clear()
            return resume

    def keep(self, kept: List[ChunkEntry]) -> None:
        """What verified of the resume candidates: the receiver counts exactly these as delivered."""
        with self.lock:
            self.held_objects[:] = [entry.index + 1 for entry in kept]
            self.resumed = len(kept)

    def journal_start(self, kept: Iterable[ChunkEntry] = ()) -> None:
        if self.journal is not None and self.image_id:
            self.journal.start(self.image_id, self.layout, self.output_name(), kept)

    def journal_add(self, entry: ChunkEntry) -> None:
        if self.journal is not None:
            self.journal.add(entry)

    def _wrote(self, entry: ChunkEntry) -> None:
        self.journal_add(entry)
        with self.lock:
            self.chunks += 1


class DiskSink(_Sink):
    """The session's chunks onto disks through a RestoreSession, validated when the layout arrives
    (before anything is touched); a resume of the same image keeps the partition tables and every
    chunk that reads back with its digest."""

    def __init__(self, devices: Sequence[str], grow_last: bool, host: str, journal: Optional[Journal]):
        super().__init__(host, journal)
        self.devices = list(devices)
        self.grow_last = grow_last
        self.session: Optional[RestoreSession] = None
        self.result = None

    def output_name(self) -> Any:
        return [os.path.realpath(device) for device in self.devices]

    def __call__(self, index: int, data) -> None:
        if index == 0:
            layout = json.loads(bytes(data))
            resume = self.layout_arrived(layout)
            self.session = RestoreSession(layout, self.devices, self.grow_last)
            self.session.validate()
            kept: List[ChunkEntry] = []
            if resume:
                try:
                    kept = self.session.resume(list(self.candidate["entries"].values()))
                except ValidationError:
                    resume = False     # the table changed since: start over
                    self.session = RestoreSession(layout, self.devices, self.grow_last)
                    self.session.validate()
            if not resume:
                self.session.prepare()
            self.keep(kept)
            self.journal_start(kept)
            return
        self.pipeline.submit(self._write, lambda: ChunkRecord.from_bytes(data))

    def _write(self, record: ChunkRecord) -> None:
        if self.session.write(record):        # checks the chunk's own digest before writing
            self._wrote(record.entry())

    def finish(self, announced: bytes) -> bytes:
        self.pipeline.drain()
        # finish() checks that what was written has the announced image id, then grows and rereads.
        entries = sorted(self.session._written.values(), key=lambda entry: entry.index)
        self.result = self.session.finish(Manifest(self.session.layout, entries, announced.hex()))
        if self.journal is not None:
            self.journal.remove()
        return bytes.fromhex(self.result.image_id)

    def abort(self) -> None:
        self.pipeline.stop()
        if self.session is not None:
            self.session.abort()
        if self.journal is not None:
            self.journal.close()


class FileSink(_Sink):
    """The session's chunks into an image file: written as DEST.partial, renamed into place once its
    image id is the announced one. Its journal is DEST.partial.journal; a resume keeps every record
    of the .partial that still parses and verifies (in file order, up to the first that does not)."""

    def __init__(self, dest: str, mode: int, host: str, resume: bool):
        self.dest = dest
        self.partial = dest + ".partial"
        super().__init__(host, Journal(self.partial + ".journal") if resume else None)
        self.mode = mode
        self.handle = None
        self.writer: Optional[ImageWriter] = None
        self.behind: Optional[WriteBehind] = None
        self.file_lock = threading.Lock()

    def output_name(self) -> Any:
        return os.path.realpath(self.partial)

    def _kept_records(self, layout: Dict[str, Any]) -> "tuple[List[ChunkEntry], int]":
        """Records of the .partial that verify, in file order, and where the first bad one starts."""
        kept: List[ChunkEntry] = []
        position = len(header_bytes(layout))
        try:
            fd = os.open(self.partial, os.O_RDONLY)
        except OSError:
            return [], 0
        try:
            if os.pread(fd, position, 0) != header_bytes(layout):
                return [], 0
            listed = sorted(self.candidate["entries"].values(), key=lambda entry: entry.file_offset or 0)
            for entry in listed:
                if entry.file_offset != position or not entry.record_length:
                    break
                try:
                    record = ChunkRecord.from_bytes(os.pread(fd, entry.record_length, position))
                    record.decompress_verified()
                except FleetcastError:
                    break
                if not entry.same_content(record) or record.index != entry.index:
                    break
                kept.append(record.entry(position))
                position += entry.record_length
        finally:
            os.close(fd)
        return kept, position

    def __call__(self, index: int, data) -> None:
        if index == 0:
            layout = json.loads(bytes(data))
            resume = self.layout_arrived(layout)
            kept: List[ChunkEntry] = []
            end = 0
            if resume:
                kept, end = self._kept_records(layout)
            if resume and end:
                fd = os.open(self.partial, os.O_WRONLY)
                os.ftruncate(fd, end)
                os.lseek(fd, end, os.SEEK_SET)
            else:
                kept = []
                fd = os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, self.mode)
            self.handle = os.fdopen(fd, "wb", buffering=1 << 20)
            self.behind = WriteBehind(fd)
            try:
                self.writer = (ImageWriter.reopen(self.handle, layout, kept, end) if end
                               else ImageWriter(self.handle, layout))
            except OSError as err:
                raise self._write_error(err) from None
            self.keep(kept)
            self.journal_start(kept)
            return
        self.pipeline.submit(self._add, lambda: _Received.from_received(data))

    def _add(self, record: "_Received") -> None:
        record.verify()                     # the chunk's own digest, before it is kept
        with self.file_lock:
            if record.index in self.writer:
                return                      # held already (resume), or a resend
            try:
                self.writer.add(record)
                self.handle.flush()         # in the file, so that it can be written behind
            except OSError as err:
                raise self._write_error(err) from None
            entry = self.writer._entries[record.index]
        try:
            self.behind.wrote(entry.file_offset, entry.record_length)
        except OSError as err:
            raise self._write_error(err) from None
        self._wrote(entry)

    def _write_error(self, err: OSError) -> FleetcastError:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            self.discard()
            return ImageError(f"{self.host} ran out of space writing {self.partial} after {self.chunks} chunk(s); "
                              "the partial image was removed (free space, or choose another dest, and receive again).")
        return ImageError(f"{self.host} could not write {self.partial}: {err.strerror}; the partial image stays "
                          "for a resume.")

    def finish(self, announced: bytes) -> bytes:
        self.pipeline.drain()
        try:
            manifest = self.writer.close()
            if manifest.image_id != announced.hex():
                raise ImageError(f"The image received into {self.dest} has image id {manifest.image_id}, not the "
                                 f"announced {announced.hex()}; it stays as {self.partial}.")
            self.handle.flush()
            os.fsync(self.handle.fileno())
        except OSError as err:
            raise self._write_error(err) from None
        self.handle.close()
        self.handle = None
        os.chmod(self.partial, self.mode)
        os.replace(self.partial, self.dest)
        if self.journal is not None:
            self.journal.remove()
        return bytes.fromhex(manifest.image_id)

    def discard(self) -> None:
        """Remove the .partial and its journal (a full disk: keeping it would keep the disk full)."""
        self.abort()
        if self.journal is not None:
            self.journal.remove()
        if os.path.exists(self.partial):
            os.unlink(self.partial)

    def abort(self) -> None:
        if threading.current_thread().name.startswith("fleetcast-sink"):
            pass                              # a full disk seen by a pipeline thread: it cannot wait for itself
        else:
            self.pipeline.stop()
        if self.handle is not None:
            try:
                self.handle.close()
            except OSError:
                pass                          # the buffer could not be flushed: a full disk
            self.handle = None
        if self.journal is not None:
            self.journal.close()
