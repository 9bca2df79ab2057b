# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Network configuration files: where they live, and the identity values each one holds.

Private to the collection. Each format's parser returns *stanzas* (one interface or connection
each) holding *slots*: an identity value (an address, a gateway, a netmask, a MAC, a connection
UUID, a secret) with its character span. Files are saved and restored whole (a clone's network
file is the host's own); the parsers say what a file holds, for the record's summary, the
conflict check, and to tell whether a file the host never had still carries the master's values.
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


_IFUPDOWN_HOOKS = ("up", "post-up", "pre-up", "down", "pre-down", "post-down")


def _ifupdown_hook(stanza: Stanza, offset: int, tokens: List["re.Match[str]"]) -> None:
    """Values in hook commands: ``ip [-6] addr add X``, ``ip route add default via X``, a MAC set by hand."""
    words = [token.group() for token in tokens]
    for position, word in enumerate(words[:-1]):
        following = words[position + 1]
        if word == "add" and position >= 1 and words[position - 1] in ("addr", "address", "a") \
                and re.match(r"^[0-9a-fA-F:.]+(/\d+)?$", following) and any(c in following for c in ".:"):
            token = tokens[position + 1]
            stanza.add(_address_field(following), offset + token.start(), offset + token.end(), following)
        elif word == "via" and "default" in words[:position]:
            token = tokens[position + 1]
            stanza.add(_address_field(following, "gateway"), offset + token.start(), offset + token.end(), following)
        elif word in ("ether", "address") and _is_mac(following):
            token = tokens[position + 1]
            stanza.add("mac", offset + token.start(), offset + token.end(), following)


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
        elif current is not None and word in _IFUPDOWN_HOOKS:
            _ifupdown_hook(current, offset, tokens[1:])
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
        elif section == "Link" and key == "Name":
            stanza.add("name", start, end, value)
        elif section in ("Match", "Link", "NetDev") and key in ("MACAddress", "PermanentMACAddress"):
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
        elif section == "connection" and key == "uuid":
            stanza.add("uuid", start, end, value)
        elif section in ("ethernet", "802-3-ethernet", "wifi", "802-11-wireless") \
                and key in ("mac-address", "cloned-mac-address") and _is_mac(value):
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
        elif section == "ipv6" and key == "token":
            stanza.add("token", start, end, value)
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


# --- udev persistent-net rules: /etc/udev/rules.d/*persistent-net.rules ------------------------

def parse_udev_net(text: str) -> List[Stanza]:
    stanzas: List[Stanza] = []
    for offset, line in _lines(text):
        if line.lstrip().startswith("#"):
            continue
        mac = re.search(r'ATTRS?\{address\}\s*==\s*"([^"]+)"', line)
        name = re.search(r'NAME\s*:?=\s*"([^"]+)"', line)
        if mac or name:
            stanza = Stanza(key=f"rule {len(stanzas) + 1}", name=name.group(1) if name else None)
            if mac:
                stanza.add("mac", offset + mac.start(1), offset + mac.end(1), mac.group(1))
            if name:
                stanza.add("name", offset + name.start(1), offset + name.end(1), name.group(1))
            stanzas.append(stanza)
    return stanzas


_VALUE_TOKEN = re.compile(r"(?<![\w.:])(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}"
                          r"|(?:[0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2})(?:/\d+)?(?![\w.:])")


def holds_values(fmt: "NetFormat", text: str) -> bool:
    """Whether a file carries any identity value (address, gateway, MAC, name, UUID, secret).

    Where the format's parser cannot run (netplan without PyYAML), any address- or MAC-shaped
    token counts: a file is never taken for value-free merely because it could not be read.
    """
    try:
        return any(stanza.slots for stanza in fmt.parse(text))
    except ParserUnavailable:
        stripped = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
        return bool(_VALUE_TOKEN.search(stripped)) or fmt.secrets is not None and fmt.secrets(text)


@dataclass(frozen=True)
class NetFormat:
    name: str
    directory: str
    parse: Callable[[str], List[Stanza]]
    mode: int
    suffix: Tuple[str, ...] = ("",)
    prefix: str = ""
    single: str = ""           # a single well-known file besides the directory
    secrets: Optional[Callable[[str], bool]] = None


FORMATS: Tuple[NetFormat, ...] = (
    NetFormat("netplan", "/etc/netplan", parse_netplan, 0o600, suffix=(".yaml", ".yml"), secrets=netplan_secrets),
    NetFormat("networkmanager", "/etc/NetworkManager/system-connections", parse_networkmanager, 0o600,
              secrets=networkmanager_secrets),
    NetFormat("ifupdown", "/etc/network/interfaces.d", parse_ifupdown, 0o644,
              single="/etc/network/interfaces"),
    NetFormat("networkd", "/etc/systemd/network", parse_networkd, 0o644, suffix=(".network",)),
    NetFormat("networkd-link", "/etc/systemd/network", parse_networkd, 0o644, suffix=(".link", ".netdev")),
    NetFormat("ifcfg", "/etc/sysconfig/network-scripts", parse_ifcfg, 0o644, prefix="ifcfg-"),
    NetFormat("udev", "/etc/udev/rules.d", parse_udev_net, 0o644, suffix=("persistent-net.rules",)),
)

FORMAT_BY_NAME = {fmt.name: fmt for fmt in FORMATS}


def describe(fmt: NetFormat, path: str, text: str) -> Dict[str, object]:
    """The record entry for one network file: its format and each stanza's identity values."""
    return {"path": path, "format": fmt.name,
            "stanzas": [stanza.summary() for stanza in fmt.parse(text)]}
