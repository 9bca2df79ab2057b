# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The identity record: a versioned JSON document per host. Private to the collection.

Layout (version 1)::

    {"format": "fleetcast.identity", "version": 1, "inventory_name": ..., "os": "linux"|"windows",
     "hardware": {"product_uuid": ..., "macs": [...]},
     "summary": {...},            # what conflicts are checked on and what users read
     "files": [FileItem...],      # Linux: the identity files, their modes and owners
     "network": [NetworkFile...], # Linux: parsed network configuration, per format
     "windows": {...},            # Windows: values read from the registry hives
     "secrets": {path: base64},   # contents of secret files, kept apart from everything else
     "assigned": {...}}           # an identity given by the inventory (see assigned.py), else {}

Secret file contents never sit in ``files``: they live only under ``secrets`` so that a store can
encrypt them and a public copy can drop them.
"""

from __future__ import annotations

import base64
import copy
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from .._errors import IdentityError

RECORD_FORMAT = "fleetcast.identity"
RECORD_VERSION = 1


@dataclass
class FileItem:
    """One identity file: where it lives, its bytes (unless secret), mode and owner."""

    path: str
    kind: str
    mode: int
    uid: int
    gid: int
    secret: bool = False
    content: Optional[str] = None  # base64; None for secret items (see IdentityRecord.secrets)
    symlink: Optional[str] = None  # target, when the file is a symbolic link

    def data(self, secrets: Dict[str, str]) -> Optional[bytes]:
        encoded = secrets.get(self.path) if self.secret else self.content
        return None if encoded is None else base64.b64decode(encoded)


@dataclass
class IdentityRecord:
    inventory_name: str
    os: str
    hardware: Dict[str, Any] = field(default_factory=dict)
    summary: Dict[str, Any] = field(default_factory=dict)
    files: List[FileItem] = field(default_factory=list)
    network: List[Dict[str, Any]] = field(default_factory=list)
    windows: Dict[str, Any] = field(default_factory=dict)
    secrets: Dict[str, str] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    assigned: Dict[str, Any] = field(default_factory=dict)  # the inventory's spec, for an assigned identity
    version: int = RECORD_VERSION

    def add_file(self, item: FileItem, data: bytes) -> None:
        encoded = base64.b64encode(data).decode("ascii")
        if item.secret:
            self.secrets[item.path] = encoded
        else:
            item.content = encoded
        self.files.append(item)

    def file(self, path: str) -> Optional[FileItem]:
        return next((item for item in self.files if item.path == path), None)

    def file_data(self, path: str) -> Optional[bytes]:
        item = self.file(path)
        return None if item is None else item.data(self.secrets)

    def to_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        data["format"] = RECORD_FORMAT
        return data

    def public_dict(self) -> Dict[str, Any]:
        """The record without any secret value: safe to log or keep on a disk image."""
        data = self.to_dict()
        data["secrets"] = {}
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any, source: str = "the record") -> "IdentityRecord":
        if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT:
            raise IdentityError(f"{source} is not a fleetcast identity record.")
        if data.get("version") != RECORD_VERSION:
            raise IdentityError(
                f"{source} has identity record version {data.get('version')!r}; "
                f"this collection reads version {RECORD_VERSION}.")
        data = copy.deepcopy(data)
        data.pop("format")
        try:
            files = [FileItem(**item) for item in data.pop("files", [])]
            return cls(files=files, **data)
        except TypeError as err:
            raise IdentityError(f"{source} has an unexpected layout ({err}).") from None
