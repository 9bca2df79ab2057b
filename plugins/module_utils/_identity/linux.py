# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Linux identity: gather it from a root, and plan its return onto a restored root.

Private to the collection. Identity files are restored whole, as saved: hostname, machine-id,
SSH host keys, keytab, NetworkManager's ``secret_key``, ``/etc/hosts`` and every network file
(netplan, NetworkManager keyfiles, ifupdown, systemd-networkd ``.network``/``.link``/``.netdev``,
ifcfg, udev persistent-net rules). The master's identity files that the host did not have are
removed, except value-free network files (DHCP) when the host had no network file at all.
Only ``smb.conf``, which mostly holds other settings, keeps the image's content with the host's
workgroup and NetBIOS name put in.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from .._errors import IdentityError
from . import assigned, netconf, sshkeys
from .record import FileItem, IdentityRecord
from .rootfs import FileState, Root

WHOLE_FILES = (
    ("/etc/hostname", "hostname", False),
    ("/etc/machine-id", "machine-id", False),
    ("/var/lib/dbus/machine-id", "machine-id", False),
    ("/etc/krb5.keytab", "keytab", True),
    # the seed of NetworkManager's stable-privacy IPv6 addresses and stable MACs: a clone with the
    # master's would derive the master's addresses
    ("/var/lib/NetworkManager/secret_key", "nm-secret-key", True),
)
SSH_DIR = "/etc/ssh"
HOSTS = "/etc/hosts"
SMB_CONF = "/etc/samba/smb.conf"
SECRET_MODE_MASK = 0o600


@dataclass
class Change:
    """One planned change to a file below the root."""

    path: str
    kind: str
    action: str                     # write, remove, link
    data: Optional[bytes] = None
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    secret: bool = False
    before: Optional[bytes] = None
    link: Optional[str] = None

    def describe(self) -> Dict[str, object]:
        return {"path": self.path, "item": self.kind, "action": self.action,
                "mode": f"{self.mode:04o}", "secret": self.secret}


def _text(data: Optional[bytes]) -> str:
    return "" if data is None else data.decode("utf-8", "replace")


def _smb_values(text: str) -> Dict[str, Tuple[int, int, str]]:
    """``workgroup`` and ``netbios name`` in smb.conf's [global], with their value spans."""
    found: Dict[str, Tuple[int, int, str]] = {}
    section = "global"
    offset = 0
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped[1:-1].strip().lower()
        elif section == "global":
            match = re.match(r"\s*(workgroup|netbios name|security)\s*=\s*(.*?)\s*$", line.rstrip("\r\n"),
                             re.IGNORECASE)
            if match:
                key = re.sub(r"\s+", " ", match.group(1).lower())
                found[key] = (offset + match.start(2), offset + match.end(2), match.group(2))
        offset += len(line)
    return found


def _network_files(root: Root) -> List[Tuple[netconf.NetFormat, str]]:
    found = []
    for fmt in netconf.FORMATS:
        paths = [fmt.single] if fmt.single and root.read(fmt.single) is not None else []
        paths += root.glob(fmt.directory, suffix=fmt.suffix, prefix=fmt.prefix)
        found.extend((fmt, path) for path in paths)
    return found


def _item(path: str, kind: str, state: FileState, secret: bool) -> FileItem:
    return FileItem(path=path, kind=kind, mode=state.mode, uid=state.uid, gid=state.gid, secret=secret,
                    symlink=state.symlink)


