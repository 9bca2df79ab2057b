# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Network configuration files: find the identity values in them and rewrite only those.

Private to the collection. Each format's parser returns *stanzas* (one interface or connection
each) holding *slots*: the exact character span of an identity value (an address, a gateway, a
netmask, a MAC). Rewriting replaces those spans and nothing else, so every unrelated setting,
comment and blank line of the file stays as it was, byte for byte.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from .._errors import IdentityError

try:
    import yaml
except ImportError:  # netplan files are then saved and restored whole
    yaml = None


class ParserUnavailable(IdentityError):
    """A format's parser cannot run on this host; its files are kept whole instead."""


SECRET_FIELD = "secret:"  # slot fields holding a secret (a Wi-Fi key, an 802.1X password)


@dataclass
class Slot:
    field: str     # address, address6, gateway, gateway6, netmask, mac
    index: int     # n-th slot of this field in its stanza
    start: int
    end: int
    value: str


@dataclass
class Stanza:
    key: str                 # stable within the file: netplan id, NM connection id, iface + family
    name: Optional[str]      # the interface name it applies to, when the file says
    mac: Optional[str] = None
    slots: List[Slot] = field(default_factory=list)

    def add(self, field_name: str, start: int, end: int, value: str) -> None:
        index = sum(1 for slot in self.slots if slot.field == field_name)
        self.slots.append(Slot(field_name, index, start, end, value))
        if field_name == "mac" and self.mac is None:
            self.mac = value.lower()

    def shape(self) -> List[Tuple[str, int]]:
        return sorted((slot.field, slot.index) for slot in self.slots)

    def values(self, secrets: bool = True) -> Dict[str, List[str]]:
        out: Dict[str, List[str]] = {}
        for slot in self.slots:
            if secrets or not slot.field.startswith(SECRET_FIELD):
                out.setdefault(slot.field, []).append(slot.value)
        return out

    def summary(self) -> Dict[str, object]:
        """What the record shows of this stanza: everything but secret values."""
        return {"key": self.key, "name": self.name, "mac": self.mac, "values": self.values(secrets=False)}


def _address_field(value: str, base: str = "address") -> str:
    return base + "6" if ":" in value else base


def _is_mac(value: str) -> bool:
    return re.fullmatch(r"(?:[0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}", value) is not None


def _lines(text: str) -> Iterator[Tuple[int, str]]:
    offset = 0
    for line in text.splitlines(keepends=True):
        yield offset, line.rstrip("\r\n")
        offset += len(line)


def _ini_entries(text: str) -> Iterator[Tuple[str, str, int, int, str]]:
    """(section, key, value start, value end, value) for each ``key=value`` line of an INI file."""
    section = ""
    for offset, line in _lines(text):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped[1:-1].strip()
            continue
        match = re.match(r"\s*([^=\s]+)\s*=\s*(.*?)\s*$", line)
        if match:
            yield section, match.group(1), offset + match.start(2), offset + match.end(2), match.group(2)


# --- ifupdown: /etc/network/interfaces and interfaces.d -------------------------------------------

_IFUPDOWN_TOP = ("auto", "mapping", "source", "source-directory", "no-auto-down", "no-scripts")


def parse_ifupdown(text: str) -> List[Stanza]:
    stanzas: List[Stanza] = []
    current: Optional[Stanza] = None
    for offset, line in _lines(text):
        if line.lstrip().startswith("#"):
            continue
        tokens = list(re.finditer(r"\S+", line))
        if not tokens:
            continue
        word = tokens[0].group()
        if word == "iface" and len(tokens) >= 3:
            current = Stanza(key=f"{tokens[1].group()} {tokens[2].group()}", name=tokens[1].group())
            stanzas.append(current)
        elif word in _IFUPDOWN_TOP or word.startswith("allow-"):
            current = None
        elif current is not None and len(tokens) >= 2:
            value = tokens[-1] if word == "hwaddress" else tokens[1]
            kind = {"address": _address_field(value.group()), "gateway": _address_field(value.group(), "gateway"),
                    "netmask": "netmask", "hwaddress": "mac"}.get(word)
            if kind:
                current.add(kind, offset + value.start(), offset + value.end(), value.group())
    return stanzas


# --- systemd-networkd: /etc/systemd/network/*.network --------------------------------------------

def parse_networkd(text: str) -> List[Stanza]:
    stanza = Stanza(key="network", name=None)
    for section, key, start, end, value in _ini_entries(text):
        if section == "Match" and key == "Name":
            stanza.name = value
        elif section in ("Match", "Link") and key in ("MACAddress", "PermanentMACAddress"):
            stanza.add("mac", start, end, value)
        elif section in ("Network", "Address") and key == "Address":
            stanza.add(_address_field(value), start, end, value)
        elif section in ("Network", "Route") and key == "Gateway":
            stanza.add(_address_field(value, "gateway"), start, end, value)
    return [stanza]


