# Wipe a disk that carries every kind of stacked storage: md 0.90/1.0/1.1/1.2 superblocks (one of them a
# stale whole-disk 0.90 superblock inside the last partition), an LVM physical volume, LUKS1 and LUKS2
# (with its secondary header) and BitLocker. Check mode lists each with its offset; afterwards
# `wipefs -n` finds nothing on the disk or on any former partition's range, mdadm finds no
# superblock, the key material is zero and the backup GPT is gone.
import hashlib

import pytest

from ansible_collections.fleetcast.imaging.plugins.module_utils._disk import wipe

from disk_helpers import sh
from stacked_builders import bitlocker_volume, luks_format, md_superblock, pvcreate, write_at

MiB = 1 << 20
DISK = 64 * MiB
LAST = DISK // 512 - 34  # last usable sector of the GPT
PARTS = {1: (2048, 8192), 2: (10240, 8192), 3: (18432, 8192), 4: (26624, 8192), 5: (34816, 8192),
         6: (43008, 40960), 7: (83968, LAST - 83968 + 1)}  # number: (start, sectors)
MD = {1: "0.90", 2: "1.0", 3: "1.2"}


def _span(number):
    start, sectors = PARTS[number]
    return start * 512, sectors * 512


def _stacked_disk(loop_disk):
    disk = loop_disk(DISK)
    sh("sgdisk", *(f"-n{n}:{s}:{s + c - 1}" for n, (s, c) in PARTS.items()), disk.device)
    expected = {}  # (where, type, detail) -> absolute offset
    for number, version in MD.items():
        base, size = _span(number)
        offset, sb = md_superblock(version, size)
        write_at(disk.device, base + offset, sb)
        expected[(f"partition {number}", "linux_raid_member", f"md {version} superblock")] = base + offset
    offset, sb = md_superblock("0.90", DISK)  # a stale whole-disk member, now inside partition 7
    write_at(disk.device, offset, sb)
    expected[("disk", "linux_raid_member", "md 0.90 superblock")] = offset
    pvcreate(disk.window(*_span(4)))
    expected[("partition 4", "LVM2_member", "LVM2 physical volume label")] = _span(4)[0] + 512 + 24  # "LVM2 001"
    luks_format(disk.window(*_span(5)), 1)
    expected[("partition 5", "crypto_LUKS", "LUKS1 header")] = _span(5)[0]
    luks_format(disk.window(*_span(6)), 2)
    expected[("partition 6", "crypto_LUKS", "LUKS2 header")] = _span(6)[0]
    expected[("partition 6", "crypto_LUKS", "LUKS2 secondary header")] = _span(6)[0] + 16384
    base, size = _span(7)
    for offset, data in bitlocker_volume(size):
        write_at(disk.device, base + offset, data)
    expected[("partition 7", "BitLocker", "BitLocker volume header")] = base
    return disk, expected


def _digest(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


@pytest.mark.slow
def test_wipe_removes_raid_lvm_luks_and_bitlocker_everywhere(loop_disk):
    disk, expected = _stacked_disk(loop_disk)
    for number in MD:  # what we built is what mdadm itself reads
        assert "Magic : a92b4efc" in sh("mdadm", "--examine", disk.window(*_span(number)))
    before = _digest(disk.path)

    plan = wipe.plan_wipe(disk.device)
    assert _digest(disk.path) == before
    found = {(sig.where, sig.type, sig.detail): sig.offset for sig in plan.signatures}
    for key, offset in expected.items():
        assert found.get(key) == offset, (key, found)
    metadata = [sig for sig in plan.signatures if sig.detail == "BitLocker FVE metadata block"]
    assert len(metadata) == 3
    lines = "\n".join(plan.describe())
    assert f"signature crypto_LUKS on partition 6 at byte {_span(6)[0] + 16384} (LUKS2 secondary header)" in lines
    assert f"at byte {expected[('disk', 'linux_raid_member', 'md 0.90 superblock')]} (md 0.90 superblock)" in lines

    removed = wipe.wipe(disk.device)
    assert set(expected) <= {(s.where, s.type, s.detail) for s in removed.signatures}
    assert sh("wipefs", "--no-act", disk.device).strip() == ""
    for number in PARTS:
        window = disk.window(*_span(number))
        assert sh("wipefs", "--no-act", window).strip() == "", number
        assert sh("mdadm", "--examine", window, check=False) == "", number
    with open(disk.path, "rb") as handle:
        data = handle.read()
    assert data[-33 * 512:] == bytes(33 * 512)  # backup GPT
    for region in removed.regions:  # LUKS key slots, LVM metadata, FVE metadata: all zero
        assert data[region.offset:region.offset + region.length] == bytes(region.length), region
    luks2 = _span(6)[0]
    assert data[luks2:luks2 + 16 * MiB] == bytes(16 * MiB)  # every LUKS2 key slot, up to the data
    assert wipe.wipe(disk.device).empty  # idempotent
