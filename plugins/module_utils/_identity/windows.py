# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Windows identity, offline, through the SYSTEM and SECURITY registry hives (hivex).

Private to the collection. Reads ComputerName, the Tcpip host and domain names of the control
set that ``Select\\Current`` names, the IPv4 settings of every interface (with the NIC's device
instance, and its MAC where the registry or the caller knows it), the workgroup/domain name and
the machine SID. Applying writes the names and the interface settings into *every* control set
(the current one and the others, such as LastKnownGood); a restored interface is the host's by
GUID, then by device instance (same NIC model in the same slot), then by MAC. Restored interfaces
that are none of the host's lose the master's static settings and DHCP leases (they become DHCP).
A static interface of the host that has no place in the restored registry fails the apply,
unless an answer file (``unattend_xml``, by MAC) carries it. The SID is reported, never changed
(Microsoft supports changing it only through sysprep).
"""

from __future__ import annotations

import ipaddress
import os
import re
import struct
import tempfile
import traceback
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from .._errors import IdentityError
from .record import IdentityRecord
from .rootfs import Root

REG_SZ, REG_MULTI_SZ, REG_DWORD = 1, 7, 4
NET_CLASS = "{4d36e972-e325-11ce-bfc1-08002be10318}"
CONFIG_DIR = ("Windows", "System32", "config")


try:
    import hivex  # Debian's python3-hivex, not the unrelated PyPI project of that name
except ImportError:
    hivex = None
    HIVEX_IMPORT_ERROR: Optional[str] = traceback.format_exc()
else:
    HIVEX_IMPORT_ERROR = None


class HivexMissingError(IdentityError):
    """A Windows root was found, but this host cannot read registry hives."""


def _hivex():
    if hivex is None:
        raise HivexMissingError("Reading Windows registry hives needs Debian's python3-hivex on this host.")
    return hivex


def find_hive(root: Root, name: str) -> Optional[str]:
    """The host path of a hive below an offline Windows root, matching names case-insensitively."""
    current = root.path
    for part in CONFIG_DIR + (name,):
        try:
            entries = os.listdir(current)
        except OSError:
            return None
        match = next((entry for entry in entries if entry.lower() == part.lower()), None)
        if match is None:
            return None
        current = os.path.join(current, match)
    return current if os.path.isfile(current) else None


def is_windows_root(root: Root) -> bool:
    return find_hive(root, "SYSTEM") is not None


def _sz(text: str) -> bytes:
    return (text + "\0").encode("utf-16-le")


def _multi_sz(items: List[str]) -> bytes:
    return "".join(item + "\0" for item in items).encode("utf-16-le") + b"\0\0"


def _decode_sz(data: bytes) -> str:
    return data.decode("utf-16-le", "replace").split("\0", 1)[0]


def _decode_multi_sz(data: bytes) -> List[str]:
    return [item for item in data.decode("utf-16-le", "replace").split("\0") if item]


def decode_sid(data: bytes) -> Optional[str]:
    if len(data) < 8:
        return None
    revision, count = data[0], data[1]
    if len(data) < 8 + 4 * count:
        return None
    authority = int.from_bytes(data[2:8], "big")
    subs = struct.unpack_from(f"<{count}I", data, 8)
    return "S-" + "-".join(str(part) for part in (revision, authority) + subs)


def decode_lsa_string(data: bytes) -> Tuple[Optional[str], int]:
    """An LSA UNICODE_STRING value (PolPrDmN): the text and the header size (8 or 16 bytes)."""
    if len(data) < 8:
        return None, 16
    length = struct.unpack_from("<H", data, 0)[0]
    for header in (16, 8):
        pointer = struct.unpack_from("<Q" if header == 16 else "<I", data, 8 if header == 16 else 4)[0] \
            if len(data) >= header else None
        if pointer == header and len(data) >= header + length:
            return data[header:header + length].decode("utf-16-le", "replace"), header
    return None, 16


def encode_lsa_string(text: str, header: int = 16) -> bytes:
    raw = text.encode("utf-16-le")
    if header == 8:
        return struct.pack("<HHI", len(raw), len(raw) + 2, 8) + raw + b"\0\0"
    return struct.pack("<HHIQ", len(raw), len(raw) + 2, 0, 16) + raw + b"\0\0"


def scrub_free_cells(path: str) -> None:
    """Zero the free cells of a hive file.

    hivex frees a replaced value's cell without clearing it, so the image's old names and
    addresses would otherwise stay readable in the hive.
    """
    with open(path, "r+b") as handle:
        data = bytearray(handle.read())
        page = 4096
        while page + 32 <= len(data) and data[page:page + 4] == b"hbin":
            page_size = struct.unpack_from("<I", data, page + 8)[0]
            if page_size < 32 or page + page_size > len(data):
                break
            cell = page + 32
            while cell + 4 <= page + page_size:
                size = struct.unpack_from("<i", data, cell)[0]
                if size == 0:
                    break
                if size > 0:
                    data[cell + 4:cell + size] = bytes(size - 4)
                cell += abs(size)
            page += page_size
        handle.seek(0)
        handle.write(data)


class Hive:
    """A hive opened with hivex, with path lookups and error messages naming the file."""

    def __init__(self, path: str, write: bool = False):
        self.path = path
        try:
            self.handle = _hivex().Hivex(path, write=write)
        except RuntimeError as err:
            raise IdentityError(f"The registry hive {path} is corrupt or not a hive ({err}).") from None

    def node(self, key: str):
        node = self.handle.root()
        for part in [p for p in key.split("\\") if p]:
            node = self.handle.node_get_child(node, part)
            if not node:
                return None
        return node

    def children(self, key: str) -> List[str]:
        node = self.node(key)
        return [] if node is None else [self.handle.node_name(c) for c in self.handle.node_children(node)]

    def raw(self, key: str, name: str) -> Optional[Tuple[int, bytes]]:
        node = self.node(key)
        if node is None:
            return None
        for value in self.handle.node_values(node):
            if self.handle.value_key(value).lower() == name.lower():
                return self.handle.value_value(value)
        return None

    def string(self, key: str, name: str) -> Optional[str]:
        value = self.raw(key, name)
        return None if value is None else _decode_sz(value[1])

    def strings(self, key: str, name: str) -> List[str]:
        value = self.raw(key, name)
        if value is None:
            return []
        return _decode_multi_sz(value[1]) if value[0] == REG_MULTI_SZ else [_decode_sz(value[1])]

    def dword(self, key: str, name: str) -> Optional[int]:
        value = self.raw(key, name)
        return struct.unpack_from("<I", value[1])[0] if value and len(value[1]) >= 4 else None

    def value_names(self, key: str) -> List[str]:
        node = self.node(key)
        return [] if node is None else [self.handle.value_key(value) for value in self.handle.node_values(node)]

    def set(self, key: str, name: str, kind: int, data: Optional[bytes]) -> None:
        """Set a value; ``data`` None deletes it."""
        node = self.node(key)
        if node is None:
            raise IdentityError(f"The registry hive {self.path} has no key {key}.")
        if data is not None:
            self.handle.node_set_value(node, {"key": name, "t": kind, "value": data})
            return
        kept = []
        for value in self.handle.node_values(node):
            if self.handle.value_key(value).lower() != name.lower():
                value_type, value_data = self.handle.value_value(value)
                kept.append({"key": self.handle.value_key(value), "t": value_type, "value": value_data})
        self.handle.node_set_values(node, kept)

    def commit_to_temp(self) -> str:
        """Write the changed hive beside the original; the caller renames it into place."""
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self.path), prefix=".fleetcast-")
        os.close(fd)
        try:
            self.handle.commit(tmp)
            scrub_free_cells(tmp)
            os.chmod(tmp, os.stat(self.path).st_mode & 0o7777)
        except (RuntimeError, OSError) as err:
            os.unlink(tmp)
            raise IdentityError(f"Cannot write the registry hive {self.path} ({err}).") from None
        return tmp


def _control_set(system: Hive) -> str:
    current = system.dword("Select", "Current")
    if current is None:
        raise IdentityError(f"The registry hive {system.path} is not a SYSTEM hive (no Select\\Current).")
    name = f"ControlSet{current:03d}"
    if system.node(name) is None:
        raise IdentityError(f"The registry hive {system.path} names {name} in Select\\Current but lacks it.")
    return name


def _control_sets(system: Hive) -> List[str]:
    """Every ControlSetNNN of the hive (Select\\Current names one; LastKnownGood often another)."""
    return sorted(name for name in system.children("") if re.fullmatch(r"ControlSet\d{3}", name))


def _device_instances(system: Hive, control_set: str) -> Dict[str, str]:
    """Interface GUID (lower case) -> the NIC's device instance path (lower case), where recorded."""
    found: Dict[str, str] = {}
    base = f"{control_set}\\Control\\Class\\{NET_CLASS}"
    for child in system.children(base):
        guid = system.string(base + "\\" + child, "NetCfgInstanceId")
        instance = system.string(base + "\\" + child, "DeviceInstanceID")
        if guid and instance:
            found[guid.lower()] = instance.lower()
    return found


