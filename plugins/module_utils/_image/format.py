# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleetcast image file format: chunk records, manifest, streaming writer and readers.
Private to the collection: not a public API.

Byte layout (all integers little-endian; the full description is docs/image-format.md):

    header   HEADER struct, layout JSON, SHA-256 of the layout JSON
    records  one per chunk, any index order: RECORD struct, header CRC32, payload
    trailer  TRAILER_MARK, length, manifest JSON (layout summary + chunk table + image id)
    footer   FOOTER struct: where the trailer is, and its SHA-256

A stream reader walks it front to back; a random-access reader starts at the footer.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import struct
import threading
import traceback
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Dict, Iterator, List, Optional, Union

try:
    import zstandard
except ImportError:
    zstandard = None
    ZSTD_IMPORT_ERROR: Optional[str] = traceback.format_exc()
else:
    ZSTD_IMPORT_ERROR = None

from .._errors import ChunkCorruptError, ImageError

FORMAT_VERSION = 1
MAGIC = b"FCIMAGE\n"
HEADER = struct.Struct("<8sHHI")            # magic, version, flags (0), layout JSON length
RECORD_MARK = b"FCCR"
RECORD_FORMAT = "<4sQHBxQQI32s"             # mark, index, disk, kind, offset, length, payload len, digest
RECORD = struct.Struct(RECORD_FORMAT)
RECORD_SIZE = struct.calcsize(RECORD_FORMAT)
RECORD_CRC = struct.Struct("<I")            # CRC32 of the RECORD struct bytes
TRAILER_MARK = b"FCTR"
TRAILER = struct.Struct("<4sQ")             # mark, manifest JSON length
FOOTER_MAGIC = b"FCIMGEND"
FOOTER = struct.Struct("<8sHHIQQ32s")       # magic, version, 0, 0, trailer offset, trailer length, SHA-256
MAX_LAYOUT = 64 << 20
MAX_PAYLOAD = 64 << 20
KINDS = {"data": 0, "zero": 1}
KIND_NAMES = {code: name for name, code in KINDS.items()}

_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    # ZstdCompressor objects must not be shared between threads: one per thread and level.
    cache = getattr(_local, "cctx", None)
    if cache is None:
        cache = _local.cctx = {}
    if level not in cache:
        cache[level] = zstandard.ZstdCompressor(level=level, write_checksum=False, write_content_size=True)
    return cache[level]


def _decompressor() -> zstandard.ZstdDecompressor:
    # ZstdDecompressor objects must not be shared between threads.
    dctx = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor()
    return dctx


@functools.lru_cache(maxsize=64)
def zero_digest(length: int) -> bytes:
    """SHA-256 of `length` zero bytes (cached: zero chunks mostly share a few lengths)."""
    return hashlib.sha256(bytes(length)).digest()


_ZEROS = bytes(4 << 20)


def _zeros(length: int) -> bytes:
    return _ZEROS[:length] if length <= len(_ZEROS) else bytes(length)


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _cap(text: str) -> str:
    """Capitalise a sentence without touching the rest (str.capitalize lowercases paths)."""
    return text[:1].upper() + text[1:]


def _nested(prefix: str, err: Exception) -> str:
    text = str(err)
    return f"{prefix}: {text[:1].lower()}{text[1:]}"


def _where(index: int, disk: int, offset: int) -> str:
    return f"chunk {index} (disk {disk}, offset {offset})"


