# Capture and restore of raw disk-image files (MBR) and single volumes, through regular files only.
import io
import json
import os
import random
import subprocess

import pytest

from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import ImageError, ValidationError
from ansible_collections.fleetcast.imaging.plugins.module_utils._image import capture, format as fmt, restore

MiB = 1 << 20
ENV = dict(os.environ, LC_ALL="C")


def run(*argv, stdin=None):
    return subprocess.run([str(a) for a in argv], input=stdin, check=True, capture_output=True, text=True,
                          env=ENV).stdout


@pytest.fixture
def mbr_disk(tmp_path):
    """A 64 MiB raw disk-image file: MBR with boot code, an ext4 (files) and a raw partition."""
    tree = tmp_path / "tree"
    for i in range(200):
        (tree / f"d{i % 5}").mkdir(parents=True, exist_ok=True)
        (tree / f"d{i % 5}" / f"f{i}").write_bytes(os.urandom(i * 37 + 1))
    path = tmp_path / "disk.raw"
    with open(path, "wb") as handle:
        handle.truncate(64 * MiB)
    run("sfdisk", "-q", path, stdin="label: dos\nlabel-id: 0x1234abcd\nstart=2048, size=40960, type=83\n"
                                    "start=43008, size=20480, type=da\n")
    run("mkfs.ext4", "-q", "-F", "-E", f"offset={2048 * 512}", "-d", tree, path, "20M")
    with open(path, "r+b") as handle:
        handle.write(os.urandom(440))
        handle.seek(43008 * 512)
        handle.write(os.urandom(3 * MiB) + bytes(4 * MiB) + b"tail" * 1000)
        handle.seek(63488 * 512 + 5000)          # a boot loader's bytes after the last partition
        handle.write(os.urandom(3000))
    return path


def read(path, offset, length):
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read(length)


def test_raw_disk_file_round_trip_onto_a_dirty_file(mbr_disk, tmp_path):
    image = str(tmp_path / "disk.fcimg")
    manifest = capture.capture_to_file([str(mbr_disk)], image, chunk_size=MiB, threads=2)
    disk = manifest.layout["disks"][0]
    assert disk["table"]["label"] == "msdos" and disk["table"]["guid"].lower() == "0x1234abcd"
    assert [(r["name"], r["map"]) for r in disk["regions"]] == [
        ("boot code", "all"), ("gap before the first partition", "all"), ("gap after partition 2", "all"),
        ("partition 1", "ext"), ("partition 2", "all")]
    target = tmp_path / "target.raw"
    target.write_bytes(os.urandom(72 * MiB))
    report = restore.restore_image(image, [str(target)])
    assert report["changed"] and report["chunks_written"] == manifest.chunk_count
    table = run("sfdisk", "-d", target).replace(str(target), "X")
    assert table == run("sfdisk", "-d", mbr_disk).replace(str(mbr_disk), "X") and "0x1234abcd" in table
    assert read(target, 0, 440) == read(mbr_disk, 0, 440)
    assert read(target, 43008 * 512, 10 * MiB) == read(mbr_disk, 43008 * 512, 10 * MiB)
    # the gap after the last partition: its random bytes back, the rest of it zero (as on the master)
    assert read(target, 63488 * 512, 64 * MiB - 63488 * 512) == read(mbr_disk, 63488 * 512, 64 * MiB - 63488 * 512)
    ext = tmp_path / "ext.img"
    ext.write_bytes(read(target, 2048 * 512, 20 * MiB))
    run("e2fsck", "-fn", ext)
    out = tmp_path / "out"
    out.mkdir()
    run("debugfs", "-R", f"rdump /d3 {out}", ext)
    assert (out / "d3" / "f8").read_bytes() == (tmp_path / "tree" / "d3" / "f8").read_bytes()
    again = restore.restore_image(image, [str(target)])
    assert not again["changed"] and again["plan"]["targets"][0]["state"] == "unchanged"


