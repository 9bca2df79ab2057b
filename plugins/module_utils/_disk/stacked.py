# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Headers of stacked storage: md RAID superblocks, LVM physical volume labels, LUKS and BitLocker.
Private to the collection: not a public API.

`find_headers` reads the fixed places where each kind keeps its header on one device (a whole disk or
one partition of it, given as a byte range of an open file descriptor), without libblkid and without
the kernel's md or device-mapper support. Wipe uses it beside `wipefs` so that a header is found
wherever it sits (libblkid reports one RAID superblock per probe and hides some behind a partition
table), and so that what goes is the *key material*, not just the magic: the LUKS key slots and the
BitLocker FVE metadata blocks are zeroed too, which makes the old encrypted data unrecoverable.
Capture uses `capture_refusal` to refuse volumes it cannot read and to store RAID/LVM members whole.
"""

from __future__ import annotations

import json
import os
import struct
import uuid
from dataclasses import dataclass
from typing import List, Optional, Tuple

MD_MAGIC = 0xA92B4EFC
MD_SUPERBLOCK_BYTES = 4096  # 0.90 superblocks are 4 KiB; 1.x use 1 KiB plus the bad-block log after it
LVM_LABEL = b"LABELONE"
LVM_TYPE = b"LVM2 001"
LVM_METADATA_BYTES = 1 << 20  # label + metadata area before the first extent (pvcreate's default pe_start)
LUKS_MAGIC = b"LUKS\xba\xbe"
LUKS2_SECONDARY_MAGIC = b"SKUL\xba\xbe"
LUKS2_SECONDARY_OFFSETS = tuple(16384 << shift for shift in range(9))  # 16 KiB .. 4 MiB
BDE_SIGNATURE = b"-FVE-FS-"
BDE_METADATA_BYTES = 65536  # an FVE metadata block and the copy of the volume header it keeps
BDE_ENTRY_VMK = 0x0002
BDE_VALUE_VMK = 0x0008
BDE_PROTECTION_CLEAR_KEY = 0x0000  # what "Suspend BitLocker" leaves: the VMK stored unprotected


@dataclass
class Header:
    """One header found: `kind` as wipefs names it, `version` in words, absolute byte `offset`, and
    the bytes from `offset` that wipe zeroes (`length`: the header and any key material)."""

    kind: str
    version: str
    offset: int
    length: int
    uuid: Optional[str] = None
    locked: bool = False  # encrypted and not readable without a key (LUKS; BitLocker not suspended)
    members: int = 0  # md: the array's raid_disks
    level: Optional[int] = None  # md: RAID level (-1 linear, 0, 1, 4, 5, 6, 10)

    @property
    def description(self) -> str:
        return self.version + (f" (UUID {self.uuid})" if self.uuid else "")


def _read(fd: int, offset: int, length: int) -> bytes:
    try:
        return os.pread(fd, length, offset)
    except OSError:
        return b""


def _md_headers(fd: int, base: int, size: int) -> List[Header]:
    """md superblocks: 0.90 in the last 64 KiB-aligned 64 KiB, 1.0 8 KiB from the end (4 KiB aligned),
    1.1 at 0 and 1.2 at 4 KiB. Each is only taken where it says that it is where it was found."""
    places = [(0, "1.1"), (4096, "1.2")]
    if size >= 2 * 65536:
        places.append(((size & ~0xFFFF) - 65536, "0.90"))
    if size >= 16384:
        places.append(((((size >> 9) - 16) & ~7) << 9, "1.0"))
    found = []
    for where, version in places:
        raw = _read(fd, base + where, 256)
        if len(raw) < 256 or struct.unpack_from("<I", raw, 0)[0] != MD_MAGIC:
            continue
        major = struct.unpack_from("<I", raw, 4)[0]
        if version == "0.90":
            if major != 0:
                continue
            words = struct.unpack_from("<16I", raw, 0)
            ident = struct.pack("<I", words[5]) + raw[52:64]
            members, level = words[10], struct.unpack_from("<i", raw, 28)[0]  # raid_disks, level
        else:
            if major != 1 or struct.unpack_from("<Q", raw, 144)[0] * 512 != where:  # super_offset
                continue
            ident = raw[16:32]
            members, level = struct.unpack_from("<I", raw, 92)[0], struct.unpack_from("<i", raw, 72)[0]
        found.append(Header("linux_raid_member", f"md {version} superblock", base + where,
                            min(MD_SUPERBLOCK_BYTES, size - where), str(uuid.UUID(bytes=ident)), members=members,
                            level=level))
    return found


def _lvm_headers(fd: int, base: int, size: int) -> List[Header]:
    """An LVM2 physical volume label in one of the first four sectors; the label and the metadata
    area after it (up to the first extent) go."""
    for sector in range(4):
        raw = _read(fd, base + sector * 512, 512)
        if raw[:8] == LVM_LABEL and raw[24:32] == LVM_TYPE:
            start = struct.unpack_from("<I", raw, 20)[0]  # offset of the PV header inside the label sector
            ident = raw[start:start + 32].decode("ascii", "replace") if 32 <= start <= 480 else ""
            pretty = "-".join(ident[a:b] for a, b in ((0, 6), (6, 10), (10, 14), (14, 18), (18, 22), (22, 26),
                                                      (26, 32))) if len(ident) == 32 else None
            return [Header("LVM2_member", "LVM2 physical volume label", base + sector * 512,
                           min(LVM_METADATA_BYTES, size) - sector * 512, pretty)]
    return []


def _luks_data_offset(raw: bytes, version: int) -> int:
    """Where the encrypted data starts (so the key slots before it are all erased)."""
    if version == 1:
        return struct.unpack_from(">I", raw, 104)[0] * 512
    header_size = struct.unpack_from(">Q", raw, 8)[0]
    try:
        meta = json.loads(raw[4096:header_size].split(b"\0", 1)[0].decode("utf-8"))
        offsets = [int(seg["offset"]) for seg in meta.get("segments", {}).values() if str(seg.get("offset")).isdigit()]
        if offsets:
            return min(offsets)
        return 2 * header_size + int(meta["config"]["keyslots_size"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return 2 * header_size


def _luks_headers(fd: int, base: int, size: int) -> List[Header]:
    """A LUKS1 or LUKS2 header at 0, and LUKS2's secondary header at one of 16 KiB .. 4 MiB: both go,
    and with them every key slot (all bytes before the encrypted data)."""
    found = []
    raw = _read(fd, base, 4096)
    if raw[:6] == LUKS_MAGIC:
        version = struct.unpack_from(">H", raw, 6)[0]
        if version == 2:
            raw = _read(fd, base, max(4096, min(struct.unpack_from(">Q", raw, 8)[0], 4 << 20)))
        ident = raw[168:208].split(b"\0", 1)[0].decode("ascii", "replace") or None
        found.append(Header("crypto_LUKS", f"LUKS{version} header", base,
                            min(max(_luks_data_offset(raw, version), 4096), size), ident, locked=True))
    for where in LUKS2_SECONDARY_OFFSETS:
        if where + 4096 > size:
            break
        second = _read(fd, base + where, 16)
        if len(second) == 16 and second[:6] == LUKS2_SECONDARY_MAGIC:
            raw2 = _read(fd, base + where, max(4096, min(struct.unpack_from(">Q", second, 8)[0], 4 << 20)))
            ident = raw2[168:208].split(b"\0", 1)[0].decode("ascii", "replace") or None
            length = min(max(_luks_data_offset(raw2, 2) - where, 4096), size - where)
            found.append(Header("crypto_LUKS", "LUKS2 secondary header", base + where, length, ident, locked=True))
            break
    return found


def _bde_clear_key(block: bytes) -> bool:
    """True when an FVE metadata block holds a volume master key protected by a clear key, which is
    what suspending BitLocker leaves (the volume stays encrypted but opens without any secret)."""
    if len(block) < 112 or block[:8] != BDE_SIGNATURE:
        return False
    total = struct.unpack_from("<I", block, 64)[0]
    pos, end = 112, min(64 + total, len(block))
    while pos + 8 <= end:
        entry_size, entry_type, value_type = struct.unpack_from("<HHH", block, pos)
        if entry_size < 8:
            break
        if entry_type == BDE_ENTRY_VMK and value_type == BDE_VALUE_VMK and pos + 8 + 28 <= end:
            if struct.unpack_from("<H", block, pos + 8 + 26)[0] == BDE_PROTECTION_CLEAR_KEY:
                return True
        pos += entry_size
    return False


def _bde_headers(fd: int, base: int, size: int) -> List[Header]:
    """A BitLocker volume header ("-FVE-FS-"), and its three FVE metadata blocks, which hold the
    wrapped keys: zeroing them makes the volume's data unrecoverable."""
    raw = _read(fd, base, 512)
    if raw[3:11] != BDE_SIGNATURE:
        return []
    if raw[:3] == b"\xeb\x52\x90":  # Windows Vista: one metadata offset at 0x38
        offsets = [struct.unpack_from("<Q", raw, 0x38)[0]]
    else:
        offsets = list(struct.unpack_from("<3Q", raw, 0xB0))
    offsets = [off for off in offsets if 512 <= off and off + 112 <= size]
    blocks = [_read(fd, base + off, BDE_METADATA_BYTES) for off in offsets]
    suspended = any(_bde_clear_key(block) for block in blocks)
    found = [Header("BitLocker", "BitLocker volume header" + (" (suspended)" if suspended else ""), base,
                    512, locked=not suspended)]
    for off, block in zip(offsets, blocks):
        if block[:8] == BDE_SIGNATURE:
            found.append(Header("BitLocker", "BitLocker FVE metadata block", base + off,
                                min(BDE_METADATA_BYTES, size - off), locked=not suspended))
    return found