@dataclass
class ChunkRecord:
    """One extent of one disk: the unit on disk, on the wire and in memory."""

    index: int
    disk: int
    offset: int
    length: int
    kind: str
    digest: bytes
    payload: bytes = b""

    @classmethod
    def from_raw(cls, index: int, disk: int, offset: int, raw: Union[bytes, memoryview],
                 level: int = 3) -> "ChunkRecord":
        """Digest and, unless all zero, compress one extent (hashlib and zstd release the GIL)."""
        if isinstance(raw, memoryview):
            raw = raw.tobytes()  # memoryview == bytes compares item by item: far slower than a copy
        length = len(raw)
        if raw == _zeros(length):
            return cls(index, disk, offset, length, "zero", zero_digest(length))
        return cls(index, disk, offset, length, "data", hashlib.sha256(raw).digest(),
                   _compressor(level).compress(raw))

    def to_bytes(self) -> bytes:
        head = RECORD.pack(RECORD_MARK, self.index, self.disk, KINDS[self.kind], self.offset,
                           self.length, len(self.payload), self.digest)
        return b"".join((head, RECORD_CRC.pack(zlib.crc32(head)), self.payload))

    @classmethod
    def from_bytes(cls, raw: Union[bytes, bytearray, memoryview]) -> "ChunkRecord":
        """Parse exactly one record; anything short, long or inconsistent is an ImageError."""
        view = memoryview(raw)
        fixed = RECORD.size + RECORD_CRC.size
        if len(view) < fixed:
            raise ImageError(f"A chunk record of {len(view)} bytes is truncated: its header needs {fixed} bytes.")
        record, payload_len = cls._parse_head(view[:RECORD.size], view[RECORD.size:fixed])
        if len(view) != fixed + payload_len:
            raise ImageError(f"{_cap(_where(record.index, record.disk, record.offset))} is framed "
                             f"wrongly: {len(view)} bytes where the header announces {fixed + payload_len}.")
        record.payload = bytes(view[fixed:])
        return record

    @classmethod
    def _parse_head(cls, head: Union[bytes, memoryview], crc: Union[bytes, memoryview]) -> "tuple[ChunkRecord, int]":
        mark, index, disk, kind, offset, length, payload_len, digest = RECORD.unpack(head)
        if mark != RECORD_MARK:
            raise ImageError(f"A chunk record does not start with {RECORD_MARK!r} (found {bytes(mark)!r}).")
        if RECORD_CRC.unpack(crc)[0] != zlib.crc32(head):
            raise ChunkCorruptError(f"The header of chunk record {index} is corrupt (CRC32 mismatch).")
        if kind not in KIND_NAMES:
            raise ImageError(f"{_cap(_where(index, disk, offset))} has an unknown kind code {kind}.")
        if payload_len > MAX_PAYLOAD or (kind == KINDS["zero"] and payload_len):
            raise ImageError(f"{_cap(_where(index, disk, offset))} announces an impossible payload "
                             f"of {payload_len} bytes.")
        return cls(index, disk, offset, length, KIND_NAMES[kind], bytes(digest)), payload_len

    def entry(self, file_offset: Optional[int] = None) -> "ChunkEntry":
        return ChunkEntry(self.index, self.disk, self.offset, self.length, self.kind, self.digest,
                          file_offset, RECORD.size + RECORD_CRC.size + len(self.payload))

    def decompress_verified(self, into: Optional[memoryview] = None) -> Union[bytes, memoryview]:
        """The raw bytes of this chunk, checked against its SHA-256; ChunkCorruptError otherwise.
        `into`: a writable buffer of at least `length` bytes to decode into (a page-aligned one
        lets the bytes go to the disk direct); its first `length` bytes are then returned."""
        where = _where(self.index, self.disk, self.offset)
        if self.kind == "zero":
            if self.digest != zero_digest(self.length):
                raise ChunkCorruptError(f"Zero {where} carries a digest that is not that of {self.length} zero bytes.")
            return bytes(self.length)
        try:
            if into is not None and len(into) >= self.length:
                raw = into[:self.length]
                decoded = _decompress_into(self.payload, raw)
            else:
                raw = _decompressor().decompress(self.payload, max_output_size=self.length)
                decoded = len(raw)
        except zstandard.ZstdError as err:
            raise ChunkCorruptError(f"{_cap(where)} cannot be decompressed: {err}.") from None
        if decoded != self.length or hashlib.sha256(raw).digest() != self.digest:
            raise ChunkCorruptError(f"{_cap(where)} failed its SHA-256 check "
                                    f"({decoded} of {self.length} bytes decoded).")
        return raw


