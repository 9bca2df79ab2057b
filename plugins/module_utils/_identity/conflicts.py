# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Inventory-wide conflict check over identity records. Private to the collection.

Run before any disk is touched: two hosts that would come up with the same host name, address,
MAC, machine-id, SSH host key, SMBIOS UUID or machine SID are named, with the item they share.
Values are compared in one canonical form: addresses as ``ipaddress`` writes them (``fd00:0::1``
and ``FD00::1`` are one address), MACs and UUIDs in lower case, host names short and lower case.
The roles pass every record of the store plus the play's (snapshots and assigned identities), so
a ``--limit`` run is checked against the whole fleet.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from .._errors import ValidationError
from .record import IdentityRecord

# (item, how to read its values from a record's summary/hardware, whether case-insensitive)
CHECKED_ITEMS = ("hostname", "address", "mac", "machine-id", "ssh-host-key", "product-uuid", "machine-sid")


@dataclass
class Conflict:
    item: str
    value: str
    hosts: List[str]

    def sentence(self) -> str:
        return f"{self.item} {self.value} is shared by {', '.join(self.hosts)}"

    def to_dict(self) -> Dict[str, Any]:
        return {"item": self.item, "value": self.value, "hosts": self.hosts}


def _as_record(name: str, value: Any) -> IdentityRecord:
    if isinstance(value, IdentityRecord):
        return value
    return IdentityRecord.from_dict(value, source=f"the identity record of {name}")


def _address(text: str) -> Optional[str]:
    """An address in canonical form; None for loopback, link-local and unspecified ones (shared by all)."""
    try:
        address = ipaddress.ip_address(str(text).split("/", maxsplit=1)[0].split("%", maxsplit=1)[0])
    except ValueError:
        return str(text).lower()
    if address.is_loopback or address.is_link_local or address.is_unspecified:
        return None
    return str(address)


def _items(record: IdentityRecord) -> Iterable[Tuple[str, str]]:
    summary, hardware = record.summary, record.hardware
    if summary.get("hostname"):
        yield "hostname", str(summary["hostname"]).split(".", maxsplit=1)[0].lower()
    for address in summary.get("addresses") or []:
        canonical = _address(address)
        if canonical is not None:
            yield "address", canonical
    for mac in set(summary.get("configured_macs") or []) | set(hardware.get("macs") or []):
        yield "mac", mac.lower().replace("-", ":")
    if summary.get("machine_id"):
        yield "machine-id", str(summary["machine_id"]).strip().lower()
    for fingerprint in summary.get("ssh_fingerprints") or []:
        yield "ssh-host-key", fingerprint
    if hardware.get("product_uuid"):
        yield "product-uuid", str(hardware["product_uuid"]).lower()
    if summary.get("machine_sid"):
        yield "machine-sid", summary["machine_sid"]


def find_conflicts(records: Mapping[str, Any]) -> List[Conflict]:
    """Every value that more than one host's record holds, per item, hosts sorted."""
    owners: Dict[Tuple[str, str], set] = {}
    for name, value in records.items():
        record = _as_record(name, value)
        for item, item_value in set(_items(record)):
            owners.setdefault((item, item_value), set()).add(name)
    return [Conflict(item, value, sorted(hosts))
            for (item, value), hosts in sorted(owners.items(), key=lambda pair: (CHECKED_ITEMS.index(pair[0][0]), pair[0][1]))
            if len(hosts) > 1]


def check_conflicts(records: Mapping[str, Any]) -> None:
    """Raise ValidationError naming the hosts and items in conflict, if any."""
    conflicts = find_conflicts(records)
    if conflicts:
        raise ValidationError("Identity conflicts across the inventory: "
                              + "; ".join(conflict.sentence() for conflict in conflicts) + ".")