# --- NetworkManager keyfiles: /etc/NetworkManager/system-connections/* ------------------------------

_NM_SECRET = re.compile(r"^(psk|password|wep-key\d|leap-password|pin|private-key-password|secret"
                        r"|.*-password|.*-psk|.*-secret)$")


def parse_networkmanager(text: str) -> List[Stanza]:
    stanza = Stanza(key="", name=None)
    for section, key, start, end, value in _ini_entries(text):
        if section == "connection" and key == "id":
            stanza.key = value
        elif section == "connection" and key == "interface-name":
            stanza.name = value
        elif section in ("ethernet", "802-3-ethernet", "wifi", "802-11-wireless") and key == "mac-address":
            stanza.add("mac", start, end, value)
        elif section in ("ipv4", "ipv6") and re.fullmatch(r"address(es)?\d*", key):
            # "10.0.0.5/24" or "10.0.0.5/24,10.0.0.1" (address, then an optional gateway)
            address, dummy_comma, gateway = value.partition(",")
            stanza.add(_address_field(address), start, start + len(address), address)
            if gateway:
                gw_start = start + len(address) + 1
                stanza.add(_address_field(gateway, "gateway"), gw_start, end, gateway)
        elif section in ("ipv4", "ipv6") and key == "gateway":
            stanza.add(_address_field(value, "gateway"), start, end, value)
        elif _NM_SECRET.match(key):
            stanza.add(f"{SECRET_FIELD}{section}.{key}", start, end, value)
    return [stanza]


def networkmanager_secrets(text: str) -> bool:
    return any(_NM_SECRET.match(key) for dummy_section, key, dummy_start, dummy_end, dummy_value in _ini_entries(text))


# --- ifcfg: /etc/sysconfig/network-scripts/ifcfg-* -------------------------------------------------

def parse_ifcfg(text: str) -> List[Stanza]:
    stanza = Stanza(key="ifcfg", name=None)
    for offset, line in _lines(text):
        match = re.match(r"\s*([A-Z0-9_]+)=([\"']?)(.*?)\2\s*$", line)
        if not match:
            continue
        key, value = match.group(1), match.group(3)
        start, end = offset + match.start(3), offset + match.end(3)
        if key in ("DEVICE", "NAME") and stanza.name is None:
            stanza.name = value
        elif key in ("HWADDR", "MACADDR"):
            stanza.add("mac", start, end, value)
        elif re.fullmatch(r"IPADDR\d*|IPV6ADDR", key):
            stanza.add(_address_field(value), start, end, value)
        elif re.fullmatch(r"(PREFIX|NETMASK)\d*", key):
            stanza.add("netmask", start, end, value)
        elif key in ("GATEWAY", "IPV6_DEFAULTGW"):
            stanza.add(_address_field(value, "gateway"), start, end, value)
    return [stanza]


# --- netplan: /etc/netplan/*.yaml (spans from PyYAML's composer) ----------------------------------

_NETPLAN_TYPES = ("ethernets", "bonds", "bridges", "vlans", "wifis", "modems", "tunnels")


def _mapping_get(node, key):
    for key_node, value_node in getattr(node, "value", ()) if _is_mapping(node) else ():
        if getattr(key_node, "value", None) == key:
            return value_node
    return None


def _is_mapping(node) -> bool:
    return type(node).__name__ == "MappingNode"


def _scalar(stanza: Stanza, kind: str, node) -> None:
    if node is None or type(node).__name__ != "ScalarNode":
        return
    start, end = node.start_mark.index, node.end_mark.index
    if node.style in ("'", '"'):
        start, end = start + 1, end - 1
    stanza.add(kind, start, end, node.value)


def parse_netplan(text: str) -> List[Stanza]:
    if yaml is None:
        raise ParserUnavailable("PyYAML (python3-yaml) is not installed, so netplan values cannot be "
                                "located in the file.")
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as err:
        raise IdentityError(f"The netplan file is not valid YAML ({str(err).splitlines()[0]}).") from None
    stanzas: List[Stanza] = []
    network = _mapping_get(root, "network")
    for kind in _NETPLAN_TYPES:
        devices = _mapping_get(network, kind)
        for key_node, device in (devices.value if _is_mapping(devices) else ()):
            set_name = _mapping_get(device, "set-name")
            stanza = Stanza(key=f"{kind}.{key_node.value}",
                            name=set_name.value if set_name is not None else key_node.value)
            _scalar(stanza, "mac", _mapping_get(_mapping_get(device, "match"), "macaddress"))
            _scalar(stanza, "mac", _mapping_get(device, "macaddress"))
            addresses = _mapping_get(device, "addresses")
            for item in getattr(addresses, "value", ()) if addresses is not None else ():
                # "- 10.0.0.5/24" or "- 10.0.0.5/24: {label: ...}"
                node = item.value[0][0] if _is_mapping(item) and item.value else item
                _scalar(stanza, _address_field(str(node.value)), node)
            for gw_key in ("gateway4", "gateway6"):
                node = _mapping_get(device, gw_key)
                if node is not None:
                    _scalar(stanza, _address_field(str(node.value), "gateway"), node)
            routes = _mapping_get(device, "routes")
            for route in getattr(routes, "value", ()) if routes is not None else ():
                target = _mapping_get(route, "to")
                via = _mapping_get(route, "via")
                if via is not None and getattr(target, "value", "") in ("default", "0.0.0.0/0", "::/0"):
                    _scalar(stanza, _address_field(str(via.value), "gateway"), via)
            points = _mapping_get(device, "access-points")
            for ssid, point in (points.value if _is_mapping(points) else ()):
                _scalar(stanza, f"{SECRET_FIELD}{ssid.value}.password", _mapping_get(point, "password"))
            stanzas.append(stanza)
    return stanzas


