import json
import os
import subprocess

import pytest

from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import IdentityError, ValidationError
from ansible_collections.fleetcast.imaging.plugins.module_utils._identity import api
from ansible_collections.fleetcast.imaging.plugins.module_utils._identity.record import IdentityRecord

from identity_trees import (build_linux_root, clear_tree, fake_sysfs, fingerprints, host, snapshot_tree, ssh_keys)

HOST_A, MASTER = host("hosta", 7), host("master", 9)


def _grep_master(tree, key_dir):
    """Every file below the root that still names the master's hostname, machine-id, IP or keys."""
    needles = [MASTER.name.encode(), MASTER.machine_id.encode(), MASTER.ip.encode(), MASTER.mac.encode(),
               MASTER.mac.upper().encode(), MASTER.name.upper().encode()]
    needles += [pub.split()[1] for priv, pub in ssh_keys(MASTER.name, key_dir).values()]
    needles += [priv for priv, pub in ssh_keys(MASTER.name, key_dir).values()]
    return sorted(path for path, (content, *rest) in tree.items()
                  if isinstance(content, bytes) and any(needle in content for needle in needles))


def _round_trip(root, tmp_path, snapshot_from=None):
    """Snapshot A, overwrite with M's tree; return (A's tree, A's record, sysfs view).

    `snapshot_from` takes the snapshot another way (from the device, once the tree is unmounted).
    """
    sysfs = fake_sysfs(str(tmp_path / "sys"), HOST_A)
    build_linux_root(root, HOST_A, str(tmp_path))
    original = snapshot_tree(root)
    if snapshot_from:
        record = snapshot_from(sysfs)
    else:
        record = api.snapshot("hosta", root=root, sysfs=sysfs)
    # the record survives JSON, as it does between the target and the controller
    record = IdentityRecord.from_dict(json.loads(record.to_json()))
    clear_tree(root)
    build_linux_root(root, MASTER, str(tmp_path), extra_key=True)
    return original, record, sysfs


def test_round_trip_restores_every_item_byte_for_byte(tmp_path):
    root = str(tmp_path / "root")
    os.makedirs(root)
    original, record, sysfs = _round_trip(root, tmp_path)
    assert record.summary["hostname"] == "hosta"
    assert record.summary["machine_id"] == HOST_A.machine_id
    assert record.summary["workgroup"] == "OFFICE" and record.summary["netbios_name"] == "HOSTA"
    assert sorted(record.summary["ssh_fingerprints"]) == sorted(fingerprints(ssh_keys("hosta", str(tmp_path))))
    assert HOST_A.ip in record.summary["addresses"] and HOST_A.mac in record.summary["configured_macs"]
    assert record.hardware["product_uuid"] == HOST_A.uuid and record.hardware["macs"] == [HOST_A.mac]
    secret_paths = {item.path for item in record.files if item.secret}
    assert "/etc/ssh/ssh_host_ed25519_key" in secret_paths
    assert "/etc/NetworkManager/system-connections/office.nmconnection" in secret_paths
    assert "s3cret" not in str(record.public_dict())

    check = api.apply(record, root=root, check_mode=True, sysfs=sysfs)
    assert check.changed and _grep_master(snapshot_tree(root), str(tmp_path))  # check mode wrote nothing
    assert any(d["before_header"] == "/etc/hostname" and d["after"] == "hosta\n" for d in check.diff)
    assert all("BEGIN OPENSSH" not in d["after"] for d in check.diff)

    result = api.apply(record, root=root, sysfs=sysfs)
    assert result.changed
    assert {c["path"] for c in result.changes} == {c["path"] for c in check.changes}
    restored = snapshot_tree(root)
    assert restored == original
    assert _grep_master(restored, str(tmp_path)) == []
    assert api.apply(record, root=root, sysfs=sysfs).changed is False


