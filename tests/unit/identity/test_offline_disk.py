"""device + partition: the modules' engine finds and mounts the root on a partitioned disk itself."""
import os
import subprocess

import pytest

from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import IdentityError
from ansible_collections.fleetcast.imaging.plugins.module_utils._identity import api

from identity_trees import build_linux_root, build_windows_root, clear_tree, fake_sysfs, host, snapshot_tree

MiB = 1 << 20
ESP, ROOT, WIN = (1 * MiB, 8 * MiB), (9 * MiB, 24 * MiB), (33 * MiB, 14 * MiB)


def _run(*argv):
    subprocess.run(argv, check=True, capture_output=True)


def _with_mounted(node, mnt, action, fuse=False):
    _run(*(["ntfs-3g", node, mnt] if fuse else ["mount", node, mnt]))
    try:
        return action(mnt)
    finally:
        _run("umount", mnt)


def test_partitioned_disk_root_found_snapshotted_and_applied(loop_disk, tmp_path):
    disk = loop_disk(48 * MiB, "gpt.img")
    _run("sgdisk", "-n1:2048:+8M", "-t1:ef00", "-n2:0:+24M", "-t2:8300", "-n3:0:+14M", "-t3:0700", disk.path)
    esp, root, win = (disk.window(offset, size) for offset, size in (ESP, ROOT, WIN))
    _run("mkfs.vfat", "-I", esp)
    _run("mkfs.ext4", "-q", "-F", root)
    _run("mkfs.ntfs", "-F", "-Q", win)
    spec, master = host("hosta", 7), host("master", 9)
    sysfs = fake_sysfs(str(tmp_path / "sys"), spec)
    mnt = str(tmp_path / "mnt")
    os.makedirs(mnt)
    original = _with_mounted(root, mnt, lambda path: (build_linux_root(path, spec, str(tmp_path)),
                                                      snapshot_tree(path))[1])
    _with_mounted(win, mnt, lambda path: build_windows_root(path, spec, "S-1-5-21-1-2-7"), fuse=True)

    record = api.snapshot("hosta", device=disk.device, sysfs=sysfs)      # finds partition 2 itself
    assert record.os == "linux" and record.summary["hostname"] == "hosta"
    windows_record = api.snapshot("hosta", device=disk.device, partition=3, sysfs=sysfs)
    assert windows_record.windows["computer_name"] == "HOSTA"
    with pytest.raises(IdentityError, match=f"{disk.device} has no partition 7"):
        api.snapshot("hosta", device=disk.device, partition=7, sysfs=sysfs)
    with pytest.raises(IdentityError, match=f"partition 1 of {disk.device} holds vfat"):
        api.snapshot("hosta", device=disk.device, partition=1, sysfs=sysfs)

    _with_mounted(root, mnt, lambda path: (clear_tree(path), build_linux_root(path, master, str(tmp_path))))
    assert api.apply(record, device=disk.device, partition=2, sysfs=sysfs, check_mode=True).changed
    assert api.apply(record, device=disk.device, sysfs=sysfs).changed
    assert _with_mounted(root, mnt, snapshot_tree) == original
    assert api.apply(record, device=disk.device, sysfs=sysfs).changed is False