def gather(root: Root, record: IdentityRecord) -> None:
    """Fill ``record`` with the Linux identity found below ``root``."""
    summary = record.summary
    for path, kind, secret in WHOLE_FILES:
        state = root.read(path)
        if state is None:
            record.notes.append(f"{path} is absent from this system.")  # no mount path: records stay stable
            continue
        record.add_file(_item(path, kind, state, secret), state.data)
    summary["hostname"] = _text(record.file_data("/etc/hostname")).strip() or None
    summary["machine_id"] = _text(record.file_data("/etc/machine-id")).strip() or None
    summary["dbus_machine_id"] = _text(record.file_data("/var/lib/dbus/machine-id")).strip() or None

    fingerprints = []
    for path in root.glob(SSH_DIR, prefix="ssh_host_"):
        if not (path.endswith("_key") or path.endswith("_key.pub")):
            continue
        state = root.read(path)
        secret = path.endswith("_key")
        record.add_file(_item(path, "ssh-host-key" if secret else "ssh-host-key-public", state, secret),
                        state.data)
        if not secret:
            fingerprint = sshkeys.fingerprint(state.data)
            if fingerprint:
                fingerprints.append(fingerprint)
    summary["ssh_fingerprints"] = fingerprints

    hosts = root.read(HOSTS)
    if hosts is not None:
        record.add_file(_item(HOSTS, "hosts", hosts, False), hosts.data)
    smb = root.read(SMB_CONF)
    if smb is not None:
        record.add_file(_item(SMB_CONF, "samba", smb, False), smb.data)
        values = _smb_values(_text(smb.data))
        summary["workgroup"] = values.get("workgroup", (0, 0, None))[2]
        summary["netbios_name"] = values.get("netbios name", (0, 0, None))[2]
        if values.get("security", (0, 0, ""))[2].lower() in ("ads", "domain"):
            summary["domain_member"] = True

    addresses: List[str] = []
    macs: List[str] = []
    for fmt, path in _network_files(root):
        state = root.read(path)
        text = _text(state.data)
        try:
            entry = netconf.describe(fmt, path, text)
        except netconf.ParserUnavailable as err:
            entry = {"path": path, "format": fmt.name, "stanzas": []}
            record.notes.append(f"{path}: {err} It is saved whole and will be restored whole.")
        except IdentityError as err:
            raise IdentityError(f"Cannot read {path} below {root.path}: {err}") from None
        secret = bool(fmt.secrets and fmt.secrets(text))
        record.add_file(_item(path, "network:" + fmt.name, state, secret), state.data)
        record.network.append(entry)
        for stanza in entry["stanzas"]:
            for field_name, values in stanza["values"].items():
                if field_name.startswith("address"):
                    addresses.extend(value.split("/")[0] for value in values)
                elif field_name == "mac":
                    macs.extend(value.lower() for value in values)
    summary["addresses"] = sorted(set(addresses))
    summary["configured_macs"] = sorted(set(macs))
    if record.file("/etc/krb5.keytab") is not None:
        summary["domain_member"] = True


def _substitute_tokens(text: str, mapping: Dict[str, str], hostnames: Tuple[Optional[str], Optional[str]]) -> str:
    """Replace whole whitespace-separated tokens: addresses, and the host name (as an FQDN and short)."""
    old_host, new_host = hostnames
    names = []
    if old_host and new_host:
        names.append((old_host, new_host))
        if old_host.split(".")[0] != old_host:
            names.append((old_host.split(".")[0], new_host.split(".")[0]))

    def replace(match: "re.Match[str]") -> str:
        token = match.group()
        if token in mapping:
            return mapping[token]
        for old, new in names:
            if token == old or token.startswith(old + "."):
                return new + token[len(old):]
        return token

    return "\n".join(line if line.lstrip().startswith("#") else re.sub(r"\S+", replace, line)
                     for line in text.split("\n"))


def _hosts_without_master(image: str, master_addresses: List[str],
                          hostnames: Tuple[Optional[str], Optional[str]]) -> str:
    """The image's /etc/hosts for a host that had none: the master's addresses gone, its name the host's."""
    kept = [line for line in image.split("\n")
            if line.lstrip().startswith("#") or not line.split() or line.split()[0] not in master_addresses]
    return _substitute_tokens("\n".join(kept), {}, hostnames)


def _target_mode(saved: Optional[FileItem], current: Optional[FileState], default: int) -> Tuple[int, int, int]:
    if saved is not None:
        mode, uid, gid = saved.mode, saved.uid, saved.gid
    elif current is not None:
        mode, uid, gid = current.mode, current.uid, current.gid
    else:
        mode, uid, gid = default, 0, 0
    if saved is not None and saved.secret:
        mode &= SECRET_MODE_MASK
    return mode, uid, gid


def _propose(changes: List[Change], root: Root, path: str, kind: str, data: bytes,
             saved: Optional[FileItem], default_mode: int = 0o644) -> None:
    current = root.read(path)
    mode, uid, gid = _target_mode(saved, current, default_mode)
    secret = bool(saved and saved.secret)
    if current is not None and current.data == data and (current.mode, current.uid, current.gid) == (mode, uid, gid):
        return
    changes.append(Change(path, kind, "write", data, mode, uid, gid, secret,
                          None if current is None else current.data))


