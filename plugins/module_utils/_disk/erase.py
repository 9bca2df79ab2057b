# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Secure erase of whole disks: NVMe format, ATA SECURITY ERASE UNIT, discard, or overwriting.
Private to the collection: not a public API.

`choose` decides the method for each disk from an injectable sysfs view (and the tools present), so
check mode reports it and "all disks" paths are tested against fake trees; `secure_erase` runs it.

What each method guarantees:
- ``nvme``: ``nvme format --ses`` (cryptographic erase where the controller supports it, else user
  data erase): the controller erases the flash, including spare and remapped blocks.
- ``ata``: ATA SECURITY ERASE UNIT (enhanced where supported) through hdparm: the drive erases
  itself, remapped sectors included. Refused by drives that are "frozen" (most BIOSes freeze them
  at boot; a suspend/resume cycle or a hot-plug unfreezes).
- ``discard``: BLKSECDISCARD where the device supports it, else BLKDISCARD. A discard only says the
  blocks are unused: an SSD may still return the old data (unless it guarantees zeroes after TRIM)
  and keeps the old flash pages until its garbage collection erases them. So after a discard the
  whole device is read back and every block that does not read as zeros is overwritten: afterwards
  the device reads back as zeros, but the flash is not guaranteed to be erased (use ``nvme``/``ata``).
- ``overwrite``: zeros written over every byte (a single pass, which is what NIST SP 800-88 "clear"
  asks of magnetic disks). On an SSD, spare and remapped blocks are not reached; on a regular file
  the zeros go where the file's filesystem puts them (a copy-on-write filesystem keeps old blocks).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

from .._errors import FleetcastError, ValidationError
from .blockdev import BLKDISCARD, _block_ioctl_range, _rewrite_nonzero, _write_zeros, device_size
from .command import run
from .discover import BlockDevice

BLKSECDISCARD = 0x127D
METHODS = ("auto", "nvme", "ata", "discard", "overwrite", "none")
ATA_PASSWORD = "fleetcast"  # set just before the erase, which clears it again
DISCARD_STEP = 1 << 30  # discard in 1 GiB steps: some devices refuse one huge range


@dataclass
class EraseChoice:
    path: str
    method: str  # nvme | ata | discard | overwrite | none
    reason: str  # why this method, in words, for check mode

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class EraseResult:
    path: str
    method: str
    seconds: float
    bytes: int
    detail: str  # what was run (the command or the kernel calls) and what was verified

    def to_dict(self) -> dict:
        return asdict(self)


