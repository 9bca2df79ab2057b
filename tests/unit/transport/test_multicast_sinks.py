# The bridge's sinks without a network: objects are handed to them as the receiver's writer thread
# would, the receive is cut off, the output damaged, and a second receive of the same image resumes.
import os
import random

import pytest

from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import ImageError
from ansible_collections.fleetcast.imaging.plugins.module_utils._image import capture
from ansible_collections.fleetcast.imaging.plugins.module_utils._image.format import (
    ImageReader, canonical_json, header_bytes)
from ansible_collections.fleetcast.imaging.plugins.module_utils._multicast import session, sinks

KiB = 1024


@pytest.fixture
def image(tmp_path):
    """An image of a raw file whose chunks compress to very different sizes."""
    raw = tmp_path / "master.raw"
    rng = random.Random(7)
    with open(raw, "wb") as out:
        for number in range(40):
            block = (rng.randbytes(64 * KiB) if number % 3 == 0 else
                     (b"text %d " % number) * (64 * KiB // 8) if number % 3 == 1 else bytes(64 * KiB))
            out.write(block[:64 * KiB].ljust(64 * KiB, b"\0"))
    path = tmp_path / "master.fcimg"
    manifest = capture.capture_to_file([str(raw)], str(path), chunk_size=64 * KiB)
    reader = ImageReader(str(path))
    objects = [canonical_json(manifest.layout)] + [reader.record_bytes(i) for i in range(manifest.chunk_count)]
    reader.close()
    return manifest, objects


def _receive(sink, manifest, objects, order):
    """What the receiver does: the announced id (resume hook), object 0, the rest, then finish."""
    announced = bytes.fromhex(manifest.image_id)
    held = sink.held(announced)
    sink(0, objects[0])
    for index in order:
        if index not in held:            # the receiver counts held objects as delivered
            sink(index, objects[index])
    return held


def test_file_receive_resumes_up_to_the_first_damaged_record(tmp_path, image):
    manifest, objects = image
    count = len(objects) - 1
    dest = str(tmp_path / "copy.fcimg")
    first = sinks.FileSink(dest, 0o600, "r1", resume=True)
    first.look_for_resume()
    order = list(range(1, count + 1))
    random.Random(3).shuffle(order)
    _receive(first, manifest, objects, order[:30])
    first.pipeline.drain()                # 30 chunks written (in whatever order the threads took)
    first.abort()                         # then cut off: .partial and journal stay
    assert os.path.exists(dest + ".partial") and os.path.exists(dest + ".partial.journal")
    # damage the 21st record written: it and everything after it must come again
    entries = sorted(sinks.Journal(dest + ".partial.journal").load()["entries"].values(),
                     key=lambda entry: entry.file_offset)
    with open(dest + ".partial", "r+b") as handle:
        last = entries[20].file_offset + entries[20].record_length - 1
        handle.seek(last)
        damaged = bytes([handle.read(1)[0] ^ 0xFF])
        handle.seek(last)
        handle.write(damaged)
    second = sinks.FileSink(dest, 0o600, "r1", resume=True)
    second.look_for_resume()
    held = _receive(second, manifest, objects, order)
    assert sorted(held) == sorted(entry.index + 1 for entry in entries[:20])
    assert second.finish(bytes.fromhex(manifest.image_id)).hex() == manifest.image_id
    assert second.resumed == 20 and second.chunks == count - 20
    with ImageReader(dest) as reader:
        reader.verify()
        assert reader.manifest.image_id == manifest.image_id
    assert not os.path.exists(dest + ".partial") and not os.path.exists(dest + ".partial.journal")


def test_no_resume_for_another_image_or_without_a_journal(tmp_path, image):
    manifest, objects = image
    dest = str(tmp_path / "copy.fcimg")
    first = sinks.FileSink(dest, 0o600, "r1", resume=True)
    first.look_for_resume()
    _receive(first, manifest, objects, range(1, 11))
    first.pipeline.drain()
    first.abort()
    other = sinks.FileSink(dest, 0o600, "r1", resume=True)
    other.look_for_resume()
    assert other.held(bytes(32)) == []          # another image id: start over
    other(0, objects[0])
    other.abort()
    assert os.path.getsize(dest + ".partial") == len(header_bytes(manifest.layout))
    plain = sinks.FileSink(dest, 0o600, "r1", resume=False)
    plain.look_for_resume()
    assert plain.held(bytes.fromhex(manifest.image_id)) == []


def test_a_cut_journal_line_is_ignored(tmp_path, image):
    manifest, objects = image
    dest = str(tmp_path / "copy.fcimg")
    first = sinks.FileSink(dest, 0o600, "r1", resume=True)
    first.look_for_resume()
    _receive(first, manifest, objects, range(1, 6))
    first.pipeline.drain()
    first.abort()
    with open(dest + ".partial.journal", "a", encoding="utf-8") as journal:
        journal.write('[6, 0, 327')              # the process died in the middle of a line
    loaded = sinks.Journal(dest + ".partial.journal").load()
    assert sorted(loaded["entries"]) == [0, 1, 2, 3, 4]


def test_the_library_check_names_the_debian_package(monkeypatch):
    from ansible_collections.fleetcast.imaging.plugins.module_utils._image import format as image_format
    assert session.missing_library() is None
    monkeypatch.setattr(image_format, "ZSTD_IMPORT_ERROR", "Traceback: no zstandard")
    assert session.missing_library() == ("zstandard (apt: python3-zstandard)", "Traceback: no zstandard")


def test_a_finish_with_another_image_id_keeps_the_partial(tmp_path, image):
    manifest, objects = image
    dest = str(tmp_path / "copy.fcimg")
    sink = sinks.FileSink(dest, 0o600, "r1", resume=True)
    sink.look_for_resume()
    _receive(sink, manifest, objects, range(1, len(objects)))
    with pytest.raises(ImageError, match="not the announced"):
        sink.finish(bytes(32))
    assert os.path.exists(dest + ".partial") and not os.path.exists(dest)
