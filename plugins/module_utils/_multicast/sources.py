# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where a session's objects come from: object 0 is the layout, object i is chunk i - 1. Private
to the collection: not a public API."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from .._errors import FleetcastError
from .._image import capture as image_capture
from .._image import signing
from .._image.format import ImageReader, canonical_json, image_id
from .._transport.source import ObjectSource, ReaderSource, SpoolSource


class ImageFileSource(ReaderSource):
    """An image file, read at random so that any chunk can be sent again as a repair. With a public
    key, the image's signature is checked first (a bad or missing one raises, in one sentence)."""

    def __init__(self, path: str, public_key: Optional[str] = None, signature: Optional[str] = None):
        self.reader = ImageReader(path)
        manifest = self.reader.manifest
        if public_key:
            try:
                signing.verify(path, manifest.image_id, manifest.layout.get("origin"), public_key, signature)
            except FleetcastError:
                self.reader.close()
                raise
        super().__init__(canonical_json(manifest.layout), self.reader.chunk_count + 1,
                         lambda index: self.reader.record_bytes(index - 1), bytes.fromhex(manifest.image_id))
        self.description = {"image": path, "image_id": manifest.image_id, "chunks": self.reader.chunk_count,
                            "stored_bytes": manifest.stored_bytes}

    def close(self) -> None:
        self.reader.close()


class LiveCaptureSource(SpoolSource):
    """A live master's disks, captured as the session runs and spooled to an unlinked file for
    repairs. The image id is known once the capture has finished."""

    def __init__(self, devices: Sequence[str], chunk_size: int, level: int, spool_dir: Optional[str]):
        layout, records = image_capture.capture(list(devices), chunk_size, level)
        entries: List[Any] = []

        def objects():
            yield canonical_json(layout)
            for record in records:
                entries.append(record.entry())
                yield record.to_bytes()

        super().__init__(objects(), spool_dir, lambda: bytes.fromhex(image_id(layout, entries)))
        self.description = {"source_devices": list(devices)}


def open_source(image: Optional[str], devices: Optional[Sequence[str]], chunk_size: int, level: int,
                spool_dir: Optional[str], public_key: Optional[str] = None,
                signature: Optional[str] = None) -> ObjectSource:
    if image:
        return ImageFileSource(image, public_key, signature)
    return LiveCaptureSource(devices or [], chunk_size, level, spool_dir)


def describe(image: Optional[str], devices: Optional[Sequence[str]], chunk_size: int,
             public_key: Optional[str] = None, signature: Optional[str] = None) -> Dict[str, Any]:
    """What would be served, read only (check mode): the image's id and size, or the master's disks
    (a bad signature is refused here too)."""
    if image:
        source = ImageFileSource(image, public_key, signature)
        source.close()
        return dict(source.description)
    layout = image_capture.describe(list(devices or []), chunk_size)[0]
    return {"source_devices": list(devices or []), "disks": len(layout.get("disks", []))}
