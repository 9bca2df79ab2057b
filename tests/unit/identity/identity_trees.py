"""Builders for the identity tests: Linux root trees with every identity item, fake sysfs views,
and registry hives made from scratch (no Windows needed)."""

import os
import shutil
import struct
import subprocess
from dataclasses import dataclass

NETPLAN = """# written by the installer
network:
  version: 2
  renderer: networkd
  ethernets:
    lan0:
      match:
        macaddress: "{mac}"
      set-name: lan0
      dhcp4: false
      addresses:
        - {ip}/24
        - {ip6}/64
      routes:
        - to: default
          via: 10.20.0.1
      nameservers:
        addresses: [10.20.0.53]
      mtu: 9000
"""

NM = """[connection]
id=office
uuid=4f1e0c1a-95b3-4c8e-9d43-0c0d0a0b0c0d
type=ethernet
interface-name=lan0

[ethernet]
mac-address={mac_upper}

[ipv4]
address1={ip}/24,10.20.0.1
dns=10.20.0.53;
method=manual

[ipv6]
method=ignore

[802-1x]
password=s3cret-{name}
"""

IFUPDOWN = """# The loopback network interface
auto lo
iface lo inet loopback

auto lan0
iface lan0 inet static
    address {ip}
    netmask 255.255.255.0
    gateway 10.20.0.1
    hwaddress ether {mac}
    mtu 9000
"""

NETWORKD = """[Match]
MACAddress={mac}

[Network]
Address={ip}/24
Gateway=10.20.0.1
DNS=10.20.0.53
"""

IFCFG = """DEVICE=lan0
HWADDR="{mac_upper}"
BOOTPROTO=none
IPADDR={ip}
PREFIX=24
GATEWAY=10.20.0.1
ONBOOT=yes
"""

SMB = """[global]
   workgroup = {workgroup}
   netbios name = {netbios}
   server string = %h server
   log file = /var/log/samba/log.%m

[homes]
   comment = Home Directories
"""


@dataclass
class Host:
    name: str
    mac: str
    ip: str
    machine_id: str
    uuid: str
    workgroup: str = "OFFICE"

    @property
    def ip6(self):
        return "fd00::" + self.ip.split(".")[-1]


def host(name, number):
    return Host(name=name, mac=f"52:54:00:00:00:{number:02x}", ip=f"10.20.0.{number}",
                machine_id=f"{number:02x}" * 16, uuid=f"0000{number:04x}-0000-4000-8000-00000000{number:04x}")


def _put(root, path, text, mode=0o644, uid=0, gid=0):
    full = os.path.join(root, path.lstrip("/"))
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "wb") as handle:
        handle.write(text if isinstance(text, bytes) else text.encode())
    os.chown(full, uid, gid)
    os.chmod(full, mode)


_KEYS = {}


def ssh_keys(name, tmp_dir):
    """ed25519 and ecdsa host keys for a host name (generated once per test session)."""
    if name not in _KEYS:
        keys = {}
        for kind in ("ed25519", "ecdsa"):
            path = os.path.join(tmp_dir, f"{name}_{kind}")
            subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", f"root@{name}", "-f", path],
                           check=True, capture_output=True)
            with open(path, "rb") as priv, open(path + ".pub", "rb") as pub:
                keys[kind] = (priv.read(), pub.read())
        _KEYS[name] = keys
    return _KEYS[name]


def fingerprints(keys):
    from ansible_collections.fleetcast.imaging.plugins.module_utils._identity import sshkeys
    return [sshkeys.fingerprint(pub) for priv, pub in keys.values()]


