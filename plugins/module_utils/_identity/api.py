# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Snapshot and apply: the two entry points the modules call. Private to the collection."""

from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .._errors import IdentityError, ValidationError
from . import assigned, hardware, linux, windows
from .offline import offline_root
from .record import IdentityRecord
from .rootfs import Root


def _open_root(stack: ExitStack, root: Optional[str], device: Optional[str], partition: Optional[int],
               writable: bool) -> Root:
    """The root to work on; a device is mounted for the life of ``stack``."""
    if device:
        path, dummy_description = stack.enter_context(offline_root(device, partition, writable))
        return Root(path)
    return Root(root or "/")


def _os_of(root: Root) -> str:
    if windows.is_windows_root(root):
        return "windows"
    if os.path.isdir(os.path.join(root.path, "etc")):
        return "linux"
    raise IdentityError(f"{root.path} holds neither a Linux root (/etc) nor a Windows one "
                        "(Windows/System32/config/SYSTEM).")


def snapshot(inventory_name: str, root: Optional[str] = None, device: Optional[str] = None,
             partition: Optional[int] = None, sysfs: str = "/sys") -> IdentityRecord:
    """The identity record of a running system (root ``/``) or of an offline root."""
    present = hardware.read_hardware(sysfs)
    with ExitStack() as stack:
        tree = _open_root(stack, root, device, partition, writable=False)
        record = IdentityRecord(inventory_name=inventory_name, os=_os_of(tree), hardware=present)
        if record.os == "windows":
            windows.gather(tree, record, list(present["macs"]))
        else:
            linux.gather(tree, record)
    return record


def assign(inventory_name: str, spec: Dict[str, Any], sysfs: str = "/sys") -> IdentityRecord:
    """The record of an identity the inventory gives (fresh machine-id and SSH host keys); reads no disk."""
    return assigned.new_record(inventory_name, spec, hardware.read_hardware(sysfs))


@dataclass
class ApplyResult:
    changed: bool
    changes: List[Dict[str, Any]] = field(default_factory=list)
    diff: List[Dict[str, str]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)


def _shown(data: Optional[bytes], secret: bool) -> str:
    if data is None:
        return ""
    if secret:
        return f"<secret, {len(data)} bytes>\n"
    return data.decode("utf-8", "replace")


def _verified(record: IdentityRecord, tree: Root, left: List[str]) -> None:
    """Fail naming every item that still differs from the record once the changes are written."""
    if left:
        raise IdentityError(f"After re-applying {record.inventory_name}'s identity, {tree.path} still differs "
                            f"from its record in {', '.join(sorted(set(left)))}.")


def apply(record: IdentityRecord, root: Optional[str] = None, device: Optional[str] = None,
          partition: Optional[int] = None, force: bool = False, check_mode: bool = False,
          sysfs: str = "/sys", unattend: bool = False) -> ApplyResult:
    """Write ``record``'s identity onto a root; plan everything before the first write.

    Once written, the root is planned again: anything still differing from the record fails the
    apply, naming the items. ``unattend``: an answer file will carry the Windows static interfaces
    that have no place in the restored registry (see ``windows.WindowsPlan``).
    """
    present = hardware.read_hardware(sysfs)
    reason = hardware.mismatch(record.hardware, present)
    if reason and not force:
        raise ValidationError(f"The identity record of {record.inventory_name} is for another machine: "
                              f"{reason}; use force to apply it anyway.")
    with ExitStack() as stack:
        tree = _open_root(stack, root, device, partition, writable=not check_mode)
        found = _os_of(tree)
        if found != record.os:
            raise ValidationError(f"The identity record of {record.inventory_name} is for {record.os} but "
                                  f"{tree.path} holds {found}.")
        result = ApplyResult(changed=False)
        if record.os == "windows":
            plan = windows.WindowsPlan(tree, record, list(present["macs"]), unattend)
            result.notes = plan.notes
            for change in plan.changes:
                result.changes.append(change.describe())
                path = change.describe()["path"]
                result.diff.append({"before_header": path, "after_header": path,
                                    "before": change.show(change.before) + "\n", "after": change.show(change.data) + "\n"})
            if plan.changes and not check_mode:
                plan.commit()
                left = [change.describe()["path"] for change in
                        windows.WindowsPlan(tree, record, list(present["macs"]), unattend).changes]
                _verified(record, tree, left)
        else:
            changes, result.notes = linux.plan(tree, record)
            for change in changes:
                result.changes.append(change.describe())
                after = change.data if change.action == "write" else (
                    f"-> {change.link}\n".encode() if change.action == "link" else None)
                result.diff.append({"before_header": change.path, "after_header": change.path,
                                    "before": _shown(change.before, change.secret),
                                    "after": _shown(after, change.secret)})
            if changes and not check_mode:
                linux.execute(tree, changes)
                _verified(record, tree, [change.path for change in linux.plan(tree, record)[0]])
        result.changed = bool(result.changes)
    return result
