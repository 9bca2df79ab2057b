# Shared fixtures: the collection on sys.path, loop-device disks and network namespaces that the
# tests create themselves and always remove.
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS = os.path.join(ROOT, ".build", "collections")
_link = os.path.join(COLLECTIONS, "ansible_collections", "fleetcast", "imaging")
if not os.path.exists(_link):
    os.makedirs(os.path.dirname(_link), exist_ok=True)
    os.symlink(ROOT, _link)
if COLLECTIONS not in sys.path:
    sys.path.insert(0, COLLECTIONS)
os.environ.setdefault("ANSIBLE_COLLECTIONS_PATH", COLLECTIONS)

from ansible_collections.fleetcast.imaging.plugins.module_utils._lab.loopdisk import LoopDisk  # noqa: E402
from ansible_collections.fleetcast.imaging.plugins.module_utils._lab.netlab import NetLab  # noqa: E402


@pytest.fixture
def loop_disk(tmp_path):
    """Factory: loop_disk(size_bytes, name='disk') -> LoopDisk, detached and removed afterwards."""
    made = []

    def make(size, name=None):
        disk = LoopDisk.create(str(tmp_path / (name or f"disk{len(made)}.img")), size)
        made.append(disk)
        return disk

    yield make
    for disk in reversed(made):
        disk.close()


@pytest.fixture
def netlab():
    """A fresh bridge-in-a-namespace; add hosts with netlab.add_host(name). Torn down afterwards."""
    lab = NetLab()
    try:
        yield lab
    finally:
        lab.close()
