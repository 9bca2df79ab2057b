# Capture a GPT master (EFI vfat, BIOS boot, ext4 root) and restore it onto dirty loop disks.
import filecmp
import os
import re

import pytest

from ansible_collections.fleetcast.imaging.plugins.module_utils._image import capture, restore
from ansible_collections.fleetcast.imaging.plugins.module_utils._image.format import ImageReader, iter_stream

from image_helpers import MASTER_SIZE, extract_ext, fat_path, MiB, SECTOR, part_range, run, sha256_file


@pytest.fixture(scope="module")
def image(master, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("image") / "master.fcimg")
    manifest = capture.capture_to_file([master.device], path, chunk_size=1 * MiB, threads=2)
    return path, manifest


def sgdisk_details(device):
    """Disk GUID, partition table and each partition's type, unique GUID, name and range."""
    text = run("sgdisk", "-p", device).stdout
    details = [re.search(r"Disk identifier \(GUID\): (\S+)", text).group(1)]
    details += [line for line in text.splitlines() if re.match(r"\s+\d+\s+\d+\s+\d+", line)]
    for number in (1, 2, 3):
        info = run("sgdisk", "-i", number, device).stdout
        details += [line for line in info.splitlines() if not line.startswith(("Partition size", "Last sector"))
                    or number != 3]
    return details


def compare_trees(left, right):
    cmp = filecmp.dircmp(left, right)
    pending = [cmp]
    while pending:
        current = pending.pop()
        assert not current.left_only and not current.right_only and not current.funny_files
        dummy, mismatch, errors = filecmp.cmpfiles(current.left, current.right, current.common_files, shallow=False)
        assert not mismatch and not errors, (current.left, mismatch, errors)
        pending.extend(current.subdirs.values())


def test_image_describes_the_master(image, master):
    path, manifest = image
    with ImageReader(path) as reader:
        reader.verify()
        disk = reader.manifest.layout["disks"][0]
    assert disk["table"]["label"] == "gpt" and len(disk["table"]["partitions"]) == 3
    regions = {region["name"]: region for region in disk["regions"]}
    assert regions["partition 1"]["filesystem"] == "vfat" and regions["partition 1"]["map"] == "fat"
    assert regions["partition 3"]["filesystem"] == "ext4" and regions["partition 3"]["map"] == "ext"
    assert regions["partition 2"]["map"] == "all" and regions["boot code"]["length"] == 440
    # Only used bytes are stored: the 64 MiB of zeros and the deleted 8 MiB cost (almost) nothing.
    assert manifest.zero_bytes >= 60 * MiB
    assert manifest.stored_bytes < 40 * MiB
    with open(path, "rb") as handle:
        items = list(iter_stream(handle))
    assert items[-1].image_id == manifest.image_id and len(items) == manifest.chunk_count + 2


def test_restore_onto_a_dirty_disk_gives_the_same_disk(image, master, dirty_disk, tmp_path):
    path, manifest = image
    target = dirty_disk(stride=MiB)
    report = restore.restore_image(path, [target.device])
    assert report["changed"] and report["image_id"] == manifest.image_id
    assert report["chunks_written"] == manifest.chunk_count
    assert sgdisk_details(target.device) == sgdisk_details(master.device)
    for number in (1, 3):
        window = target.window(*part_range(number))
        run("fsck.vfat", "-n", window) if number == 1 else run("e2fsck", "-fn", window)
    # The root tree, file by file (extracted without mounting); the zeros read as zeros.
    left = extract_ext(master.window(*part_range(3)), tmp_path / "m")
    right = extract_ext(target.window(*part_range(3)), tmp_path / "t")
    compare_trees(left, right)
    assert len(list((right / "usr").rglob("file*"))) == 3000 and os.readlink(right / "link") == "usr/d1/file1"
    with open(right / "zeros.bin", "rb") as handle:
        assert all(block == bytes(len(block)) for block in iter(lambda: handle.read(4 * MiB), b""))
    assert os.path.getsize(right / "zeros.bin") == 64 * MiB
    # The EFI tree through mtools; the BIOS boot partition, boot code and gap byte for byte.
    efi_master, efi_target = tmp_path / "efi_m", tmp_path / "efi_t"
    for disk, out in ((master, efi_master), (target, efi_target)):
        out.mkdir()
        run("mcopy", "-s", "-n", "-i", fat_path(disk), "::/*", out)
    compare_trees(efi_master, efi_target)
    with open(master.device, "rb") as mine, open(target.device, "rb") as theirs:
        for offset, length in [(0, 440), (34 * SECTOR, 2014 * SECTOR), part_range(2)]:
            mine.seek(offset)
            theirs.seek(offset)
            assert mine.read(length) == theirs.read(length), offset
        # Every chunk's range matches the master byte for byte (used data of every partition).
        for entry in manifest.chunks:
            mine.seek(entry.offset)
            theirs.seek(entry.offset)
            assert mine.read(entry.length) == theirs.read(entry.length), entry.index


def test_second_restore_is_unchanged_and_reads_only(image, dirty_disk):
    path, manifest = image
    target = dirty_disk()
    restore.restore_image(path, [target.device])
    before = os.stat(target.path).st_mtime_ns
    report = restore.restore_image(path, [target.device])
    assert not report["changed"] and report["chunks_written"] == 0
    assert report["plan"]["targets"][0]["state"] == "unchanged"
    assert os.stat(target.path).st_mtime_ns == before


def test_restore_onto_a_larger_disk_grows_the_last_partition_and_its_ext4(image, dirty_disk, tmp_path):
    path = image[0]
    size = MASTER_SIZE + 96 * MiB
    target = dirty_disk(size=size)
    check = restore.restore_image(path, [target.device], grow_last=True, check_mode=True)
    planned = check["plan"]["targets"][0]
    assert check["changed"] and planned["grow_partition"] == 3 and planned["grow_filesystem"] == "ext4"
    done = restore.restore_image(path, [target.device], grow_last=True)
    last = size // SECTOR - 34
    assert re.search(rf"^\s+3\s+69632\s+{last}\s", run("sgdisk", "-p", target.device).stdout, re.M)
    offset, part_size = part_range(3, size)
    window = target.window(offset, part_size)
    run("e2fsck", "-fn", window)
    header = run("dumpe2fs", "-h", window).stdout
    blocks = int(re.search(r"Block count:\s+(\d+)", header).group(1))
    block_size = int(re.search(r"Block size:\s+(\d+)", header).group(1))
    # resize2fs leaves off a last block group too small to hold its own metadata: under 1 MiB here.
    assert part_size - MiB < blocks * block_size <= part_size
    assert blocks * block_size > part_range(3)[1] + 90 * MiB
    # The grow is recorded: a re-run given the stamp is unchanged and writes nothing.
    before = sha256_file(target.path)
    again = restore.restore_image(path, [target.device], grow_last=True, recorded=done["stamp"])
    assert not again["changed"] and again["chunks_written"] == 0
    assert again["plan"]["targets"][0]["state"] == "unchanged"
    assert sha256_file(target.path) == before