def test_single_volume_capture_and_restore_onto_a_larger_file(tmp_path):
    volume = tmp_path / "vol.raw"
    volume.write_bytes(os.urandom(MiB) + bytes(5 * MiB) + os.urandom(1000))
    image = str(tmp_path / "vol.fcimg")
    manifest = capture.capture_to_file([capture.CaptureSource(str(volume), "partition")], image, chunk_size=MiB)
    assert [e.kind for e in manifest.chunks] == ["data"] + ["zero"] * 5 + ["data"]
    target = tmp_path / "t.raw"
    target.write_bytes(os.urandom(8 * MiB))
    restore.restore_image(image, [str(target)])
    assert read(target, 0, volume.stat().st_size) == volume.read_bytes()
    small = tmp_path / "small.raw"
    small.write_bytes(os.urandom(2 * MiB))
    with pytest.raises(ValidationError, match=f"Target {small} is too small: 2097152 bytes"):
        restore.restore_image(image, [str(small)])


def test_destination_that_cannot_be_written_is_one_sentence_and_leaves_nothing(tmp_path):
    volume = tmp_path / "vol.raw"
    volume.write_bytes(os.urandom(MiB))
    source = [capture.CaptureSource(str(volume), "partition")]
    missing = tmp_path / "no-such-dir" / "vol.fcimg"
    with pytest.raises(ValidationError, match=f"^Image {missing} cannot be written: directory "
                                              f"{missing.parent} does not exist.$"):
        capture.capture_to_file(source, str(missing))
    with pytest.raises(ValidationError, match=f"^Image {tmp_path} cannot be written: it is a directory.$"):
        capture.check_destination(str(tmp_path))
    # A name the directory cannot hold: the open fails, and the error still names the image.
    too_long = tmp_path / ("x" * 300)
    with pytest.raises(ValidationError, match=f"^Image {too_long} cannot be written: File name too long.$"):
        capture.capture_to_file(source, str(too_long))
    assert sorted(os.listdir(tmp_path)) == ["vol.raw"]


def test_grow_a_last_logical_partition_and_its_ext4(tmp_path):
    """msdos: the last partition is a logical one ending with its extended partition; both grow and
    so does the ext4 inside."""
    disk, target = tmp_path / "mbr.raw", tmp_path / "big.raw"
    for path, size in ((disk, 32 * MiB), (target, 64 * MiB)):
        with open(path, "wb") as handle:
            handle.truncate(size)
    run("sfdisk", "-q", disk, stdin="label: dos\nstart=2048, size=8192, type=83\nstart=10240, type=5\n"
                                    "start=12288, type=83\n")
    run("mkfs.ext4", "-q", "-F", "-b", "1024", "-E", f"offset={12288 * 512}", disk, f"{(65536 - 12288) // 2}k")
    image = str(tmp_path / "mbr.fcimg")
    capture.capture_to_file([str(disk)], image, chunk_size=MiB)
    report = restore.restore_image(image, [str(target)], grow_last=True)
    planned = report["plan"]["targets"][0]
    assert (planned["grow_partition"], planned["grow_filesystem"]) == (5, "ext4")
    last = 64 * MiB // 512 - 1
    dump = run("sfdisk", "-d", target)
    assert f"start=       10240, size={last - 10240 + 1:>12}, type=5" in dump
    assert f"start=       12288, size={last - 12288 + 1:>12}, type=83" in dump
    superblock = read(target, 12288 * 512 + 1024, 32)
    blocks = int.from_bytes(superblock[4:8], "little")
    assert blocks == (last - 12288 + 1) // 2   # 1 KiB blocks fill the grown partition
    volume = tmp_path / "p5.raw"
    volume.write_bytes(read(target, 12288 * 512, (last - 12288 + 1) * 512))
    run("e2fsck", "-fn", volume)


