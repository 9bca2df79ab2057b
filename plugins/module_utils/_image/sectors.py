# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restoring onto a disk whose logical sector size differs from the master's (512 <-> 4096).
Private to the collection: not a public API.

The partition table is rewritten in the target's units (`_disk.table.convert_sector_size`); the
partition contents are byte ranges and move unchanged. What may not move is a filesystem whose own
smallest unit is smaller than the target's sector, or one that records the device's sector size:

- FAT (BPB bytes per sector) and NTFS (BPB bytes per sector) must equal the target's logical sector
  size: Linux's fat driver refuses a FAT whose sector is smaller than the device's ("logical sector
  size too small for device"); Windows and UEFI firmware expect the two to match, which is why
  Windows formats FAT and NTFS on 4Kn disks with 4096-byte sectors. Refused either way.
- XFS (superblock sector size) and ext2/3/4 (block size) must not be smaller than the target's
  sector: measured here, an XFS made with 512-byte sectors and an ext4 with 1 KiB blocks do not
  mount from a 4096-byte-sector loop device; made with 4096, both mount from 512 and 4096.
- Everything else (btrfs, swap, md/LVM members, unknown contents) moves as bytes.

Capture records each region's unit as `fs_sector_size`; an image without it (captured before this
was recorded) is refused for a conversion when it holds one of the filesystems above.
"""

from __future__ import annotations

import os
import struct
from typing import Any, Dict, List, Optional, Tuple

from .._errors import ValidationError

EQUAL = ("vfat", "fat", "fat12", "fat16", "fat32", "msdos", "ntfs")
AT_LEAST = ("xfs", "ext2", "ext3", "ext4")


def filesystem_unit(fd: int, base: int) -> Optional[Tuple[str, int]]:
    """(filesystem, the sector size it records) for the filesystems whose unit matters, found by
    their magic at byte `base` of `fd` (FAT, NTFS: BPB bytes per sector; XFS: superblock sector
    size; ext: block size); None for anything else."""
    try:
        boot = os.pread(fd, 512, base)
        ext = os.pread(fd, 64, base + 1024)
    except OSError:
        return None
    if len(boot) == 512 and boot[510:512] == b"\x55\xaa":
        if boot[3:11] == b"NTFS    ":
            return "ntfs", struct.unpack_from("<H", boot, 11)[0]
        if boot[0x36:0x39] == b"FAT" or boot[0x52:0x57] == b"FAT32":
            return "vfat", struct.unpack_from("<H", boot, 11)[0]
    if boot[:4] == b"XFSB" and len(boot) >= 104:
        return "xfs", struct.unpack_from(">H", boot, 102)[0]
    if len(ext) == 64 and struct.unpack_from("<H", ext, 56)[0] == 0xEF53:
        return "ext4", 1024 << struct.unpack_from("<I", ext, 24)[0]
    return None


def check_conversion(disk: Dict[str, Any], sector: int, target: str, known_only: bool = False) -> None:
    """Raise ValidationError, naming the partition, unless every filesystem of the image disk can
    live on a target with `sector`-byte logical sectors. With `known_only` (a volume image, whose
    master's sector size is not recorded) only filesystems whose unit the image records are checked."""
    for region in disk.get("regions", []):
        rule = (region.get("fs_sector_of") or region.get("filesystem") or "").lower()
        if rule not in EQUAL + AT_LEAST:
            continue
        fs = region.get("filesystem") or rule
        name = region.get("name", "a region")
        unit = region.get("fs_sector_size")
        if unit is None and known_only:
            continue
        if unit is None:
            raise ValidationError(f"Target {target} has {sector}-byte sectors, unlike the image's disk "
                                  f"{disk.get('index')}, and the image does not record the sector size of the {fs} "
                                  f"filesystem on its {name} (captured by an older version); capture it again.")
        if rule in EQUAL and unit != sector:
            raise ValidationError(f"Target {target} has {sector}-byte sectors but the {fs} filesystem on the image's "
                                  f"{name} uses {unit}-byte sectors, which Windows, UEFI firmware and Linux do not "
                                  f"accept on such a disk; capture it from a master with {sector}-byte sectors, or "
                                  f"re-create that filesystem there with {sector}-byte sectors "
                                  f"(mkfs.{'vfat -S' if rule != 'ntfs' else 'ntfs -s'} {sector}).")
        if rule in AT_LEAST and unit < sector:
            raise ValidationError(f"Target {target} has {sector}-byte sectors but the {fs} filesystem on the image's "
                                  f"{name} uses {unit}-byte {'sectors' if rule == 'xfs' else 'blocks'}, which cannot "
                                  f"be mounted from such a disk.")


def table_areas(table: Dict[str, Any], size: int) -> List[Tuple[int, int]]:
    """Byte ranges [start, end) of a GPT target's own table (after the MBR boot code): the primary
    header and entries up to the first usable sector, and the backup from after the last usable one.
    Chunks captured with another sector size (the gap after a 512-byte-sector GPT) are not written
    there."""
    sector = table["sector_size"]
    return [(440, table["first_usable"] * sector), ((table["last_usable"] + 1) * sector, size)]


def outside(offset: int, length: int, areas: List[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """The pieces (relative start, length) of [offset, offset+length) that lie outside every area."""
    pieces = [(offset, offset + length)]
    for lo, hi in areas:
        kept = []
        for start, end in pieces:
            if end <= lo or start >= hi:
                kept.append((start, end))
                continue
            if start < lo:
                kept.append((start, lo))
            if end > hi:
                kept.append((hi, end))
        pieces = kept
    return [(start - offset, end - start) for start, end in pieces]
