# safety.claim: the only door to writing a disk. Real loop devices for mounts and O_EXCL, fake
# sysfs trees for the boot medium and holders (a real loop device plays the named disk there).
import os
import subprocess
import time

import pytest

from ansible_collections.fleetcast.imaging.plugins.module_utils._disk import aliases, blockdev, safety
from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import UnsafeTargetError, ValidationError

from disk_helpers import sh

MiB = 1 << 20


def open_target(path, **views):
    """Claim one target and hand back its descriptor (the claim object is dropped, the fd kept)."""
    held = safety.claim([path], **views)[0]
    fd = os.dup(held.fd)
    held.release()
    return fd


def test_regular_file_is_allowed(tmp_path):
    image = tmp_path / "disk.raw"
    image.write_bytes(bytes(4096))
    fd = open_target(str(image))
    try:
        os.pwrite(fd, b"ok", 0)
    finally:
        os.close(fd)
    assert image.read_bytes()[:2] == b"ok"


def test_missing_and_odd_paths_are_refused(tmp_path):
    with pytest.raises(ValidationError, match=f"^Target {tmp_path}/nope does not exist"):
        open_target(str(tmp_path / "nope"))
    with pytest.raises(ValidationError, match="^Target /dev/null is neither a block device nor a regular file.$"):
        open_target("/dev/null")


def test_boot_medium_is_refused_through_its_partitions(loop_disk, fake_host):
    disk = loop_disk(4 * MiB)
    name = os.path.basename(disk.device)
    fake_host.disk(name, partitions=[(1, 2048, 4096)])
    fake_host.mount(f"{name}p1", "/boot")
    with pytest.raises(UnsafeTargetError, match=f"^{fake_host.dev}/{name} is the boot medium of this host "
                                                f"\\(it holds /boot\\).$"):
        open_target(disk.device, **fake_host.views)


def test_held_disk_is_refused(loop_disk, fake_host):
    disk = loop_disk(4 * MiB)
    name = os.path.basename(disk.device)
    fake_host.disk(name)
    fake_host.disk("dm-3", slaves=[name])
    with pytest.raises(UnsafeTargetError, match="is held by dm-3 \\(RAID, LVM or device-mapper\\).$"):
        open_target(disk.device, **fake_host.views)


def test_disk_with_mounted_partition_window_is_refused(loop_disk, tmp_path, other_namespace):
    """Mounted in a private mount namespace (as a live system or another tool would): the disk, the
    window and a sibling window of the same disk are refused, each naming the mount."""
    disk = loop_disk(32 * MiB)
    sh("sgdisk", "-n1:2048:+16M", "-n2:0:0", disk.device)
    mountpoint, ready = tmp_path / "mnt", tmp_path / "ready"
    mountpoint.mkdir()
    with blockdev.partition_path(disk.device, 1) as window:
        sh("mkfs.ext4", "-q", window)
        pid = other_namespace(f"mount {window} {mountpoint} && touch {ready}", str(ready))
        where = f"is mounted at {mountpoint} in the mount namespace of process {pid}.$"
        with pytest.raises(UnsafeTargetError, match=f"^Target {disk.device} is in use: {window} over its bytes {where}"):
            open_target(disk.device)
        with pytest.raises(UnsafeTargetError, match=f"^Target {window} is in use: {window} over its bytes {where}"):
            open_target(window)
        with blockdev.partition_path(disk.device, 2) as sibling:  # another partition of that disk
            with pytest.raises(UnsafeTargetError, match=f"^Target {sibling} is in use: {window} beside it on "
                                                        f"{disk.path} {where}"):
                open_target(sibling)
        subprocess.run(["kill", "-9", str(pid)], check=True)   # its namespace, and the mount, go with it
        deadline = time.monotonic() + 10
        while any(mount.mountpoint == str(mountpoint) for mount in aliases.mounts()):
            assert time.monotonic() < deadline, "the private namespace kept its mount"
            time.sleep(0.1)
    # unmounted and detached: writable again, once the kernel has let go of the file system (it
    # tears it down after the namespace is gone, later on a loaded machine)
    deadline = time.monotonic() + 10
    while True:
        try:
            fd = open_target(disk.device)
            break
        except UnsafeTargetError as err:
            assert "claimed by another program" in str(err) and time.monotonic() < deadline, err
            time.sleep(0.1)
    os.close(fd)


def test_exclusive_user_makes_the_open_fail(loop_disk):
    disk = loop_disk(4 * MiB)
    holder = os.open(disk.device, os.O_RDWR | os.O_EXCL)
    try:
        with pytest.raises(UnsafeTargetError, match=f"^Target {disk.device} is busy"):
            open_target(disk.device)
        # Validation alone (what check mode and every plan run) already finds it busy.
        with pytest.raises(UnsafeTargetError, match=f"^Target {disk.device} is busy: the kernel reports it "
                                                    "mounted or claimed by another program.$"):
            safety.check_target(disk.device)
    finally:
        os.close(holder)
    fd = os.open(disk.device, os.O_RDONLY)
    os.close(fd)