def build_linux_root(root, spec, key_dir, extra_key=False):
    """A Linux root carrying `spec`'s identity in every supported place, plus unrelated settings."""
    values = dict(name=spec.name, mac=spec.mac, mac_upper=spec.mac.upper(), ip=spec.ip, ip6=spec.ip6,
                  workgroup=spec.workgroup, netbios=spec.name.upper())
    _put(root, "/etc/os-release", 'ID=debian\nVERSION_ID="12"\n')
    _put(root, "/etc/hostname", spec.name + "\n")
    _put(root, "/etc/hosts", f"127.0.0.1\tlocalhost\n127.0.1.1\t{spec.name}.lab.example {spec.name}\n"
                             f"{spec.ip}\t{spec.name}.lab.example\n10.20.0.53\tdns.lab.example\n"
                             "# keep this comment\n")
    _put(root, "/etc/machine-id", spec.machine_id + "\n", 0o444)
    os.makedirs(os.path.join(root, "var/lib/dbus"), exist_ok=True)
    os.symlink("/etc/machine-id", os.path.join(root, "var/lib/dbus/machine-id"))
    for kind, (priv, pub) in ssh_keys(spec.name, key_dir).items():
        _put(root, f"/etc/ssh/ssh_host_{kind}_key", priv, 0o600)
        _put(root, f"/etc/ssh/ssh_host_{kind}_key.pub", pub, 0o644)
    if extra_key:
        priv, pub = ssh_keys(spec.name + "-rsa", key_dir)["ed25519"]
        _put(root, "/etc/ssh/ssh_host_rsa_key", priv, 0o600)
        _put(root, "/etc/ssh/ssh_host_rsa_key.pub", pub, 0o644)
    _put(root, "/etc/ssh/sshd_config", "PermitRootLogin no\n")
    _put(root, "/etc/samba/smb.conf", SMB.format(**values))
    _put(root, "/etc/netplan/50-lan.yaml", NETPLAN.format(**values), 0o600)
    _put(root, "/etc/NetworkManager/system-connections/office.nmconnection", NM.format(**values), 0o600)
    _put(root, "/etc/network/interfaces", IFUPDOWN.format(**values))
    _put(root, "/etc/systemd/network/10-lan.network", NETWORKD.format(**values))
    _put(root, "/etc/sysconfig/network-scripts/ifcfg-lan0", IFCFG.format(**values))
    _put(root, "/home/user/notes.txt", "not identity\n", 0o640, 1000, 1000)


def clear_tree(root):
    for entry in os.listdir(root):
        if entry == "lost+found":
            continue
        full = os.path.join(root, entry)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full)
        else:
            os.unlink(full)


def snapshot_tree(root):
    """{path: (bytes or link target, mode, uid, gid)} of every entry below root."""
    found = {}
    for directory, dirs, files in os.walk(root):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(directory, d))]:
            full = os.path.join(directory, name)
            info = os.lstat(full)
            if os.path.islink(full):
                content = "link:" + os.readlink(full)
            else:
                with open(full, "rb") as handle:
                    content = handle.read()
            found[os.path.relpath(full, root)] = (content, info.st_mode & 0o7777, info.st_uid, info.st_gid)
    found.pop("lost+found", None)
    return found


def fake_sysfs(base, spec, macs=None):
    """A sysfs view with one physical NIC (and a virtual bridge) and the SMBIOS UUID."""
    dmi = os.path.join(base, "class/dmi/id")
    os.makedirs(dmi, exist_ok=True)
    with open(os.path.join(dmi, "product_uuid"), "w") as handle:
        handle.write(spec.uuid + "\n")
    for name, mac, physical in [("lan0", macs or spec.mac, True), ("br0", "02:00:00:00:00:01", False)]:
        nic = os.path.join(base, "class/net", name)
        os.makedirs(nic, exist_ok=True)
        with open(os.path.join(nic, "address"), "w") as handle:
            handle.write(mac + "\n")
        if physical:
            os.makedirs(os.path.join(nic, "device"), exist_ok=True)
    return base


# --- registry hives from scratch --------------------------------------------------------------