def _sysfs_read(sysfs: str, name: str, *parts: str) -> str:
    try:
        with open(os.path.join(sysfs, "block", name, *parts), encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def ata_security(hdparm_identify: str) -> dict:
    """The Security section of `hdparm -I`: supported, frozen, enhanced erase."""
    section, inside = [], False
    for line in hdparm_identify.splitlines():
        if line.strip() == "Security:":
            inside = True
            continue
        if inside:
            if line and not line.startswith("\t") and not line.startswith(" "):
                break
            section.append(" ".join(line.split()))
    return {"supported": "supported" in section, "frozen": "frozen" in section and "not frozen" not in section,
            "enabled": "enabled" in section and "not enabled" not in section,
            "enhanced": "supported: enhanced erase" in section}


def _which(tool: str) -> Optional[str]:
    return shutil.which(tool) or next((os.path.join(d, tool) for d in ("/usr/sbin", "/sbin")
                                       if os.access(os.path.join(d, tool), os.X_OK)), None)


def choose(path: str, requested: str = "auto", sysfs: str = "/sys", device: Optional[BlockDevice] = None,
           which: Callable[[str], Optional[str]] = _which,
           identify: Optional[Callable[[str], str]] = None) -> EraseChoice:
    """The method `secure_erase(path, requested)` would use, or a ValidationError naming the disk
    when an explicitly requested method is not available for it. `device` is the disk as discovery
    saw it (its name in the `sysfs` view, its transport); without it `path` is looked at directly.
    Reads only sysfs, plus `hdparm -I` for a SATA disk."""
    if requested not in METHODS:
        raise ValidationError(f"Secure erase method {requested!r} for {path} is not one of {', '.join(METHODS)}.")
    if requested == "none":
        return EraseChoice(path, "none", "no secure erase requested")
    if device is None:
        try:
            mode = os.stat(path).st_mode
        except OSError as err:
            raise ValidationError(f"Target {path} does not exist or cannot be read: {err.strerror}.") from err
        if stat.S_ISREG(mode):
            if requested in ("auto", "overwrite"):
                return EraseChoice(path, "overwrite", "a regular file: zeros written over every byte")
            raise ValidationError(f"Secure erase method {requested} is not available for {path}: it is a regular "
                                  f"file, which can only be overwritten.")
    name = device.name if device else os.path.basename(os.path.realpath(path))
    transport = device.transport if device else ""
    offers = {}
    if transport == "nvme" or name.startswith("nvme"):
        offers["nvme"] = ("nvme format with secure erase settings" if which("nvme")
                          else None, "the nvme tool (nvme-cli) is not installed")
    if transport == "sata":
        if not which("hdparm"):
            offers["ata"] = (None, "hdparm is not installed")
        else:
            security = ata_security((identify or _identify)(path))
            if not security["supported"]:
                offers["ata"] = (None, "the drive does not support the ATA security feature set")
            elif security["frozen"]:
                offers["ata"] = (None, "the drive's security is frozen (suspend and resume the host, or hot-plug "
                                       "the drive, to unfreeze it)")
            elif security["enabled"]:
                offers["ata"] = (None, "the drive already has a security password set")
            else:
                offers["ata"] = ("ATA " + ("enhanced " if security["enhanced"] else "") + "security erase", "")
    discard_max = _sysfs_read(sysfs, name, "queue", "discard_max_bytes")
    if discard_max.isdigit() and int(discard_max) > 0:
        offers["discard"] = ("discard (BLKSECDISCARD, else BLKDISCARD), then every block that does not read back "
                             "as zeros overwritten", "")
    else:
        offers["discard"] = (None, "the device does not support discard (queue/discard_max_bytes is 0)")
    offers["overwrite"] = ("zeros written over every byte", "")
    if requested != "auto":
        how, why_not = offers.get(requested, (None, f"it is not {'an NVMe' if requested == 'nvme' else 'a SATA'} "
                                                    f"device"))
        if how is None:
            raise ValidationError(f"Secure erase method {requested} is not available for {path}: {why_not}.")
        return EraseChoice(path, requested, how)
    for method in ("nvme", "ata", "discard", "overwrite"):
        how = offers.get(method, (None, ""))[0]
        if how:
            return EraseChoice(path, method, how)
    raise AssertionError("overwrite is always offered")


def _identify(path: str) -> str:
    return run(["hdparm", "-I", path], device=path, ok_codes=(0, 1, 2, 5)).stdout


def _discard(fd: int, size: int) -> str:
    """Discard the whole device (secure discard where supported), then make it read back as zeros."""
    usable = size // 512 * 512
    calls = []
    for request, name in ((BLKSECDISCARD, "BLKSECDISCARD"), (BLKDISCARD, "BLKDISCARD")):
        done = 0
        while done < usable and _block_ioctl_range(fd, request, done, min(DISCARD_STEP, usable - done)):
            done += min(DISCARD_STEP, usable - done)
        if done == usable:
            calls.append(name)
            break
    if not calls:
        raise FleetcastError("the device refused both BLKSECDISCARD and BLKDISCARD")
    _rewrite_nonzero(fd, 0, size)
    return f"{calls[0]} over {size} bytes, then read back: every block reads as zeros"


def _overwrite(fd: int, size: int) -> str:
    _write_zeros(fd, 0, size)
    os.fsync(fd)
    return f"zeros written over {size} bytes"


def secure_erase(path: str, choice: EraseChoice, open_fd: Callable[[str], int]) -> EraseResult:
    """Erase the whole device at `path` with the chosen method; `open_fd` opens it for writing (the
    caller's safety door, `safety.open_target`). Returns the method, the time taken and what ran."""
    started = time.monotonic()
    size = device_size(path)
    if choice.method == "nvme":
        crypto = _nvme_crypto_erase(path)
        run(["nvme", "format", path, f"--ses={2 if crypto else 1}", "--force"], device=path)
        detail = "nvme format --ses=" + ("2 (cryptographic erase)" if crypto else "1 (user data erase)")
    elif choice.method == "ata":
        enhanced = "enhanced" in choice.reason
        run(["hdparm", "--user-master", "u", "--security-set-pass", ATA_PASSWORD, path], device=path)
        flag = "--security-erase-enhanced" if enhanced else "--security-erase"
        run(["hdparm", "--user-master", "u", flag, ATA_PASSWORD, path], device=path)
        detail = f"hdparm {flag}"
    elif choice.method in ("discard", "overwrite"):
        fd = open_fd(path)
        try:
            detail = _discard(fd, size) if choice.method == "discard" else _overwrite(fd, size)
            os.fsync(fd)
        except OSError as err:
            raise FleetcastError(f"Secure erase of {path} failed: {err.strerror}.") from err
        except FleetcastError as err:
            raise FleetcastError(f"Secure erase of {path} failed: {err}.") from err
        finally:
            os.close(fd)
    else:
        return EraseResult(path, "none", 0.0, 0, "no secure erase requested")
    return EraseResult(path, choice.method, round(time.monotonic() - started, 3), size, detail)


def _nvme_crypto_erase(path: str) -> bool:
    """Whether the namespace's controller supports cryptographic erase on format (FNA bit 2)."""
    out = run(["nvme", "id-ctrl", path, "--output-format=json"], device=path).stdout
    try:
        return bool(int(json.loads(out).get("fna", 0)) & 0x4)
    except (ValueError, AttributeError):
        return False