def netplan_secrets(text: str) -> bool:
    return re.search(r"^\s*(password|psk|key)\s*:", text, re.MULTILINE) is not None


@dataclass(frozen=True)
class NetFormat:
    name: str
    directory: str
    parse: Callable[[str], List[Stanza]]
    mode: int
    suffix: str = ""
    prefix: str = ""
    single: str = ""           # a single well-known file besides the directory
    secrets: Optional[Callable[[str], bool]] = None


FORMATS: Tuple[NetFormat, ...] = (
    NetFormat("netplan", "/etc/netplan", parse_netplan, 0o600, suffix=".yaml", secrets=netplan_secrets),
    NetFormat("networkmanager", "/etc/NetworkManager/system-connections", parse_networkmanager, 0o600,
              secrets=networkmanager_secrets),
    NetFormat("ifupdown", "/etc/network/interfaces.d", parse_ifupdown, 0o644,
              single="/etc/network/interfaces"),
    NetFormat("networkd", "/etc/systemd/network", parse_networkd, 0o644, suffix=".network"),
    NetFormat("ifcfg", "/etc/sysconfig/network-scripts", parse_ifcfg, 0o644, prefix="ifcfg-"),
)

FORMAT_BY_NAME = {fmt.name: fmt for fmt in FORMATS}


def describe(fmt: NetFormat, path: str, text: str) -> Dict[str, object]:
    """The record entry for one network file: its format and each stanza's identity values."""
    return {"path": path, "format": fmt.name,
            "stanzas": [stanza.summary() for stanza in fmt.parse(text)]}


def rewrite(text: str, targets: List[Stanza], pairs: Dict[int, Stanza]) -> Tuple[str, List[str]]:
    """Replace each target slot with the paired stanza's value for the same (field, index).

    ``pairs`` maps an index into ``targets`` to the saved stanza that replaces it. Returns the new
    text and the slots that had no counterpart (left untouched), as "key field[index]" strings.
    """
    edits: List[Tuple[int, int, str]] = []
    unmatched: List[str] = []
    for position, target in enumerate(targets):
        source = pairs.get(position)
        if source is None:
            unmatched.extend(f"{target.key} {slot.field}[{slot.index}]" for slot in target.slots)
            continue
        saved = source.values()
        for slot in target.slots:
            values = saved.get(slot.field, [])
            if slot.index < len(values):
                edits.append((slot.start, slot.end, values[slot.index]))
            else:
                unmatched.append(f"{target.key} {slot.field}[{slot.index}]")
    for start, end, value in sorted(edits, reverse=True):
        text = text[:start] + value + text[end:]
    return text, unmatched


def pair_stanzas(path: str, targets: List[Stanza], candidates: List[Tuple[str, Stanza]],
                 target_macs: Optional[Dict[str, str]] = None,
                 saved_macs: Optional[Dict[str, str]] = None) -> Dict[int, Stanza]:
    """Pair each target stanza with a saved (path, stanza): same file and key first, then MAC, then name.

    A stanza's MAC is the one its file names, else the MAC of the interface it names on that
    machine (``target_macs`` for this machine, ``saved_macs`` for the saved one: name -> MAC), so an
    interface renamed between snapshot and apply is still found by its hardware.
    """
    def mac_of(stanza: Stanza, macs: Optional[Dict[str, str]]) -> Optional[str]:
        return (stanza.mac or (macs or {}).get(stanza.name or "") or "").lower() or None

    pairs: Dict[int, Stanza] = {}
    used = set()
    rules = (lambda p, s, t: p == path and s.key == t.key,
             lambda p, s, t: mac_of(t, target_macs) is not None and mac_of(s, saved_macs) == mac_of(t, target_macs),
             lambda p, s, t: bool(t.name) and s.name == t.name)
    for rule in rules:
        for position, target in enumerate(targets):
            if position in pairs:
                continue
            for number, (saved_path, stanza) in enumerate(candidates):
                if number not in used and rule(saved_path, stanza, target):
                    pairs[position] = stanza
                    used.add(number)
                    break
    return pairs