def blank_hive(path, name):
    """An empty hive: a regf header and one hbin holding the root key and its security cell."""
    def cell(body):
        size = (len(body) + 4 + 7) & ~7
        return bytearray(struct.pack("<i", -size) + bytes(body) + b"\0" * (size - 4 - len(body)))

    root_name = b"ROOT"
    nk = bytearray(b"nk" + struct.pack("<HQI", 0x2C, 0, 0))
    nk += struct.pack("<IIIIIII", 0xFFFFFFFF, 0, 0, 0xFFFFFFFF, 0xFFFFFFFF, 0, 0xFFFFFFFF)
    sk_field = len(nk)
    nk += struct.pack("<II", 0, 0xFFFFFFFF) + struct.pack("<5I", 0, 0, 0, 0, 0)
    nk += struct.pack("<HH", len(root_name), 0) + root_name
    nk_cell = cell(nk)
    nk_offset = 32
    sk_offset = nk_offset + len(nk_cell)
    struct.pack_into("<I", nk_cell, 4 + sk_field, sk_offset)
    descriptor = struct.pack("<BBHIIII", 1, 0, 0x8000, 0, 0, 0, 0)
    sk = cell(b"sk\0\0" + struct.pack("<IIII", sk_offset, sk_offset, 1, len(descriptor)) + descriptor)
    body = bytes(nk_cell) + bytes(sk)
    free = 4096 - 32 - len(body)
    hbin = b"hbin" + struct.pack("<II", 0, 4096) + bytes(20) + body + struct.pack("<i", free) + bytes(free - 4)
    header = bytearray(4096)
    header[0:4] = b"regf"
    struct.pack_into("<IIQIIIIIII", header, 4, 1, 1, 0, 1, 3, 0, 1, nk_offset, 4096, 1)
    label = name.encode("utf-16-le")[:64]
    header[48:48 + len(label)] = label
    checksum = 0
    for offset in range(0, 508, 4):
        checksum ^= struct.unpack_from("<I", header, offset)[0]
    struct.pack_into("<I", header, 508, checksum)
    with open(path, "wb") as handle:
        handle.write(bytes(header) + hbin)


def _sz(text):
    return (text + "\0").encode("utf-16-le")


def _multi(items):
    return "".join(item + "\0" for item in items).encode("utf-16-le") + b"\0\0"


def _sid(text):
    parts = [int(p) for p in text.split("-")[1:]]
    return bytes([parts[0], len(parts) - 2]) + parts[1].to_bytes(6, "big") + struct.pack(f"<{len(parts) - 2}I", *parts[2:])


WIN_GUID = "{6A8B1B4C-1111-4E2F-9B1D-2C3D4E5F6071}"
OTHER_GUID = "{0F0F0F0F-2222-4E2F-9B1D-2C3D4E5F6071}"


def build_windows_root(root, spec, sid, joined=False, guid=WIN_GUID):
    """Windows/System32/config/{SYSTEM,SECURITY} for `spec`, made with hivex from blank hives."""
    import hivex
    config = os.path.join(root, "Windows", "System32", "config")
    os.makedirs(config, exist_ok=True)

    def make(name, fill):
        path = os.path.join(config, name)
        blank_hive(path, name)
        hive = hivex.Hivex(path, write=True)
        fill(hive)
        hive.commit(path)

    def key(hive, path):
        node = hive.root()
        for part in path.split("\\"):
            node = hive.node_get_child(node, part) or hive.node_add_child(node, part)
        return node

    def value(hive, path, name, kind, data):
        hive.node_set_value(key(hive, path), {"key": name, "t": kind, "value": data})

    def system(hive):
        value(hive, "Select", "Current", 4, struct.pack("<I", 2))
        value(hive, "Select", "Default", 4, struct.pack("<I", 2))
        value(hive, "ControlSet001\\Control\\ComputerName\\ComputerName", "ComputerName", 1, _sz("STALE"))
        cs = "ControlSet002"
        value(hive, cs + "\\Control\\ComputerName\\ComputerName", "ComputerName", 1, _sz(spec.name.upper()))
        tcpip = cs + "\\Services\\Tcpip\\Parameters"
        value(hive, tcpip, "Hostname", 1, _sz(spec.name))
        value(hive, tcpip, "NV Hostname", 1, _sz(spec.name))
        value(hive, tcpip, "Domain", 1, _sz("lab.example"))
        value(hive, tcpip, "SearchList", 1, _sz("lab.example"))
        nic = tcpip + "\\Interfaces\\" + guid
        value(hive, nic, "EnableDHCP", 4, struct.pack("<I", 0))
        value(hive, nic, "IPAddress", 7, _multi([spec.ip]))
        value(hive, nic, "SubnetMask", 7, _multi(["255.255.255.0"]))
        value(hive, nic, "DefaultGateway", 7, _multi(["10.20.0.1"]))
        value(hive, nic, "NameServer", 1, _sz("10.20.0.53"))
        value(hive, nic, "MTU", 4, struct.pack("<I", 1500))
        value(hive, tcpip + "\\Interfaces\\" + OTHER_GUID, "EnableDHCP", 4, struct.pack("<I", 1))
        card = cs + "\\Control\\Class\\{4d36e972-e325-11ce-bfc1-08002be10318}\\0001"
        value(hive, card, "NetCfgInstanceId", 1, _sz(guid))
        value(hive, card, "DriverDesc", 1, _sz("Intel(R) Ethernet"))

    def security(hive):
        raw = spec.workgroup.encode("utf-16-le")
        value(hive, "Policy\\PolPrDmN", "", 0, struct.pack("<HHIQ", len(raw), len(raw) + 2, 0, 16) + raw + b"\0\0")
        value(hive, "Policy\\PolPrDmS", "", 0, _sid("S-1-5-21-9-9-9") if joined else b"")
        value(hive, "Policy\\PolAcDmS", "", 0, _sid(sid))

    make("SYSTEM", system)
    make("SECURITY", security)
    return config


