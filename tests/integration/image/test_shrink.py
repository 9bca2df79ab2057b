# Shrink: a master whose last partition (ext4 or NTFS) is about a quarter full restores onto a disk
# two thirds its size (the partition and its filesystem are cut back, data past the new end moved),
# and onto a disk a sixth its size it is refused before anything is written, with the sizes said.
# The proportions are those of the 3 GiB master with 700 MB used onto 2 GiB and 500 MB
# targets, at a tenth of the size. The exact figures, once: FLEETCAST_SHRINK_MASTER_MIB=3072
# FLEETCAST_SHRINK_ZEROS_MIB=16 FLEETCAST_SHRINK_RANDOM_MIB=640 (2000 files, 640 MiB of random data).
import copy
import hashlib
import os

import pytest

from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import ValidationError
from ansible_collections.fleetcast.imaging.plugins.module_utils._image import capture, restore

import fs_volumes
from fs_volumes import FSCK, MiB, run
from image_helpers import ansible

SECTOR = 512
MASTER = int(os.environ.get("FLEETCAST_SHRINK_MASTER_MIB", "320")) * MiB
USED_ZEROS_MIB = int(os.environ.get("FLEETCAST_SHRINK_ZEROS_MIB", "56"))
USED_RANDOM_MIB = int(os.environ.get("FLEETCAST_SHRINK_RANDOM_MIB", "0"))
FITS = MASTER * 2 // 3 // MiB * MiB
TOO_SMALL = MASTER // 6 // MiB * MiB
FIRST = (MiB, 16 * MiB)          # partition 1: raw bytes, before the one that shrinks