def _interface_macs(system: Hive, control_set: str, hardware_macs: Sequence[str]) -> Dict[str, str]:
    """Interface GUID (lower case) -> MAC, for the interfaces whose MAC can be told.

    The registry holds a MAC only when it was set by hand (the adapter's NetworkAddress); else,
    when this machine has one NIC and Windows one static interface, that interface is the NIC.
    """
    macs: Dict[str, str] = {}
    base = f"{control_set}\\Control\\Class\\{NET_CLASS}"
    for child in system.children(base):
        guid = system.string(base + "\\" + child, "NetCfgInstanceId")
        address = system.string(base + "\\" + child, "NetworkAddress")
        if guid and address and len(address.replace("-", "").replace(":", "")) == 12:
            plain = address.replace("-", "").replace(":", "").lower()
            macs[guid.lower()] = ":".join(plain[i:i + 2] for i in range(0, 12, 2))
    interfaces = f"{control_set}\\Services\\Tcpip\\Parameters\\Interfaces"
    static = [guid.lower() for guid in system.children(interfaces)
              if system.dword(f"{interfaces}\\{guid}", "EnableDHCP") == 0]
    if len(static) == 1 and static[0] not in macs and len(hardware_macs) == 1:
        macs[static[0]] = hardware_macs[0]
    return macs


