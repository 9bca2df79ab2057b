# Secure erase: the method each disk gets (from fake sysfs trees and fake tool answers), the erase
# itself on a discard-capable loop disk and on a regular file (the data gone, read back as zeros),
# and refusals before anything is written.
import dataclasses
import hashlib
import os

import pytest

from ansible_collections.fleetcast.imaging.plugins.module_utils._disk import discover, erase, wipe
from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import ValidationError

MiB = 1 << 20
MARKER = b"FLEETCAST-SECRET-"

IDENTIFY = """ATA device, with non-removable media
Security:
\tMaster password revision code = 65534
\t\tsupported
\tnot\tenabled
\tnot\tlocked
\t{frozen}
\tnot\texpired: security count
\t\tsupported: enhanced erase
\t2min for SECURITY ERASE UNIT. 2min for ENHANCED SECURITY ERASE UNIT.
Logical Unit WWN Device Identifier: 5002538e40a1b2c3
"""


def _fill(path, size):
    """Secret-looking data over the whole disk; returns nothing, the marker is what we look for."""
    with open(path, "r+b") as handle:
        block = (MARKER * (MiB // len(MARKER) + 1))[:MiB]
        for dummy in range(size // MiB):
            handle.write(block)


def _set(fake_host, name, attribute, value):
    with open(os.path.join(fake_host.sysfs, "block", name, "queue", attribute), "w", encoding="ascii") as handle:
        handle.write(f"{value}\n")


def _tools(*present):
    return lambda tool: f"/usr/sbin/{tool}" if tool in present else None


def test_choice_follows_what_each_disk_supports(fake_host):
    for name in ("sda", "sdb", "nvme0n1", "vdc"):
        fake_host.disk(name)
    _set(fake_host, "sdb", "discard_max_bytes", 2 << 30)
    _set(fake_host, "nvme0n1", "discard_max_bytes", 2 << 30)
    devices = {dev.name: dev for dev in discover.list_block_devices(**fake_host.views)}
    assert devices["nvme0n1"].transport == "nvme"

    def choose(name, requested="auto", transport="", tools=("nvme", "hdparm"), frozen="not\tfrozen"):
        device = dataclasses.replace(devices[name], transport=transport or devices[name].transport)
        return erase.choose(device.path, requested, fake_host.sysfs, device,
                            which=_tools(*tools), identify=lambda path: IDENTIFY.format(frozen=frozen))

    assert choose("nvme0n1").method == "nvme"
    assert choose("nvme0n1", tools=()).method == "discard"  # no nvme-cli
    assert choose("sda", transport="sata").reason == "ATA enhanced security erase"
    frozen = choose("sda", transport="sata", frozen="\tfrozen")
    assert frozen.method == "overwrite"  # frozen drive, no discard
    assert choose("sdb", transport="sata", frozen="\tfrozen").method == "discard"
    assert choose("vdc").method == "overwrite" and choose("vdc", "none").method == "none"
    with pytest.raises(ValidationError) as refused:
        choose("sda", "ata", transport="sata", frozen="\tfrozen")
    assert str(refused.value) == (f"Secure erase method ata is not available for {fake_host.dev}/sda: the drive's "
                                  "security is frozen (suspend and resume the host, or hot-plug the drive, to "
                                  "unfreeze it).")
    for requested, why in (("discard", "the device does not support discard (queue/discard_max_bytes is 0)"),
                           ("nvme", "it is not an NVMe device"), ("ata", "it is not a SATA device")):
        with pytest.raises(ValidationError, match=f"^Secure erase method {requested} is not available for "
                                                  f".*/vdc: {why}.$".replace("(", r"\(").replace(")", r"\)")):
            choose("vdc", requested)
    with pytest.raises(ValidationError, match="is not one of auto, nvme, ata, discard, overwrite, none"):
        choose("vdc", "shred")


def test_ata_security_section_is_read_from_hdparm():
    free = erase.ata_security(IDENTIFY.format(frozen="not\tfrozen"))
    assert free == {"supported": True, "frozen": False, "enabled": False, "enhanced": True}
    assert erase.ata_security(IDENTIFY.format(frozen="\tfrozen"))["frozen"]
    assert not erase.ata_security("ATA device\nCommands/features:\n\tEnabled\tSupported:\n")["supported"]


def _digest(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


@pytest.mark.slow
def test_discard_erase_of_a_loop_disk_in_check_mode_then_for_real(loop_disk, fake_host):
    disk = loop_disk(24 * MiB)
    _fill(disk.device, disk.size)
    real = os.path.basename(disk.device)
    with open(f"/sys/block/{real}/queue/discard_max_bytes", encoding="ascii") as handle:
        discard_max = int(handle.read())
    assert discard_max > 0, "loop devices support discard on this kernel"
    fake_host.disk("sdb", node=disk.device)
    _set(fake_host, "sdb", "discard_max_bytes", discard_max)
    devices = discover.list_block_devices(**fake_host.views)
    sdb = fake_host.dev + "/sdb"
    before = _digest(disk.path)

    checked = wipe.wipe_disks(devices, explicit=["sdb"], check_mode=True, secure_erase="auto",
                              sysfs=fake_host.sysfs)
    assert _digest(disk.path) == before and checked.changed
    assert checked.results()[0]["secure_erase"]["method"] == "discard"
    assert "all data: secure erase by discard" in checked.diff()[0]["before"]
    with pytest.raises(ValidationError, match=f"^Secure erase method nvme is not available for {sdb}"):
        wipe.wipe_disks(devices, explicit=["sdb"], secure_erase="nvme", sysfs=fake_host.sysfs)
    assert _digest(disk.path) == before

    done = wipe.wipe_disks(devices, explicit=["sdb"], secure_erase="auto", sysfs=fake_host.sysfs)
    result = done.results()[0]["secure_erase"]
    assert result["method"] == "discard" and result["bytes"] == disk.size and result["seconds"] >= 0
    assert result["detail"].startswith(("BLKSECDISCARD over", "BLKDISCARD over"))
    with open(disk.path, "rb") as handle:
        assert handle.read() == bytes(disk.size)
    # a loop disk's discard punches holes in its backing file: the old data is gone from the file
    assert os.stat(disk.path).st_blocks == 0


@pytest.mark.slow
def test_all_fixed_disks_with_secure_erase_needs_force_even_when_blank(loop_disk, fake_host):
    blank = loop_disk(8 * MiB)
    _fill(blank.device, blank.size)  # no signature, but data
    fake_host.disk("sdb", node=blank.device)
    devices = discover.list_block_devices(**fake_host.views)
    assert wipe.plan_wipe(blank.device).empty
    with pytest.raises(ValidationError, match=f"^Refusing to wipe {fake_host.dev}/sdb, selected as all fixed"):
        wipe.wipe_disks(devices, all_fixed=True, secure_erase="overwrite", sysfs=fake_host.sysfs)
    done = wipe.wipe_disks(devices, all_fixed=True, force=True, secure_erase="overwrite", sysfs=fake_host.sysfs)
    assert done.changed and done.results()[0]["secure_erase"]["method"] == "overwrite"
    with open(blank.path, "rb") as handle:
        assert MARKER not in handle.read()


def test_overwrite_erase_of_a_regular_file(tmp_path):
    path = str(tmp_path / "disk.raw")
    with open(path, "wb") as handle:
        handle.truncate(6 * MiB)
    _fill(path, 6 * MiB)
    choice = erase.choose(path)
    assert (choice.method, choice.reason) == ("overwrite", "a regular file: zeros written over every byte")
    with pytest.raises(ValidationError, match="it is a regular file, which can only be overwritten"):
        erase.choose(path, "discard")
    result = erase.secure_erase(path, choice, lambda p: os.open(p, os.O_RDWR))
    assert (result.method, result.bytes) == ("overwrite", 6 * MiB)
    with open(path, "rb") as handle:
        assert handle.read() == bytes(6 * MiB)


def _fake_tool(bin_dir, name, log, stdout=""):
    """A stand-in for a drive tool we cannot run against real hardware here: it records its argv."""
    script = bin_dir / name
    script.write_text(f"#!/bin/sh\necho \"{name} $*\" >> {log}\nprintf '%s' '{stdout}'\n")
    script.chmod(0o755)


@pytest.mark.parametrize("method, reason, fna, expected", [
    ("nvme", "nvme format with secure erase settings", 4,
     ["nvme id-ctrl {dev} --output-format=json", "nvme format {dev} --ses=2 --force"]),
    ("nvme", "nvme format with secure erase settings", 0,
     ["nvme id-ctrl {dev} --output-format=json", "nvme format {dev} --ses=1 --force"]),
    ("ata", "ATA enhanced security erase", 0,
     ["hdparm --user-master u --security-set-pass fleetcast {dev}",
      "hdparm --user-master u --security-erase-enhanced fleetcast {dev}"]),
])
def test_drive_erase_commands(tmp_path, monkeypatch, method, reason, fna, expected):
    """The nvme and hdparm command lines, and the result, with recording stand-ins for the tools."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    _fake_tool(bin_dir, "nvme", log, stdout=f'{{"fna": {fna}}}')
    _fake_tool(bin_dir, "hdparm", log)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    disk = tmp_path / "disk.raw"
    disk.write_bytes(bytes(4096))

    def never(path):
        raise AssertionError("drive erases do not write through the file descriptor")

    result = erase.secure_erase(str(disk), erase.EraseChoice(str(disk), method, reason), never)
    assert log.read_text().splitlines() == [line.format(dev=disk) for line in expected]
    assert (result.method, result.bytes) == (method, 4096) and result.seconds >= 0
