# A real operating-system image through the real modules: the lab's Debian master (a bookworm root
# with its kernel, ~10,000 files, chunks whose compressed sizes range from bytes to 4 MiB) served
# encrypted, as the roles do, to three participants' loop disks at once. Every clone must equal
# the master byte for byte and its filesystems must check clean. The first run on a machine builds
# the Debian root (mmdebstrap, about 70 s plus downloads) and the master image; later runs take them
# from /var/cache/fleetcast.
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lab import GROUP  # noqa: E402
from test_bridge import module_result, run_module  # noqa: E402

from ansible_collections.fleetcast.imaging.plugins.module_utils._lab import debian_disk, disk_tools, loopdisk  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
PARTICIPANTS = ("p1", "p2", "p3")


@pytest.fixture(scope="module")
def debian_image():
    return debian_disk.ensure_image()


def _digest_but_chs(path):
    """SHA-256 of a disk with the protective MBR entry's ending CHS (bytes 451-453) blanked: sgdisk,
    which made the master, writes the geometry's last cylinder there, libparted, which writes the
    clone's table, 0xFFFFFF; nothing reads it (a GPT disk has no CHS), every other byte must match."""
    import hashlib
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        first = bytearray(source.read(1 << 20))
        first[451:454] = b"\0\0\0"
        digest.update(first)
        for block in iter(lambda: source.read(4 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsck(disk_file):
    """Exit codes of e2fsck on the root and fsck.vfat on the ESP, read-only (0 = clean)."""
    codes = {}
    for number, argv in ((1, ["fsck.vfat", "-n"]), (2, ["e2fsck", "-f", "-n"])):
        offset, size = disk_tools.partition_bounds(disk_file, number)
        window = loopdisk.attach(disk_file, offset=offset, sizelimit=size, read_only=True)
        try:
            codes[argv[0]] = subprocess.run(argv + [window], capture_output=True, check=False).returncode
        finally:
            loopdisk.detach(window)
    return codes


def test_debian_image_to_three_disks_encrypted(netlab, loop_disk, tmp_path, debian_image):
    cached = debian_image
    assert cached.chunks > 50
    server = netlab.add_host("server")
    hosts = [netlab.add_host(name) for name in PARTICIPANTS]
    disks = [loop_disk(cached.size, f"{name}.disk") for name in PARTICIPANTS]
    common = dict(interface="eth0", group=GROUP, port=9731, session_key="debian-session-key-0123456789")
    receivers = [run_module(host, "multicast_receive", dict(common, devices=[disk.device], name=host.name,
                                                            timeout=60, resume_dir=str(tmp_path / host.name)),
                            tmp_path)
                 for host, disk in zip(hosts, disks)]
    sent = module_result(run_module(server, "multicast_send", dict(
        common, image=cached.image, expected=list(PARTICIPANTS), max_wait=60, encrypt=True), tmp_path), timeout=600)
    assert not sent.get("failed"), sent["msg"]
    assert sent["encrypted"] is True and sent["image_id"] == cached.image_id
    assert {(r["name"], r["state"], r["digest_matches"]) for r in sent["receivers"]} == {
        (name, "done", True) for name in PARTICIPANTS}
    master = _digest_but_chs(cached.raw)
    for host, process, disk in zip(hosts, receivers, disks):
        received = module_result(process, timeout=120)
        assert not received.get("failed"), received["msg"]
        assert received["digest"] == cached.image_id and received["chunks"] == cached.chunks
        assert _digest_but_chs(disk.path) == master, f"{host.name}'s disk differs from the master"
        assert _fsck(disk.path) == {"fsck.vfat": 0, "e2fsck": 0}, host.name