def _sam_machine_sid(root: Root) -> Optional[str]:
    """The machine SID from SAM\\Domains\\Account\\V, whose last 24 bytes are S-1-5-21-x-y-z."""
    path = find_hive(root, "SAM")
    if path is None:
        return None
    value = Hive(path).raw("SAM\\Domains\\Account", "V")
    if value is None or len(value[1]) < 24:
        return None
    sid = decode_sid(value[1][-24:])
    return sid if sid and sid.startswith("S-1-5-21-") else None


INTERFACE_VALUES = (("enable_dhcp", "EnableDHCP"), ("ip_address", "IPAddress"), ("subnet_mask", "SubnetMask"),
                    ("default_gateway", "DefaultGateway"), ("name_server", "NameServer"))


def gather(root: Root, record: IdentityRecord, hardware_macs: List[str]) -> None:
    """Fill ``record`` from an offline Windows root."""
    path = find_hive(root, "SYSTEM")
    if path is None:
        raise IdentityError(f"No SYSTEM registry hive below {root.path}.")
    system = Hive(path)
    control_set = _control_set(system)
    tcpip = f"{control_set}\\Services\\Tcpip\\Parameters"
    info: Dict[str, object] = {
        "control_set": control_set,
        "computer_name": system.string(f"{control_set}\\Control\\ComputerName\\ComputerName", "ComputerName"),
        "hostname": system.string(tcpip, "Hostname"),
        "nv_hostname": system.string(tcpip, "NV Hostname"),
        "domain": system.string(tcpip, "Domain"),
        "nv_domain": system.string(tcpip, "NV Domain"),
    }
    macs = _interface_macs(system, control_set, hardware_macs)
    instances = _device_instances(system, control_set)
    interfaces = []
    for guid in system.children(tcpip + "\\Interfaces"):
        key = f"{tcpip}\\Interfaces\\{guid}"
        entry: Dict[str, object] = {"guid": guid, "mac": macs.get(guid.lower()),
                                    "device_instance": instances.get(guid.lower())}
        entry["enable_dhcp"] = system.dword(key, "EnableDHCP")
        for field_name, value_name in INTERFACE_VALUES[1:]:
            entry[field_name] = system.strings(key, value_name)
        interfaces.append(entry)
    static = [entry for entry in interfaces if entry["enable_dhcp"] == 0]
    info["interfaces"] = interfaces

    security_path = find_hive(root, "SECURITY")
    info["workgroup"] = info["machine_sid"] = info["domain_sid"] = None
    if security_path is None:
        record.notes.append("No SECURITY hive on this system: workgroup and machine SID not read.")
    else:
        security = Hive(security_path)
        name = security.raw("Policy\\PolPrDmN", "")
        info["workgroup"] = decode_lsa_string(name[1])[0] if name else None
        for field_name, key in (("machine_sid", "PolAcDmS"), ("domain_sid", "PolPrDmS")):
            value = security.raw(f"Policy\\{key}", "")
            info[field_name] = decode_sid(value[1]) if value else None
    if not info["machine_sid"]:
        info["machine_sid"] = _sam_machine_sid(root)
    info["domain_joined"] = bool(info["domain_sid"])
    record.windows = info
    record.summary.update({
        "hostname": info["hostname"] or info["computer_name"],
        "computer_name": info["computer_name"],
        "workgroup": info["workgroup"],
        "machine_sid": info["machine_sid"],
        "domain_member": info["domain_joined"],
        "addresses": sorted({address for entry in static for address in entry["ip_address"]}),
        "configured_macs": sorted({entry["mac"] for entry in interfaces if entry["mac"]}),
    })


