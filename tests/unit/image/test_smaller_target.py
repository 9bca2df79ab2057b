# A multicast receiver whose disk is smaller than the master's: refused when the layout (object 0)
# arrives, before anything is wiped or written, naming the target and both sizes and saying where a
# shrink is done (image_restore). deploy.yml refuses the same earlier still, in its participant
# preflight, before disk_wipe (tests/integration/deploy/test_deploy_messages.py).
import hashlib

import pytest

from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import ValidationError
from ansible_collections.fleetcast.imaging.plugins.module_utils._image import capture
from ansible_collections.fleetcast.imaging.plugins.module_utils._image.format import canonical_json
from ansible_collections.fleetcast.imaging.plugins.module_utils._multicast import sinks

KiB = 1024


def test_a_receiver_with_a_smaller_disk_refuses_the_layout_before_any_write(tmp_path):
    master = tmp_path / "master.raw"
    master.write_bytes(b"master data " * (256 * KiB // 12) + bytes(256 * KiB - 256 * KiB // 12 * 12))
    layout = capture.describe([str(master)], chunk_size=64 * KiB)[0]
    small = tmp_path / "small.raw"
    small.write_bytes(b"keep me " * (128 * KiB // 8))
    before = hashlib.sha256(small.read_bytes()).hexdigest()
    sink = sinks.DiskSink([str(small)], False, "ws01", None)
    try:
        with pytest.raises(ValidationError) as refused:
            sink(0, canonical_json(layout))
    finally:
        sink.abort()
    assert str(refused.value) == (
        f"Target {small} is too small: {128 * KiB} bytes, the image's disk 0 needs {256 * KiB} bytes (only "
        "image_restore, from the image file, shrinks the last partition onto a smaller disk: shrink_last_partition).")
    assert hashlib.sha256(small.read_bytes()).hexdigest() == before
