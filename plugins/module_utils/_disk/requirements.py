# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a run needs installed on this host, checked before anything is destroyed. Private to the
collection: not a public API.

Every destructive run (wipe, restore, multicast receive) first asks `require()` for every Python
library and every tool it will call, up to the last step (growing a filesystem after the image is
written), so that a host without, say, python3-parted fails before its disk is wiped, not after.
"""

from __future__ import annotations

import importlib
import shutil
import traceback
from typing import Iterable, List, Optional

from .._errors import ValidationError

try:
    import parted
    PARTED_IMPORT_ERROR: Optional[str] = None
except ImportError:
    parted = None
    PARTED_IMPORT_ERROR = traceback.format_exc()

# Debian package of each library and tool (what the imaging environment installs).
PACKAGES = {
    "parted": "python3-parted", "zstandard": "python3-zstandard", "numpy": "python3-numpy",
    "cryptography": "python3-cryptography", "hivex": "python3-hivex",
    "wipefs": "util-linux", "blkid": "util-linux", "losetup": "mount", "e2fsck": "e2fsprogs",
    "resize2fs": "e2fsprogs", "ntfs-3g": "ntfs-3g", "ntfsresize": "ntfs-3g", "xfs_growfs": "xfsprogs",
    "btrfs": "btrfs-progs", "mtools": "mtools", "fatresize": "fatresize",
}
# The tools every wipe needs: probing (blkid, wipefs) and partition windows (losetup).
WIPE_TOOLS = ("wipefs", "blkid", "losetup")
# What a restore onto partitioned disks can call, receiving included (the deploy's preflight asks
# before its wipe): chunks (zstandard), the receiver (numpy), tables (parted), growing ext2/3/4.
RESTORE_LIBRARIES = ("zstandard", "numpy", "parted")
RESTORE_TOOLS = WIPE_TOOLS + ("e2fsck", "resize2fs")


def missing_library(name: str, package: str, purpose: str) -> str:
    return f"Cannot {purpose}: the Python library {name} is missing; install {package}."


def _importable(name: str) -> bool:
    if name == "parted":
        return parted is not None
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def missing(libraries: Iterable[str] = (), tools: Iterable[str] = ()) -> List[str]:
    """A phrase per library or tool this host lacks ("the Python library parted (python3-parted)")."""
    found = []
    for name in dict.fromkeys(libraries):
        if not _importable(name):
            found.append(f"the Python library {name} ({PACKAGES.get(name, name)})")
    for name in dict.fromkeys(tools):
        if shutil.which(name) is None and shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin") is None:
            found.append(f"the tool {name} ({PACKAGES.get(name, name)})")
    return found


def require(libraries: Iterable[str], tools: Iterable[str], purpose: str) -> None:
    """Raise one sentence naming everything missing for `purpose` ("restore onto /dev/sdb")."""
    lacking = missing(libraries, tools)
    if lacking:
        raise ValidationError(f"Cannot {purpose}: this host lacks {', '.join(lacking)}; install "
                              f"{'it' if len(lacking) == 1 else 'them'} first (nothing was written).")
