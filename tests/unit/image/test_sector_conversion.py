# Images between 512-byte and 4096-byte logical sectors (4K targets are loop devices made with
# `losetup --sector-size 4096`): GPT tables are converted, contents move byte for byte, filesystems
# whose sector size must match are refused, and every refusal leaves the target's bytes unchanged.
import hashlib
import os
import subprocess

import pytest

from ansible_collections.fleetcast.imaging.plugins.module_utils._disk import table
from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import ValidationError
from ansible_collections.fleetcast.imaging.plugins.module_utils._image import capture, restore
from ansible_collections.fleetcast.imaging.plugins.module_utils._lab import loopdisk

MiB = 1 << 20
ENV = dict(os.environ, LC_ALL="C")


def sh(*argv, stdin=None):
    return subprocess.run([str(a) for a in argv], input=stdin, check=True, capture_output=True, text=True,
                          env=ENV).stdout


@pytest.fixture
def sector_disk(tmp_path):
    """Factory: sector_disk(size, sector) -> (device, backing file); detached and removed afterwards."""
    made = []

    def make(size, sector, name):
        path = str(tmp_path / name)
        with open(path, "wb") as handle:
            handle.truncate(size)
        device = sh("losetup", "--find", "--show", "--sector-size", sector, path).strip()
        made.append((device, path))
        return device, path

    yield make
    for device, path in made:
        loopdisk.detach_all_backed_by(path)
        os.unlink(path)


def _gpt(device, parts):
    sh("sfdisk", "-q", device, stdin="label: gpt\n" + "".join(f"start={s}, size={n}\n" for s, n in parts))


