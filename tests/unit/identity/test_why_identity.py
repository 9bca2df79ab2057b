"""One test per case of issue 11 ("Identity lost or left over, green"), each failing before the fix."""

import os

import pytest

from ansible_collections.fleetcast.imaging.plugins.module_utils._identity import api, netconf, windows

from identity_trees import build_windows_fleet_root, fake_sysfs, host

A = host("hosta", 7)
STATIC = ("network:\n  version: 2\n  ethernets:\n    eth0:\n      addresses: [10.20.0.7/24, 'fd00::7/64']\n"
          "      routes:\n        - to: default\n          via: 10.20.0.1\n      gateway6: 'fd00::1'\n")
MASTER_STATIC = STATIC.replace("10.20.0.7", "10.99.0.9").replace("fd00::7", "fd99::9")
DHCP = "network:\n  version: 2\n  ethernets:\n    eth0:\n      dhcp4: true\n"


def _tree(root, files):
    for path, text in files.items():
        full = os.path.join(root, path.lstrip("/"))
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as handle:
            handle.write(text if isinstance(text, bytes) else text.encode())
    return root


def _apply(tmp_path, host_files, master_files):
    sysfs = fake_sysfs(str(tmp_path / "sys"), A)
    base = {"/etc/hostname": "x\n", "/etc/os-release": "ID=debian\n"}
    record = api.snapshot("hosta", root=_tree(str(tmp_path / "host"), dict(base, **host_files)), sysfs=sysfs)
    clone = _tree(str(tmp_path / "clone"), dict(base, **master_files))
    result = api.apply(record, root=clone, sysfs=sysfs)
    return clone, result


def _read(root, path):
    with open(os.path.join(root, path.lstrip("/")), encoding="utf-8") as handle:
        return handle.read()


def test_master_on_dhcp_host_static_keeps_every_host_value(tmp_path):
    clone, dummy = _apply(tmp_path, {"/etc/netplan/50-lan.yaml": STATIC}, {"/etc/netplan/50-lan.yaml": DHCP})
    text = _read(clone, "/etc/netplan/50-lan.yaml")
    assert "10.20.0.7/24" in text and "fd00::7/64" in text and "via: 10.20.0.1" in text and "dhcp4" not in text


@pytest.mark.parametrize("yaml_present", [True, False])
def test_master_netplan_file_of_another_name_does_not_stay_beside_the_hosts(tmp_path, monkeypatch, yaml_present):
    if not yaml_present:
        monkeypatch.setattr(netconf, "yaml", None)
    clone, result = _apply(tmp_path, {"/etc/netplan/50-cloud-init.yaml": STATIC},
                           {"/etc/netplan/01-netcfg.yaml": MASTER_STATIC})
    assert os.listdir(os.path.join(clone, "etc/netplan")) == ["50-cloud-init.yaml"]
    assert any(note.startswith("/etc/netplan/01-netcfg.yaml: the host had no such file") for note in result.notes)


def test_items_that_were_not_carried_are_carried(tmp_path):
    nm = "[connection]\nid=wired\nuuid={}\ntype=ethernet\n\n[ipv4]\nmethod=auto\n"
    host_files = {
        "/etc/systemd/network/10-lan.link": "[Match]\nMACAddress=52:54:00:00:00:07\n\n[Link]\nName=lan0\n",
        "/etc/udev/rules.d/70-persistent-net.rules":
            'SUBSYSTEM=="net", ATTR{address}=="52:54:00:00:00:07", NAME="lan0"\n',
        "/etc/NetworkManager/system-connections/wired.nmconnection": nm.format("11111111-1111-4111-8111-111111111111"),
        "/var/lib/NetworkManager/secret_key": b"host-secret-key-bytes",
        "/etc/network/interfaces": "iface lan0 inet manual\n    post-up ip addr add 10.20.0.7/24 dev lan0\n",
    }
    master_files = {
        "/etc/systemd/network/10-lan.link": "[Match]\nMACAddress=52:54:00:00:00:09\n\n[Link]\nName=lan0\n",
        "/etc/udev/rules.d/70-persistent-net.rules":
            'SUBSYSTEM=="net", ATTR{address}=="52:54:00:00:00:09", NAME="lan0"\n',
        "/etc/NetworkManager/system-connections/wired.nmconnection": nm.format("99999999-9999-4999-8999-999999999999"),
        "/var/lib/NetworkManager/secret_key": b"master-secret-key-bytes",
        "/etc/network/interfaces": "iface lan0 inet manual\n    post-up ip addr add 10.99.0.9/24 dev lan0\n",
    }
    clone, dummy = _apply(tmp_path, host_files, master_files)
    for path, content in host_files.items():
        with open(os.path.join(clone, path.lstrip("/")), "rb") as handle:
            assert handle.read() == (content if isinstance(content, bytes) else content.encode()), path


