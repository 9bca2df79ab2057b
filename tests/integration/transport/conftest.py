# Fixtures of the transport's lab tests.
import os
import pathlib
import shutil
import tempfile

import pytest


@pytest.fixture
def memory_dir():
    """A directory in tmpfs where there is one: large outputs measure the transport, not the
    machine's disk writeback."""
    path = tempfile.mkdtemp(prefix="fleetcast-transport-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        yield pathlib.Path(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)
