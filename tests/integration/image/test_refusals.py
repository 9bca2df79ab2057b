# Bad input: one clear error each and not one byte written to the target. Plus the real modules.
import os
import shutil

import pytest
from image_helpers import MASTER_SIZE, MiB, ansible, part_range, run, sha256_file

from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import (
    ChunkCorruptError, ImageError, UnsafeTargetError, ValidationError)
from ansible_collections.fleetcast.imaging.plugins.module_utils._image import capture, restore
from ansible_collections.fleetcast.imaging.plugins.module_utils._lab import loopdisk


@pytest.fixture(scope="module")
def image(master, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("image") / "master.fcimg")
    return path, capture.capture_to_file([master.device], path, threads=2)


@pytest.fixture
def target(dirty_disk):
    return dirty_disk(stride=16 * MiB)


def damaged(image, tmp_path, how):
    path, manifest = image
    copy = tmp_path / "damaged.fcimg"
    shutil.copyfile(path, copy)
    data = bytearray(copy.read_bytes())
    if how == "truncated":
        data = data[:len(data) // 2]
    elif how == "flipped":
        entry = max(manifest.chunks, key=lambda e: e.record_length)
        data[entry.file_offset + entry.record_length // 2] ^= 0x08
    elif how == "version":
        data[8] = 7
    copy.write_bytes(bytes(data))
    return str(copy)


def assert_refused_untouched(device, call, error, pattern):
    before = sha256_file(device)
    with pytest.raises(error, match=pattern) as info:
        call()
    assert sha256_file(device) == before
    message = str(info.value)
    assert message.count(". ") == 0 and message.endswith("."), message   # one sentence
    return message


@pytest.mark.parametrize("how, error, pattern", [
    ("truncated", ImageError, r"is truncated or incomplete: no footer"),
    ("flipped", ChunkCorruptError,
     r"at byte \d+: chunk \d+ \(disk 0, offset \d+\) (failed its SHA-256|cannot be decomp)"),
    ("version", ImageError, r"has format version 7; this collection reads version 1 only"),
])
def test_bad_image_is_refused_before_the_target_is_touched(image, target, tmp_path, how, error, pattern):
    bad = damaged(image, tmp_path, how)
    assert_refused_untouched(target.device, lambda: restore.restore_image(bad, [target.device]), error, pattern)


def test_target_smaller_than_the_image(image, dirty_disk):
    small = dirty_disk(size=MASTER_SIZE - 32 * MiB, stride=16 * MiB)
    message = assert_refused_untouched(small.device, lambda: restore.restore_image(image[0], [small.device]),
                                       ValidationError, "too small")
    assert small.device in message


def test_mounted_target(image, target, tmp_path):
    # A loop device stacked on the target over its root partition, mounted: the target is in use.
    stacked = loopdisk.attach(target.device, *part_range(3))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        run("mkfs.ext4", "-q", stacked)
        run("mount", "-o", "ro", stacked, mnt)
        try:
            assert_refused_untouched(target.device, lambda: restore.restore_image(image[0], [target.device]),
                                     UnsafeTargetError, "mount")
        finally:
            run("umount", mnt)
    finally:
        loopdisk.detach(stacked)


def test_busy_target(image, target):
    # Another program holds the disk exclusively (as mkfs, md or LVM do): refused before the wipe.
    holder = os.open(target.device, os.O_RDONLY | os.O_EXCL)
    try:
        for check_mode in (True, False):
            message = assert_refused_untouched(
                target.device, lambda: restore.restore_image(image[0], [target.device], check_mode=check_mode),
                UnsafeTargetError, "is busy")
            assert message == (f"Target {target.device} is busy: the kernel reports it mounted or claimed by "
                               "another program.")
    finally:
        os.close(holder)


def test_nonexistent_device_and_wrong_target_count(image, target):
    with pytest.raises(ValidationError, match="Target /dev/fleetcast-nonexistent does not exist"):
        restore.restore_image(image[0], ["/dev/fleetcast-nonexistent"])
    assert_refused_untouched(target.device, lambda: restore.restore_image(image[0], [target.device, "/dev/null"]),
                             ValidationError, "The image holds 1 disk.* but 2 target")


def test_modules_capture_info_and_check_mode_restore(master, target, tmp_path):
    dest = str(tmp_path / "m.fcimg")
    nowhere = tmp_path / "nodir" / "m.fcimg"
    head, failed = ansible("image_capture", {"disks": [master.device], "dest": str(nowhere)}, check=True)
    assert "FAILED" in head and failed["msg"] == (
        f"Image {nowhere} cannot be written: directory {nowhere.parent} does not exist.")
    head, planned = ansible("image_capture", {"disks": [master.device], "dest": dest}, check=True)
    assert "CHANGED" in head and not os.path.exists(dest) and not os.path.exists(dest + ".partial")
    regions = {r["name"]: r for r in planned["plan"]["disks"][0]["regions"]}
    assert regions["partition 3"]["map"] == "ext" and planned["plan"]["used_bytes"] > 64 * MiB
    head, result = ansible("image_capture", {"disks": [master.device], "dest": dest, "chunk_size_mib": 2})
    assert "CHANGED" in head and oct(os.stat(dest).st_mode & 0o777) == "0o600"
    assert result["image"]["disks"][0]["label"] == "gpt"
    head, again = ansible("image_capture", {"disks": [master.device], "dest": dest})
    assert "SUCCESS" in head and again["image"]["image_id"] == result["image"]["image_id"]
    head, info = ansible("image_info", {"image": dest, "verify": True})
    assert info["image"]["verified"] and info["image"]["chunk_count"] == result["image"]["chunk_count"]
    parts = info["image"]["disks"][0]["partitions"]
    assert [p["filesystem"] for p in parts] == ["vfat", None, "ext4"] and parts[1]["name"] == "BIOS boot"

    before = sha256_file(target.device)
    head, plan = ansible("image_restore", {"image": dest, "targets": [target.device]}, check=True)
    assert "CHANGED" in head and plan["chunks_written"] == 0
    planned = plan["plan"]["targets"][0]
    assert planned["state"] == "restore" and [p["number"] for p in planned["partitions"]] == [1, 2, 3]
    assert "partition table: gpt" in planned["wipe"] and any("ext2" in line for line in planned["wipe"])
    assert sha256_file(target.device) == before

    head, failed = ansible("image_restore", {"image": dest, "targets": ["/dev/fleetcast-nonexistent"]})
    assert "FAILED" in head and failed["msg"] == (
        "Target /dev/fleetcast-nonexistent does not exist or cannot be read: No such file or directory.")
