# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a set of disks holds, as one digest; and whether a deployed host is still as deployed.
Private to the collection: not a public API.

After identity re-apply a participant's disk no longer reads back as the image (its hostname,
keys and network files were written into the root filesystem), so "already holds the image" cannot
be asked of the image's chunks. Instead a successful deploy records a **stamp**: the image id, the
devices, the disks' fingerprint and the identity summary that was applied. A later run computes
the fingerprint again: when it and everything else match, the host is unchanged and is not
wiped or written.

The fingerprint is computed the way a capture reads the disks: the partition table and layout,
the used blocks of every filesystem (the same used-block maps) and every byte outside filesystems
(boot code, the gap GRUB uses). It covers every byte the system can see; free filesystem blocks,
which hold whatever they held, are left out, as a capture leaves them out. Reads only.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Optional, Sequence

from .._errors import ValidationError
from .capture import DEFAULT_CHUNK_SIZE, describe, plan_pieces

STAMP_FORMAT = "fleetcast-deployed-1"


def _canonical(layout: Dict[str, Any]) -> bytes:
    """The layout without what names the devices (compared on their own) and without the capture
    record (`origin`: when and where describe() ran, which changes on every call)."""
    disks = [{key: value for key, value in disk.items() if key != "source"} for disk in layout["disks"]]
    content = {key: value for key, value in layout.items() if key != "origin"}
    return json.dumps(dict(content, disks=disks), sort_keys=True, separators=(",", ":")).encode()


def fingerprint(targets: Sequence[str], threads: int = 0, chunk_size: int = DEFAULT_CHUNK_SIZE) -> str:
    """SHA-256 over the layout of `targets` and the digest of every used piece, in disk order."""
    layout, plan = describe(list(targets), chunk_size)
    total = hashlib.sha256(_canonical(layout))
    threads = threads or min(4, os.cpu_count() or 1)
    fds: Dict[int, int] = {}
    pending: deque = deque()

    def piece_digest(disk: int, offset: int, length: int) -> bytes:
        raw = os.pread(fds[disk], length, offset)
        if len(raw) != length:
            raise ValidationError(f"{targets[disk]} ended early: {length} bytes wanted at offset {offset}, "
                                  f"{len(raw)} read.")
        return struct.pack("<IQQ", disk, offset, length) + hashlib.sha256(raw).digest()

    try:
        for index, target in enumerate(targets):
            fds[index] = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for piece in plan_pieces(plan, chunk_size):
                pending.append(pool.submit(piece_digest, *piece))
                if len(pending) > 2 * threads:
                    total.update(pending.popleft().result())
            while pending:
                total.update(pending.popleft().result())
    except OSError as err:
        raise ValidationError(f"Cannot read {', '.join(targets)} to fingerprint them: {err.strerror}.") from None
    finally:
        for future in pending:
            future.cancel()
        for fd in fds.values():
            os.close(fd)
    return total.hexdigest()


def stamp(devices: Sequence[str], image_id: str, identity: Optional[Dict[str, Any]], threads: int = 0) -> Dict[str, Any]:
    """What a successful deploy records for a host (no secret: the identity summary only)."""
    return {"format": STAMP_FORMAT, "image_id": image_id, "devices": list(devices),
            "fingerprint": fingerprint(devices, threads), "identity": identity or {}}


def deployed_state(recorded: Optional[Dict[str, Any]], devices: Sequence[str], image_id: str,
                   identity: Optional[Dict[str, Any]], threads: int = 0) -> Dict[str, Any]:
    """{"unchanged": bool, "reason": str}: whether the host still holds what the last successful
    deploy of `image_id` left on `devices`, with the identity it applied. Reads only."""
    def answer(unchanged: bool, reason: str) -> Dict[str, Any]:
        return {"unchanged": unchanged, "reason": reason}

    if not recorded:
        return answer(False, "no earlier deploy is recorded for it")
    if recorded.get("format") != STAMP_FORMAT:
        return answer(False, "its deploy record has an unknown format")
    if recorded.get("image_id") != image_id:
        return answer(False, f"it was deployed with image {str(recorded.get('image_id'))[:16]}, not {image_id[:16]}")
    if list(recorded.get("devices") or []) != list(devices):
        return answer(False, f"it was deployed onto {', '.join(recorded.get('devices') or [])}, not "
                             f"{', '.join(devices)}")
    if (identity or {}) != (recorded.get("identity") or {}):
        return answer(False, "its identity differs from the one applied by the last deploy")
    try:
        now = fingerprint(devices, threads)
    except ValidationError as err:
        return answer(False, str(err).rstrip("."))
    if now != recorded.get("fingerprint"):
        return answer(False, f"{', '.join(devices)} changed since the last deploy")
    return answer(True, f"{', '.join(devices)} still hold image {image_id[:16]} with its identity, as deployed")
