"""The identity roles with a vault-encrypted record store, run through ansible-playbook.

identity_snapshot writes each record as an ansible-vault file when a vault password is set (the
records hold SSH host private keys); identity_reapply reads it back in a later run; a missing or
wrong password fails the host with one sentence naming it and its record.
"""
import hashlib
import json
import os
import shutil
import stat
import subprocess
import uuid

import pytest

from ansible_collections.fleetcast.imaging.plugins.module_utils._identity import store
from ansible_collections.fleetcast.imaging.plugins.module_utils._lab import disk_tools, loopdisk, standing
from ansible_collections.fleetcast.imaging.plugins.module_utils._lab.machine import LabMachine

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
VENV_BIN = os.path.join(ROOT, ".venv", "bin")
PASSWORD = "correct horse battery staple"
MiB = 1 << 20


def _machine(name, address, mac):
    return LabMachine(name=name, role="participant", netns="", address=address, mac=mac,
                      hostname=name + "-old", machine_id=uuid.uuid4().hex)


def _hostname_on(disk_file):
    offset, size = disk_tools.partition_bounds(disk_file, 1)   # the dirty disk's root
    window = loopdisk.attach(disk_file, offset=offset, sizelimit=size, read_only=True)
    try:
        return subprocess.run(["debugfs", "-R", "cat /etc/hostname", window], capture_output=True,
                              text=True, check=True).stdout
    finally:
        loopdisk.detach(window)


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(MiB), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_on(disk_file, inner, partition=1):
    offset, size = disk_tools.partition_bounds(disk_file, partition)
    window = loopdisk.attach(disk_file, offset=offset, sizelimit=size, read_only=True)
    try:
        return subprocess.run(["debugfs", "-R", f"dump {inner} /dev/stdout", window], capture_output=True,
                              check=True).stdout
    finally:
        loopdisk.detach(window)


def _no_secret_in(output, disk_file):
    """-vvvv --diff output holds no private key, no vault password and none of the disk's key bytes."""
    if "PRIVATE KEY" in output:
        at = output.index("PRIVATE KEY")
        raise AssertionError(output[at - 3000:at + 300])
    assert PASSWORD not in output
    key = _read_on(disk_file, "/etc/ssh/ssh_host_ed25519_key")
    body = b"".join(key.splitlines()[1:-1]).decode()
    assert body and body[:40] not in output.replace("\n", "").replace("\\n", "")


@pytest.fixture
def run_role(tmp_path):
    inventory = tmp_path / "inventory.yml"
    inventory.write_text("all:\n  hosts:\n    vh:\n      ansible_connection: local\n"
                         "      ansible_python_interpreter: /usr/bin/python3\n")

    def run(role, device, verbose=False, **extra_vars):
        playbook = tmp_path / f"{role}.yml"
        playbook.write_text(f"- hosts: vh\n  gather_facts: false\n  roles: [fleetcast.imaging.{role}]\n")
        extra = dict(dict(imaging_devices=[device], imaging_identity_store=str(tmp_path / "store"),
                          identity_snapshot_check_conflicts=False), **extra_vars)
        # a file, as a vaulted vars file would be: -vvvv prints the command line
        extra_file = tmp_path / f"{role}-vars.json"
        extra_file.write_text(json.dumps(extra))
        env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "tests", "ansible.cfg"),
                   ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".build", "collections"),
                   ANSIBLE_NOCOLOR="1", LC_ALL="C.UTF-8")
        return subprocess.run([os.path.join(VENV_BIN, "ansible-playbook"), "-i", str(inventory),
                               str(playbook), "-e", "@" + str(extra_file)] + (["-vvvv", "--diff"] if verbose else []),
                              capture_output=True, text=True, env=env, timeout=120, check=False)
    return run