def test_round_trip_on_ext4_loop_device(loop_disk, tmp_path):
    disk = loop_disk(48 << 20, "linux.img")
    subprocess.run(["mkfs.ext4", "-q", "-F", disk.device], check=True, capture_output=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()

    def from_device(sysfs):
        subprocess.run(["umount", str(mnt)], check=True)
        try:
            return api.snapshot("hosta", device=disk.device, sysfs=sysfs)
        finally:
            subprocess.run(["mount", disk.device, str(mnt)], check=True)

    subprocess.run(["mount", disk.device, str(mnt)], check=True)
    try:
        original, record, sysfs = _round_trip(str(mnt), tmp_path, from_device)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    assert record.summary["hostname"] == "hosta" and record.file("/etc/ssh/ssh_host_ecdsa_key").secret
    result = api.apply(record, device=disk.device, sysfs=sysfs)
    assert result.changed
    subprocess.run(["mount", "-o", "ro", disk.device, str(mnt)], check=True)
    try:
        restored = snapshot_tree(str(mnt))
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    assert restored == original
    assert _grep_master(restored, str(tmp_path)) == []
    assert api.apply(record, device=disk.device, sysfs=sysfs).changed is False


def test_record_for_another_machine_is_refused_unless_forced(tmp_path):
    root = str(tmp_path / "root")
    os.makedirs(root)
    original, record, sysfs = _round_trip(root, tmp_path)
    other = fake_sysfs(str(tmp_path / "other-sys"), MASTER)
    before = snapshot_tree(root)
    with pytest.raises(ValidationError, match=r"hosta is for another machine: its SMBIOS UUID"):
        api.apply(record, root=root, sysfs=other)
    assert snapshot_tree(root) == before
    assert api.apply(record, root=root, sysfs=other, force=True).changed
    assert snapshot_tree(root) == original


def test_missing_files_are_reported_not_crashed_on(tmp_path):
    root = tmp_path / "bare"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hostname").write_text("lonely\n")
    record = api.snapshot("lonely", root=str(root), sysfs=str(tmp_path / "nosys"))
    assert record.summary["hostname"] == "lonely" and record.summary["machine_id"] is None
    assert any("/etc/machine-id is absent" in note for note in record.notes)
    assert record.hardware == {"product_uuid": None, "interfaces": [], "macs": []}


def test_secret_content_missing_from_record_is_refused_before_writing(tmp_path):
    root = str(tmp_path / "root")
    os.makedirs(root)
    original, record, sysfs = _round_trip(root, tmp_path)
    public = IdentityRecord.from_dict(record.public_dict())
    before = snapshot_tree(root)
    with pytest.raises(IdentityError, match="lacks the secret content of /etc/ssh/ssh_host_"):
        api.apply(public, root=root, sysfs=sysfs)
    assert snapshot_tree(root) == before


def test_without_pyyaml_netplan_is_kept_whole(tmp_path, monkeypatch):
    from ansible_collections.fleetcast.imaging.plugins.module_utils._identity import netconf
    monkeypatch.setattr(netconf, "yaml", None)
    root = str(tmp_path / "root")
    os.makedirs(root)
    original, record, sysfs = _round_trip(root, tmp_path)
    assert any("50-lan.yaml: PyYAML (python3-yaml) is not installed" in note for note in record.notes)
    assert api.apply(record, root=root, sysfs=sysfs).changed
    assert snapshot_tree(root) == original


def test_snapshot_of_the_running_system_reads_without_writing(tmp_path):
    record = api.snapshot("self", root="/", sysfs=str(tmp_path / "nosys"))
    assert record.os == "linux"
    try:
        with open("/etc/hostname") as handle:
            expected = handle.read().strip() or None
    except FileNotFoundError:
        expected = None
    assert record.summary["hostname"] == expected
    assert all(item.path.startswith("/etc/") or item.path.startswith("/var/") for item in record.files)


def test_master_items_the_host_never_had_are_removed_or_renamed(tmp_path):
    """A has no keytab, no dbus machine-id and no Samba name of its own; M's must not survive."""
    sysfs = fake_sysfs(str(tmp_path / "sys"), HOST_A)
    a_root, m_root = tmp_path / "a", tmp_path / "m"
    (a_root / "etc").mkdir(parents=True)
    (a_root / "etc" / "hostname").write_text("hosta.lab.example\n")
    (a_root / "etc" / "machine-id").write_text(HOST_A.machine_id + "\n")
    record = api.snapshot("hosta", root=str(a_root), sysfs=sysfs)
    build_linux_root(str(m_root), MASTER, str(tmp_path))
    os.unlink(m_root / "var/lib/dbus/machine-id")
    (m_root / "var/lib/dbus/machine-id").write_text(MASTER.machine_id + "\n")
    (m_root / "etc/krb5.keytab").write_bytes(b"\x05\x02master-keytab")
    assert "netbios name = MASTER" in (m_root / "etc/samba/smb.conf").read_text()

    check = api.apply(record, root=str(m_root), sysfs=sysfs, check_mode=True)
    planned = {(c["path"], c["action"]) for c in check.changes}
    assert {("/etc/krb5.keytab", "remove"), ("/var/lib/dbus/machine-id", "remove"),
            ("/etc/ssh/ssh_host_ed25519_key", "remove")} <= planned
    assert (m_root / "etc/krb5.keytab").exists()
    assert all("master-keytab" not in d["before"] for d in check.diff)  # a secret is never shown

    api.apply(record, root=str(m_root), sysfs=sysfs)
    assert not (m_root / "etc/krb5.keytab").exists() and not (m_root / "var/lib/dbus/machine-id").exists()
    assert not list((m_root / "etc/ssh").glob("ssh_host_*"))
    assert "netbios name = HOSTA\n" in (m_root / "etc/samba/smb.conf").read_text()
    remaining = {path for path, (content, *rest) in snapshot_tree(str(m_root)).items()
                 if isinstance(content, bytes) and (MASTER.machine_id.encode() in content
                                                    or MASTER.name.upper().encode() in content)}
    assert remaining == set()
    assert api.apply(record, root=str(m_root), sysfs=sysfs).changed is False


def test_a_network_file_only_the_master_had_is_removed_when_its_values_have_no_counterpart(tmp_path):
    """A used DHCP through NetworkManager; the image configures a static address in netplan."""
    sysfs = fake_sysfs(str(tmp_path / "sys"), HOST_A)
    a_root, m_root = tmp_path / "a", tmp_path / "m"
    nm = "[connection]\nid=wired\ntype=ethernet\ninterface-name=lan0\n\n[ipv4]\nmethod=auto\n"
    for root, name in ((a_root, "hosta"), (m_root, "master")):
        (root / "etc/network").mkdir(parents=True)
        (root / "etc/hostname").write_text(name + "\n")
        (root / "etc/network/interfaces").write_text("auto lo\niface lo inet loopback\n")
    (a_root / "etc/NetworkManager/system-connections").mkdir(parents=True)
    (a_root / "etc/NetworkManager/system-connections/wired.nmconnection").write_text(nm)
    os.chmod(a_root / "etc/NetworkManager/system-connections/wired.nmconnection", 0o600)
    (m_root / "etc/netplan").mkdir()
    (m_root / "etc/netplan/50-master.yaml").write_text(
        "network:\n  version: 2\n  ethernets:\n    lan0:\n      addresses: [%s/24]\n" % MASTER.ip)
    record = api.snapshot("hosta", root=str(a_root), sysfs=sysfs)

    check = api.apply(record, root=str(m_root), sysfs=sysfs, check_mode=True)
    assert {"path": "/etc/netplan/50-master.yaml", "item": "network:netplan", "action": "remove",
            "mode": "0644", "secret": False} in check.changes
    assert any(note.startswith("/etc/netplan/50-master.yaml: the host had no such file") for note in check.notes)
    assert (m_root / "etc/netplan/50-master.yaml").exists()

    api.apply(record, root=str(m_root), sysfs=sysfs)
    assert snapshot_tree(str(m_root)) == snapshot_tree(str(a_root))
    assert api.apply(record, root=str(m_root), sysfs=sysfs).changed is False


def test_hosts_is_the_hosts_own_or_loses_the_masters_lines(tmp_path):
    """A's /etc/hosts comes back whole; a host that had none keeps the image's without M's name or address."""
    sysfs = fake_sysfs(str(tmp_path / "sys"), HOST_A)
    a_root, m_root = tmp_path / "a", tmp_path / "m"
    build_linux_root(str(a_root), HOST_A, str(tmp_path))
    build_linux_root(str(m_root), MASTER, str(tmp_path))
    own = f"127.0.0.1\tlocalhost\n127.0.1.1\thosta.corp.example hosta ws7 # desk 7\n{HOST_A.ip}\thosta.corp.example\n"
    (a_root / "etc/hosts").write_text(own)
    image = (f"127.0.0.1\tlocalhost\n127.0.1.1\tmaster.lab.example master\n"
             f"10.20.0.53\tdns.lab.example\n{MASTER.ip}\tmaster.lab.example\n")
    (m_root / "etc/hosts").write_text(image)
    record = api.snapshot("hosta", root=str(a_root), sysfs=sysfs)
    api.apply(record, root=str(m_root), sysfs=sysfs)
    assert (m_root / "etc/hosts").read_text() == own
    assert api.apply(record, root=str(m_root), sysfs=sysfs).changed is False

    os.unlink(a_root / "etc/hosts")
    record = api.snapshot("hosta", root=str(a_root), sysfs=sysfs)
    clear_tree(str(m_root))
    build_linux_root(str(m_root), MASTER, str(tmp_path))
    (m_root / "etc/hosts").write_text(image)
    api.apply(record, root=str(m_root), sysfs=sysfs)
    assert (m_root / "etc/hosts").read_text() == (
        "127.0.0.1\tlocalhost\n127.0.1.1\thosta.lab.example hosta\n10.20.0.53\tdns.lab.example\n")