def _decompress_into(payload: bytes, target: memoryview) -> int:
    """Decode a zstd frame into `target`: the bytes decoded, len(target) + 1 if the frame holds more."""
    done = 0
    with _decompressor().stream_reader(payload) as reader:
        while done < len(target):
            got = reader.readinto(target[done:])
            if not got:
                return done
            done += got
        return done + 1 if reader.read(1) else done


@dataclass
class ChunkEntry:
    """One row of the chunk table: what a record holds and, in a file, where it is."""

    index: int
    disk: int
    offset: int
    length: int
    kind: str
    digest: bytes
    file_offset: Optional[int] = None
    record_length: Optional[int] = None

    def to_row(self) -> list:
        return [self.disk, self.offset, self.length, self.kind, self.digest.hex(),
                self.file_offset, self.record_length]

    @classmethod
    def from_row(cls, index: int, row: list) -> "ChunkEntry":
        disk, offset, length, kind, digest, file_offset, record_length = row
        return cls(index, disk, offset, length, kind, bytes.fromhex(digest), file_offset, record_length)

    def same_content(self, record: "ChunkRecord") -> bool:
        return (self.disk, self.offset, self.length, self.kind, self.digest) == (
            record.disk, record.offset, record.length, record.kind, record.digest)


def image_id(layout: Dict[str, Any], entries: List[ChunkEntry]) -> str:
    """SHA-256 (hex) over the canonical layout and every chunk's index, disk, offset, length,
    kind and digest, in index order: the same value whoever computes it (writer, reader, receiver).
    The layout's `origin` (when and where it was captured) is left out, so that the id names the
    content: two captures of the same disks have one id (signatures cover `origin` separately)."""
    digest = hashlib.sha256(b"fleetcast-image-id-v1\0")
    digest.update(canonical_json({key: value for key, value in layout.items() if key != "origin"}))
    for entry in sorted(entries, key=lambda item: item.index):
        digest.update(struct.pack("<QHBQQ", entry.index, entry.disk, KINDS[entry.kind],
                                  entry.offset, entry.length))
        digest.update(entry.digest)
    return digest.hexdigest()


@dataclass
class Manifest:
    """The layout plus the chunk table and the image id."""

    layout: Dict[str, Any]
    chunks: List[ChunkEntry] = field(default_factory=list)
    image_id: str = ""
    version: int = FORMAT_VERSION

    @property
    def chunk_count(self) -> int:
        return len(self.chunks)

    @property
    def data_bytes(self) -> int:
        return sum(entry.length for entry in self.chunks if entry.kind == "data")

    @property
    def zero_bytes(self) -> int:
        return sum(entry.length for entry in self.chunks if entry.kind == "zero")

    @property
    def stored_bytes(self) -> int:
        return sum(entry.record_length or 0 for entry in self.chunks)

    def to_dict(self) -> Dict[str, Any]:
        return {"version": self.version, "image_id": self.image_id, "layout": self.layout,
                "chunk_count": self.chunk_count, "data_bytes": self.data_bytes,
                "zero_bytes": self.zero_bytes, "stored_bytes": self.stored_bytes,
                "chunks": [entry.to_row() for entry in self.chunks]}

    @classmethod
    def from_dict(cls, value: Dict[str, Any]) -> "Manifest":
        try:
            chunks = [ChunkEntry.from_row(index, row) for index, row in enumerate(value["chunks"])]
            manifest = cls(value["layout"], chunks, value["image_id"], value["version"])
        except (KeyError, TypeError, ValueError) as err:
            raise ImageError(f"The image manifest is malformed ({err!r}).") from None
        if manifest.image_id != image_id(manifest.layout, manifest.chunks):
            raise ImageError("The image manifest does not match its image id (the chunk table is corrupt).")
        return manifest


