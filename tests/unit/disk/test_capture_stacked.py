# Capture of stacked storage: LUKS and active BitLocker are refused in one sentence saying what to
# do; an md member (ext4 inside, superblock at the end) and an LVM physical volume are stored whole,
# so their own metadata survives a round trip; a suspended BitLocker volume is stored whole too.
import uuid

import pytest

from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import ValidationError
from ansible_collections.fleetcast.imaging.plugins.module_utils._image import capture, restore

from disk_helpers import sh
from stacked_builders import bitlocker_volume, luks_format, md_superblock, pvcreate, write_at

MiB = 1 << 20
START, SECTORS = 2048, 16384  # one 8 MiB partition


def _disk_with(loop_disk, fill):
    disk = loop_disk(16 * MiB)
    sh("sgdisk", f"-n1:{START}:{START + SECTORS - 1}", disk.device)
    fill(disk, START * 512, SECTORS * 512)
    return disk


def _luks(disk, base, size):
    luks_format(disk.window(base, size), 2)


def _bitlocker(suspended):
    def fill(disk, base, size):
        for offset, data in bitlocker_volume(size, suspended=suspended):
            write_at(disk.device, base + offset, data)
    return fill


@pytest.mark.parametrize("fill, says", [
    (_luks, "is a LUKS-encrypted volume, which cannot be imaged without its key: open it (cryptsetup open) "
            "and capture the opened /dev/mapper device as a partition source instead."),
    (_bitlocker(False), "is BitLocker-encrypted and its protectors are active: suspend BitLocker on the master "
                        "(manage-bde -protectors -disable C:) or turn it off (manage-bde -off C:) before capturing."),
])
def test_capture_refuses_encrypted_volumes_with_what_to_do(loop_disk, tmp_path, fill, says):
    disk = _disk_with(loop_disk, fill)
    dest = tmp_path / "refused.fcimg"
    with pytest.raises(ValidationError) as refused:
        capture.capture_to_file([disk.device], str(dest))
    assert str(refused.value) == f"Partition 1 of {disk.device} {says}"
    assert not dest.exists() and not (tmp_path / "refused.fcimg.partial").exists()


def _md_ext4(disk, base, size):
    offset, sb = md_superblock("1.0", size)
    sh("mkfs.ext4", "-q", disk.window(base, offset))  # the filesystem ends where the superblock starts
    write_at(disk.device, base + offset, sb)


def _lvm(disk, base, size):
    pvcreate(disk.window(base, size))


@pytest.mark.parametrize("fill, kind, note", [
    (_md_ext4, "linux_raid_member", "md 1.0 superblock (array "),
    (_lvm, "LVM2_member", "LVM2 physical volume: stored whole"),
    (_bitlocker(True), "BitLocker", "suspended BitLocker volume: stored whole"),
])
def test_capture_stores_raid_lvm_and_suspended_bitlocker_members_whole(loop_disk, tmp_path, fill, kind, note):
    disk = _disk_with(loop_disk, fill)
    dest = str(tmp_path / "member.fcimg")
    manifest = capture.capture_to_file([disk.device], dest, threads=1)
    region = next(r for r in manifest.layout["disks"][0]["regions"] if r["name"] == "partition 1")
    assert (region["filesystem"], region["map"], region["used_bytes"]) == (kind, "all", SECTORS * 512)
    assert region["note"].startswith(note) and region["partition"] == 1
    target = loop_disk(16 * MiB)
    restore.restore_image(dest, [target.device])
    with open(disk.path, "rb") as master, open(target.path, "rb") as clone:
        master.seek(START * 512)
        clone.seek(START * 512)
        assert master.read(SECTORS * 512) == clone.read(SECTORS * 512)


def test_capture_refuses_part_of_a_raid5_array(loop_disk, tmp_path):
    array = uuid.uuid4()

    def member(disk, base, size):
        offset, sb = md_superblock("1.2", size, raid_disks=3, level=5, set_uuid=array)
        write_at(disk.device, base + offset, sb)

    first, second = _disk_with(loop_disk, member), _disk_with(loop_disk, member)
    dest = tmp_path / "partial.fcimg"
    with pytest.raises(ValidationError) as refused:
        capture.capture_to_file([first.device, second.device], str(dest))
    assert str(refused.value) == (f"Partition 1 of {first.device}, partition 1 of {second.device} are 2 of the 3 "
                                  f"members of md array {array} (level 5), which cannot be restored from part of "
                                  "its members: capture every member disk of the array in one image.")
    assert not dest.exists()