def test_removed_keyfile_psk_is_not_in_the_diff(tmp_path):
    sysfs = fake_sysfs(str(tmp_path / "sys"), A)
    wifi = "[connection]\nid=office-wifi\ntype=wifi\n\n[wifi-security]\nkey-mgmt=wpa-psk\npsk=master-wifi-psk\n"
    record = api.snapshot("hosta", root=_tree(str(tmp_path / "host"), {"/etc/hostname": "hosta\n"}), sysfs=sysfs)
    clone = _tree(str(tmp_path / "clone"), {"/etc/hostname": "m\n",
                                            "/etc/NetworkManager/system-connections/office-wifi": wifi})
    result = api.apply(record, root=clone, sysfs=sysfs, check_mode=True)
    assert any(change["action"] == "remove" and change["secret"] for change in result.changes)
    assert "master-wifi-psk" not in repr(result.diff)


def _nic(slot, net, static, guid):
    return {"guid": guid, "instance": f"PCI\\VEN_8086&DEV_100E&SUBSYS_001E8086\\3&2411E6FE&0&{slot:02X}",
            "mac": f"52:54:{net:02x}:00:00:{slot:02x}", "mac_in_registry": False, "static": static,
            "ip": f"10.{net}.{slot}.5", "gateway": f"10.{net}.{slot}.1", "lease": f"10.{net + 1}.{slot}.5"}


@pytest.mark.parametrize("current", [1, 2])
def test_windows_host_with_two_static_nics_gets_its_own_addresses_in_both_control_sets(tmp_path, current):
    host_spec = {"name": "HOSTA", "current": current,
                 "nics": [_nic(0, 20, True, "{AAAAAAAA-0000-4000-8000-000000000000}"),
                          _nic(1, 20, True, "{AAAAAAAA-0001-4000-8000-000000000001}")]}
    master_spec = {"name": "MASTERPC", "current": 3 - current,
                   "nics": [_nic(0, 70, True, "{BBBBBBBB-0000-4000-8000-000000000000}"),
                            _nic(1, 70, True, "{BBBBBBBB-0001-4000-8000-000000000001}")]}
    sysfs = fake_sysfs(str(tmp_path / "sys"), A)
    build_windows_fleet_root(str(tmp_path / "host"), host_spec)
    build_windows_fleet_root(str(tmp_path / "clone"), master_spec)
    record = api.snapshot("hosta", root=str(tmp_path / "host"), sysfs=sysfs)
    api.apply(record, root=str(tmp_path / "clone"), sysfs=sysfs)
    path = os.path.join(str(tmp_path / "clone"), "Windows", "System32", "config", "SYSTEM")
    with open(path, "rb") as handle:
        data = handle.read()
    for value in ("10.70.0.5", "10.70.1.5", "10.70.0.1", "10.70.1.1", "MASTERPC"):
        assert value.encode("utf-16-le") not in data, value
    hive = windows.Hive(path)
    for control_set in ("ControlSet001", "ControlSet002"):
        interfaces = control_set + "\\Services\\Tcpip\\Parameters\\Interfaces\\"
        assert hive.strings(interfaces + master_spec["nics"][0]["guid"], "IPAddress") == ["10.20.0.5"]
        assert hive.strings(interfaces + master_spec["nics"][1]["guid"], "IPAddress") == ["10.20.1.5"]


FORMAT_TREES = {
    "netplan": {"/etc/netplan/01-netcfg.yaml": MASTER_STATIC},
    "networkmanager": {"/etc/NetworkManager/system-connections/wired.nmconnection":
                       "[connection]\nid=wired\nuuid=99999999-9999-4999-8999-999999999999\n\n[ipv4]\n"
                       "address1=10.99.0.9/24,10.99.0.1\nmethod=manual\n"},
    "networkd": {"/etc/systemd/network/10-lan.network": "[Network]\nAddress=10.99.0.9/24\n"},
    "ifupdown": {"/etc/network/interfaces": "auto eth0\niface eth0 inet static\n    address 10.99.0.9/24\n"},
    "ifcfg": {"/etc/sysconfig/network-scripts/ifcfg-eth0": "DEVICE=eth0\nIPADDR=10.99.0.9\nPREFIX=24\n"},
}