def _check_version(version: int, what: str) -> None:
    if version != FORMAT_VERSION:
        raise ImageError(f"{what} has format version {version}; this collection reads version {FORMAT_VERSION} only.")


def header_bytes(layout: Dict[str, Any]) -> bytes:
    body = canonical_json(layout)
    return HEADER.pack(MAGIC, FORMAT_VERSION, 0, len(body)) + body + hashlib.sha256(body).digest()


class ImageWriter:
    """Streaming writer: the header and layout at once, chunks as they come (any index order),
    the trailer and footer on close(). `fileobj` need not be seekable (pipes work)."""

    def __init__(self, fileobj: BinaryIO, layout: Dict[str, Any]):
        self._file = fileobj
        self.layout = layout
        self._entries: Dict[int, ChunkEntry] = {}
        self._lock = threading.Lock()
        self._position = 0
        self._closed = False
        self._write(header_bytes(layout))

    @classmethod
    def reopen(cls, fileobj: BinaryIO, layout: Dict[str, Any], entries: List[ChunkEntry],
               position: int) -> "ImageWriter":
        """Continue an unfinished image (a resumed receive): header and layout are already in the
        file, `entries` are the records kept before `position`, where `fileobj` now stands."""
        writer = cls.__new__(cls)
        writer._file = fileobj
        writer.layout = layout
        writer._entries = {entry.index: entry for entry in entries}
        writer._lock = threading.Lock()
        writer._position = position
        writer._closed = False
        return writer

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = self._file.write(view)
            written = len(view) if written is None else written
            view = view[written:]
            self._position += written

    def add(self, record: ChunkRecord) -> None:
        """Append one record; adding the same index twice is an error (a resend is the caller's to drop)."""
        raw = record.to_bytes()
        with self._lock:
            if self._closed:
                raise ImageError(f"Chunk {record.index} arrived after the image was closed.")
            if record.index in self._entries:
                raise ImageError(f"Chunk {record.index} was added to the image twice.")
            self._entries[record.index] = record.entry(self._position)
            self._write(raw)

    def __contains__(self, index: int) -> bool:
        return index in self._entries

    def close(self) -> Manifest:
        """Write the trailer and footer; the chunk indices must be exactly 0..N-1."""
        with self._lock:
            count = len(self._entries)
            missing = next((i for i in range(count) if i not in self._entries), None)
            if missing is not None:
                raise ImageError(f"The image cannot be closed: chunk {missing} of {count} is missing.")
            entries = [self._entries[i] for i in range(count)]
            manifest = Manifest(self.layout, entries, image_id(self.layout, entries))
            body = canonical_json(manifest.to_dict())
            trailer_offset = self._position
            self._write(TRAILER.pack(TRAILER_MARK, len(body)) + body)
            self._write(FOOTER.pack(FOOTER_MAGIC, FORMAT_VERSION, 0, 0, trailer_offset,
                                    TRAILER.size + len(body), hashlib.sha256(body).digest()))
            self._closed = True
            flush = getattr(self._file, "flush", None)
            if flush:
                flush()
            return manifest


def _read_exact(fileobj: BinaryIO, size: int, what: str, position: int, name: str) -> bytes:
    chunks = []
    wanted = size
    while wanted:
        data = fileobj.read(wanted)
        if not data:
            raise ImageError(f"{_cap(name)} is truncated: {what} at byte {position} needs {size} bytes, "
                             f"only {size - wanted} remain.")
        chunks.append(data)
        wanted -= len(data)
    return b"".join(chunks)


