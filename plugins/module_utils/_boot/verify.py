# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Verification of a RUNNING clone against its identity record. Private to the collection.

The controller logs into the clone over SSH (strict host key checking against the keys of the
host's own record, so the connection itself proves the host key), runs ``PROBE`` and hands its
output here. A clone passes when its hostname, machine-id, every configured address and every SSH
host key fingerprint are those of its own record and none is the master's; across the fleet, no
two clones may answer with the same identity.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional

# One shell line, POSIX sh, only tools of a minimal Debian (iproute2, openssh-client).
PROBE = (
    "echo \"hostname=$(hostname)\"; echo \"machine_id=$(cat /etc/machine-id)\"; "
    "ip -o addr show scope global | while read -r n dev fam addr rest; do echo \"address=${addr%/*}\"; done; "
    "for f in /etc/ssh/ssh_host_*_key.pub; do echo \"fingerprint=$(ssh-keygen -lf \"$f\" | cut -d' ' -f2)\"; done"
)

_FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")


def parse_probe(text: str) -> Dict[str, Any]:
    """{'hostname', 'machine_id', 'addresses': sorted, 'ssh_fingerprints': sorted} from PROBE's output."""
    found: Dict[str, Any] = {"hostname": None, "machine_id": None, "addresses": [], "ssh_fingerprints": []}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if not sep:
            continue
        value = value.strip()
        if key in ("hostname", "machine_id"):
            found[key] = value or None
        elif key == "address" and value:
            found["addresses"].append(value)
        elif key == "fingerprint" and _FINGERPRINT.match(value):
            found["ssh_fingerprints"].append(value)
    found["addresses"] = sorted(set(found["addresses"]))
    found["ssh_fingerprints"] = sorted(set(found["ssh_fingerprints"]))
    return found


def _short(name: Optional[str]) -> str:
    return str(name or "").split(".", 1)[0].lower()


def compare(name: str, expected: Dict[str, Any], observed: Dict[str, Any],
            master: Optional[Dict[str, Any]] = None, extra_addresses: Optional[List[str]] = None) -> List[str]:
    """Every way the running clone ``name`` differs from its record; empty when it is itself.

    ``expected`` and ``master`` are identity summaries (hostname, machine_id, addresses,
    ssh_fingerprints); ``extra_addresses`` are addresses the host must answer on besides its
    configured ones (its reserved DHCP address).
    """
    problems = []
    if _short(observed.get("hostname")) != _short(expected.get("hostname")):
        problems.append(f"hostname is {observed.get('hostname')!r}, its record says {expected.get('hostname')!r}")
    if (observed.get("machine_id") or None) != (expected.get("machine_id") or None):
        problems.append(f"machine-id is {observed.get('machine_id')!r}, its record says {expected.get('machine_id')!r}")
    wanted = sorted(set(expected.get("addresses") or []) | set(extra_addresses or []))
    missing = [address for address in wanted if address not in (observed.get("addresses") or [])]
    if missing:
        problems.append(f"address(es) {', '.join(missing)} not configured (it has "
                        f"{', '.join(observed.get('addresses') or []) or 'none'})")
    if sorted(observed.get("ssh_fingerprints") or []) != sorted(expected.get("ssh_fingerprints") or []):
        problems.append(f"SSH host keys {', '.join(observed.get('ssh_fingerprints') or []) or 'none'} are not "
                        f"its own {', '.join(expected.get('ssh_fingerprints') or []) or 'none'}")
    if master:
        same = []
        if observed.get("hostname") and _short(observed.get("hostname")) == _short(master.get("hostname")):
            same.append(f"hostname {observed['hostname']}")
        if observed.get("machine_id") and observed.get("machine_id") == master.get("machine_id"):
            same.append(f"machine-id {observed['machine_id']}")
        shared = sorted(set(observed.get("addresses") or []) & set(master.get("addresses") or []))
        if shared:
            same.append(f"address(es) {', '.join(shared)}")
        keys = sorted(set(observed.get("ssh_fingerprints") or []) & set(master.get("ssh_fingerprints") or []))
        if keys:
            same.append(f"SSH host key(s) {', '.join(keys)}")
        if same:
            problems.append("it answers with the master's " + ", ".join(same))
    return problems


def duplicates(observed_by_host: Dict[str, Dict[str, Any]]) -> Dict[str, List[str]]:
    """{host: [sentences]} for every identity value that more than one running clone answers with."""
    owners: Dict[tuple, List[str]] = {}
    for host, observed in observed_by_host.items():
        values = [("hostname", _short(observed.get("hostname")))]
        values.append(("machine-id", observed.get("machine_id")))
        values += [("address", address) for address in observed.get("addresses") or []]
        values += [("SSH host key", key) for key in observed.get("ssh_fingerprints") or []]
        for value in values:
            if value[1]:
                owners.setdefault(value, []).append(host)
    problems: Dict[str, List[str]] = {}
    for (kind, value), hosts in sorted(owners.items()):
        if len(hosts) > 1:
            for host in hosts:
                others = ", ".join(sorted(other for other in hosts if other != host))
                problems.setdefault(host, []).append(f"{kind} {value} is also answered by {others}")
    return problems


def sentence(name: str, problems: List[str]) -> str:
    """One sentence for the summary: what is wrong with the running clone ``name``."""
    return f"{name}: the running clone is not itself: " + "; ".join(problems) + "."
