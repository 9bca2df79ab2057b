# Discovery and "all fixed disks" selection, only ever against fake sysfs trees.
import os

from ansible_collections.fleetcast.imaging.plugins.module_utils._disk import discover


def _by_name(devices):
    return {dev.name: dev for dev in devices}


def _workstation(host):
    """Root on a partition of sda; sdb removable, sdc read-only, sdd has a mounted partition,
    sde and nvme0n1 are clean fixed disks, sdg is only reached through a mounted loop window,
    sdh+sdi are RAID members, loop0 is an unused image file, zram0 is swap."""
    host.disk("sda", partitions=[(1, 2048, 1048576), (2, 1050624, 1000000)])
    host.disk("sdb", removable=True)
    host.disk("sdc", ro=True)
    host.disk("sdd", partitions=[(1, 2048, 4096)])
    host.disk("sde")
    host.disk("nvme0n1", partitions=[(1, 2048, 4096)])
    host.disk("sdg")
    host.disk("sdh", partitions=[(1, 2048, 4096)])
    host.disk("sdi", partitions=[(1, 2048, 4096)])
    host.disk("md0", slaves=["sdh1", "sdi1"])
    host.disk("loop0", backing_file="/var/tmp/disk.img")
    host.disk("loop1", backing_file="/dev/sdg", size_sectors=4096)
    host.disk("zram0", size_sectors=8192)
    host.disk("sr0", size_sectors=0, removable=True)
    host.mount("sda2", "/")
    host.mount("sda1", "/boot/efi", "vfat")
    host.mount("sdd1", "/srv data")
    host.mount("loop1", "/mnt/part")
    host.swap("/dev/zram0")


def test_list_block_devices_reads_sysfs_fields(fake_host):
    _workstation(fake_host)
    devices = _by_name(discover.list_block_devices(**fake_host.views))
    sda = devices["sda"]
    assert sda.path == fake_host.dev + "/sda"
    assert sda.size == 2 ** 21 * 512 and sda.sector_size == 512
    assert (sda.model, sda.serial, sda.removable, sda.read_only) == ("Fake Disk", "S1", False, False)
    assert [(p.name, p.number, p.offset) for p in sda.partitions] == [
        ("sda1", 1, 2048 * 512), ("sda2", 2, 1050624 * 512)]
    assert sda.is_boot_medium and sorted(sda.boot_mountpoints) == ["/", "/boot/efi"]
    assert sda.partitions[1].mountpoints == ["/"]
    assert devices["sdd"].mountpoints == ["/srv data"]  # octal escape in mountinfo undone
    assert devices["nvme0n1"].partitions[0].name == "nvme0n1p1"
    assert devices["loop0"].is_loop and devices["loop0"].backing_file == "/var/tmp/disk.img"
    assert devices["sdh"].holders == ["md0"] and devices["sdh"].partitions[0].holders == ["md0"]
    # the loop window over sdg is mounted, so sdg counts as mounted
    assert devices["sdg"].mountpoints == ["/mnt/part"] and devices["loop1"].stacked_on == ["sdg"]
    assert devices["zram0"].is_boot_medium and devices["zram0"].mountpoints == ["[SWAP]"]
    assert not devices["sde"].busy and not devices["sde"].is_boot_medium


def test_all_fixed_selects_only_clean_fixed_disks(fake_host):
    _workstation(fake_host)
    devices = discover.list_block_devices(**fake_host.views)
    selection = discover.select_disks(devices, all_fixed=True)
    assert [dev.name for dev in selection.selected] == ["nvme0n1", "sde"]
    refused = {path.rsplit("/", 1)[1]: reason for path, reason in selection.refused.items()}
    assert "boot medium" in refused["sda"] and "/boot/efi" in refused["sda"]
    assert "removable" in refused["sdb"]
    assert "read-only" in refused["sdc"]
    assert "mounted at /srv data" in refused["sdd"]
    assert "mounted at /mnt/part" in refused["sdg"]
    assert "held by md0" in refused["sdh"] and "held by md0" in refused["sdi"]
    for virtual in ("md0", "loop0", "loop1", "zram0", "sr0"):
        assert "virtual" in refused[virtual] or "removable" in refused[virtual]
    assert refused["sda"] == f"{fake_host.dev}/sda is the boot medium of this host (it holds /, /boot/efi)."


