# One held claim per physical device: every alias of a target's bytes is found, whatever its name,
# and refused before anything is written (the bytes are hashed before and after every refusal).
# Real loop devices, files and mount namespaces made here; all removed in finally/fixtures.
import hashlib
import os
import struct
import subprocess
import uuid

import pytest

from ansible_collections.fleetcast.imaging.plugins.module_utils._disk import requirements, safety, table, wipe
from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import UnsafeTargetError, ValidationError
from ansible_collections.fleetcast.imaging.plugins.module_utils._image import capture, restore
from ansible_collections.fleetcast.imaging.plugins.module_utils._lab.loopdisk import attach, detach

from disk_helpers import sh

MiB = 1 << 20


def _digest(*paths):
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(MiB), b""):
                digest.update(block)
    return digest.hexdigest()


def _refused(paths, match, protect=(), error=ValidationError, hashed=()):
    """check_targets and claim both refuse `paths`, and no byte of `hashed` changes."""
    before = _digest(*hashed) if hashed else None
    with pytest.raises(error, match=match):
        safety.check_targets(paths, protect)
    with pytest.raises(error, match=match):
        safety.claim(paths, protect)
    if hashed:
        assert _digest(*hashed) == before


@pytest.fixture
def loop(tmp_path):
    """Factory: attach(file, offset, sizelimit) -> loop device, detached afterwards."""
    made = []

    def make(path, offset=0, sizelimit=0):
        made.append(attach(str(path), offset=offset, sizelimit=sizelimit))
        return made[-1]
    yield make
    for device in reversed(made):
        detach(device)


def test_loop_device_beside_its_backing_file_is_refused_either_way(loop_disk):
    disk = loop_disk(8 * MiB)
    for paths in ([disk.device, disk.path], [disk.path, disk.device]):
        _refused(paths, f"^Targets {paths[0]} and {paths[1]} are two names for the same bytes", hashed=[disk.path])


def test_two_loop_devices_over_one_file_are_one_disk(loop_disk, loop):
    disk = loop_disk(8 * MiB)
    second = loop(disk.path)
    _refused([disk.device, second], f"^Targets {disk.device} and {second} are two names for the same bytes "
                                    f"\\(both reach {disk.path}\\): give each disk once.$", hashed=[disk.path])
    # Windows of one file overlap only where their byte ranges do.
    low, high = loop(disk.path, 0, 4 * MiB), loop(disk.path, 4 * MiB, 4 * MiB)
    with safety.claim([low, high]) as claims:
        assert [one.held for one in claims] == [True, True]
    _refused([disk.device, high], "are two names for the same bytes")


def test_symlink_and_a_partition_of_a_listed_disk_are_aliases(loop_disk, loop, tmp_path):
    disk = loop_disk(16 * MiB)
    link = tmp_path / "by-id-link"
    link.symlink_to(disk.device)
    _refused([disk.device, str(link)], "are two names for the same bytes", hashed=[disk.path])
    part = loop(disk.device, MiB, 4 * MiB)  # how this kernel reaches a partition: a window of the disk
    _refused([disk.device, part], f"^Targets {disk.device} and {part} are two names for the same bytes "
                                  f"\\(both reach {disk.path}\\)", hashed=[disk.path])


def test_backing_file_of_a_mounted_loop_is_refused_in_any_mount_namespace(loop_disk, tmp_path, other_namespace):
    disk = loop_disk(16 * MiB)
    sh("mkfs.ext4", "-q", disk.device)
    mountpoint, ready = tmp_path / "mnt", tmp_path / "ready"
    mountpoint.mkdir()
    pid = other_namespace(f"mount {disk.device} {mountpoint} && touch {ready}", str(ready))
    _refused([disk.path], f"^Target {disk.path} is in use: {disk.device} over its bytes is mounted at "
                          f"{mountpoint} in the mount namespace of process {pid}.$", error=UnsafeTargetError,
             hashed=[disk.path])
    # The device itself: the kernel's exclusive open also fails, but the mount is named first.
    _refused([disk.device], f"is mounted at {mountpoint} in the mount namespace of process {pid}",
             error=UnsafeTargetError)


