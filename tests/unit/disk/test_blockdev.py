# zero_range, partition access and re-reading tables, on loop devices and files made here.
import errno
import os

import pytest

from ansible_collections.fleetcast.imaging.plugins.module_utils._disk import blockdev, table
from ansible_collections.fleetcast.imaging.plugins.module_utils._disk import safety
from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import FleetcastError

from disk_helpers import sh

MiB = 1 << 20


def _fill(path, size):
    with open(path, "r+b") as handle:
        handle.write(b"\xa5" * size)


def test_zero_range_on_block_device_with_unaligned_edges(loop_disk):
    disk = loop_disk(8 * MiB)
    _fill(disk.device, 8 * MiB)
    with safety.claim([disk.device]) as claims:
        blockdev.zero_range(claims[0].fd, 1000, 3 * MiB + 77)
    with open(disk.path, "rb") as handle:
        data = handle.read()
    assert data[:1000] == b"\xa5" * 1000
    assert data[1000:1000 + 3 * MiB + 77] == bytes(3 * MiB + 77)
    assert data[1000 + 3 * MiB + 77:] == b"\xa5" * (8 * MiB - 1000 - 3 * MiB - 77)


def test_zero_range_on_regular_file_punches_holes_and_extends(tmp_path):
    path = tmp_path / "image.raw"
    path.write_bytes(b"\x5a" * (4 * MiB))
    fd = os.open(path, os.O_RDWR)
    try:
        blockdev.zero_range(fd, MiB, MiB)
        blockdev.zero_range(fd, 4 * MiB, 2 * MiB)  # past the end: extends with zeros
    finally:
        os.close(fd)
    data = path.read_bytes()
    assert len(data) == 6 * MiB
    assert data[:MiB] == b"\x5a" * MiB and data[MiB:2 * MiB] == bytes(MiB)
    assert data[2 * MiB:4 * MiB] == b"\x5a" * (2 * MiB) and data[4 * MiB:] == bytes(2 * MiB)
    assert os.stat(path).st_blocks * 512 <= 3 * MiB  # the zeroed ranges hold no blocks


def test_device_and_sector_size(loop_disk, tmp_path):
    disk = loop_disk(10 * MiB)
    assert blockdev.device_size(disk.device) == 10 * MiB and blockdev.sector_size(disk.device) == 512
    assert blockdev.device_size(disk.path) == 10 * MiB and blockdev.sector_size(disk.path) == 512


def test_reread_partitions_tolerates_loop_without_partition_support(loop_disk):
    disk = loop_disk(8 * MiB)
    assert blockdev.reread_partitions(disk.device) is False
    assert blockdev.reread_partitions(disk.path) is False


def test_partition_path_falls_back_to_a_loop_window_and_detaches_it(loop_disk):
    disk = loop_disk(32 * MiB)
    sh("sgdisk", "-n1:2048:+4M", "-n2:0:+8M", disk.device)
    with open(disk.device, "r+b") as handle:  # a marker at the first byte of partition 2
        handle.seek(10240 * 512)
        handle.write(b"PARTITION-TWO")
    with blockdev.partition_path(disk.device, 2) as node:
        assert node.startswith("/dev/loop") and node != disk.device
        assert blockdev.device_size(node) == 8 * MiB
        with open(node, "rb") as handle:
            assert handle.read(13) == b"PARTITION-TWO"
    assert node not in sh("losetup", "-a")
    part = table.read_layout(disk.path).partitions[0]
    with pytest.raises(RuntimeError), blockdev.partition_path(disk.path, part, read_only=True) as node:
        assert blockdev.device_size(node) == 4 * MiB
        with open(f"/sys/block/{os.path.basename(node)}/ro", encoding="ascii") as handle:
            assert handle.read().strip() == "1"
        raise RuntimeError("the window must be detached on errors too")
    assert node not in sh("losetup", "-a")


def test_partition_path_uses_the_kernel_node_when_it_matches(fake_host):
    fake_host.disk("sda", partitions=[(1, 2048, 8192), (2, 10240, 16384)])
    part = table.PartitionLayout(number=2, start=10240, end=10240 + 16384 - 1)
    node = blockdev.partition_node("/dev/sda", 2, 10240 * 512, 16384 * 512, fake_host.sysfs, fake_host.dev)
    assert node == os.path.join(fake_host.dev, "sda2")
    with blockdev.partition_path("/dev/sda", part, sysfs=fake_host.sysfs, dev=fake_host.dev) as path:
        assert path == os.path.join(fake_host.dev, "sda2")
    # a stale node (the kernel still has the old table) is not used
    assert blockdev.partition_node("/dev/sda", 2, 12288 * 512, 16384 * 512, fake_host.sysfs, fake_host.dev) is None


def test_partition_path_names_a_missing_partition(loop_disk):
    disk = loop_disk(8 * MiB)
    sh("sgdisk", "-n1:2048:0", disk.device)
    with pytest.raises(Exception, match=f"^{disk.device} has no partition 3.$"):
        with blockdev.partition_path(disk.device, 3):
            pass


def _busy_ioctl(monkeypatch, busy_times):
    """BLKRRPART busy `busy_times` times, then done; sleeps and udev recorded, not waited for."""
    calls = {"ioctl": 0, "slept": []}

    def ioctl(fd, request, *args):
        if request == blockdev.BLKRRPART:
            calls["ioctl"] += 1
            if calls["ioctl"] <= busy_times:
                raise OSError(errno.EBUSY, "Device or resource busy")
            return 0
        raise AssertionError(f"unexpected ioctl {request:#x}")

    monkeypatch.setattr(blockdev.fcntl, "ioctl", ioctl)
    monkeypatch.setattr(blockdev, "is_block_device", lambda fd: True)
    monkeypatch.setattr(blockdev.time, "sleep", calls["slept"].append)
    monkeypatch.setattr(blockdev, "_settle", lambda: None)
    return calls


def test_reread_partitions_waits_out_a_moment_of_busy(monkeypatch, tmp_path):
    # udev's blkid holds a partition open for a moment after an unmount: the re-read is retried
    target = tmp_path / "disk"
    target.write_bytes(bytes(4096))
    calls = _busy_ioctl(monkeypatch, busy_times=2)
    assert blockdev.reread_partitions(str(target)) is True
    assert calls["ioctl"] == 3 and calls["slept"] == list(blockdev.REREAD_PAUSES[:2])


def test_reread_partitions_that_stay_busy_fail_with_one_sentence(monkeypatch, tmp_path):
    target = tmp_path / "disk"
    target.write_bytes(bytes(4096))
    calls = _busy_ioctl(monkeypatch, busy_times=100)
    with pytest.raises(FleetcastError, match=f"^The kernel cannot re-read the partition table of {target} "
                                             r"because one of its partitions is in use\.$"):
        blockdev.reread_partitions(str(target))
    assert calls["ioctl"] == len(blockdev.REREAD_PAUSES) + 1