def _digest(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def _bytes(path, offset, length):
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read(length)


def _master_512(tmp_path, fat_sector):
    """A 512-byte-sector raw disk: a FAT (with `fat_sector`-byte sectors) and an ext4 with files,
    both 4 KiB aligned; the second partition's end is not 4 KiB aligned (it is rounded up)."""
    path = str(tmp_path / "master.raw")
    with open(path, "wb") as handle:
        handle.truncate(40 * MiB)
    sh("sfdisk", "-q", path, stdin="label: gpt\nstart=2048, size=16384\nstart=18432, size=40957\n")
    window = loopdisk.attach(path, offset=2048 * 512, sizelimit=16384 * 512)
    try:
        sh("mkfs.vfat", "-S", fat_sector, "-n", "ESP", window)
    finally:
        loopdisk.detach(window)
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hostname").write_text("master\n")
    (tree / "data.bin").write_bytes(os.urandom(3 * MiB))
    sh("mkfs.ext4", "-q", "-F", "-b", 4096, "-E", f"offset={18432 * 512}", "-d", tree, path, "20000K")
    return path


def test_512_gpt_image_onto_a_4k_disk(tmp_path, sector_disk):
    master = _master_512(tmp_path, 4096)
    image = str(tmp_path / "m.fcimg")
    manifest = capture.capture_to_file([master], image)
    fat = next(r for r in manifest.layout["disks"][0]["regions"] if r["name"] == "partition 1")
    assert (fat["fs_sector_of"], fat["fs_sector_size"]) == ("vfat", 4096)

    target, backing = sector_disk(48 * MiB, 4096, "t4k.img")
    planned = restore.restore_image(image, [target], check_mode=True)["plan"]["targets"][0]
    assert planned["sector_conversion"] == "512 -> 4096" and planned["partitions"][0]["start"] == 256
    done = restore.restore_image(image, [target])
    assert done["changed"]
    got = table.read_layout(target)
    assert got.label == "gpt" and got.sector_size == 4096
    assert [(p.start, p.end) for p in got.partitions] == [(256, 256 + 2048 - 1), (2304, 2304 + 5120 - 1)]
    assert "No problems found" in sh("sgdisk", "-v", target)
    for start, length in ((2048 * 512, 16384 * 512), (18432 * 512, 40957 * 512)):
        assert _bytes(backing, start, length) == _bytes(master, start, length)
    assert restore.restore_image(image, [target])["changed"] is False  # idempotent on the 4K disk


def test_4k_gpt_image_onto_a_512_disk(tmp_path, sector_disk):
    master, master_file = sector_disk(24 * MiB, 4096, "m4k.img")
    _gpt(master, [(256, 3840)])  # 1 MiB .. 16 MiB, in 4 KiB sectors
    window = loopdisk.attach(master_file, offset=MiB, sizelimit=15 * MiB)
    try:
        sh("mkfs.ext4", "-q", "-F", "-b", 4096, window)
    finally:
        loopdisk.detach(window)
    image = str(tmp_path / "m4k.fcimg")
    capture.capture_to_file([master], image)
    target = str(tmp_path / "t512.raw")
    with open(target, "wb") as handle:
        handle.truncate(24 * MiB)
    restore.restore_image(image, [target])
    got = table.read_layout(target)
    assert (got.sector_size, [(p.start, p.end) for p in got.partitions]) == (512, [(2048, 2048 + 30720 - 1)])
    assert _bytes(target, MiB, 15 * MiB) == _bytes(master_file, MiB, 15 * MiB)
    check = loopdisk.attach(target, offset=MiB, sizelimit=15 * MiB, read_only=True)
    try:
        sh("e2fsck", "-f", "-n", check)
    finally:
        loopdisk.detach(check)
    assert restore.restore_image(image, [target])["changed"] is False


def test_refusals_leave_the_4k_target_untouched(tmp_path, sector_disk):
    target, backing = sector_disk(48 * MiB, 4096, "t4k.img")
    _gpt(target, [(256, 1024)])
    before = _digest(backing)

    master = _master_512(tmp_path, 512)  # a FAT with 512-byte sectors
    image = str(tmp_path / "fat512.fcimg")
    capture.capture_to_file([master], image)
    with pytest.raises(ValidationError) as refused:
        restore.restore_image(image, [target])
    assert str(refused.value) == (
        f"Target {target} has 4096-byte sectors but the vfat filesystem on the image's partition 1 uses 512-byte "
        "sectors, which Windows, UEFI firmware and Linux do not accept on such a disk; capture it from a master "
        "with 4096-byte sectors, or re-create that filesystem there with 4096-byte sectors (mkfs.vfat -S 4096).")

    unaligned = str(tmp_path / "unaligned.raw")
    with open(unaligned, "wb") as handle:
        handle.truncate(16 * MiB)
    sh("sfdisk", "-q", unaligned, stdin="label: gpt\nstart=2049, size=8000\n")
    capture.capture_to_file([unaligned], str(tmp_path / "u.fcimg"))
    with pytest.raises(ValidationError, match=rf"^{target} has 4096-byte sectors, but partition 1 of the image starts "
                                              r"at byte 1049088, which is not a multiple of 4096, so the table"):
        restore.restore_image(str(tmp_path / "u.fcimg"), [target])

    dos = str(tmp_path / "dos.raw")
    with open(dos, "wb") as handle:
        handle.truncate(16 * MiB)
    sh("sfdisk", "-q", dos, stdin="label: dos\nstart=2048, size=8192, type=83\n")
    capture.capture_to_file([dos], str(tmp_path / "d.fcimg"))
    with pytest.raises(ValidationError, match="image's msdos partition table was made for 512-byte sectors; only "
                                              "GPT tables are converted"):
        restore.restore_image(str(tmp_path / "d.fcimg"), [target])
    assert _digest(backing) == before


def test_a_512_byte_fat_volume_image_is_refused_for_a_4k_device(tmp_path, sector_disk):
    volume = str(tmp_path / "esp.raw")
    with open(volume, "wb") as handle:
        handle.truncate(8 * MiB)
    sh("mkfs.vfat", "-S", 512, volume)
    image = str(tmp_path / "esp.fcimg")
    capture.capture_to_file([capture.CaptureSource(volume, "partition")], image)
    target, backing = sector_disk(8 * MiB, 4096, "v4k.img")
    before = _digest(backing)
    with pytest.raises(ValidationError, match=f"^Target {target} has 4096-byte sectors but the vfat filesystem on "
                                              "the image's volume uses 512-byte sectors"):
        restore.restore_image(image, [target])
    assert _digest(backing) == before
    assert restore.restore_image(image, [str(tmp_path / "esp.raw")], check_mode=True)["image_id"]  # 512: fine
