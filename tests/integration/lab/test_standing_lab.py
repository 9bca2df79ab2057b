"""The standing lab: built for real (namespaces, loop disks with real file systems), then every
namespace, loop device and file it made is gone after destroy, also after a half-built failure."""
import os
import subprocess

import pytest

from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import FleetcastError
from ansible_collections.fleetcast.imaging.plugins.module_utils._lab import disk_tools, loopdisk, standing

MiB = 1024 * 1024


def _namespaces(prefix):
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    return sorted(line.split()[0] for line in out.splitlines() if line.startswith(prefix + "-"))


def _loops_under(directory):
    return [name for name in os.listdir("/sys/block") if name.startswith("loop")
            and (loopdisk.backing_file(name) or "").startswith(str(directory))]


def _read_ext4(disk_file, offset, size, inner):
    window = loopdisk.attach(disk_file, offset=offset, sizelimit=size, read_only=True)
    try:
        return subprocess.run(["debugfs", "-R", f"cat {inner}", window], capture_output=True,
                              text=True, check=True).stdout
    finally:
        loopdisk.detach(window)


@pytest.mark.timeout(90)
def test_build_gives_real_disks_and_destroy_removes_everything(tmp_path):
    directory = tmp_path / "lab"
    prefix = "fct" + os.urandom(2).hex()
    try:
        state = standing.build(prefix, str(directory), ["p1", "p2"])
        assert _namespaces(prefix) == sorted(f"{prefix}-{n}" for n in ("sw", "server", "master", "p1", "p2"))
        # Building again with the same shape finds the standing lab and changes nothing.
        assert standing.build(prefix, str(directory), ["p1", "p2"]).to_result() == state.to_result()

        master, p1 = state.machines["master"], state.machines["p1"]
        assert loopdisk.backing_file(master.disk_device) == master.disk_file
        table = subprocess.run(["sgdisk", "-p", master.disk_file], capture_output=True, text=True,
                               check=True).stdout
        assert "EF00  EFI system" in table and "8304  root" in table
        efi_offset, efi_size = disk_tools.partition_bounds(master.disk_file, 1)
        root_offset, root_size = disk_tools.partition_bounds(master.disk_file, 2)
        assert _read_ext4(master.disk_file, root_offset, root_size, "/etc/hostname") == master.hostname + "\n"
        assert _read_ext4(master.disk_file, root_offset, root_size, "/etc/machine-id").strip() == master.machine_id
        assert "BEGIN OPENSSH PRIVATE KEY" in _read_ext4(master.disk_file, root_offset, root_size,
                                                         "/etc/ssh/ssh_host_ed25519_key")
        window = loopdisk.attach(master.disk_file, offset=efi_offset, sizelimit=efi_size, read_only=True)
        try:
            listing = subprocess.run(["mdir", "-i", window, "::/EFI/BOOT"], capture_output=True,
                                     text=True, check=True).stdout
        finally:
            loopdisk.detach(window)
        assert "BOOTX64  EFI" in listing

        p1_offset, p1_size = disk_tools.partition_bounds(p1.disk_file, 1)
        assert _read_ext4(p1.disk_file, p1_offset, p1_size, "/etc/hostname") == "p1-old\n"
        assert p1.address in _read_ext4(p1.disk_file, p1_offset, p1_size, "/etc/netplan/01-fleetcast-lab.yaml")
        assert p1.machine_id != state.machines["p2"].machine_id
    finally:
        removed = standing.destroy(str(directory), prefix)
    assert _namespaces(prefix) == []
    assert _loops_under(directory) == []
    assert not directory.exists()
    assert len(removed["loop_devices"]) == 3
    # Idempotent: nothing left, nothing removed.
    assert standing.destroy(str(directory), prefix) == {"namespaces": [], "loop_devices": [], "files": []}


@pytest.mark.timeout(60)
def test_a_build_that_fails_half_way_leaves_nothing(tmp_path):
    directory = tmp_path / "lab"
    prefix = "fct" + os.urandom(2).hex()
    # Participants' disks too small for their partitions: fails after namespaces and the master exist.
    with pytest.raises(FleetcastError, match=r"sgdisk failed on .*p1\.disk"):
        standing.build(prefix, str(directory), ["p1"], participant_disk_size=64 * MiB)
    assert _namespaces(prefix) == []
    assert _loops_under(directory) == []
    assert not directory.exists()


def test_prefix_is_checked_before_anything_is_made(tmp_path):
    with pytest.raises(FleetcastError, match="must be 2 to 8 lower-case letters"):
        standing.build("Bad-Name", str(tmp_path / "lab"), ["p1"])
    assert not (tmp_path / "lab").exists()