def _saved_data(record: IdentityRecord, item: FileItem) -> bytes:
    data = item.data(record.secrets)
    if data is None:
        raise IdentityError(f"The record for {record.inventory_name} lacks the secret content of "
                            f"{item.path}; load it from the controller's store with its secrets.")
    return data


def plan(root: Root, record: IdentityRecord) -> Tuple[List[Change], List[str]]:
    """Every change that makes ``root`` carry ``record``'s identity, and notes for the user."""
    changes: List[Change] = []
    notes: List[str] = []
    current = IdentityRecord(inventory_name="", os="linux")
    gather(root, current)
    record = assigned.with_network_files(
        record, lambda inner: os.path.lexists(root.real(inner, follow=False)),
        lambda inner: bool(root.glob(inner)), root.path)

    for item in record.files:
        if item.kind in ("hostname", "machine-id", "keytab", "nm-secret-key", "ssh-host-key", "ssh-host-key-public"):
            if item.symlink is not None:
                state_link = root.read(item.path)
                if state_link is None or state_link.symlink != item.symlink:
                    changes.append(Change(item.path, item.kind, "link", link=item.symlink))
                continue
            _propose(changes, root, item.path, item.kind, _saved_data(record, item), item)
    # whole files the host did not have (the master's keytab, host keys, ...) must not stay behind
    saved_paths = {item.path for item in record.files}
    whole_kinds = {kind for dummy_path, kind, dummy_secret in WHOLE_FILES}
    for item in current.files:
        if (item.kind in whole_kinds or item.kind.startswith("ssh-host-key")) and item.path not in saved_paths:
            changes.append(Change(item.path, item.kind, "remove", secret=item.secret,
                                  before=current.file_data(item.path) or b""))

    # network files: the host's own, whole; the master's others go (see the module docstring)
    saved_network = [item for item in record.files if item.kind.startswith("network:")]
    saved_network_paths = {item.path for item in saved_network}
    for item in saved_network:
        fmt = netconf.FORMAT_BY_NAME[item.kind.split(":", 1)[1]]
        _propose(changes, root, item.path, item.kind, _saved_data(record, item), item, fmt.mode)
    for fmt, path in _network_files(root):
        if path in saved_network_paths:
            continue
        state = root.read(path)
        text = _text(state.data)
        if saved_network:
            why = "the host's own network files replace the master's"
        elif netconf.holds_values(fmt, text):
            why = "it holds the master's values and the host had no network file to put in their place"
        else:
            continue
        notes.append(f"{path}: the host had no such file; removed, as {why}.")
        changes.append(Change(path, "network:" + fmt.name, "remove", mode=state.mode,
                              secret=bool(fmt.secrets and fmt.secrets(text)), before=state.data))

    hosts = root.read(HOSTS)
    if record.file(HOSTS) is not None:
        _propose(changes, root, HOSTS, "hosts", record.file_data(HOSTS) or b"", record.file(HOSTS))
    elif hosts is not None:
        new = _hosts_without_master(_text(hosts.data), list(current.summary.get("addresses") or []),
                                    (current.summary.get("hostname"), record.summary.get("hostname")))
        _propose(changes, root, HOSTS, "hosts", new.encode("utf-8"), None)

    smb = root.read(SMB_CONF)
    if smb is not None:
        text = _text(smb.data)
        spans = _smb_values(text)
        hostname = record.summary.get("hostname")
        # Samba's default NetBIOS name is the short host name, upper case, at most 15 characters
        default_netbios = hostname.split(".", maxsplit=1)[0].upper()[:15] if hostname else None
        for key, wanted in (("netbios name", record.summary.get("netbios_name") or default_netbios),
                            ("workgroup", record.summary.get("workgroup"))):
            if key in spans and wanted and spans[key][2] != wanted:
                start, end, dummy_old = spans[key]
                text = text[:start] + wanted + text[end:]
                spans = _smb_values(text)
        _propose(changes, root, SMB_CONF, "samba", text.encode("utf-8"), record.file(SMB_CONF))
    if record.summary.get("domain_member"):
        notes.append("Domain membership cannot be restored faithfully (the machine account password "
                     "rotates): re-join the domain after imaging (for example `net ads join` or `realm join`).")
    return changes, notes


def execute(root: Root, changes: List[Change]) -> None:
    for change in changes:
        if change.action == "remove":
            root.remove(change.path)
        elif change.action == "link":
            root.symlink(change.path, change.link or "")
        else:
            root.write(change.path, change.data or b"", change.mode, change.uid, change.gid)
