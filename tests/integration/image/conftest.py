# Fixtures: the master disk (built once for this directory) and dirty target disks, all on loop devices.
import pytest
from image_helpers import MASTER_SIZE, MiB, make_dirty, make_master

from ansible_collections.fleetcast.imaging.plugins.module_utils._lab.loopdisk import LoopDisk


@pytest.fixture(scope="package")
def master(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("master")
    disk = LoopDisk.create(str(tmp / "master.img"), MASTER_SIZE)
    try:
        make_master(disk, tmp)
        yield disk
    finally:
        disk.close()


@pytest.fixture
def dirty_disk(loop_disk):
    def make(size=MASTER_SIZE, name=None, stride=4 * MiB):
        disk = loop_disk(size, name)
        make_dirty(disk, stride)
        return disk
    return make
