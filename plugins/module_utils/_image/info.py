# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A readable summary of an image file's manifest (what image_info and image_capture report).
Private to the collection: not a public API.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List

from .._errors import ValidationError
from .format import Manifest, ImageReader


def _partitions(disk: Dict[str, Any]) -> List[Dict[str, Any]]:
    table = disk.get("table") or {}
    sector = table.get("sector_size") or 512
    regions = {region.get("partition"): region for region in disk["regions"] if region.get("partition")}
    rows = []
    for part in table.get("partitions", []):
        region = regions.get(part["number"], {})
        rows.append({
            "number": part["number"], "start": part["start"], "end": part["end"],
            "size": (part["end"] - part["start"] + 1) * sector, "kind": part.get("kind", "primary"),
            "type_guid": part.get("type_guid"), "mbr_type": part.get("mbr_type"),
            "part_uuid": part.get("part_uuid"), "name": part.get("name", ""), "flags": part.get("flags", []),
            "filesystem": region.get("filesystem") or part.get("fs"), "fs_uuid": part.get("fs_uuid"),
            "fs_label": part.get("fs_label"), "used_map": region.get("map"), "used_bytes": region.get("used_bytes"),
        })
    return rows


def summary(manifest: Manifest) -> Dict[str, Any]:
    """Disks, partitions, filesystems, sizes and the chunk statistics of an image, as plain data."""
    disks = []
    for disk in manifest.layout["disks"]:
        table = disk.get("table") or {}
        chunks = [entry for entry in manifest.chunks if entry.disk == disk["index"]]
        disks.append({
            "index": disk["index"], "source": disk["source"], "kind": disk["kind"], "size": disk["size"],
            "sector_size": table.get("sector_size"), "label": table.get("label"), "guid": table.get("guid"),
            "partitions": _partitions(disk),
            "regions": [{key: region.get(key) for key in ("name", "offset", "length", "filesystem", "map",
                                                          "used_bytes", "note")} for region in disk["regions"]],
            "chunk_count": len(chunks),
            "data_bytes": sum(entry.length for entry in chunks if entry.kind == "data"),
            "zero_bytes": sum(entry.length for entry in chunks if entry.kind == "zero"),
        })
    return {"format_version": manifest.version, "image_id": manifest.image_id,
            "origin": manifest.layout.get("origin"),  # None for images captured before it was recorded
            "chunk_size": manifest.layout.get("chunk_size"), "chunk_count": manifest.chunk_count,
            "data_bytes": manifest.data_bytes, "zero_bytes": manifest.zero_bytes,
            "used_bytes": manifest.data_bytes + manifest.zero_bytes, "stored_bytes": manifest.stored_bytes,
            "disks": disks}


def image_info(path: str, verify: bool = False, threads: int = 0) -> Dict[str, Any]:
    """The summary of the image file at `path`; with `verify`, every chunk is checked first.
    A directory is listed as a catalogue instead (`catalogue.catalogue`)."""
    if os.path.isdir(path):
        from .catalogue import catalogue
        if verify:
            raise ValidationError(f"{path} is a directory: verify one image at a time (name the image file).")
        return catalogue(path)
    with ImageReader(path) as reader:
        if verify:
            reader.verify(threads)
        info = summary(reader.manifest)
    info.update(path=path, file_size=os.path.getsize(path), verified=verify)
    return info
