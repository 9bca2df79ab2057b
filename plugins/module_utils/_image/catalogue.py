# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where an image came from, and a directory of images as a catalogue. Private to the collection.

`origin` is what capture records in the layout (a signature covers it; the image id leaves it out):
when, on which host, from which disks (model, serial, size), by which collection version, and the
user's description. `catalogue` lists every image file of a directory with those fields.
"""

from __future__ import annotations

import datetime
import os
import socket
from typing import Any, Dict, List, Optional, Sequence

from .._errors import FleetcastError, ValidationError
from .._version import COLLECTION_VERSION
from .format import MAGIC, ImageReader, Manifest

SIGNATURE_SUFFIX = ".sig"


def origin(paths: Sequence[str], description: Optional[str] = None, devices: Optional[list] = None,
           now: Optional[datetime.datetime] = None, host: Optional[str] = None) -> Dict[str, Any]:
    """The provenance block of a new image's layout. `devices` is the discovery list (read from
    /sys when not given) used to name each source disk's model and serial."""
    if devices is None:
        from .._disk import discover
        devices = discover.list_block_devices()
    from .._disk.discover import find_device

    disks = []
    for index, path in enumerate(paths):
        device = find_device(devices, path) if path.startswith("/dev/") else None
        disks.append({"index": index, "source": path, "model": device.model if device else None,
                      "serial": device.serial if device else None,
                      "size": device.size if device else None})
    stamp = (now or datetime.datetime.now(datetime.timezone.utc)).astimezone(datetime.timezone.utc)
    return {"captured_at": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"), "host": host or socket.getfqdn(),
            "collection_version": COLLECTION_VERSION, "description": description, "disks": disks}


def describe_manifest(manifest: Manifest) -> Dict[str, Any]:
    """One catalogue row: provenance (None for images captured before it was recorded), source disks
    and the filesystems in the image."""
    layout = manifest.layout
    found = layout.get("origin") or {}
    by_index = {disk.get("index"): disk for disk in found.get("disks", [])}
    disks, filesystems = [], []
    for disk in layout.get("disks", []):
        known = by_index.get(disk.get("index"), {})
        disks.append({"index": disk.get("index"), "source": disk.get("source"), "size": disk.get("size"),
                      "model": known.get("model"), "serial": known.get("serial"),
                      "label": (disk.get("table") or {}).get("label")})
        for region in disk.get("regions", []):
            if region.get("filesystem"):
                filesystems.append({"disk": disk.get("index"), "region": region.get("name"),
                                    "filesystem": region.get("filesystem"), "used_bytes": region.get("used_bytes")})
    return {"image_id": manifest.image_id, "format_version": manifest.version,
            "captured_at": found.get("captured_at"), "host": found.get("host"),
            "collection_version": found.get("collection_version"), "description": found.get("description"),
            "disks": disks, "filesystems": filesystems,
            "used_bytes": manifest.data_bytes + manifest.zero_bytes, "stored_bytes": manifest.stored_bytes}


def _is_image(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def catalogue(directory: str) -> Dict[str, Any]:
    """Every image file directly in `directory` (found by its magic, whatever its name), oldest
    capture first, each with its provenance; files that start like an image but cannot be read are
    listed in `unreadable` with the reason, and the others are skipped."""
    try:
        names = sorted(os.listdir(directory))
    except OSError as err:
        raise ValidationError(f"Image directory {directory} cannot be listed: {err.strerror}.") from err
    images: List[Dict[str, Any]] = []
    unreadable: Dict[str, str] = {}
    for name in names:
        path = os.path.join(directory, name)
        if name.endswith(".partial") or not os.path.isfile(path) or not _is_image(path):
            continue
        try:
            with ImageReader(path) as reader:
                row = describe_manifest(reader.manifest)
        except FleetcastError as err:
            unreadable[path] = str(err)
            continue
        row.update(path=path, file_size=os.path.getsize(path),
                   signature=path + SIGNATURE_SUFFIX if os.path.exists(path + SIGNATURE_SUFFIX) else None)
        images.append(row)
    images.sort(key=lambda row: (row["captured_at"] or "", row["path"]))
    return {"path": directory, "images": images, "unreadable": unreadable}