@pytest.mark.timeout(300)   # six role runs, two of them -vvvv
def test_vault_encrypted_store_round_trip(loop_disk, run_role, tmp_path):
    old = loop_disk(192 * MiB, "old.img")
    standing.write_dirty_participant(old.path, _machine("vh", "10.231.9.13", "02:00:00:00:09:13"), "10.231.9")
    fresh = loop_disk(192 * MiB, "fresh.img")
    standing.write_dirty_participant(fresh.path, _machine("other", "10.231.9.14", "02:00:00:00:09:14"),
                                     "10.231.9")

    snap = run_role("identity_snapshot", old.device, verbose=True, imaging_identity_vault_password=PASSWORD)
    assert snap.returncode == 0, snap.stdout[-3000:]
    _no_secret_in(snap.stdout + snap.stderr, old.path)
    stored = tmp_path / "store" / "vh.json"
    # the engine reads exactly what the role wrote (one store format, ansible-core's vault library)
    assert store.load_record(str(stored), vault_password=PASSWORD).summary["hostname"] == "vh-old"
    text = stored.read_text()
    assert text.startswith("$ANSIBLE_VAULT;") and "vh-old" not in text and "ssh_host" not in text
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    password_file = tmp_path / "vault-password"
    password_file.write_text(PASSWORD + "\n")
    shown = subprocess.run([os.path.join(VENV_BIN, "ansible-vault"), "view", "--vault-password-file",
                            str(password_file), str(stored)], capture_output=True, text=True, check=True)
    data = json.loads(shown.stdout)
    assert data["record"]["summary"]["hostname"] == "vh-old"
    assert "ssh_host_ed25519_key" in json.dumps(data["secrets"])

    before = _sha256(fresh.path)
    missing = run_role("identity_reapply", fresh.device, identity_reapply_force=True)
    assert missing.returncode != 0
    assert f"vh: the record stored in {stored} is vault-encrypted: set imaging_identity_vault_password." \
        in missing.stdout.replace("\n", " ").replace("  ", " ")
    wrong = run_role("identity_reapply", fresh.device, identity_reapply_force=True,
                     imaging_identity_vault_password="wrong")
    assert wrong.returncode != 0
    assert f"vh: the record stored in {stored} cannot be read" in wrong.stdout.replace("\n", " ")
    assert _sha256(fresh.path) == before, "a record that cannot be read must change nothing"

    applied = run_role("identity_reapply", fresh.device, verbose=True, identity_reapply_force=True,
                       imaging_identity_vault_password=PASSWORD)
    assert applied.returncode == 0, applied.stdout[-3000:]
    _no_secret_in(applied.stdout + applied.stderr, old.path)
    assert "Check that the system now holds every identity item of the record" in applied.stdout
    assert _hostname_on(fresh.path) == "vh-old\n"

    # A later snapshot reads the encrypted record back (the store wins over a disk with another identity).
    again = run_role("identity_snapshot", fresh.device, imaging_identity_vault_password=PASSWORD,
                     identity_snapshot_refresh=False)
    assert again.returncode == 0, again.stdout[-3000:]

    # The conflict check reads the whole store, not only the play's hosts (a --limit run): a stored
    # host "other" with vh's identity (vault-encrypted, like every record here) is found.
    shutil.copy(stored, tmp_path / "store" / "other.json")
    conflict = run_role("identity_snapshot", fresh.device, imaging_identity_vault_password=PASSWORD,
                        identity_snapshot_check_conflicts=True)
    assert conflict.returncode != 0
    flat = " ".join(conflict.stdout.split())
    assert "Identity conflicts across the inventory: hostname vh-old is shared by other, vh" in flat, flat[-3000:]
    assert "ssh-host-key SHA256:" in flat


@pytest.mark.timeout(240)
def test_blank_participant_gets_the_identity_its_inventory_gives(loop_disk, run_role, tmp_path):
    """A zeroed disk and no stored record: the inventory's identity, fresh machine-id and host keys."""
    blank = loop_disk(160 * MiB, "blank.img")
    identity = {"hostname": "blank1", "interfaces": [{"mac": "02:00:00:00:09:50", "name": "lab0",
                                                      "addresses": ["10.231.9.50/24"], "gateway": "10.231.9.1"}]}
    snap = run_role("identity_snapshot", blank.device, verbose=True, imaging_identity=identity)
    assert snap.returncode == 0, snap.stdout[-3000:]
    assert "vh: using the identity the inventory gives, because the disk holds no system and no record" \
        in " ".join(snap.stdout.split())
    assert "PRIVATE KEY" not in snap.stdout
    record = store.load_record(str(tmp_path / "store" / "vh.json"))
    assert record.assigned["hostname"] == "blank1" and record.summary["addresses"] == ["10.231.9.50"]

    # the multicast session lays the master's system down on the disk
    master = _machine("master", "10.231.9.2", "02:00:00:00:09:02")
    master.hostname = "master.lab.fleetcast.test"
    standing.write_master_system(blank.path, master, "10.231.9")
    master_keys = _read_on(blank.path, "/etc/ssh/ssh_host_ed25519_key.pub", partition=2)

    applied = run_role("identity_reapply", blank.device)
    assert applied.returncode == 0, applied.stdout[-3000:]
    read = {inner: _read_on(blank.path, inner, partition=2) for inner in
            ("/etc/hostname", "/etc/machine-id", "/etc/ssh/ssh_host_ed25519_key.pub", "/etc/hosts",
             "/etc/netplan/50-fleetcast.yaml")}
    assert read["/etc/hostname"] == b"blank1\n"
    assert read["/etc/machine-id"].decode().strip() == record.summary["machine_id"] != master.machine_id
    assert read["/etc/ssh/ssh_host_ed25519_key.pub"] == record.file_data("/etc/ssh/ssh_host_ed25519_key.pub")
    assert read["/etc/ssh/ssh_host_ed25519_key.pub"] != master_keys
    assert b"10.231.9.50/24" in read["/etc/netplan/50-fleetcast.yaml"]
    # no value of the master remains: its netplan file is gone, its name and address with it
    assert _read_on(blank.path, "/etc/netplan/01-fleetcast-lab.yaml", partition=2) == b""
    assert b"master" not in read["/etc/hosts"] and b"10.231.9.2" not in b"".join(read.values())

    # a new identity on purpose, asked again: the stored record of the same assignment is kept, no new keys
    again = run_role("identity_snapshot", blank.device, imaging_identity=identity, imaging_identity_assign=True)
    assert again.returncode == 0, again.stdout[-3000:]
    assert "the same assigned identity is stored" in " ".join(again.stdout.split())
    assert store.load_record(str(tmp_path / "store" / "vh.json")).summary == record.summary