def test_bind_mounted_node_of_a_mounted_device_is_refused(loop_disk, tmp_path, other_namespace):
    disk = loop_disk(16 * MiB)
    sh("mkfs.ext4", "-q", disk.device)
    mountpoint, ready, node = tmp_path / "mnt", tmp_path / "ready", tmp_path / "node"
    mountpoint.mkdir()
    node.touch()
    sh("mount", "--bind", disk.device, node)
    try:
        other_namespace(f"mount {disk.device} {mountpoint} && touch {ready}", str(ready))
        _refused([str(node)], f"^Target {node} is in use: {disk.device} over its bytes is mounted at {mountpoint}",
                 error=UnsafeTargetError, hashed=[disk.path])
    finally:
        subprocess.run(["umount", str(node)], check=True)


def test_disk_under_a_mounted_window_is_refused(loop_disk, loop, tmp_path, other_namespace):
    disk = loop_disk(16 * MiB)
    window = loop(disk.device, MiB, 8 * MiB)
    sh("mkfs.ext4", "-q", window)
    mountpoint, ready = tmp_path / "mnt", tmp_path / "ready"
    mountpoint.mkdir()
    other_namespace(f"mount {window} {mountpoint} && touch {ready}", str(ready))
    for target in (disk.device, disk.path):
        _refused([target], f"^Target {target} is in use: {window} over its bytes is mounted at {mountpoint}",
                 error=UnsafeTargetError, hashed=[disk.path])


@pytest.fixture
def small_image(tmp_path):
    """A one-disk image of a 4 MiB raw file (no partition table)."""
    source = tmp_path / "source.raw"
    source.write_bytes(os.urandom(MiB) + bytes(3 * MiB))
    image = tmp_path / "small.fcimg"
    capture.capture_to_file([str(source)], str(image), chunk_size=MiB, durable=False)
    return image


def test_the_image_itself_or_a_loop_over_it_is_never_a_target(small_image, loop):
    before = _digest(small_image)
    with pytest.raises(UnsafeTargetError, match=f"^Target {small_image} is the image {small_image} being read"):
        restore.restore_image(str(small_image), [str(small_image)])
    device = loop(small_image)
    with pytest.raises(UnsafeTargetError, match=f"^Target {device} reaches the image {small_image} being read"):
        restore.restore_image(str(small_image), [device])
    assert _digest(small_image) == before


def test_claim_is_held_and_is_what_writers_take(loop_disk):
    disk = loop_disk(8 * MiB)
    with safety.claim([disk.device]) as claims:
        held = claims[0]
        # Held: the kernel refuses anyone else's exclusive open (mount, mkfs, md) meanwhile.
        with pytest.raises(OSError):
            os.close(os.open(disk.device, os.O_RDONLY | os.O_EXCL))
        table.write_layout(held, table.DiskLayout(size=0, sector_size=512, label="none"))
    assert not held.held
    with pytest.raises(ValidationError, match=f"^The claim on {disk.device} was released"):
        wipe.wipe(held)


def test_missing_library_fails_before_the_wipe(monkeypatch, loop_disk, tmp_path):
    """A host without python3-parted used to lose its disk before the import failed."""
    source = loop_disk(16 * MiB)
    sh("sgdisk", "-n1:2048:+4M", source.device)
    sh("mkfs.ext4", "-q", source.window(2048 * 512, 4 * MiB))
    image = tmp_path / "gpt.fcimg"
    capture.capture_to_file([source.device], str(image), chunk_size=MiB, durable=False)
    target = loop_disk(16 * MiB)
    sh("sgdisk", "-n1:2048:+8M", target.device)
    sh("mkfs.ext4", "-q", "-L", "keep", target.window(2048 * 512, 8 * MiB))
    before = _digest(target.path)
    monkeypatch.setattr(requirements, "parted", None)
    with pytest.raises(ValidationError, match=f"^Cannot restore onto {target.device}: this host lacks the Python "
                                              "library parted \\(python3-parted\\); install it first"):
        restore.restore_image(str(image), [target.device])
    monkeypatch.setattr(requirements.shutil, "which", lambda name, path=None: None)
    with pytest.raises(ValidationError, match="lacks the Python library parted \\(python3-parted\\), the tool "
                                              "wipefs \\(util-linux\\)"):
        restore.restore_image(str(image), [target.device], grow_last=True)
    assert _digest(target.path) == before