def find_headers(fd: int, base: int, size: int) -> List[Header]:
    """Every md, LVM, LUKS and BitLocker header of the device at [base, base+size) of `fd`, by offset."""
    found: List[Header] = []
    for probe in (_md_headers, _lvm_headers, _luks_headers, _bde_headers):
        found += probe(fd, base, size)
    return sorted(found, key=lambda header: header.offset)


def capture_refusal(headers: List[Header], what: str) -> Optional[str]:
    """Why `what` (a partition or volume, named for the user) cannot be captured, or None."""
    for header in headers:
        if header.kind == "crypto_LUKS":
            return (f"{what} is a LUKS-encrypted volume, which cannot be imaged without its key: open it "
                    f"(cryptsetup open) and capture the opened /dev/mapper device as a partition source instead.")
        if header.kind == "BitLocker" and header.locked:
            return (f"{what} is BitLocker-encrypted and its protectors are active: suspend BitLocker on the master "
                    f"(manage-bde -protectors -disable C:) or turn it off (manage-bde -off C:) before capturing.")
    return None


def md_array(headers: List[Header]) -> Optional[dict]:
    """The md array a member belongs to (uuid, level, members), for `check_arrays`."""
    md = next((header for header in headers if header.kind == "linux_raid_member"), None)
    return {"uuid": md.uuid, "level": md.level, "members": md.members} if md else None