def build_windows_fleet_root(root, spec):
    """A SYSTEM hive with both control sets full, `spec["current"]` named by Select\\Current, and one
    Class entry (with its device instance) and one Tcpip interface per NIC of `spec["nics"]`."""
    import hivex
    config = os.path.join(root, "Windows", "System32", "config")
    os.makedirs(config, exist_ok=True)
    path = os.path.join(config, "SYSTEM")
    blank_hive(path, "SYSTEM")
    hive = hivex.Hivex(path, write=True)

    def value(key_path, name, kind, data):
        node = hive.root()
        for part in key_path.split("\\"):
            node = hive.node_get_child(node, part) or hive.node_add_child(node, part)
        hive.node_set_value(node, {"key": name, "t": kind, "value": data})

    value("Select", "Current", 4, struct.pack("<I", spec["current"]))
    value("Select", "LastKnownGood", 4, struct.pack("<I", 3 - spec["current"]))
    for number in (1, 2):
        cs = f"ControlSet{number:03d}"
        value(cs + "\\Control\\ComputerName\\ComputerName", "ComputerName", 1, _sz(spec["name"]))
        tcpip = cs + "\\Services\\Tcpip\\Parameters"
        value(tcpip, "Hostname", 1, _sz(spec["name"].lower()))
        value(tcpip, "NV Hostname", 1, _sz(spec["name"].lower()))
        for slot, nic in enumerate(spec["nics"]):
            card = cs + "\\Control\\Class\\{4d36e972-e325-11ce-bfc1-08002be10318}\\%04d" % slot
            value(card, "NetCfgInstanceId", 1, _sz(nic["guid"]))
            value(card, "DeviceInstanceID", 1, _sz(nic["instance"]))
            if nic["mac_in_registry"]:
                value(card, "NetworkAddress", 1, _sz(nic["mac"].replace(":", "").upper()))
            key = tcpip + "\\Interfaces\\" + nic["guid"]
            if nic["static"]:
                value(key, "EnableDHCP", 4, struct.pack("<I", 0))
                value(key, "IPAddress", 7, _multi([nic["ip"]]))
                value(key, "SubnetMask", 7, _multi(["255.255.255.0"]))
                value(key, "DefaultGateway", 7, _multi([nic["gateway"]]))
            else:
                value(key, "EnableDHCP", 4, struct.pack("<I", 1))
                value(key, "DhcpIPAddress", 1, _sz(nic["lease"]))
                value(key, "DhcpDefaultGateway", 7, _multi([nic["gateway"]]))
    hive.commit(path)
    return config
