# Partition tables: read and recreate GPT and msdos layouts on loop devices, checked with
# sgdisk/sfdisk/blkid (independent tools) rather than with our own reader.
import os

import pytest

from ansible_collections.fleetcast.imaging.plugins.module_utils._disk import table
from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import ValidationError

from disk_helpers import blkid, sfdisk_dump, sh

MiB = 1 << 20
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
BIOS = "21686148-6449-6E6F-744E-656564454649"
ROOT = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"


def _gpt_source(disk):
    """bios_grub (1), EFI system (2), a gap at 3, linux root with a name (4) and attribute bits."""
    sh("sgdisk", "-n1:2048:4095", "-t1:ef02", "-c1:bios", "-n2:4096:24575", "-t2:ef00", "-c2:EFI system",
       "-n4:24576:90111", "-t4:8304", "-c4:root fs", "-A4:set:2", "-A4:set:60", disk.device)
    sh("mkfs.vfat", "-I", "-n", "ESP", disk.window(4096 * 512, 20480 * 512))
    sh("mkfs.ext4", "-q", "-L", "rootfs", disk.window(24576 * 512, 65536 * 512))


def _sgdisk_info(path, number):
    return [line for line in sh("sgdisk", "-i", number, path).splitlines() if not line.startswith(("Last", "Partition size"))]


def test_read_gpt_layout(loop_disk):
    disk = loop_disk(64 * MiB)
    _gpt_source(disk)
    layout = table.read_layout(disk.device)
    disk_guid = [line for line in sh("sgdisk", "-p", disk.device).splitlines() if "Disk identifier" in line][0]
    assert layout.label == "gpt" and layout.guid.upper() in disk_guid
    assert (layout.size, layout.sector_size, layout.first_usable, layout.last_usable) == (64 * MiB, 512, 34, 131038)
    parts = {part.number: part for part in layout.partitions}
    assert sorted(parts) == [1, 2, 4]
    assert (parts[1].start, parts[1].end, parts[1].type_guid.upper(), parts[1].name) == (2048, 4095, BIOS, "bios")
    assert "bios_grub" in parts[1].flags and "esp" in parts[2].flags
    assert parts[2].type_guid.upper() == ESP and parts[2].name == "EFI system"
    assert (parts[2].fs, parts[2].fs_label) == ("vfat", "ESP")
    root_fs = blkid(disk.device, 24576 * 512, 65536 * 512)
    assert (parts[4].fs, parts[4].fs_uuid, parts[4].fs_label) == ("ext4", root_fs["UUID"], "rootfs")
    assert parts[4].type_guid.upper() == ROOT and parts[4].gpt_attributes == (1 << 2) | (1 << 60)
    assert parts[4].part_uuid.upper() in "\n".join(_sgdisk_info(disk.device, 4))


def test_gpt_round_trip_keeps_guids_numbers_names_and_grows_last(loop_disk):
    source, target = loop_disk(64 * MiB), loop_disk(96 * MiB)
    _gpt_source(source)
    layout = table.read_layout(source.device)
    restored = table.DiskLayout.from_dict(layout.to_dict())  # as it travels in a manifest
    written = table.write_layout(target.device, restored, grow_last=True)

    assert "No problems found" in sh("sgdisk", "-v", target.device)
    for number in (1, 2, 4):
        assert _sgdisk_info(target.device, number) == _sgdisk_info(source.device, number)
    src_p, dst_p = sh("sgdisk", "-p", source.device), sh("sgdisk", "-p", target.device)
    assert src_p.splitlines()[2] == dst_p.splitlines()[2]  # Disk identifier (GUID)
    last_usable = 96 * MiB // 512 - 34
    assert written.partitions[-1].end == last_usable and written.last_usable == last_usable
    assert f"4           24576          {last_usable}" in dst_p
    assert [(p.number, p.start, p.name, p.part_uuid) for p in written.partitions[:2]] == \
        [(p.number, p.start, p.name, p.part_uuid) for p in layout.partitions[:2]]


def test_msdos_round_trip_with_extended_and_logicals(loop_disk):
    source, target = loop_disk(64 * MiB), loop_disk(64 * MiB)
    script = ("label: dos\nlabel-id: 0x1234abcd\n"
              "start=2048, size=8192, type=c, bootable\n"
              "start=10240, size=100000, type=5\n"
              "start=110240, size=20000, type=7\n"
              "start=12288, size=20000, type=83\n"
              "start=34816, size=30000, type=82\n")
    sh("sh", "-c", f"printf '{script}' | sfdisk -q {source.device}")
    sh("mkfs.ext4", "-q", "-L", "logical5", source.window(12288 * 512, 20000 * 512))
    layout = table.read_layout(source.device)
    parts = {part.number: part for part in layout.partitions}
    assert layout.label == "msdos" and layout.guid == "0x1234abcd"
    assert [(n, parts[n].kind, parts[n].mbr_type) for n in sorted(parts)] == [
        (1, "primary", 0x0C), (2, "extended", 0x05), (3, "primary", 0x07), (5, "logical", 0x83),
        (6, "logical", 0x82)]
    assert "boot" in parts[1].flags and (parts[5].fs, parts[5].fs_label) == ("ext4", "logical5")

    table.write_layout(target.device, table.DiskLayout.from_dict(layout.to_dict()))
    assert sfdisk_dump(target.device) == sfdisk_dump(source.device)


