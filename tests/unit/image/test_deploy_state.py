# deploy_state: a deployed participant is recognised as unchanged only while its disks and identity
# are exactly what the last deploy left. Regular files as disks; nothing else is touched.
import os
import shutil
import subprocess

from ansible_collections.fleetcast.imaging.plugins.module_utils._identity import api
from ansible_collections.fleetcast.imaging.plugins.module_utils._image import fingerprint

MiB = 1 << 20
ENV = dict(os.environ, LC_ALL="C")
IDENTITY = {"hostname": "p1-old", "machine_id": "0" * 32}


def _disk(tmp_path):
    """A 32 MiB GPT disk file with an ext4 partition holding a few files; (path, free byte offset)."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "hostname").write_text("p1-old\n")
    (tree / "payload").write_bytes(os.urandom(300 * 1024))
    path = tmp_path / "disk.raw"
    with open(path, "wb") as handle:
        handle.truncate(32 * MiB)
    subprocess.run(["sgdisk", "-n1:2048:+24M", str(path)], check=True, capture_output=True, env=ENV)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", f"offset={2048 * 512}", "-d", str(tree), str(path), "24M"],
                   check=True, capture_output=True, env=ENV)
    return str(path), 2048 * 512 + 20 * MiB   # 20 MiB into a 24 MiB filesystem with 300 KiB used: free


def _poke(path, offset, data=b"\xff"):
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def test_a_deployed_host_is_unchanged_until_a_byte_it_uses_changes(tmp_path):
    path, free = _disk(tmp_path)
    stamp = fingerprint.stamp([path], "ab" * 32, IDENTITY)
    assert fingerprint.deployed_state(stamp, [path], "ab" * 32, IDENTITY)["unchanged"]
    _poke(path, free)   # a free filesystem block: not part of what the system holds
    assert fingerprint.deployed_state(stamp, [path], "ab" * 32, IDENTITY)["unchanged"]
    _poke(path, 2048 * 512 - 4096)   # the gap before the first partition (GRUB's core image lives there)
    state = fingerprint.deployed_state(stamp, [path], "ab" * 32, IDENTITY)
    assert state == {"unchanged": False, "reason": f"{path} changed since the last deploy"}


def test_another_image_devices_identity_or_no_record_mean_deploy(tmp_path):
    path, dummy = _disk(tmp_path)
    stamp = fingerprint.stamp([path], "ab" * 32, IDENTITY)
    other = tmp_path / "other.raw"
    shutil.copy(path, other)
    cases = [
        (None, [path], "ab" * 32, IDENTITY, "no earlier deploy is recorded for it"),
        (stamp, [path], "cd" * 32, IDENTITY, f"it was deployed with image {'ab' * 8}, not {'cd' * 8}"),
        (stamp, [str(other)], "ab" * 32, IDENTITY, f"it was deployed onto {path}, not {other}"),
        (stamp, [path], "ab" * 32, dict(IDENTITY, hostname="renamed"),
         "its identity differs from the one applied by the last deploy"),
    ]
    for recorded, devices, image_id, identity, reason in cases:
        assert fingerprint.deployed_state(recorded, devices, image_id, identity) == {"unchanged": False,
                                                                                     "reason": reason}


def test_identity_records_do_not_name_the_mount_path(tmp_path):
    """A record's notes held the random mount path, so every run rewrote every stored record."""
    records = []
    for name in ("fleetcast-root-abc", "fleetcast-root-xyz"):
        root = tmp_path / name
        (root / "etc").mkdir(parents=True)
        (root / "etc" / "hostname").write_text("lonely\n")
        records.append(api.snapshot("lonely", root=str(root), sysfs=str(tmp_path / "nosys")).notes)
    assert records[0] == records[1] and any("/etc/machine-id is absent" in note for note in records[0])