def _parse_header(fileobj: BinaryIO, name: str) -> "tuple[Dict[str, Any], int]":
    head = _read_exact(fileobj, HEADER.size, "the header", 0, name)
    magic, version, _flags, layout_len = HEADER.unpack(head)
    if magic != MAGIC:
        raise ImageError(f"{_cap(name)} is not a fleetcast image (bad magic {magic!r}).")
    _check_version(version, _cap(name))
    if layout_len > MAX_LAYOUT:
        raise ImageError(f"{_cap(name)} announces an impossible layout of {layout_len} bytes.")
    body = _read_exact(fileobj, layout_len + 32, "the layout", HEADER.size, name)
    if hashlib.sha256(body[:layout_len]).digest() != body[layout_len:]:
        raise ImageError(f"The layout in {name} is corrupt (SHA-256 mismatch at byte {HEADER.size}).")
    return json.loads(body[:layout_len]), HEADER.size + layout_len + 32


StreamItem = Union[Dict[str, Any], ChunkRecord, Manifest]


def iter_stream(fileobj: BinaryIO, name: str = "the image stream") -> Iterator[StreamItem]:
    """Read an image front to back: yields the layout dict, every ChunkRecord (framing checked,
    payload not yet verified), then the Manifest once the trailer and footer check out."""
    layout, position = _parse_header(fileobj, name)
    yield layout
    seen: Dict[int, ChunkEntry] = {}
    fixed = RECORD.size + RECORD_CRC.size
    while True:
        mark = _read_exact(fileobj, 4, "the next record", position, name)
        if mark == TRAILER_MARK:
            break
        head = mark + _read_exact(fileobj, fixed - 4, "a chunk record header", position, name)
        record, payload_len = ChunkRecord._parse_head(head[:RECORD_SIZE], head[RECORD_SIZE:])
        record.payload = _read_exact(fileobj, payload_len, _where(record.index, record.disk, record.offset),
                                     position + fixed, name)
        seen[record.index] = record.entry(position)
        position += fixed + payload_len
        yield record
    trailer_offset = position
    (body_len,) = struct.unpack("<Q", _read_exact(fileobj, 8, "the trailer", position + 4, name))
    body = _read_exact(fileobj, body_len, "the trailer", position + TRAILER.size, name)
    position += TRAILER.size + body_len
    footer = FOOTER.unpack(_read_exact(fileobj, FOOTER.size, "the footer", position, name))
    if footer[0] != FOOTER_MAGIC or footer[4] != trailer_offset or footer[6] != hashlib.sha256(body).digest():
        raise ImageError(f"The trailer of {name} at byte {trailer_offset} is corrupt or does not match its footer.")
    manifest = Manifest.from_dict(json.loads(body))
    if manifest.layout != layout:
        raise ImageError(f"The manifest of {name} describes another layout than its header.")
    for entry in manifest.chunks:
        got = seen.get(entry.index)
        if got is None or (got.disk, got.offset, got.length, got.kind, got.digest, got.file_offset) != (
                entry.disk, entry.offset, entry.length, entry.kind, entry.digest, entry.file_offset):
            raise ImageError(f"{_cap(_where(entry.index, entry.disk, entry.offset))} in {name} does not "
                             f"match the chunk table.")
    if len(seen) != manifest.chunk_count:
        raise ImageError(f"{_cap(name)} holds {len(seen)} chunk records, its table lists {manifest.chunk_count}.")
    yield manifest


