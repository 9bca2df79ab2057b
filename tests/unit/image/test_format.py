# Image file format: records, writer, random-access and streaming readers, and their errors.
import io
import os
import re

import pytest

from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import ChunkCorruptError, ImageError
from ansible_collections.fleetcast.imaging.plugins.module_utils._image import format as fmt

LAYOUT = {"format": "fleetcast-image", "disks": [{"size": 1 << 20, "sector_size": 512, "label": "none"}]}


def _extents():
    rng = os.urandom
    return [(0, 0, rng(4096)), (0, 65536, bytes(8192)), (0, 131072, b"text " * 3000), (0, 500000, rng(1000))]


def _write_image(path, extents=None, order=None):
    extents = extents or _extents()
    records = [fmt.ChunkRecord.from_raw(i, disk, offset, raw) for i, (disk, offset, raw) in enumerate(extents)]
    with open(path, "wb") as handle:
        writer = fmt.ImageWriter(handle, LAYOUT)
        for i in order or range(len(records)):
            writer.add(records[i])
        manifest = writer.close()
    return manifest, records


def test_record_round_trip_and_strict_framing():
    raw = b"hello world" * 100
    record = fmt.ChunkRecord.from_raw(7, 1, 4096, raw)
    assert record.kind == "data" and len(record.payload) < len(raw)
    again = fmt.ChunkRecord.from_bytes(record.to_bytes())
    assert again == record and again.decompress_verified() == raw
    with pytest.raises(ImageError, match="(?i)chunk 7 .*framed wrongly"):
        fmt.ChunkRecord.from_bytes(record.to_bytes() + b"x")
    with pytest.raises(ImageError, match="truncated"):
        fmt.ChunkRecord.from_bytes(record.to_bytes()[:20])


def test_zero_record_has_no_payload_and_the_digest_of_zeros():
    record = fmt.ChunkRecord.from_raw(0, 0, 0, bytes(3000))
    assert record.kind == "zero" and record.payload == b""
    assert fmt.ChunkRecord.from_bytes(record.to_bytes()).decompress_verified() == bytes(3000)


def test_flipped_payload_bit_names_the_chunk():
    record = fmt.ChunkRecord.from_raw(3, 0, 8192, os.urandom(5000))
    raw = bytearray(record.to_bytes())
    raw[-10] ^= 0x04
    with pytest.raises(ChunkCorruptError, match=r"(?i)chunk 3 \(disk 0, offset 8192\)"):
        fmt.ChunkRecord.from_bytes(bytes(raw)).decompress_verified()
    raw = bytearray(record.to_bytes())
    raw[20] ^= 0x01   # inside the header: the CRC catches it before anything trusts the offset
    with pytest.raises(ChunkCorruptError, match="header of chunk record"):
        fmt.ChunkRecord.from_bytes(bytes(raw))


def test_random_access_reader_sees_every_chunk_in_any_write_order(tmp_path):
    path = tmp_path / "a.fcimg"
    manifest, records = _write_image(path, order=[2, 0, 3, 1])
    with fmt.ImageReader(str(path)) as reader:
        assert reader.chunk_count == 4 and reader.manifest.image_id == manifest.image_id
        assert reader.manifest.layout == LAYOUT
        for record in records:
            got, raw = reader.verified(record.index)
            assert got == record and raw == record.decompress_verified()
        reader.verify()
        assert reader.manifest.zero_bytes == 8192
        assert reader.manifest.stored_bytes == sum(len(r.to_bytes()) for r in records)


def test_image_id_depends_on_content_not_on_write_order(tmp_path):
    extents = _extents()
    first, dummy = _write_image(tmp_path / "a", extents, order=[0, 1, 2, 3])
    second, dummy = _write_image(tmp_path / "b", extents, order=[3, 2, 1, 0])
    assert first.image_id == second.image_id
    changed = list(extents)
    changed[1] = (0, 65536 + 512, bytes(8192))
    third, dummy = _write_image(tmp_path / "c", changed)
    assert third.image_id != first.image_id