def check_arrays(regions: List[Tuple[str, dict]]) -> Optional[str]:
    """Why a capture holding only some members of an md array cannot restore it, or None.
    `regions` is (where, md_array) per captured member. RAID1 members are each a full copy (a
    missing one leaves a degraded mirror that works); every other level needs all of them."""
    arrays: dict = {}
    for where, array in regions:
        arrays.setdefault(array["uuid"], (array, []))[1].append(where)
    for uid, (array, wheres) in arrays.items():
        if array["level"] != 1 and array["members"] and len(wheres) < array["members"]:
            return (f"{', '.join(wheres)} {'is' if len(wheres) == 1 else 'are'} {len(wheres)} of the "
                    f"{array['members']} members of md array {uid} (level {array['level']}), which cannot be "
                    f"restored from part of its members: capture every member disk of the array in one image.")
    return None


def stored_whole_note(headers: List[Header]) -> Optional[str]:
    """The manifest note for a member of RAID or LVM or a suspended BitLocker volume, which is stored
    whole (zero runs skipped): no filesystem map can read through them, and every byte of their own
    metadata (an md superblock at the end, LVM metadata areas) must move unchanged."""
    kinds = {header.kind for header in headers}
    if "linux_raid_member" in kinds:
        md = next(header for header in headers if header.kind == "linux_raid_member")
        return (f"{md.version} (array {md.uuid}, {md.members} members): stored whole, zero runs skipped, "
                f"so the array assembles on the target as on the master")
    if "LVM2_member" in kinds:
        return "LVM2 physical volume: stored whole, zero runs skipped, so the volume group moves unchanged"
    if "BitLocker" in kinds:
        return "suspended BitLocker volume: stored whole (encrypted), zero runs skipped; resume BitLocker on each clone"
    return None
