"""fs_check checks every file system of a disk through offset loop devices, and reports a damaged
one naming the disk, partition and file system."""
import subprocess

import pytest

from ansible_collections.fleetcast.imaging.plugins.modules import fs_check

MiB = 1024 * 1024


@pytest.mark.timeout(60)
def test_clean_then_damaged_ext4_is_reported(loop_disk):
    disk = loop_disk(96 * MiB, "fsck.img")
    subprocess.run(["sgdisk", "-o", "-n", "1:2048:+32M", "-t", "1:ef00", "-n", "2:0:0", "-t", "2:8304",
                    disk.device], check=True, capture_output=True)
    efi = disk.window(2048 * 512, 32 * MiB)
    root = disk.window((2048 + 65536) * 512, 96 * MiB - (2048 + 65536) * 512 - 34 * 512)
    subprocess.run(["mkfs.vfat", "-I", efi], check=True, capture_output=True)
    subprocess.run(["mkfs.ext4", "-F", "-q", root], check=True, capture_output=True)

    checked, skipped = fs_check.check_disk(disk.device)
    assert [(c["partition"], c["filesystem"], c["clean"]) for c in checked] == [(1, "vfat", True), (2, "ext4", True)]
    assert skipped == []

    # Clear the root directory's inode: a real inconsistency e2fsck -n must report.
    subprocess.run(["debugfs", "-w", "-R", "clri <2>", root], check=True, capture_output=True)
    checked, dummy = fs_check.check_disk(disk.device)
    assert [(c["partition"], c["clean"]) for c in checked] == [(1, True), (2, False)]
    assert checked[1]["output"]