@pytest.mark.parametrize("fmt", sorted(FORMAT_TREES))
def test_assigned_identity_is_written_in_the_images_format_and_no_master_value_stays(tmp_path, fmt):
    sysfs = fake_sysfs(str(tmp_path / "sys"), A)
    spec = {"hostname": "new1", "interfaces": [
        {"mac": "52:54:00:00:00:07", "name": "eth0", "addresses": ["10.20.0.50/24", "fd00::50/64"],
         "gateway": "10.20.0.1", "gateway6": "fd00::1", "dns": ["10.20.0.53"]},
        {"mac": "52:54:00:00:00:08", "name": "eth1"}]}
    record = api.assign("new1", spec, sysfs=sysfs)
    clone = _tree(str(tmp_path / "clone"), dict({"/etc/hostname": "master\n", "/etc/machine-id": "9" * 32 + "\n",
                                                 "/etc/hosts": "127.0.1.1 master\n10.99.0.9 master\n"},
                                                **FORMAT_TREES[fmt]))
    api.apply(record, root=clone, sysfs=sysfs)
    tree = {}
    for directory, dummy, names in os.walk(clone):
        for name in names:
            with open(os.path.join(directory, name), "rb") as handle:
                tree[os.path.relpath(os.path.join(directory, name), clone)] = handle.read()
    written = b"".join(data for path, data in tree.items() if path.startswith("etc/") and "ssh" not in path)
    assert b"10.20.0.50" in written and b"10.20.0.1" in written, fmt
    assert b"fd00::50" in written and b"fd00::1" in written, fmt
    for master_value in (b"10.99.0.9", b"99999999-9999", b"master", b"9" * 32):
        assert master_value not in written, (fmt, master_value)
    assert tree["etc/hostname"] == b"new1\n"
    assert api.apply(record, root=clone, sysfs=sysfs).changed is False


def test_assigned_windows_identity_needs_the_answer_file_for_static_addresses(tmp_path):
    sysfs = fake_sysfs(str(tmp_path / "sys"), A)
    # two NICs: which registry interface is the host's one cannot be told, so the answer file carries it
    build_windows_fleet_root(str(tmp_path / "clone"), {"name": "MASTERPC", "current": 1,
                                                       "nics": [_nic(0, 70, True, "{BBBBBBBB-0000-4000-8000-0000000000AA}"),
                                                                _nic(1, 70, True, "{BBBBBBBB-0000-4000-8000-0000000000AB}")]})
    spec = {"os": "windows", "hostname": "new-pc", "workgroup": "OFFICE",
            "interfaces": [{"mac": "52:54:00:00:00:07", "addresses": ["10.20.0.50/24"], "gateway": "10.20.0.1"}]}
    record = api.assign("new-pc", spec, sysfs=sysfs)
    with pytest.raises(Exception, match="no interface in the restored registry.*give unattend"):
        api.apply(record, root=str(tmp_path / "clone"), sysfs=sysfs)
    result = api.apply(record, root=str(tmp_path / "clone"), sysfs=sysfs, unattend=True)
    assert any("answer file carries them by MAC" in note for note in result.notes)
    xml = windows.unattend_xml(record)
    assert "<ComputerName>NEW-PC</ComputerName>" in xml and "10.20.0.50/24" in xml and "52-54-00-00-00-07" in xml
    with open(os.path.join(str(tmp_path / "clone"), "Windows", "System32", "config", "SYSTEM"), "rb") as handle:
        data = handle.read()
    for value in ("MASTERPC", "10.70.0.5", "10.70.0.1", "10.70.1.5"):
        assert value.encode("utf-16-le") not in data, value


def test_assigned_identity_reads_back_as_assigned(tmp_path):
    """What a snapshot of the written clone says is what the assigned record says (deploy compares them)."""
    sysfs = fake_sysfs(str(tmp_path / "sys"), A)
    record = api.assign("new2", {"interfaces": [{"mac": "52:54:00:00:00:07", "addresses": ["10.20.0.51/24"]}]},
                        sysfs=sysfs)
    clone = _tree(str(tmp_path / "clone"), dict({"/etc/hostname": "master\n"}, **FORMAT_TREES["netplan"]))
    api.apply(record, root=clone, sysfs=sysfs)
    back = api.snapshot("new2", root=clone, sysfs=sysfs).summary
    for key in ("hostname", "machine_id", "ssh_fingerprints", "addresses"):
        assert back[key] == record.summary[key], key