def test_gpt_layout_replaces_an_msdos_label_never_the_reverse(loop_disk):
    """community.general #522: the label type comes from the layout, never from a default."""
    source, target = loop_disk(32 * MiB), loop_disk(32 * MiB)
    sh("sgdisk", "-n1:2048:0", source.device)
    sh("sh", "-c", f"echo 'label: dos' | sfdisk -q {target.device}")
    table.write_layout(target.device, table.read_layout(source.device))
    assert blkid(target.device)["PTTYPE"] == "gpt"
    assert table.read_layout(target.device).label == "gpt"


def test_validation_refuses_before_writing(loop_disk):
    source, small = loop_disk(64 * MiB), loop_disk(32 * MiB)
    sh("sgdisk", "-n1:2048:0", source.device)
    sh("sh", "-c", f"echo 'label: dos' | sfdisk -q {small.device}")
    before = sh("sfdisk", "-d", small.device)
    layout = table.read_layout(source.device)
    with pytest.raises(ValidationError, match=f"^{small.device} is too small for the layout: partition 1 "):
        table.write_layout(small.device, layout)
    with pytest.raises(ValidationError, match=f"^{small.device} is too small for the layout"):
        table.write_layout(small.device, layout, grow_last=True)  # growing never shrinks
    layout.sector_size, layout.label = 4096, "msdos"  # GPT converts between sector sizes; msdos does not
    with pytest.raises(ValidationError, match="has 512-byte sectors but the image's msdos partition table was made "
                                              "for 4096-byte sectors; only GPT tables are converted"):
        table.write_layout(small.device, layout)
    layout.sector_size, layout.label = 512, "sun"
    with pytest.raises(ValidationError, match="unknown type 'sun'"):
        table.write_layout(small.device, layout)
    assert sh("sfdisk", "-d", small.device) == before


def test_label_none_clears_tables_and_reads_back_as_none(loop_disk):
    disk = loop_disk(32 * MiB)
    sh("sgdisk", "-n1:2048:0", disk.device)
    written = table.write_layout(disk.device, table.DiskLayout(size=0, sector_size=512, label="none"))
    assert written.label == "none" and written.partitions == []
    assert "PTTYPE" not in blkid(disk.device)
    with open(disk.device, "rb") as handle:
        assert handle.read(34 * 512) == bytes(34 * 512)
        handle.seek(-33 * 512, 2)
        assert handle.read() == bytes(33 * 512)


def test_filesystem_on_the_whole_disk_is_no_partition_table(loop_disk):
    """A FAT boot sector ends in 55 AA like an MBR; its "entries" do not fit, so it is label none."""
    disk = loop_disk(16 * MiB)
    sh("mkfs.vfat", "-I", disk.device)
    layout = table.read_layout(disk.device)
    assert (layout.label, layout.partitions) == ("none", [])


def test_gpt_round_trip_on_4k_sector_disks(tmp_path):
    """4096-byte sectors: GPT areas, usable range and partition windows all scale with the sector."""
    from ansible_collections.fleetcast.imaging.plugins.module_utils._disk import blockdev
    from ansible_collections.fleetcast.imaging.plugins.module_utils._lab import loopdisk

    devices = []
    try:
        for name in ("src", "dst"):
            path = tmp_path / f"{name}.img"
            path.write_bytes(b"")
            os.truncate(path, 64 * MiB)
            devices.append(sh("losetup", "--find", "--show", "--sector-size", "4096", path).strip())
        source, target = devices
        sh("sgdisk", "-n1:256:2815", "-t1:ef00", "-n2:2816:0", "-c2:data", source)
        layout = table.read_layout(source)
        assert (layout.sector_size, layout.first_usable, layout.last_usable) == (4096, 6, 16384 - 6)
        written = table.write_layout(target, layout)
        assert "No problems found" in sh("sgdisk", "-v", target)
        assert [(p.number, p.start, p.end, p.part_uuid) for p in written.partitions] == \
            [(p.number, p.start, p.end, p.part_uuid) for p in layout.partitions]
        with blockdev.partition_path(target, 2) as node:
            assert blockdev.sector_size(node) == 4096
            assert blockdev.device_size(node) == (16384 - 6 - 2816 + 1) * 4096
    finally:
        for device in devices:
            loopdisk.detach(device)