def test_all_fixed_honours_exclude(fake_host):
    _workstation(fake_host)
    devices = discover.list_block_devices(**fake_host.views)
    selection = discover.select_disks(devices, all_fixed=True, exclude=["sde"])
    assert [dev.name for dev in selection.selected] == ["nvme0n1"]
    assert selection.refused[fake_host.dev + "/sde"].endswith("is listed in exclude.")


def test_explicit_selection_allows_loop_and_removable_but_never_unsafe(fake_host):
    _workstation(fake_host)
    devices = discover.list_block_devices(**fake_host.views)
    selection = discover.select_disks(devices, explicit=["loop0", "sdb", "sda", "sdd", "sda2", "sdz", "sdb"])
    assert [dev.name for dev in selection.selected] == ["loop0", "sdb"]
    assert "boot medium" in selection.refused["sda"]
    assert "mounted" in selection.refused["sdd"]
    assert selection.refused["sda2"] == "sda2 is a partition; name the whole disk instead."
    assert selection.refused["sdz"] == "sdz is not a block device on this host."


def test_root_on_device_mapper_marks_the_disks_below(fake_host):
    fake_host.disk("nvme0n1", partitions=[(1, 2048, 4096), (2, 8192, 100000)])
    fake_host.disk("sda")
    fake_host.disk("dm-0", slaves=["nvme0n1p2"])
    fake_host.mount("dm-0", "/")
    devices = _by_name(discover.list_block_devices(**fake_host.views))
    assert devices["nvme0n1"].is_boot_medium and devices["dm-0"].is_boot_medium
    assert devices["nvme0n1"].holders == ["dm-0"]
    selection = discover.select_disks(list(devices.values()), all_fixed=True)
    assert [dev.name for dev in selection.selected] == ["sda"]


def test_live_system_root_on_loop_file_marks_the_medium_holding_the_file(fake_host):
    """A live system: / is a squashfs on loop0 whose file lives on a partition of sdb."""
    fake_host.disk("sda")
    fake_host.disk("sdb", partitions=[(1, 2048, 100000)])
    fake_host.disk("loop0", backing_file="/run/live/medium/live/filesystem.squashfs")
    fake_host.mount("sdb1", "/run/live/medium", "iso9660")
    fake_host.mount("loop0", "/", "squashfs")
    devices = _by_name(discover.list_block_devices(**fake_host.views))
    assert devices["sdb"].is_boot_medium and devices["loop0"].is_boot_medium
    assert not devices["sda"].is_boot_medium
    selection = discover.select_disks(list(devices.values()), all_fixed=True)
    assert [dev.name for dev in selection.selected] == ["sda"]


def test_mounted_window_over_same_image_file_makes_whole_loop_busy(fake_host):
    fake_host.disk("loop0", backing_file="/var/tmp/a.img")
    fake_host.disk("loop1", backing_file="/var/tmp/a.img", size_sectors=2048)
    fake_host.mount("loop1", "/mnt")
    devices = _by_name(discover.list_block_devices(**fake_host.views))
    assert devices["loop0"].mountpoints == ["/mnt"]
    assert "mounted at /mnt" in discover.select_disks(list(devices.values()), explicit=["loop0"]).refused["loop0"]


def test_swap_file_marks_the_disk_holding_it(fake_host):
    fake_host.disk("sda", partitions=[(1, 2048, 100000)])
    fake_host.disk("sdb", partitions=[(1, 2048, 100000)])
    fake_host.mount("sda1", "/")
    fake_host.mount("sdb1", "/var")
    fake_host.swap("/var/swapfile")
    devices = _by_name(discover.list_block_devices(**fake_host.views))
    assert devices["sdb"].boot_mountpoints == ["[SWAP]"]


def test_sata_serial_comes_from_the_vpd_page(fake_host):
    fake_host.disk("sda", serial="")
    os.remove(os.path.join(fake_host.sysfs, "block", "sda", "device", "serial"))
    with open(os.path.join(fake_host.sysfs, "block", "sda", "device", "vpd_pg80"), "wb") as handle:
        handle.write(b"\x00\x80\x00\x0b  WD-ABC123")
    assert discover.list_block_devices(**fake_host.views)[0].serial == "WD-ABC123"
