# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The UEFI boot entry a restored disk needs. Private to the collection.

A restored disk carries its loader in the EFI system partition, but the firmware's NVRAM of the
participant knows nothing of it (Clonezilla's update-efi-nvram-boot-entry solves the same
problem). We plan one ``efibootmgr --create`` for the loader found on the ESP, skip it when an
entry for the same partition and loader exists (idempotent), and put it first in BootOrder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .._errors import ValidationError

ESP_TYPE_GUID = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
# In order of preference: shim first (Secure Boot), then GRUB, then the removable-media path.
LOADERS = ("\\EFI\\debian\\shimx64.efi", "\\EFI\\debian\\grubx64.efi", "\\EFI\\BOOT\\BOOTX64.EFI")
_ENTRY = re.compile(r"^Boot(?P<num>[0-9A-Fa-f]{4})(?P<active>\*?)\s+(?P<label>.*?)\s+(?P<path>(?:HD|PciRoot)\(.*)$")
_HD = re.compile(r"HD\((?P<part>\d+),(?P<scheme>GPT|MBR),(?P<sig>[0-9A-Fa-fx-]+),")
_FILE = re.compile(r"File\((?P<file>[^)]*)\)")


@dataclass
class BootEntryPlan:
    disk: str
    partition: int
    part_uuid: Optional[str]
    loader: str
    label: str
    existing: Optional[str] = None          # BootNNNN already pointing at this loader
    argv: List[str] = field(default_factory=list)

    @property
    def needed(self) -> bool:
        return self.existing is None

    def to_dict(self) -> Dict[str, Any]:
        return {"disk": self.disk, "partition": self.partition, "part_uuid": self.part_uuid,
                "loader": self.loader, "label": self.label, "existing": self.existing,
                "needed": self.needed, "argv": list(self.argv)}


def find_esp(layout: Dict[str, Any], disk: str) -> Dict[str, Any]:
    """The EFI system partition of a disk layout (DiskLayout.to_dict())."""
    for part in layout.get("partitions") or []:
        type_guid = str(part.get("type_guid") or "").lower()
        if type_guid == ESP_TYPE_GUID or part.get("mbr_type") in (0xEF, "0xef", "ef") or \
                ("esp" in (part.get("flags") or []) and layout.get("label") == "gpt"):
            return part
    raise ValidationError(f"{disk} has no EFI system partition, so a UEFI machine cannot boot from it "
                          "(image a disk made for UEFI, or boot this participant with BIOS).")


def choose_loader(esp_files: List[str], disk: str) -> str:
    """The loader to register, from the ESP's file list (paths like EFI/debian/grubx64.efi)."""
    present = {"\\" + path.strip("/\\").replace("/", "\\").lower() for path in esp_files}
    for loader in LOADERS:
        if loader.lower() in present:
            return loader
    raise ValidationError(f"{disk}: the EFI system partition holds none of {', '.join(LOADERS)}, "
                          "so there is nothing to boot.")


def parse_entries(efibootmgr_v: str) -> List[Dict[str, Any]]:
    """Entries of ``efibootmgr -v``: number, label, partition, signature, file."""
    entries = []
    for line in efibootmgr_v.splitlines():
        match = _ENTRY.match(line.strip())
        if not match:
            continue
        hd = _HD.search(match.group("path"))
        path = _FILE.search(match.group("path"))
        entries.append({"num": match.group("num").upper(), "label": match.group("label"),
                        "partition": int(hd.group("part")) if hd else None,
                        "signature": hd.group("sig").lower() if hd else None,
                        "file": path.group("file") if path else None})
    return entries


def plan_entry(disk: str, layout: Dict[str, Any], esp_files: List[str], efibootmgr_v: str,
               label: str = "fleetcast clone") -> BootEntryPlan:
    """What to create so that the firmware boots ``disk``; nothing when an equal entry exists."""
    esp = find_esp(layout, disk)
    loader = choose_loader(esp_files, disk)
    part_uuid = (esp.get("part_uuid") or "").lower() or None
    plan = BootEntryPlan(disk=disk, partition=int(esp["number"]), part_uuid=part_uuid, loader=loader, label=label)
    for entry in parse_entries(efibootmgr_v):
        same_part = entry["partition"] == plan.partition and (
            part_uuid is None or entry["signature"] == part_uuid)
        if same_part and (entry["file"] or "").lower() == loader.lower():
            plan.existing = "Boot" + entry["num"]
            break
    if plan.needed:
        plan.argv = ["efibootmgr", "--create", "--disk", disk, "--part", str(plan.partition),
                     "--label", label, "--loader", loader]
    return plan


def esp_files(device: str) -> List[str]:
    """Every file path on the FAT file system of ``device`` (mtools: no vfat driver needed)."""
    import os
    import subprocess
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1", LC_ALL="C")
    proc = subprocess.run(["mdir", "-/", "-b", "-i", device, "::/"], check=False, capture_output=True,
                          text=True, env=env)
    if proc.returncode != 0:
        raise ValidationError(f"The EFI system partition {device} cannot be read: "
                              f"{proc.stderr.strip().splitlines()[-1:] or ['no message']}.")
    return [line.strip()[2:] if line.strip().startswith("::") else line.strip()
            for line in proc.stdout.splitlines() if line.strip()]


def ensure_entry(disk: str, label: str = "fleetcast clone", check_mode: bool = False) -> Dict[str, Any]:
    """Plan and (unless check_mode) create the UEFI boot entry for ``disk``."""
    import subprocess
    from .._disk import blockdev, table
    layout = table.read_layout(disk)
    layout_dict = layout.to_dict()
    esp = find_esp(layout_dict, disk)
    with blockdev.partition_path(disk, int(esp["number"]), read_only=True) as device:
        files = esp_files(device)
    proc = subprocess.run(["efibootmgr", "-v"], check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ValidationError(f"efibootmgr cannot read the firmware's boot entries on this host "
                              f"(booted with BIOS, or efivarfs not mounted): {proc.stderr.strip()[-200:]}")
    result = plan_entry(disk, layout_dict, files, proc.stdout, label)
    if result.needed and not check_mode:
        done = subprocess.run(result.argv, check=False, capture_output=True, text=True)
        if done.returncode != 0:
            raise ValidationError(f"efibootmgr could not create the boot entry for {disk}: "
                                  f"{done.stderr.strip()[-200:]}")
    return result.to_dict()
