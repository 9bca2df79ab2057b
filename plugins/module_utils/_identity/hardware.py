# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The running machine's hardware identity: SMBIOS UUID and NIC MACs. Private to the collection.

Read from sysfs (injectable for tests). In a PXE imaging environment this is the hardware the
offline root belongs to, so records are checked against it before anything is written.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional


def _read(path: str) -> Optional[str]:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read().strip() or None
    except OSError:
        return None


def read_hardware(sysfs: str = "/sys") -> Dict[str, object]:
    """{"product_uuid": str|None, "interfaces": [{"name", "mac"}], "macs": [...]} of physical NICs."""
    uuid = _read(os.path.join(sysfs, "class", "dmi", "id", "product_uuid"))
    interfaces: List[Dict[str, str]] = []
    net = os.path.join(sysfs, "class", "net")
    try:
        names = sorted(os.listdir(net))
    except OSError:
        names = []
    for name in names:
        # virtual interfaces (lo, bridges, veth, tun) have no "device" link
        if not os.path.exists(os.path.join(net, name, "device")):
            continue
        mac = _read(os.path.join(net, name, "address"))
        if mac and mac != "00:00:00:00:00:00":
            interfaces.append({"name": name, "mac": mac.lower()})
    return {"product_uuid": uuid.lower() if uuid else None, "interfaces": interfaces,
            "macs": sorted({entry["mac"] for entry in interfaces})}


def mismatch(saved: Dict[str, object], present: Dict[str, object]) -> Optional[str]:
    """Why a saved hardware identity is not this machine's, or None when it is (or cannot be told)."""
    saved_uuid, uuid = saved.get("product_uuid"), present.get("product_uuid")
    if saved_uuid and uuid and saved_uuid != uuid:
        return f"its SMBIOS UUID is {saved_uuid} but this machine's is {uuid}"
    saved_macs, macs = set(saved.get("macs") or []), set(present.get("macs") or [])
    if saved_macs and macs and not saved_macs & macs:
        return f"its MACs ({', '.join(sorted(saved_macs))}) are not this machine's ({', '.join(sorted(macs))})"
    return None
