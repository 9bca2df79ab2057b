"""The identity rule as a property, over random (host layout, master layout) pairs.

After re-apply, every identity file of the clone is the host's own where the host had one, and no
value of the master is left anywhere in the tree; or the apply fails naming the item. Layouts are
drawn (seeded, so a failure is reproducible from the seed it prints) from every supported format,
with different file names, extra and missing interfaces, static and DHCP, with and without PyYAML.
Windows: hives built with hivex, one to three NICs, Select\\Current 1 or 2, static and DHCP.
"""

import os
import random
import shutil

import pytest

from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import IdentityError
from ansible_collections.fleetcast.imaging.plugins.module_utils._identity import api, netconf, windows
from ansible_collections.fleetcast.imaging.plugins.module_utils._identity.record import IdentityRecord

import layouts
from identity_trees import fake_sysfs, host

LINUX_PAIRS = 80


@pytest.fixture(autouse=True)
def no_fsync(monkeypatch):
    """The trees are throw-away: skip the engine's fsync, which costs seconds on a busy shared disk."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


def _apply_pair(tmp_path, seed, monkeypatch):
    rng = random.Random(seed)
    host_layout = layouts.draw(rng, f"host{seed % 97}", 20 + seed % 50)
    master_layout = layouts.draw(rng, "master", 99)
    without_yaml = rng.random() < 0.3
    base = tmp_path / str(seed)
    host_root, clone = str(base / "host"), str(base / "clone")
    layouts.write_tree(host_root, host_layout)
    layouts.write_tree(clone, master_layout)
    sysfs = fake_sysfs(str(base / "sys"), host("h", 1), macs=host_layout.ifaces[0].mac if host_layout.ifaces else None)
    with monkeypatch.context() as patch:
        if without_yaml:
            patch.setattr(netconf, "yaml", None)
        record = api.snapshot("h", root=host_root, sysfs=sysfs)
        record = IdentityRecord.from_dict(record.to_dict())
        api.apply(record, root=clone, sysfs=sysfs)
    return host_layout, master_layout, layouts.read_tree(clone), record


@pytest.mark.parametrize("block", range(4))
def test_linux_clone_holds_every_host_value_and_no_master_value(tmp_path, monkeypatch, block):
    for seed in range(block * LINUX_PAIRS // 4, (block + 1) * LINUX_PAIRS // 4):
        host_layout, master_layout, tree, record = _apply_pair(tmp_path, seed, monkeypatch)
        context = f"seed {seed}: host {host_layout.formats}, master {master_layout.formats}"
        for path, data in host_layout.files.items():
            assert tree.get(path) == data, f"{context}: {path} is not the host's"
        left = sorted({path for path, data in tree.items() for needle in master_layout.needles if needle in data})
        assert left == [], f"{context}: the master's values remain in {left}"
        # the record shows no secret, and the apply is idempotent
        assert "psk-" not in str(record.public_dict()) and "PRIVATE KEY" not in str(record.public_dict())
        assert api.apply(record, root=str(tmp_path / str(seed) / "clone"),
                         sysfs=str(tmp_path / str(seed) / "sys")).changed is False, context
        shutil.rmtree(tmp_path / str(seed))


# --- Windows ----------------------------------------------------------------------------------

def _windows_pair(tmp_path, seed):
    from identity_trees import build_windows_fleet_root
    rng = random.Random(seed)

    def machine(name, net, same_guids_as=None):
        count = rng.randint(1, 3)
        nics = []
        for slot in range(count):
            static = rng.random() < 0.6
            guid = (same_guids_as[slot]["guid"] if same_guids_as and slot < len(same_guids_as) and rng.random() < 0.3
                    else "{%08X-%04X-4E2F-9B1D-%012X}" % (rng.getrandbits(32), rng.getrandbits(16), rng.getrandbits(48)))
            nics.append({"guid": guid, "instance": f"PCI\\VEN_8086&DEV_100E&SUBSYS_001E8086\\3&2411E6FE&0&{slot:02X}",
                         "mac": f"52:54:{net:02x}:00:00:{slot:02x}", "mac_in_registry": rng.random() < 0.5,
                         "static": static, "ip": f"10.{net}.{slot}.{rng.randrange(2, 250)}",
                         "gateway": f"10.{net}.{slot}.1", "lease": f"10.{net + 1}.{slot}.{rng.randrange(2, 250)}"})
        return {"name": name, "nics": nics, "current": rng.choice([1, 2]), "net": net}

    host_spec = machine(f"HOST{seed}", 20)
    master_spec = machine("MASTERPC", 70, same_guids_as=host_spec["nics"])
    base = tmp_path / f"w{seed}"
    build_windows_fleet_root(str(base / "host"), host_spec)
    build_windows_fleet_root(str(base / "clone"), master_spec)
    sysfs = fake_sysfs(str(base / "sys"), host("h", 1), macs=host_spec["nics"][0]["mac"])
    return rng, host_spec, master_spec, base, sysfs


def _hive_bytes(root):
    with open(os.path.join(root, "Windows", "System32", "config", "SYSTEM"), "rb") as handle:
        return handle.read()


def test_windows_clone_holds_every_host_nic_and_no_master_value(tmp_path):
    outcomes = set()
    for seed in range(60):
        rng, host_spec, master_spec, base, sysfs = _windows_pair(tmp_path, seed)
        record = api.snapshot("h", root=str(base / "host"), sysfs=sysfs)
        unattend = rng.random() < 0.5
        before = _hive_bytes(str(base / "clone"))
        placed = len(master_spec["nics"])
        unplaced = [nic for nic in host_spec["nics"][placed:] if nic["static"]]
        known = [nic for nic in unplaced
                 if nic["mac_in_registry"] or (len(host_spec["nics"]) == 1)]
        context = f"seed {seed}: host {len(host_spec['nics'])} NICs (Current {host_spec['current']}), " \
                  f"master {placed} (Current {master_spec['current']}), unattend {unattend}"
        if unplaced and not (unattend and len(known) == len(unplaced)):
            with pytest.raises(IdentityError, match=r"static TCP/IP settings of h's interface .* no interface"):
                api.apply(record, root=str(base / "clone"), sysfs=sysfs, unattend=unattend)
            assert _hive_bytes(str(base / "clone")) == before, context
            outcomes.add("refused")
            continue
        api.apply(record, root=str(base / "clone"), sysfs=sysfs, unattend=unattend)
        outcomes.add("applied")
        hive = windows.Hive(os.path.join(str(base / "clone"), "Windows", "System32", "config", "SYSTEM"))
        for control_set in ("ControlSet001", "ControlSet002"):
            tcpip = control_set + "\\Services\\Tcpip\\Parameters"
            assert hive.string(control_set + "\\Control\\ComputerName\\ComputerName", "ComputerName") == \
                host_spec["name"], context
            assert hive.string(tcpip, "Hostname") == host_spec["name"].lower(), context
            by_instance = {}
            base_class = control_set + "\\Control\\Class\\" + windows.NET_CLASS
            for child in hive.children(base_class):
                by_instance[hive.string(base_class + "\\" + child, "DeviceInstanceID")] = \
                    hive.string(base_class + "\\" + child, "NetCfgInstanceId")
            for nic in host_spec["nics"][:placed]:
                key = tcpip + "\\Interfaces\\" + by_instance[nic["instance"]]
                assert hive.dword(key, "EnableDHCP") == (0 if nic["static"] else 1), context
                assert hive.strings(key, "IPAddress") == ([nic["ip"]] if nic["static"] else []), context
                assert hive.strings(key, "DefaultGateway") == ([nic["gateway"]] if nic["static"] else []), context
        data = _hive_bytes(str(base / "clone"))
        needles = ["MASTERPC", "masterpc"] + [nic[k] for nic in master_spec["nics"] for k in ("ip", "gateway", "lease")]
        assert [n for n in needles if n.encode("utf-16-le") in data] == [], context
        if unattend and unplaced:
            xml = windows.unattend_xml(record)
            assert all(nic["ip"] in xml for nic in unplaced), context
        assert api.apply(record, root=str(base / "clone"), sysfs=sysfs, unattend=unattend).changed is False, context
        shutil.rmtree(base)
    assert outcomes == {"refused", "applied"}
