"""Random network layouts for the property tests: one machine's identity in any supported format.

Each call draws interfaces (static or DHCP, IPv4 and IPv6, extra or missing ones), the formats
that carry them and the files' names from a seeded ``random.Random``, and returns the tree as
{inner path: bytes} plus every value that makes it that machine (the needles a clone must, or
must not, hold).
"""

import base64
import os
import uuid
from dataclasses import dataclass, field
from typing import Dict, List

MAIN_FORMATS = ("netplan", "networkmanager", "ifupdown", "ifupdown.d", "networkd", "ifcfg")
EXTRA_FORMATS = ("udev", "link")


@dataclass
class Iface:
    name: str
    mac: str
    static: bool
    ip4: str
    gw4: str
    ip6: str
    gw6: str
    uuid: str


@dataclass
class Layout:
    name: str
    files: Dict[str, bytes] = field(default_factory=dict)
    needles: List[bytes] = field(default_factory=list)   # values no other machine shares
    formats: List[str] = field(default_factory=list)
    ifaces: List[Iface] = field(default_factory=list)


def _netplan(ifaces):
    lines = ["network:", "  version: 2", "  ethernets:"]
    for iface in ifaces:
        lines += [f"    {iface.name}:", "      match:", f"        macaddress: \"{iface.mac}\"",
                  f"      set-name: {iface.name}"]
        if iface.static:
            lines += ["      addresses:", f"        - {iface.ip4}/24", f"        - \"{iface.ip6}/64\"",
                      "      routes:", "        - to: default", f"          via: {iface.gw4}",
                      f"      gateway6: \"{iface.gw6}\""]
        else:
            lines += ["      dhcp4: true"]
    return "\n".join(lines) + "\n"


def _nm(iface, psk):
    text = (f"[connection]\nid=wired-{iface.name}\nuuid={iface.uuid}\ntype=ethernet\ninterface-name={iface.name}\n\n"
            f"[ethernet]\nmac-address={iface.mac.upper()}\n\n")
    if iface.static:
        text += (f"[ipv4]\naddress1={iface.ip4}/24,{iface.gw4}\nmethod=manual\n\n"
                 f"[ipv6]\naddress1={iface.ip6}/64,{iface.gw6}\nmethod=manual\n")
    else:
        text += "[ipv4]\nmethod=auto\n\n[ipv6]\nmethod=auto\n"
    if psk:
        text += f"\n[802-1x]\neap=peap;\npassword={psk}\n"
    return text


def _ifupdown(ifaces, hooks):
    text = ""
    for iface in ifaces:
        if iface.static:
            text += (f"auto {iface.name}\niface {iface.name} inet static\n    address {iface.ip4}\n"
                     f"    netmask 255.255.255.0\n    gateway {iface.gw4}\n    hwaddress ether {iface.mac}\n")
            if hooks:
                text += f"    post-up ip -6 addr add {iface.ip6}/64 dev {iface.name}\n" \
                        f"    post-up ip -6 route add default via {iface.gw6}\n"
            else:
                text += f"iface {iface.name} inet6 static\n    address {iface.ip6}/64\n    gateway {iface.gw6}\n"
        else:
            text += f"auto {iface.name}\niface {iface.name} inet dhcp\n"
    return text


def _networkd(iface):
    text = f"[Match]\nMACAddress={iface.mac}\n\n[Network]\n"
    if iface.static:
        text += f"Address={iface.ip4}/24\nGateway={iface.gw4}\nAddress={iface.ip6}/64\nGateway={iface.gw6}\n"
    else:
        text += "DHCP=yes\n"
    return text


def _ifcfg(iface):
    text = f"DEVICE={iface.name}\nHWADDR=\"{iface.mac.upper()}\"\nONBOOT=yes\n"
    if iface.static:
        text += (f"BOOTPROTO=none\nIPADDR={iface.ip4}\nPREFIX=24\nGATEWAY={iface.gw4}\n"
                 f"IPV6INIT=yes\nIPV6ADDR={iface.ip6}/64\nIPV6_DEFAULTGW={iface.gw6}\n")
    else:
        text += "BOOTPROTO=dhcp\n"
    return text