class ImageReader:
    """Random access to an image file: footer -> trailer -> chunk table, then any record by index."""

    def __init__(self, path: str):
        self.path = path
        self.name = f"image {path}"
        try:
            self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as err:
            raise ImageError(f"Image {path} cannot be opened: {err.strerror}.") from None
        try:
            self.manifest = self._load()
        except OSError as err:   # a directory, an I/O error: still one sentence naming the file
            os.close(self._fd)
            raise ImageError(f"Image {path} cannot be read: {err.strerror}.") from None
        except BaseException:
            os.close(self._fd)
            raise

    def _pread(self, size: int, offset: int, what: str) -> bytes:
        try:
            data = os.pread(self._fd, size, offset)
        except OSError as err:
            raise ImageError(f"{_cap(self.name)} cannot be read at byte {offset} ({what}): {err.strerror}.") from None
        if len(data) != size:
            raise ImageError(f"{_cap(self.name)} is truncated: {what} at byte {offset} needs {size} "
                             f"bytes, only {len(data)} remain.")
        return data

    def _load(self) -> Manifest:
        size = os.fstat(self._fd).st_size
        with io.FileIO(os.dup(self._fd), "rb") as handle:
            layout, header_end = _parse_header(handle, self.name)
        if size < header_end + FOOTER.size:
            raise ImageError(f"{_cap(self.name)} is truncated: {size} bytes, no room for a footer.")
        footer = FOOTER.unpack(self._pread(FOOTER.size, size - FOOTER.size, "the footer"))
        magic, version, _a, _b, trailer_offset, trailer_len, trailer_digest = footer
        if magic != FOOTER_MAGIC:
            raise ImageError(f"{_cap(self.name)} is truncated or incomplete: no footer in its last "
                             f"{FOOTER.size} bytes (file size {size}).")
        _check_version(version, _cap(self.name))
        if trailer_offset + trailer_len != size - FOOTER.size or trailer_len < TRAILER.size:
            raise ImageError(f"The footer of {self.name} points outside the file (trailer at byte {trailer_offset}).")
        trailer = self._pread(trailer_len, trailer_offset, "the trailer")
        mark, body_len = TRAILER.unpack(trailer[:TRAILER.size])
        body = trailer[TRAILER.size:]
        if mark != TRAILER_MARK or body_len != len(body) or hashlib.sha256(body).digest() != trailer_digest:
            raise ImageError(f"The trailer of {self.name} at byte {trailer_offset} is corrupt.")
        manifest = Manifest.from_dict(json.loads(body))
        _check_version(manifest.version, _cap(self.name))
        if manifest.layout != layout:
            raise ImageError(f"The manifest of {self.name} describes another layout than its header.")
        return manifest

    @property
    def chunk_count(self) -> int:
        return self.manifest.chunk_count

    def _entry(self, index: int) -> ChunkEntry:
        if not 0 <= index < self.chunk_count:
            raise ImageError(f"{_cap(self.name)} has no chunk {index} (it holds {self.chunk_count}).")
        return self.manifest.chunks[index]

    def record_bytes(self, index: int) -> bytes:
        entry = self._entry(index)
        return self._pread(entry.record_length, entry.file_offset, _where(index, entry.disk, entry.offset))

    def record(self, index: int) -> ChunkRecord:
        """The record at `index`, framing checked and matched against the chunk table (payload not verified)."""
        entry = self._entry(index)
        try:
            record = ChunkRecord.from_bytes(self.record_bytes(index))
        except ImageError as err:
            raise type(err)(_nested(f"In {self.name} at byte {entry.file_offset}", err)) from None
        if record.index != index or not entry.same_content(record):
            raise ChunkCorruptError(f"In {self.name}, {_where(index, entry.disk, entry.offset)} at byte "
                                    f"{entry.file_offset} does not match the chunk table.")
        return record

    def verified(self, index: int) -> "tuple[ChunkRecord, bytes]":
        """The record and its raw bytes; ChunkCorruptError naming the image and chunk otherwise."""
        record = self.record(index)
        try:
            return record, record.decompress_verified()
        except ChunkCorruptError as err:
            raise ChunkCorruptError(_nested(f"In {self.name} at byte {self.manifest.chunks[index].file_offset}",
                                            err)) from None

    def verify(self, threads: int = 0) -> None:
        """Check every chunk's framing, table entry and SHA-256; raises on the first bad one."""
        threads = threads or min(4, os.cpu_count() or 1)
        window = threads * 2
        with ThreadPoolExecutor(max_workers=threads) as pool:
            pending = []
            for index in range(self.chunk_count):
                pending.append(pool.submit(lambda i: self.verified(i) and None, index))
                if len(pending) >= window:
                    pending.pop(0).result()
            for future in pending:
                future.result()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "ImageReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