@dataclass
class RegistryChange:
    hive: str
    key: str
    name: str
    kind: int
    data: Optional[bytes]       # None: the value is deleted
    before: Optional[bytes]

    def describe(self) -> Dict[str, object]:
        return {"path": f"{self.hive}:{self.key}\\{self.name}", "item": "registry",
                "action": "set" if self.data is not None else "delete", "secret": False}

    def show(self, data: Optional[bytes]) -> str:
        if data is None:
            return "(absent)"
        if self.kind == REG_DWORD:
            return str(struct.unpack_from("<I", data)[0])
        if self.kind == REG_MULTI_SZ:
            return ",".join(_decode_multi_sz(data))
        if self.kind == REG_SZ:
            return _decode_sz(data)
        return data.hex()


class WindowsPlan:
    """Registry changes, prepared in memory on open hives; ``commit`` swaps the hives in at once.

    ``unattend``: an answer file will carry (by MAC) the static interfaces that have no place in
    the restored registry; without it such an interface fails the plan.
    """

    def __init__(self, root: Root, record: IdentityRecord, hardware_macs: Sequence[str] = (),
                 unattend: bool = False):
        self.changes: List[RegistryChange] = []
        self.notes: List[str] = []
        system_path = find_hive(root, "SYSTEM")
        if system_path is None:
            raise IdentityError(f"No SYSTEM registry hive below {root.path} to apply {record.inventory_name}'s "
                                "identity to.")
        self.hives: Dict[str, Hive] = {"SYSTEM": Hive(system_path, write=True)}
        security_path = find_hive(root, "SECURITY")
        if security_path is not None:
            self.hives["SECURITY"] = Hive(security_path, write=True)
        self._plan(record, hardware_macs, unattend)

    def _set(self, hive: str, key: str, name: str, kind: int, data: Optional[bytes]) -> None:
        current = self.hives[hive].raw(key, name)
        if (data is None and current is None) or (current is not None and current == (kind, data)):
            return
        self.changes.append(RegistryChange(hive, key, name, kind, data, None if current is None else current[1]))

    def _names(self, record: IdentityRecord, control_set: str, required: bool) -> None:
        saved, system = record.windows, self.hives["SYSTEM"]
        name_key = f"{control_set}\\Control\\ComputerName\\ComputerName"
        tcpip = f"{control_set}\\Services\\Tcpip\\Parameters"
        for key in (name_key, tcpip):
            if system.node(key) is None and required:
                raise IdentityError(f"The registry hive {system.path} has no key {key}; it is not a Windows "
                                    "SYSTEM hive this collection can write.")
        if saved.get("computer_name") and system.node(name_key) is not None:
            self._set("SYSTEM", name_key, "ComputerName", REG_SZ, _sz(saved["computer_name"]))
        if system.node(tcpip) is not None:
            for field_name, value_name in (("hostname", "Hostname"), ("nv_hostname", "NV Hostname"),
                                           ("domain", "Domain"), ("nv_domain", "NV Domain")):
                if saved.get(field_name) is not None:
                    self._set("SYSTEM", tcpip, value_name, REG_SZ, _sz(saved[field_name]))

    def _write_interface(self, key: str, entry: Dict[str, object]) -> None:
        system = self.hives["SYSTEM"]
        self._set("SYSTEM", key, "EnableDHCP", REG_DWORD, struct.pack("<I", int(entry.get("enable_dhcp") or 0)))
        for field_name, value_name in INTERFACE_VALUES[1:]:
            values = list(entry.get(field_name) or [])  # type: ignore[call-overload]
            if not values and system.raw(key, value_name) is None:
                continue
            if field_name == "name_server":
                self._set("SYSTEM", key, value_name, REG_SZ, _sz(",".join(values)))
            else:
                self._set("SYSTEM", key, value_name, REG_MULTI_SZ, _multi_sz(values))
        # a DHCP lease is the machine's own too: the master's must not come back (Windows takes a new one)
        for name in system.value_names(key):
            if name.lower().startswith("dhcp") or name.lower().startswith("lease"):
                self._set("SYSTEM", key, name, 0, None)

    def _interfaces(self, record: IdentityRecord, control_set: str, hardware_macs: Sequence[str]
                    ) -> List[Dict[str, object]]:
        """Write the host's interfaces into one control set; return the static ones with no place."""
        system = self.hives["SYSTEM"]
        base = f"{control_set}\\Services\\Tcpip\\Parameters\\Interfaces"
        if system.node(base) is None:
            return []       # a control set without TCP/IP interfaces (nothing of the master's there either)
        present = {guid.lower(): guid for guid in system.children(base)}
        by_instance = {instance: guid for guid, instance in _device_instances(system, control_set).items()}
        by_mac = {mac: guid for guid, mac in _interface_macs(system, control_set, hardware_macs).items()}
        claimed, unplaced = set(), []
        for entry in record.windows.get("interfaces", []):
            candidates = [str(entry["guid"]).lower(), by_instance.get(str(entry.get("device_instance") or "").lower()),
                          by_mac.get(str(entry.get("mac") or "").lower())]
            guid = next((present[c] for c in candidates if c in present and c not in claimed), None)
            if guid is None:
                if entry.get("enable_dhcp") == 0:
                    unplaced.append(entry)
                continue
            claimed.add(guid.lower())
            self._write_interface(f"{base}\\{guid}", entry)
        for lower, guid in present.items():
            if lower not in claimed:
                # the master's interface, none of the host's: no static value or lease of the master stays
                self._write_interface(f"{base}\\{guid}", {"enable_dhcp": 1})
        return unplaced

    def _plan(self, record: IdentityRecord, hardware_macs: Sequence[str], unattend: bool) -> None:
        saved = record.windows
        system = self.hives["SYSTEM"]
        current = _control_set(system)
        unplaced: Dict[str, Dict[str, object]] = {}
        for control_set in _control_sets(system):
            self._names(record, control_set, required=control_set == current)
            for entry in self._interfaces(record, control_set, hardware_macs):
                unplaced[str(entry["guid"]).lower()] = entry
        for entry in unplaced.values():
            label = f"interface {entry['guid']} ({entry.get('mac') or 'MAC unknown'}, {', '.join(entry.get('ip_address') or [])})"
            if unattend and entry.get("mac"):
                self.notes.append(f"The static TCP/IP settings of {record.inventory_name}'s {label} have no "
                                  "interface in the restored registry; the answer file carries them by MAC.")
            else:
                raise IdentityError(
                    f"The static TCP/IP settings of {record.inventory_name}'s {label} have no interface in the "
                    "restored registry (no GUID, device instance or MAC matches)"
                    + ("; the answer file cannot carry them either, as the interface's MAC is unknown."
                       if unattend else "; give unattend to carry them in an answer file by MAC."))
        security = self.hives.get("SECURITY")
        target_sid = None
        if security is not None:
            sid_value = security.raw("Policy\\PolAcDmS", "")
            target_sid = decode_sid(sid_value[1]) if sid_value else None
            joined = security.raw("Policy\\PolPrDmS", "")
            name_value = security.raw("Policy\\PolPrDmN", "")
            if saved.get("workgroup") and not saved.get("domain_joined") and not (joined and joined[1]) \
                    and name_value is not None:
                header = decode_lsa_string(name_value[1])[1]
                self._set("SECURITY", "Policy\\PolPrDmN", "", name_value[0],
                          encode_lsa_string(saved["workgroup"], header))
        if saved.get("machine_sid") and target_sid and target_sid != saved["machine_sid"]:
            self.notes.append(f"The machine SID stays the image's ({target_sid}, {record.inventory_name} had "
                              f"{saved['machine_sid']}): Microsoft supports a new SID only through sysprep; "
                              "generalize the master image and deploy it with an unattend.xml (option unattend).")
        if saved.get("domain_joined"):
            self.notes.append(f"{record.inventory_name} was a domain member: its machine account password "
                              "rotates, so membership cannot be restored from a snapshot; re-join the domain.")

    def commit(self) -> None:
        touched = sorted({change.hive for change in self.changes})
        for change in self.changes:
            self.hives[change.hive].set(change.key, change.name, change.kind, change.data)
        temps = {}
        try:
            for name in touched:
                temps[name] = self.hives[name].commit_to_temp()
        except IdentityError:
            for tmp in temps.values():
                os.unlink(tmp)
            raise
        for name, tmp in temps.items():
            os.replace(tmp, self.hives[name].path)