def draw(rng, name, net, hostname_in_hosts=True):
    """A machine named ``name`` whose values all come from its own ``net`` (a number 1..250)."""
    layout = Layout(name=name)
    count = rng.choice([0, 1, 1, 2, 2, 3])
    names = rng.sample(["eth0", "eth1", "eth2", "lan0", "enp1s0", "wan0"], count)
    for number, iface_name in enumerate(names):
        layout.ifaces.append(Iface(
            name=iface_name, mac=f"52:54:{net:02x}:00:{number:02x}:{rng.randrange(256):02x}",
            static=rng.random() < 0.6, ip4=f"10.{net}.{number}.{rng.randrange(2, 250)}", gw4=f"10.{net}.{number}.1",
            ip6=f"fd{net:02x}:{number}::{rng.randrange(2, 0xfff):x}", gw6=f"fd{net:02x}:{number}::1",
            uuid=str(uuid.UUID(int=rng.getrandbits(128), version=4))))
    files = layout.files
    files["/etc/os-release"] = b'ID=debian\nVERSION_ID="12"\n'
    files["/etc/hostname"] = f"{name}\n".encode()
    machine_id = "%032x" % rng.getrandbits(128)
    files["/etc/machine-id"] = (machine_id + "\n").encode()
    layout.needles += [name.encode(), machine_id.encode()]
    for kind in rng.sample(["ed25519", "ecdsa", "rsa"], rng.randint(1, 3)):
        blob = base64.b64encode(b"\0\0\0\x0bssh-" + kind.encode() + rng.randbytes(32)).decode()
        private = f"-----BEGIN OPENSSH PRIVATE KEY-----\n{base64.b64encode(rng.randbytes(48)).decode()}\n" \
                  "-----END OPENSSH PRIVATE KEY-----\n"
        files[f"/etc/ssh/ssh_host_{kind}_key"] = private.encode()
        files[f"/etc/ssh/ssh_host_{kind}_key.pub"] = f"ssh-{kind} {blob} root@{name}\n".encode()
        layout.needles += [blob.encode(), private.encode()]
    if rng.random() < 0.7:
        secret_key = rng.randbytes(32)
        files["/var/lib/NetworkManager/secret_key"] = secret_key
        layout.needles.append(secret_key)
    if hostname_in_hosts and rng.random() < 0.6:
        ip = layout.ifaces[0].ip4 if layout.ifaces and layout.ifaces[0].static else "127.0.1.1"
        files["/etc/hosts"] = f"127.0.0.1\tlocalhost\n{ip}\t{name}.example {name}\n".encode()

    if layout.ifaces:
        formats = rng.sample(MAIN_FORMATS, rng.choice([1, 1, 2]))
        formats += [extra for extra in EXTRA_FORMATS if rng.random() < 0.4]
        layout.formats = formats
        split = [layout.ifaces] if len(formats) == 1 else [layout.ifaces[::2], layout.ifaces[1::2]]
        for fmt in formats:
            ifaces = layout.ifaces if fmt in EXTRA_FORMATS else split[formats.index(fmt) % len(split)]
            if not ifaces:
                continue
            tag = f"{rng.randrange(10, 99)}-{rng.choice(['lan', 'cloud-init', 'office', 'netcfg', name + 'x'])}"
            if fmt == "netplan":
                files[f"/etc/netplan/{tag}.yaml"] = _netplan(ifaces).encode()
            elif fmt == "networkmanager":
                for iface in ifaces:
                    psk = f"psk-{name}-{rng.getrandbits(32):x}" if rng.random() < 0.5 else None
                    files[f"/etc/NetworkManager/system-connections/{tag}-{iface.name}.nmconnection"] = \
                        _nm(iface, psk).encode()
                    if psk:
                        layout.needles.append(psk.encode())
            elif fmt == "ifupdown":
                files["/etc/network/interfaces"] = ("auto lo\niface lo inet loopback\n\n"
                                                    + _ifupdown(ifaces, rng.random() < 0.5)).encode()
            elif fmt == "ifupdown.d":
                files[f"/etc/network/interfaces.d/{tag}"] = _ifupdown(ifaces, rng.random() < 0.5).encode()
            elif fmt == "networkd":
                for iface in ifaces:
                    files[f"/etc/systemd/network/{tag}-{iface.name}.network"] = _networkd(iface).encode()
            elif fmt == "ifcfg":
                for iface in ifaces:
                    files[f"/etc/sysconfig/network-scripts/ifcfg-{iface.name}"] = _ifcfg(iface).encode()
            elif fmt == "udev":
                files["/etc/udev/rules.d/70-persistent-net.rules"] = "".join(
                    f'SUBSYSTEM=="net", ACTION=="add", ATTR{{address}}=="{iface.mac}", NAME="{iface.name}"\n'
                    for iface in ifaces).encode()
            elif fmt == "link":
                for iface in ifaces:
                    files[f"/etc/systemd/network/{tag}-{iface.name}.link"] = \
                        f"[Match]\nMACAddress={iface.mac}\n\n[Link]\nName={iface.name}\n".encode()
    for iface in layout.ifaces:
        layout.needles += [iface.mac.encode(), iface.mac.upper().encode(), iface.uuid.encode()]
        if iface.static:
            layout.needles += [v.encode() for v in (iface.ip4, iface.gw4, iface.ip6, iface.gw6)]
    return layout


def write_tree(root, layout):
    for path, data in layout.files.items():
        full = os.path.join(root, path.lstrip("/"))
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as handle:
            handle.write(data)
        secret = "ssh_host" in path and not path.endswith(".pub") or "secret_key" in path \
            or "system-connections" in path or "/netplan/" in path
        os.chmod(full, 0o600 if secret else 0o644)


def read_tree(root):
    found = {}
    for directory, dummy_dirs, names in os.walk(root):
        for name in names:
            full = os.path.join(directory, name)
            with open(full, "rb") as handle:
                found["/" + os.path.relpath(full, root)] = handle.read()
    return found
