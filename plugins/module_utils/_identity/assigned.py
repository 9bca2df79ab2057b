# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Identities given by the inventory: new computers without a system, or a new identity on purpose.

Private to the collection. ``new_record`` turns an inventory spec (host name, addresses per MAC or
DHCP, workgroup or domain) into an identity record with a fresh machine-id and fresh SSH host keys
for the clone. The network files are written at apply time, in the format the restored image uses
(``network_files``), so that an assigned record works on any Linux image. Windows: the computer
name goes into the registry, the static addresses by MAC into the answer file (unattend.xml); a
new SID comes only from sysprep.
"""

from __future__ import annotations

import ipaddress
import uuid
from typing import Any, Dict, List, Tuple

from .._errors import IdentityError, ValidationError
from . import sshkeys
from .record import FileItem, IdentityRecord

NETWORK_FILE_STEM = "fleetcast"


def _interface(name: str, index: int, raw: Any) -> Dict[str, Any]:
    where = f"interface {index + 1} of {name}'s assigned identity"
    if not isinstance(raw, dict) or not raw.get("mac"):
        raise ValidationError(f"The {where} needs a mac.")
    mac = str(raw["mac"]).lower().replace("-", ":")
    if len(mac.split(":")) != 6:
        raise ValidationError(f"The {where} has the MAC {raw['mac']!r}, which is not a MAC address.")
    addresses = []
    for address in raw.get("addresses") or []:
        try:
            addresses.append(str(ipaddress.ip_interface(str(address))))
        except ValueError:
            raise ValidationError(f"The {where} has the address {address!r}, which is not an address "
                                  "with a prefix (10.0.0.5/24).") from None
    out = {"mac": mac, "name": raw.get("name") or None, "addresses": addresses, "dhcp": not addresses}
    for key in ("gateway", "gateway6"):
        out[key] = str(ipaddress.ip_address(str(raw[key]))) if raw.get(key) else None
    out["dns"] = [str(ipaddress.ip_address(str(server))) for server in raw.get("dns") or []]
    return out


def normalise(inventory_name: str, spec: Dict[str, Any], present_macs: List[str]) -> Dict[str, Any]:
    """The spec with defaults filled in: host name = inventory name, DHCP on every NIC of this machine."""
    hostname = str(spec.get("hostname") or inventory_name)
    interfaces = spec.get("interfaces")
    if interfaces is None:
        interfaces = [{"mac": mac} for mac in present_macs]
    os_name = spec.get("os") or "linux"
    if os_name not in ("linux", "windows"):
        raise ValidationError(f"The assigned identity of {inventory_name} names the os {os_name!r}; "
                              "it must be linux or windows.")
    return {"hostname": hostname, "os": os_name, "domain": spec.get("domain") or None,
            "workgroup": spec.get("workgroup") or None,
            "interfaces": [_interface(inventory_name, index, raw) for index, raw in enumerate(interfaces)]}


def new_record(inventory_name: str, spec: Dict[str, Any], hardware: Dict[str, Any]) -> IdentityRecord:
    """A record for the identity the inventory gives, with a fresh machine-id and SSH host keys."""
    assigned = normalise(inventory_name, spec, list(hardware.get("macs") or []))
    hostname = assigned["hostname"]
    short = hostname.split(".", maxsplit=1)[0]
    record = IdentityRecord(inventory_name=inventory_name, os=assigned["os"], hardware=hardware)
    record.assigned = assigned
    addresses = [a["addresses"] for a in assigned["interfaces"]]
    record.summary = {
        "hostname": hostname, "assigned": True,
        "addresses": sorted({address.split("/")[0] for group in addresses for address in group}),
        "configured_macs": sorted({entry["mac"] for entry in assigned["interfaces"]}),
        "workgroup": assigned["workgroup"], "domain_member": False,
    }
    if assigned["os"] == "windows":
        computer = short.upper()[:15]
        record.windows = {
            "computer_name": computer, "hostname": short, "nv_hostname": short,
            "domain": assigned["domain"], "nv_domain": assigned["domain"], "workgroup": assigned["workgroup"],
            "machine_sid": None, "domain_sid": None, "domain_joined": False,
            "interfaces": [{
                "guid": f"assigned:{entry['mac']}", "mac": entry["mac"], "device_instance": None,
                "enable_dhcp": 1 if entry["dhcp"] else 0,
                "ip_address": [a.split("/")[0] for a in entry["addresses"] if ":" not in a],
                "subnet_mask": [str(ipaddress.ip_interface(a).netmask) for a in entry["addresses"] if ":" not in a],
                "default_gateway": [entry["gateway"]] if entry["gateway"] else [],
                "name_server": entry["dns"]} for entry in assigned["interfaces"]],
        }
        record.summary["computer_name"] = computer
        record.notes.append("The machine SID stays the image's: a new SID comes only from sysprep "
                            "(generalize the master and deploy it with the answer file, option unattend).")
        return record
    machine_id = uuid.uuid4().hex
    record.add_file(FileItem("/etc/hostname", "hostname", 0o644, 0, 0), f"{hostname}\n".encode())
    record.add_file(FileItem("/etc/machine-id", "machine-id", 0o444, 0, 0), f"{machine_id}\n".encode())
    fingerprints = []
    # in path order, as a snapshot of the written system lists them (the read-back compares lists)
    for kind, private, public in sorted(sshkeys.generate(short)):
        path = f"/etc/ssh/ssh_host_{kind}_key"
        record.add_file(FileItem(path, "ssh-host-key", 0o600, 0, 0, secret=True), private)
        record.add_file(FileItem(path + ".pub", "ssh-host-key-public", 0o644, 0, 0), public)
        fingerprints.append(sshkeys.fingerprint(public))
    record.summary.update({"machine_id": machine_id, "ssh_fingerprints": fingerprints})
    return record


# --- network files in the format the restored image uses -----------------------------------------

def _detect(exists, listed) -> str:
    """The image's network configuration format: the one its files use, else the one it has a place for."""
    for fmt, directory in (("netplan", "/etc/netplan"), ("networkmanager", "/etc/NetworkManager/system-connections"),
                           ("networkd", "/etc/systemd/network"), ("ifcfg", "/etc/sysconfig/network-scripts")):
        if listed(directory):
            return fmt
    if exists("/etc/network/interfaces"):
        return "ifupdown"
    for fmt, directory in (("netplan", "/etc/netplan"), ("networkmanager", "/etc/NetworkManager"),
                           ("networkd", "/etc/systemd/network"), ("ifcfg", "/etc/sysconfig/network-scripts"),
                           ("ifupdown", "/etc/network")):
        if exists(directory):
            return fmt
    return ""


