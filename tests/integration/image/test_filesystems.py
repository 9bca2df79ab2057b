# Every filesystem a fleet has, on one GPT disk: ext4, FAT32, NTFS, XFS and btrfs, each with
# thousands of files, a large file of zeros and deleted files carrying a marker; random bytes in a
# gap between partitions and after the last one. Capture, restore onto a dirty disk, then: every
# filesystem checks clean, every tree reads back identical, the gaps' bytes are back, and no deleted
# file's marker is anywhere in the image's chunks.
import filecmp
import os

import pytest

from ansible_collections.fleetcast.imaging.plugins.module_utils._image import capture, restore
from ansible_collections.fleetcast.imaging.plugins.module_utils._image.format import ImageReader

import fs_volumes
from fs_volumes import FSCK, MiB, marker_for, run

SECTOR = 512
# (number, filesystem, size in MiB, MiB of gap before it): NTFS-XFS keeps a 1 MiB gap between them
PARTS = [(1, "ext4", 64, 0), (2, "vfat", 64, 0), (3, "ntfs", 64, 0), (4, "xfs", 300, 1), (5, "btrfs", 128, 0)]
TAIL_GAP = 2 * MiB
MAPS = {"ext4": "ext", "vfat": "fat", "ntfs": "ntfs", "xfs": "xfs", "btrfs": "btrfs"}


def part_ranges():
    """{number: (offset, size)} in bytes, and the disk size (with the tail gap and the backup GPT)."""
    at, ranges = MiB, {}
    for number, dummy, size, gap in PARTS:
        at += gap * MiB
        ranges[number] = (at, size * MiB)
        at += size * MiB
    return ranges, at + TAIL_GAP + MiB


RANGES, DISK_SIZE = part_ranges()
GAP_BYTES = {RANGES[4][0] - MiB + 4096: os.urandom(20000), RANGES[5][0] + RANGES[5][1] + 512: os.urandom(5000)}


@pytest.fixture(scope="module")
def fleet_disk(tmp_path_factory):
    """The master disk, the tree put on every filesystem, and where things are."""
    from ansible_collections.fleetcast.imaging.plugins.module_utils._lab.loopdisk import LoopDisk

    tmp = tmp_path_factory.mktemp("fleet")
    tree = fs_volumes.make_tree(str(tmp / "tree"), files=2000, zeros_mib=16)
    disk = LoopDisk.create(str(tmp / "fleet.img"), DISK_SIZE)
    try:
        run("sgdisk", "-Z", disk.device)
        args = []
        for number, fs, dummy, dummy2 in PARTS:
            offset, size = RANGES[number]
            code = {"vfat": "ef00", "ntfs": "0700"}.get(fs, "8300")
            args += [f"-n{number}:{offset // SECTOR}:{(offset + size) // SECTOR - 1}", f"-t{number}:{code}"]
        run("sgdisk", *args, disk.device)
        for number, fs, dummy, dummy2 in PARTS:
            fs_volumes.fill(fs, disk.window(*RANGES[number]), tree, str(tmp))
        with open(disk.device, "r+b") as handle:
            for offset, data in GAP_BYTES.items():
                handle.seek(offset)
                handle.write(data)
        run("blockdev", "--flushbufs", disk.device)
        yield disk, tree, tmp
    finally:
        disk.close()


@pytest.fixture(scope="module")
def fleet_image(fleet_disk):
    disk, dummy, tmp = fleet_disk
    path = str(tmp / "fleet.fcimg")
    manifest = capture.capture_to_file([disk.device], path, chunk_size=MiB, threads=2)
    return path, manifest


def test_every_filesystem_is_mapped_and_no_deleted_data_is_carried(fleet_disk, fleet_image):
    disk, dummy, dummy2 = fleet_disk
    path, manifest = fleet_image
    regions = {region["name"]: region for region in manifest.layout["disks"][0]["regions"]}
    for number, fs, size, dummy3 in PARTS:
        region = regions[f"partition {number}"]
        assert (region["filesystem"], region["map"]) == (fs, MAPS[fs]), region
        assert region["used_bytes"] < size * MiB
    assert regions["gap before partition 4"]["length"] == MiB
    assert TAIL_GAP < regions["gap after partition 5"]["length"] < TAIL_GAP + MiB   # up to the backup GPT
    # The markers are on the master (in free blocks) but in no chunk of the image.
    with open(disk.path, "rb") as handle:
        raw = handle.read()
    markers = [marker_for(fs) for dummy, fs, dummy2, dummy3 in PARTS]
    assert all(marker in raw for marker in markers)
    with ImageReader(path) as reader:
        for index in range(reader.chunk_count):
            data = reader.record(index).decompress_verified()
            assert not any(marker in data for marker in markers), index


def test_every_filesystem_comes_back_clean_and_identical(fleet_disk, fleet_image, dirty_disk, tmp_path):
    dummy, tree, dummy2 = fleet_disk
    path, manifest = fleet_image
    target = dirty_disk(size=DISK_SIZE, stride=8 * MiB)
    report = restore.restore_image(path, [target.device])
    assert report["changed"] and report["image_id"] == manifest.image_id
    for number, fs, dummy3, dummy4 in PARTS:
        window = target.window(*RANGES[number])
        run(*FSCK[fs], window)
        out = fs_volumes.dump(fs, window, str(tmp_path / f"out-{fs}"), str(tmp_path))
        assert_same_tree(tree, out)
    with open(target.device, "rb") as handle:
        for offset, data in GAP_BYTES.items():
            handle.seek(offset)
            assert handle.read(len(data)) == data


def assert_same_tree(left, right):
    pending = [filecmp.dircmp(left, right)]
    count = 0
    while pending:
        current = pending.pop()
        assert not current.left_only and not current.right_only, (current.left, current.left_only, current.right_only)
        dummy, mismatch, errors = filecmp.cmpfiles(current.left, current.right, current.common_files, shallow=False)
        assert not mismatch and not errors, (current.left, mismatch, errors)
        count += len(current.common_files)
        pending.extend(current.subdirs.values())
    assert count > 2000