def last_range(disk_size):
    start = FIRST[0] + FIRST[1]
    return start, (disk_size // SECTOR - 33) * SECTOR - start     # up to the last usable sector


@pytest.fixture(scope="module", params=["ext4", "ntfs"])
def master(request, tmp_path_factory):
    from ansible_collections.fleetcast.imaging.plugins.module_utils._lab.loopdisk import LoopDisk

    fs = request.param
    tmp = tmp_path_factory.mktemp(f"shrink-{fs}")
    tree = fs_volumes.make_tree(str(tmp / "tree"), files=2000, zeros_mib=USED_ZEROS_MIB)
    for number in range(USED_RANDOM_MIB // 64):
        with open(os.path.join(tree, f"dir{number % 40}", f"bulk{number}.bin"), "wb") as handle:
            handle.write(os.urandom(64 * MiB))
    disk = LoopDisk.create(str(tmp / "master.img"), MASTER)
    try:
        start, size = last_range(MASTER)
        run("sgdisk", "-Z", disk.device)
        run("sgdisk", f"-n1:{FIRST[0] // SECTOR}:{(FIRST[0] + FIRST[1]) // SECTOR - 1}", "-t1:ef02",
            f"-n2:{start // SECTOR}:{(start + size) // SECTOR - 1}", "-t2:0700" if fs == "ntfs" else "-t2:8300",
            disk.device)
        with open(disk.device, "r+b") as handle:
            handle.seek(FIRST[0])
            handle.write(os.urandom(MiB))
        fs_volumes.fill(fs, disk.window(start, size), tree, str(tmp))
        image = str(tmp / "master.fcimg")
        manifest = capture.capture_to_file([disk.device], image, chunk_size=MiB, threads=2)
        yield fs, image, manifest, tree
    finally:
        disk.close()


def digest(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def test_restore_onto_a_smaller_disk_shrinks_the_last_filesystem(master, dirty_disk, tmp_path):
    fs, image, manifest, tree = master
    target = dirty_disk(size=FITS, stride=8 * MiB)
    state = str(tmp_path / "state")
    report = restore.restore_image(image, [target.device], shrink_last=True, scratch_dir=str(tmp_path),
                                   state_dir=state)
    planned = report["plan"]["targets"][0]
    start, size = last_range(FITS)
    assert (planned["shrink_partition"], planned["shrink_filesystem"], planned["shrink_bytes"]) == (2, fs, size)
    assert planned["partitions"][-1]["end"] == (start + size) // SECTOR - 1
    assert not [name for name in os.listdir(tmp_path) if name.startswith("fleetcast-shrink-")]
    window = target.window(start, size)
    run(*FSCK[fs], window)
    assert_same_tree(tree, fs_volumes.dump(fs, window, str(tmp_path / "out"), str(tmp_path)))
    with open(target.device, "rb") as handle:
        handle.seek(FIRST[0])
        first = handle.read(MiB)
    assert first != bytes(MiB)   # partition 1's raw bytes are there as on the master
    # The shrink is recorded (the stamp, kept in the state directory): a re-run is unchanged, in
    # check mode and for real, and writes nothing; with no stamp, the plan says why it would restore.
    assert oct(os.stat(report["state_file"]).st_mode & 0o777) == "0o600"
    before = digest(target.path)
    again = restore.restore_image(image, [target.device], shrink_last=True, scratch_dir=str(tmp_path),
                                  check_mode=True)
    assert again["changed"] and again["plan"]["targets"][0]["reason"].endswith(
        "(partition 2 is resized on this target, and no stamp of the run that resized it was found)")
    for check_mode, kept in ((True, {"state_dir": state}), (False, {"recorded": report["stamp"]})):
        again = restore.restore_image(image, [target.device], shrink_last=True, scratch_dir=str(tmp_path),
                                      check_mode=check_mode, **kept)
        assert not again["changed"] and again["chunks_written"] == 0 and again["stamp"] == report["stamp"]
        assert again["plan"]["targets"][0]["state"] == "unchanged"
    if fs == "ext4":     # and the same task run again through the module (the same engine call for NTFS)
        args = {"image": image, "targets": [target.device], "shrink_last_partition": True,
                "scratch_dir": str(tmp_path), "state_dir": state}
        for check in (True, False):
            head, again = ansible("image_restore", args, check=check)
            assert "SUCCESS" in head and not again["changed"] and again["chunks_written"] == 0
            assert again["plan"]["targets"][0]["state"] == "unchanged"
    assert digest(target.path) == before


def test_restore_onto_a_much_smaller_disk_is_refused_before_any_write(master, loop_disk, tmp_path):
    fs, image, manifest, dummy = master
    target = loop_disk(TOO_SMALL)
    with open(target.device, "r+b") as handle:
        handle.write(os.urandom(TOO_SMALL))
    before = digest(target.path)
    region = next(r for r in manifest.layout["disks"][0]["regions"] if r.get("partition") == 2)
    with pytest.raises(ValidationError) as refused:
        restore.restore_image(image, [target.device], shrink_last=True, scratch_dir=str(tmp_path))
    message = str(refused.value)
    start, size = last_range(TOO_SMALL)
    assert message == (f"Cannot restore: target {target.device} ({TOO_SMALL} bytes) is smaller than the image's disk "
                       f"0 ({MASTER} bytes), so partition 2 would have {size} bytes, but its {fs} holds "
                       f"{region['used_bytes']} bytes of used data and needs at least "
                       f"{region['used_bytes'] + restore.SHRINK_MARGIN}.")
    assert digest(target.path) == before


def test_a_filesystem_that_cannot_shrink_is_refused(master, dirty_disk, tmp_path):
    fs, image, manifest, dummy = master
    layout = copy.deepcopy(manifest.layout)
    next(r for r in layout["disks"][0]["regions"] if r.get("partition") == 2)["filesystem"] = "btrfs"
    target = dirty_disk(size=FITS, stride=64 * MiB)
    session = restore.RestoreSession(layout, [target.device], shrink_last=True, scratch_dir=str(tmp_path))
    with pytest.raises(ValidationError, match=r"^Cannot restore: target .* and its last partition 2 holds btrfs, "
                                              r"which cannot be shrunk \(ext2/3/4 and NTFS can\)\.$"):
        session.validate()
    # a filesystem stored whole because it was not cleanly unmounted: its used data is unknown
    layout = copy.deepcopy(manifest.layout)
    next(r for r in layout["disks"][0]["regions"] if r.get("partition") == 2).update(
        unclean=True, map="all", note="journal needs recovery: every block is stored")
    session = restore.RestoreSession(layout, [target.device], shrink_last=True, scratch_dir=str(tmp_path))
    with pytest.raises(ValidationError, match=rf"^Cannot restore: target .* bytes\), and its last partition 2 holds an "
                                              rf"{fs} that was not cleanly unmounted at capture \(journal needs recovery\), "
                                              r"so it was stored whole and cannot be shrunk: capture the master again "
                                              r"once it is cleanly unmounted\.$"):
        session.validate()
    # without shrink_last, a smaller target is refused as before
    with pytest.raises(ValidationError, match="is too small"):
        restore.RestoreSession(manifest.layout, [target.device]).validate()


def assert_same_tree(left, right):
    for dirpath, dirnames, filenames in os.walk(left):
        other = os.path.join(right, os.path.relpath(dirpath, left))
        assert sorted(os.listdir(other)) == sorted(dirnames + filenames), dirpath
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as one, open(os.path.join(other, name), "rb") as two:
                assert one.read() == two.read(), name