def test_stream_reader_yields_layout_records_manifest(tmp_path):
    path = tmp_path / "a.fcimg"
    manifest, records = _write_image(path, order=[1, 0, 3, 2])
    with open(path, "rb") as handle:
        items = list(fmt.iter_stream(handle))
    assert items[0] == LAYOUT
    assert [r.index for r in items[1:-1]] == [1, 0, 3, 2]
    assert items[-1].image_id == manifest.image_id


def test_writer_works_on_a_pipe_like_stream():
    class Pipe(io.RawIOBase):
        def __init__(self):
            self.data = bytearray()

        def writable(self):
            return True

        def write(self, b):
            take = min(len(b), 1000)   # short writes, like a pipe
            self.data += bytes(b[:take])
            return take
    pipe = Pipe()
    writer = fmt.ImageWriter(pipe, LAYOUT)
    writer.add(fmt.ChunkRecord.from_raw(0, 0, 0, os.urandom(10000)))
    manifest = writer.close()
    items = list(fmt.iter_stream(io.BytesIO(bytes(pipe.data))))
    assert items[-1].image_id == manifest.image_id and len(items) == 3


def test_writer_refuses_gaps_and_duplicates(tmp_path):
    writer = fmt.ImageWriter(io.BytesIO(), LAYOUT)
    writer.add(fmt.ChunkRecord.from_raw(1, 0, 0, b"x"))
    with pytest.raises(ImageError, match="twice"):
        writer.add(fmt.ChunkRecord.from_raw(1, 0, 0, b"x"))
    with pytest.raises(ImageError, match="chunk 0 of 1 is missing"):
        writer.close()


@pytest.mark.parametrize("cut", [0, 10, 200, -1, -70])
def test_truncated_file_is_refused_by_both_readers(tmp_path, cut):
    path = tmp_path / "a.fcimg"
    _write_image(path)
    data = path.read_bytes()
    path.write_bytes(data[:cut] if cut >= 0 else data[:len(data) + cut])
    # Every message names the image file, also when the cut falls inside the header.
    with pytest.raises(ImageError, match=f"^Image {re.escape(str(path))} is truncated"):
        fmt.ImageReader(str(path))
    with pytest.raises(ImageError, match="truncated|corrupt"), open(path, "rb") as handle:
        list(fmt.iter_stream(handle))


def test_unknown_version_is_named(tmp_path):
    path = tmp_path / "Master-A.fcimg"
    _write_image(path)
    data = bytearray(path.read_bytes())
    data[8] = 9   # header version field
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match=re.escape(f"Image {path} has format version 9; this collection reads "
                                                   "version 1 only.")):
        fmt.ImageReader(str(path))
    with pytest.raises(ImageError, match="format version 9"), open(path, "rb") as handle:
        next(fmt.iter_stream(handle))


def test_flipped_bit_in_a_file_is_found_by_verify(tmp_path):
    path = tmp_path / "a.fcimg"
    manifest, dummy = _write_image(path)
    entry = manifest.chunks[2]
    data = bytearray(path.read_bytes())
    data[entry.file_offset + entry.record_length - 5] ^= 0x10
    path.write_bytes(bytes(data))
    with fmt.ImageReader(str(path)) as reader:
        reader.verified(0)
        with pytest.raises(ChunkCorruptError, match=rf"byte {entry.file_offset}: chunk 2 \(disk 0, offset 131072\)"):
            reader.verify()


def test_not_an_image(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"\0" * 4096)
    with pytest.raises(ImageError, match=f"^Image {re.escape(str(path))} is not a fleetcast image"):
        fmt.ImageReader(str(path))
    with pytest.raises(ImageError, match="cannot be opened"):
        fmt.ImageReader(str(tmp_path / "missing"))
    with pytest.raises(ImageError, match=f"^Image {tmp_path} cannot be read: Is a directory.$"):
        fmt.ImageReader(str(tmp_path))