def test_capture_streams_and_a_receiver_restores_in_any_order(mbr_disk, tmp_path):
    layout, records = capture.capture([str(mbr_disk)], chunk_size=MiB, threads=2)
    json.dumps(layout)   # object 0 on the wire: plain JSON
    first = next(records)
    assert first.index == 0 and first.offset == 0 and first.length == 440
    received = [first] + list(records)
    buffer = io.BytesIO()
    writer = fmt.ImageWriter(buffer, layout)
    for record in received:
        writer.add(record)
    manifest = writer.close()
    target = tmp_path / "target.raw"
    target.write_bytes(os.urandom(64 * MiB))
    session = restore.RestoreSession(layout, [str(target)])
    session.validate()
    session.prepare()
    shuffled = [fmt.ChunkRecord.from_bytes(r.to_bytes()) for r in received]
    random.Random(7).shuffle(shuffled)
    try:
        for record in shuffled:
            assert session.write(record)
        assert not session.write(shuffled[0])   # a resend is skipped
        assert session.written_image_id() == manifest.image_id
        result = session.finish(manifest)
    finally:
        session.abort()
    assert result.chunks_written == manifest.chunk_count
    assert read(target, 43008 * 512, 10 * MiB) == read(mbr_disk, 43008 * 512, 10 * MiB)
    # the gap after the last partition: its random bytes back, the rest of it zero (as on the master)
    assert read(target, 63488 * 512, 64 * MiB - 63488 * 512) == read(mbr_disk, 63488 * 512, 64 * MiB - 63488 * 512)


def test_session_refuses_an_incomplete_or_corrupt_stream(mbr_disk, tmp_path):
    layout, records = capture.capture([str(mbr_disk)], chunk_size=MiB)
    records = list(records)
    buffer = io.BytesIO()
    writer = fmt.ImageWriter(buffer, layout)
    for record in records:
        writer.add(record)
    manifest = writer.close()
    target = tmp_path / "target.raw"
    target.write_bytes(bytes(64 * MiB))
    session = restore.RestoreSession(layout, [str(target)])
    session.prepare()
    try:
        bad = records[3]
        tampered = fmt.ChunkRecord(bad.index, bad.disk, bad.offset, bad.length, bad.kind, bytes(32), bad.payload)
        with pytest.raises(ImageError, match=f"(?i)chunk {bad.index} .*failed its SHA-256"):
            session.write(tampered)
        for record in records[:-1]:
            session.write(record)
        with pytest.raises(ImageError, match=f"1 chunk\\(s\\) never arrived, first chunk {records[-1].index}"):
            session.finish(manifest)
    finally:
        session.abort()


def test_check_mode_session_refuses_to_write(mbr_disk, tmp_path):
    layout, _records = capture.capture([str(mbr_disk)])
    target = tmp_path / "t.raw"
    target.write_bytes(bytes(64 * MiB))
    session = restore.RestoreSession(layout, [str(target)], check_mode=True)
    assert session.validate().changed
    with pytest.raises(ValidationError, match="check-mode"):
        session.prepare()


def test_two_disks_go_to_their_own_targets_in_order(mbr_disk, tmp_path):
    second = tmp_path / "second.raw"
    second.write_bytes(os.urandom(2 * MiB) + bytes(MiB))
    image = str(tmp_path / "two.fcimg")
    manifest = capture.capture_to_file([str(mbr_disk), str(second)], image, chunk_size=MiB)
    assert [d["table"]["label"] for d in manifest.layout["disks"]] == ["msdos", "none"]
    first_target, second_target = tmp_path / "t0.raw", tmp_path / "t1.raw"
    first_target.write_bytes(bytes(64 * MiB))
    second_target.write_bytes(os.urandom(3 * MiB))
    with pytest.raises(ValidationError, match="holds 2 disk"):
        restore.restore_image(image, [str(first_target)])
    restore.restore_image(image, [str(first_target), str(second_target)])
    assert second_target.read_bytes() == second.read_bytes()
    assert read(first_target, 43008 * 512, 10 * MiB) == read(mbr_disk, 43008 * 512, 10 * MiB)
    # Only the second target changes: the first, which still holds its disk, is reported unchanged
    # and is not written at all (check mode plans the same).
    with open(second_target, "r+b") as handle:
        handle.write(os.urandom(4096))
    first_before = os.stat(first_target).st_mtime_ns
    targets = [str(first_target), str(second_target)]
    disk1_chunks = sum(1 for entry in manifest.chunks if entry.disk == 1)
    for check_mode in (True, False):
        report = restore.restore_image(image, targets, check_mode=check_mode)
        assert report["changed"] and report["chunks_written"] == (0 if check_mode else disk1_chunks)
        assert [t["state"] for t in report["plan"]["targets"]] == ["unchanged", "restore"]
    assert os.stat(first_target).st_mtime_ns == first_before
    assert second_target.read_bytes() == second.read_bytes()
    assert not restore.restore_image(image, targets)["changed"]
