# Wipe a dirty loop disk: partitions, filesystems, swap, an md superblock at a partition's end,
# both GPT copies, msdos EBRs. Checked with blkid, wipefs and sgdisk, and on the raw bytes.
import hashlib
import os
import struct
import subprocess
import uuid

import pytest

from ansible_collections.fleetcast.imaging.plugins.module_utils._disk import discover, wipe
from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import UnsafeTargetError, ValidationError

from disk_helpers import blkid, sh, wipe_path

MiB = 1 << 20
P1, P2, P3 = (2048, 20480), (22528, 20480), (43008, 16384)  # (start, sectors)


def md_superblock(member_size):
    """(offset, bytes) of an md v1.0 superblock at the end of a member, with a valid checksum."""
    sector = ((member_size // 512) - 16) & ~7
    sb = bytearray(256 + 2 * 4)
    struct.pack_into("<II", sb, 0, 0xA92B4EFC, 1)
    sb[16:32] = uuid.uuid4().bytes
    sb[32:40] = b"fleetmd\0"
    struct.pack_into("<II", sb, 72, 1, 0)
    struct.pack_into("<I", sb, 92, 2)
    struct.pack_into("<QQQ", sb, 128, 0, sector, sector)
    struct.pack_into("<I", sb, 220, 4)
    csum = sum(struct.unpack_from(f"<{len(sb) // 4}I", sb))
    struct.pack_into("<I", sb, 216, ((csum & 0xFFFFFFFF) + (csum >> 32)) & 0xFFFFFFFF)
    return sector * 512, bytes(sb)


def _dirty_gpt_disk(loop_disk):
    disk = loop_disk(32 * MiB)
    sh("sgdisk", *(f"-n{i}:{s}:{s + n - 1}" for i, (s, n) in enumerate((P1, P2, P3), 1)), disk.device)
    sh("mkfs.ext4", "-q", "-L", "data", disk.window(P1[0] * 512, P1[1] * 512))
    sh("mkfs.vfat", "-I", disk.window(P2[0] * 512, P2[1] * 512))
    sh("mkswap", disk.window(P3[0] * 512, P3[1] * 512))
    offset, sb = md_superblock(P3[1] * 512)
    with open(disk.device, "r+b") as handle:
        handle.seek(P3[0] * 512 + offset)
        handle.write(sb)
    return disk, P3[0] * 512 + offset


def _digest(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def test_plan_lists_everything_and_writes_nothing(loop_disk):
    disk, md_offset = _dirty_gpt_disk(loop_disk)
    before = _digest(disk.path)
    plan = wipe.plan_wipe(disk.device)
    assert _digest(disk.path) == before
    assert plan.label == "gpt" and [p["number"] for p in plan.partitions] == [1, 2, 3]
    found = {(sig.where, sig.type) for sig in plan.signatures}
    assert {("disk", "gpt"), ("disk", "PMBR"), ("partition 1", "ext4"), ("partition 2", "vfat"),
            ("partition 3", "swap"), ("partition 3", "linux_raid_member")} <= found
    raid = next(sig for sig in plan.signatures if sig.type == "linux_raid_member")
    assert raid.offset == md_offset and raid.label == "fleetmd"
    ext4 = next(sig for sig in plan.signatures if sig.type == "ext4")
    assert ext4.offset == P1[0] * 512 + 0x438 and ext4.label == "data"
    assert "signature ext4 on partition 1 at byte %d (UUID %s) (label data)" % (ext4.offset, ext4.uuid) \
        in plan.describe()
    assert not plan.empty


def test_wipe_leaves_nothing_for_blkid_wipefs_or_sgdisk(loop_disk):
    disk, md_offset = _dirty_gpt_disk(loop_disk)
    plan = wipe_path(disk.device)
    assert len(plan.partitions) == 3 and len(plan.signatures) >= 6
    assert blkid(disk.device) == {}
    assert sh("wipefs", disk.device).strip() == ""
    assert "Creating new GPT entries" in sh("sgdisk", "-v", disk.device)
    for start, sectors in (P1, P2, P3):
        assert blkid(disk.device, start * 512, sectors * 512) == {}
    with open(disk.path, "rb") as handle:
        data = handle.read()
    for sig in plan.signatures:
        assert sig.length > 0 and data[sig.offset:sig.offset + sig.length] == bytes(sig.length), sig
    assert data[:34 * 512] == bytes(34 * 512) and data[-33 * 512:] == bytes(33 * 512)
    assert data[md_offset:md_offset + 4] == bytes(4)
    # the second run finds nothing: idempotent
    again = wipe_path(disk.device)
    assert again.empty and again.label == "none"


def test_wipe_msdos_zeroes_extended_boot_records(loop_disk):
    disk = loop_disk(32 * MiB)
    sh("sh", "-c", "printf 'label: dos\nstart=2048,size=8192,type=83\nstart=10240,size=40000,type=5\n"
       f"start=12288,size=10000,type=83\nstart=24576,size=10000,type=83\n' | sfdisk -q {disk.device}")
    with open(disk.device, "rb") as handle:
        handle.seek(10240 * 512 + 510)
        assert handle.read(2) == b"\x55\xaa"
    plan = wipe_path(disk.device)
    assert [p["number"] for p in plan.partitions] == [1, 2, 5, 6]
    ebrs = [r.offset // 512 for r in plan.regions if r.what == "extended boot record"]
    assert 10240 in ebrs and len(ebrs) == 2
    with open(disk.path, "rb") as handle:
        data = handle.read()
    for sector in [0] + ebrs:
        assert data[sector * 512:(sector + 1) * 512] == bytes(512)
    assert blkid(disk.device) == {}


def test_wipe_refuses_a_disk_with_a_mounted_partition(loop_disk, tmp_path):
    disk, dummy = _dirty_gpt_disk(loop_disk)
    before = _digest(disk.path)
    window = disk.window(P1[0] * 512, P1[1] * 512)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    sh("mount", "-o", "ro", window, mountpoint)
    try:
        with pytest.raises(UnsafeTargetError, match="is in use: mounted at"):
            wipe_path(disk.device)
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)
    assert _digest(disk.path) == before
    assert os.path.exists(disk.path)


def test_wipe_all_fixed_disks_needs_force_for_dirty_disks(loop_disk, fake_host):
    """"All fixed disks" against a fake host whose sdb/sdc are our own loop disks; sda (the fake boot
    medium) and sdd (removable) are plain files that must never be touched."""
    dirty, dummy = _dirty_gpt_disk(loop_disk)
    blank = loop_disk(8 * MiB)
    fake_host.disk("sda", partitions=[(1, 2048, 4096)])
    fake_host.disk("sdb", node=dirty.device)
    fake_host.disk("sdc", node=blank.device)
    fake_host.disk("sdd", removable=True)
    fake_host.mount("sda1", "/")
    devices = discover.list_block_devices(**fake_host.views)
    sdb, sdc = fake_host.dev + "/sdb", fake_host.dev + "/sdc"
    before = _digest(dirty.path)

    with pytest.raises(ValidationError, match=f"^Refusing to wipe {sdb}, selected as all fixed disks"):
        wipe.wipe_disks(devices, all_fixed=True)
    checked = wipe.wipe_disks(devices, all_fixed=True, check_mode=True)
    assert _digest(dirty.path) == before
    assert checked.changed and [r["device"] for r in checked.results()] == [sdb, sdc]
    assert [r["changed"] for r in checked.results()] == [True, False]
    assert "partition table: gpt" in checked.diff()[0]["before"] and len(checked.diff()) == 1
    assert set(checked.refused) == {fake_host.dev + "/sda", fake_host.dev + "/sdd"}

    done = wipe.wipe_disks(devices, all_fixed=True, force=True)
    assert done.changed and blkid(dirty.device) == {}
    assert [r["changed"] for r in done.results()] == [True, False]
    assert not wipe.wipe_disks(devices, all_fixed=True).changed  # blank now: no force needed
    assert os.path.getsize(fake_host.dev + "/sda") == 0


def test_wipe_named_disks_refuses_all_before_touching_any(loop_disk, fake_host):
    dirty, dummy = _dirty_gpt_disk(loop_disk)
    fake_host.disk("sda")
    fake_host.disk("sdb", node=dirty.device)
    fake_host.mount("sda", "/")
    devices = discover.list_block_devices(**fake_host.views)
    before = _digest(dirty.path)
    with pytest.raises(UnsafeTargetError) as refused:
        wipe.wipe_disks(devices, explicit=["sdb", "sda", "sdz"])
    assert str(refused.value) == (f"{fake_host.dev}/sda is the boot medium of this host (it holds /). "
                                  "sdz is not a block device on this host. Nothing was wiped.")
    assert _digest(dirty.path) == before
    run = wipe.wipe_disks(devices, explicit=["sdb", "sda"], exclude=["sda"])
    assert run.changed and list(run.refused.values()) == [f"{fake_host.dev}/sda is listed in exclude."]


def test_wipe_named_disks_refuses_a_busy_one_before_touching_any(loop_disk, fake_host):
    first, dummy = _dirty_gpt_disk(loop_disk)
    busy, dummy = _dirty_gpt_disk(loop_disk)
    fake_host.disk("sdb", node=first.device)
    fake_host.disk("sdc", node=busy.device)
    devices = discover.list_block_devices(**fake_host.views)
    before = _digest(first.path), _digest(busy.path)
    holder = os.open(busy.device, os.O_RDONLY | os.O_EXCL)  # another program claims it (mkfs, RAID...)
    try:
        for check_mode in (True, False):
            with pytest.raises(UnsafeTargetError) as refused:
                wipe.wipe_disks(devices, explicit=["sdb", "sdc"], check_mode=check_mode)
            assert str(refused.value) == (f"Target {fake_host.dev}/sdc is busy: the kernel reports it mounted or "
                                          "claimed by another program. Nothing was wiped.")
    finally:
        os.close(holder)
    assert (_digest(first.path), _digest(busy.path)) == before