def _md1_superblock(sector, data_sectors, name=b"fleetmd"):
    """An md v1.x superblock (valid checksum) that says it lives at `sector` of its member."""
    sb = bytearray(256 + 2 * 4)
    struct.pack_into("<II", sb, 0, 0xA92B4EFC, 1)
    sb[16:32] = uuid.uuid4().bytes
    sb[32:32 + len(name)] = name
    struct.pack_into("<II", sb, 72, 1, 0)
    struct.pack_into("<I", sb, 92, 2)
    struct.pack_into("<QQQ", sb, 128, 2048 if sector == 8 else 0, data_sectors, sector)
    struct.pack_into("<I", sb, 220, 4)
    csum = sum(struct.unpack_from(f"<{len(sb) // 4}I", sb))
    struct.pack_into("<I", sb, 216, ((csum & 0xFFFFFFFF) + (csum >> 32)) & 0xFFFFFFFF)
    return bytes(sb)


def _md090_superblock():
    sb = bytearray(4096)
    struct.pack_into("<IIII", sb, 0, 0xA92B4EFC, 0, 90, 0)
    struct.pack_into("<I", sb, 20, 0x12345678)
    struct.pack_into("<II", sb, 28, 1, 1)  # level 1
    return bytes(sb)


def _signed_gpt_disk(loop_disk, kind):
    """A 32 MiB GPT disk (two partitions) carrying one leftover signature of `kind` on the whole disk;
    (disk, offset of the signature, the blkid TYPE it reads as)."""
    disk = loop_disk(32 * MiB)
    sh("sgdisk", "-n1:2048:+8M", "-n2:0:+8M", disk.device)
    size = 32 * MiB
    if kind == "md 1.2":   # 4 KiB from the start: inside the primary GPT's entry array
        offset, raw = 4096, _md1_superblock(8, size // 512 - 2048 - 8)
    elif kind == "md 1.0":  # at the end, 4 KiB aligned, 8 KiB from the end
        sector = ((size // 512) - 16) & ~7
        offset, raw = sector * 512, _md1_superblock(sector, sector)
    elif kind == "md 0.90":  # the last 64 KiB-aligned block
        offset, raw = size - 0x10000, _md090_superblock()
    elif kind == "LVM PV":
        sh("pvcreate", "-ff", "-y", "--zero", "n", disk.device)
        return disk, 0x218, "LVM2_member"
    else:
        key = disk.path + ".key"
        with open(key, "w", encoding="ascii") as handle:
            handle.write("not-a-secret")
        sh("cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf", "pbkdf2",
           "--pbkdf-force-iterations", "1000", "--key-file", key, disk.device)
        return disk, 0, "crypto_LUKS"
    with open(disk.device, "r+b") as handle:
        handle.seek(offset)
        handle.write(raw)
    return disk, offset, "linux_raid_member"


@pytest.mark.parametrize("kind", ["md 1.2", "md 1.0", "md 0.90", "LVM PV", "LUKS"])
def test_inactive_member_signatures_are_read_around_and_wiped(loop_disk, kind):
    """Documented in docs/disks.md: an active member is held (refused, see test_held_disk_is_refused);
    a leftover signature of an inactive one is wiped with the rest. An md 1.2 superblock sits in the
    primary GPT's entry array: the reader falls back to the backup GPT instead of failing."""
    disk, offset, fstype = _signed_gpt_disk(loop_disk, kind)
    assert any(sig.type == fstype and sig.offset == offset for sig in wipe.plan_wipe(disk.device).signatures)
    layout = table.read_layout(disk.device)
    if kind.startswith("md"):  # pvcreate and luksFormat wipe the table; md leaves a readable GPT
        assert layout.label == "gpt" and [(p.number, p.start) for p in layout.partitions] == [(1, 2048), (2, 18432)]
    with safety.claim([disk.device]) as claims:
        wipe.wipe(claims[0])
    assert sh("wipefs", "--no-act", disk.device).strip() == ""
    with open(disk.path, "rb") as handle:
        handle.seek(offset)
        assert handle.read(4) == bytes(4)