def _stable_uuid(record: IdentityRecord, entry: Dict[str, Any]) -> str:
    # the same connection UUID on every apply (idempotent), different on every host
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"fleetcast:{record.summary.get('machine_id')}:{entry['mac']}"))


def _name(record: IdentityRecord, entry: Dict[str, Any], fmt: str) -> str:
    if not entry["name"]:
        raise IdentityError(f"The restored image configures its network with {fmt}, which needs interface names: "
                            f"give a name to {record.inventory_name}'s assigned interface {entry['mac']}.")
    return entry["name"]


def network_files(record: IdentityRecord, fmt: str) -> List[Tuple[FileItem, bytes]]:
    """The assigned interfaces as files of format ``fmt`` (see ``_detect``)."""
    files: List[Tuple[FileItem, bytes]] = []

    def add(path: str, kind: str, text: str, mode: int) -> None:
        files.append((FileItem(path, "network:" + kind, mode, 0, 0), text.encode("utf-8")))

    interfaces = record.assigned.get("interfaces") or []
    if not interfaces:
        return files
    if fmt == "netplan":
        lines = ["network:", "  version: 2", "  ethernets:"]
        for number, entry in enumerate(interfaces):
            lines += [f"    {entry['name'] or 'nic%d' % number}:", "      match:",
                      f"        macaddress: \"{entry['mac']}\""]
            if entry["name"]:
                lines.append(f"      set-name: {entry['name']}")
            if entry["dhcp"]:
                lines.append("      dhcp4: true")
                continue
            lines.append("      addresses: [" + ", ".join(f"\"{a}\"" for a in entry["addresses"]) + "]")
            routes = [(to, entry[key]) for to, key in (("0.0.0.0/0", "gateway"), ("::/0", "gateway6")) if entry[key]]
            if routes:
                lines.append("      routes:")
                lines += [f"        - to: \"{to}\"\n          via: \"{via}\"" for to, via in routes]
            if entry["dns"]:
                lines.append("      nameservers:\n        addresses: [" + ", ".join(f"\"{d}\"" for d in entry["dns"]) + "]")
        add(f"/etc/netplan/50-{NETWORK_FILE_STEM}.yaml", "netplan", "\n".join(lines) + "\n", 0o600)
    elif fmt == "networkmanager":
        for entry in interfaces:
            label = entry["name"] or entry["mac"].replace(":", "")
            text = (f"[connection]\nid={NETWORK_FILE_STEM}-{label}\nuuid={_stable_uuid(record, entry)}\ntype=ethernet\n"
                    + (f"interface-name={entry['name']}\n" if entry["name"] else "")
                    + f"\n[ethernet]\nmac-address={entry['mac'].upper()}\n\n")
            for family, key in (("ipv4", "gateway"), ("ipv6", "gateway6")):
                mine = [a for a in entry["addresses"] if (":" in a) == (family == "ipv6")]
                text += f"[{family}]\n"
                if mine:
                    text += "".join(f"address{n}={a}\n" for n, a in enumerate(mine, start=1)) + "method=manual\n"
                    text += f"gateway={entry[key]}\n" if entry[key] else ""
                    dns = [d for d in entry["dns"] if (":" in d) == (family == "ipv6")]
                    text += f"dns={';'.join(dns)};\n" if dns else ""
                else:
                    text += "method=auto\n"
                text += "\n"
            add(f"/etc/NetworkManager/system-connections/{NETWORK_FILE_STEM}-{label}.nmconnection",
                "networkmanager", text.rstrip("\n") + "\n", 0o600)
    elif fmt == "networkd":
        for number, entry in enumerate(interfaces):
            text = f"[Match]\nMACAddress={entry['mac']}\n\n[Network]\n"
            if entry["dhcp"]:
                text += "DHCP=yes\n"
            else:
                text += "".join(f"Address={a}\n" for a in entry["addresses"])
                text += "".join(f"Gateway={entry[k]}\n" for k in ("gateway", "gateway6") if entry[k])
                text += "".join(f"DNS={d}\n" for d in entry["dns"])
            add(f"/etc/systemd/network/50-{NETWORK_FILE_STEM}-{number}.network", "networkd", text, 0o644)
    elif fmt == "ifupdown":
        text = "auto lo\niface lo inet loopback\n"
        for entry in interfaces:
            name = _name(record, entry, fmt)
            text += f"\nauto {name}\n"
            if entry["dhcp"]:
                text += f"iface {name} inet dhcp\n    hwaddress ether {entry['mac']}\n"
            for family, six in (("inet", False), ("inet6", True)):
                mine = [a for a in entry["addresses"] if (":" in a) == six]
                if not mine:
                    continue
                text += f"iface {name} {family} static\n    address {mine[0]}\n"
                text += "".join(f"    up ip {'-6 ' if six else ''}addr add {a} dev {name}\n" for a in mine[1:])
                gateway = entry["gateway6" if six else "gateway"]
                text += f"    gateway {gateway}\n" if gateway else ""
                text += "" if six else f"    hwaddress ether {entry['mac']}\n"
        add("/etc/network/interfaces", "ifupdown", text, 0o644)
    elif fmt == "ifcfg":
        for entry in interfaces:
            name = _name(record, entry, fmt)
            text = f"DEVICE={name}\nHWADDR={entry['mac'].upper()}\nONBOOT=yes\n"
            v4 = [a for a in entry["addresses"] if ":" not in a]
            v6 = [a for a in entry["addresses"] if ":" in a]
            text += "BOOTPROTO=dhcp\n" if entry["dhcp"] else "BOOTPROTO=none\n"
            for number, address in enumerate(v4):
                ip, prefix = address.split("/")
                text += f"IPADDR{number}={ip}\nPREFIX{number}={prefix}\n"
            text += f"GATEWAY={entry['gateway']}\n" if entry["gateway"] else ""
            if v6:
                text += f"IPV6INIT=yes\nIPV6ADDR={v6[0]}\n"
                text += f"IPV6ADDR_SECONDARIES=\"{' '.join(v6[1:])}\"\n" if v6[1:] else ""
                text += f"IPV6_DEFAULTGW={entry['gateway6']}\n" if entry["gateway6"] else ""
            text += "".join(f"DNS{n}={d}\n" for n, d in enumerate(entry["dns"], start=1))
            add(f"/etc/sysconfig/network-scripts/ifcfg-{name}", "ifcfg", text, 0o644)
    return files


def with_network_files(record: IdentityRecord, exists, listed, where: str) -> IdentityRecord:
    """A copy of an assigned record carrying its network files in the restored image's format."""
    if not record.assigned or any(item.kind.startswith("network:") for item in record.files):
        return record
    fmt = _detect(exists, listed)
    if not fmt and record.assigned.get("interfaces"):
        raise IdentityError(f"{where} has no network configuration (netplan, NetworkManager, systemd-networkd, "
                            f"ifcfg or ifupdown) to write {record.inventory_name}'s assigned addresses in.")
    copy = IdentityRecord.from_dict(record.to_dict())
    for item, data in network_files(record, fmt):
        copy.add_file(item, data)
    return copy
