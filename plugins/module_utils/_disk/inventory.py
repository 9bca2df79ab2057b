# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A read-only report of every block device: what the kernel says plus what its table holds.

Private to the collection: not a public API. This is what the ``disk_info`` module returns.
"""

from __future__ import annotations

from typing import Dict, List, Optional

from .._errors import FleetcastError
from .discover import BlockDevice
from .table import probe_filesystem, read_layout


def describe(device: BlockDevice) -> Dict[str, object]:
    """One device as a plain dict: kernel facts, its partition table and the filesystem in each
    partition (or on the whole disk). Partitions come from the table, so they are listed also where
    the kernel has no partition nodes; `node` is the kernel's node when there is one."""
    data = device.to_dict()
    nodes = {part.number: part for part in device.partitions}
    data.update(boot_medium=data.pop("is_boot_medium"), label=None, guid=None, filesystem=None,
                table_error=None, partitions=[])
    if device.size <= 0:
        return data
    try:
        layout = read_layout(device.path)
    except (FleetcastError, OSError) as err:
        data["table_error"] = str(err) if isinstance(err, FleetcastError) else f"{device.path}: {err.strerror}."
        return data
    data.update(label=layout.label, guid=layout.guid)
    if layout.label == "none":
        data["filesystem"] = probe_filesystem(device.path, 0, device.size).get("TYPE")
    for part in layout.partitions:
        node = nodes.get(part.number)
        entry = dict(vars(part))
        entry.update(size=part.sectors * layout.sector_size, node=node.path if node else None,
                     mountpoints=node.mountpoints if node else [])
        data["partitions"].append(entry)
    return data


def describe_all(devices: List[BlockDevice], only: Optional[List[str]] = None) -> List[Dict[str, object]]:
    """`describe` for every device (or only those whose path is in `only`)."""
    return [describe(device) for device in devices if only is None or device.path in only]