def _prefix(address: str, mask: Optional[str]) -> str:
    try:
        return str(ipaddress.IPv4Interface(f"{address}/{mask or 32}"))
    except ValueError:
        return address


def unattend_xml(record: IdentityRecord, architecture: str = "amd64") -> str:
    """A sysprep answer file giving ComputerName, static TCP/IP per MAC and the workgroup."""
    saved = record.windows or {}
    ns = "urn:schemas-microsoft-com:unattend"
    wcm = "http://schemas.microsoft.com/WMIConfig/2002/State"
    ET.register_namespace("", ns)
    ET.register_namespace("wcm", wcm)
    top = ET.Element(f"{{{ns}}}unattend")
    settings = ET.SubElement(top, f"{{{ns}}}settings", {"pass": "specialize"})

    def component(name: str) -> ET.Element:
        return ET.SubElement(settings, f"{{{ns}}}component", {
            "name": name, "processorArchitecture": architecture, "publicKeyToken": "31bf3856ad364e35",
            "language": "neutral", "versionScope": "nonSxS"})

    def child(parent: ET.Element, tag: str, text: Optional[str] = None, **attrs: str) -> ET.Element:
        element = ET.SubElement(parent, f"{{{ns}}}{tag}", {f"{{{wcm}}}{k}": v for k, v in attrs.items()})
        if text is not None:
            element.text = text
        return element

    name = saved.get("computer_name") or record.summary.get("hostname")
    if name:
        child(component("Microsoft-Windows-Shell-Setup"), "ComputerName", name)
    static = [entry for entry in saved.get("interfaces", []) if entry.get("enable_dhcp") == 0 and entry.get("mac")]
    if static:
        interfaces = child(component("Microsoft-Windows-TCPIP"), "Interfaces")
        for entry in static:
            interface = child(interfaces, "Interface", action="add")
            ipv4 = child(interface, "Ipv4Settings")
            child(ipv4, "DhcpEnabled", "false")
            child(interface, "Identifier", entry["mac"].replace(":", "-").upper())
            addresses = child(interface, "UnicastIpAddresses")
            masks = entry.get("subnet_mask") or []
            for number, address in enumerate(entry.get("ip_address") or [], start=1):
                mask = masks[number - 1] if number - 1 < len(masks) else None
                child(addresses, "IpAddress", _prefix(address, mask), action="add", keyValue=str(number))
            if entry.get("default_gateway"):
                routes = child(interface, "Routes")
                route = child(routes, "Route", action="add")
                child(route, "Identifier", "0")
                child(route, "Prefix", "0.0.0.0/0")
                child(route, "NextHopAddress", entry["default_gateway"][0])
    if saved.get("workgroup") and not saved.get("domain_joined"):
        identification = child(component("Microsoft-Windows-UnattendedJoin"), "Identification")
        child(identification, "JoinWorkgroup", saved["workgroup"])
    ET.indent(top)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(top, encoding="unicode") + "\n"
