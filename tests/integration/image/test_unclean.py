# Filesystems that were not cleanly unmounted at capture: an XFS and an ext4 shut down while mounted
# (`xfs_io -x -c shutdown`: the log or journal is left to replay, as after a crash), an NTFS marked
# dirty (by ntfsresize, as Windows marks one it did not shut down). Their allocation maps on disk
# may be behind their journal, so capture stores them whole and says so; a clean mount and unmount
# (or ntfsfix -d here) brings the used-block map back. All on loop devices and files made here.
import os

import pytest

from ansible_collections.fleetcast.imaging.plugins.module_utils._image import capture, restore

from fs_volumes import FSCK, MiB, run

SIZES = {"xfs": 300 * MiB, "ext4": 64 * MiB}   # XFS refuses below 300 MB (sparse: costs little)
SCRIPT = """set -e
mount "$1" "$2"
mkdir "$2/kept"
for n in 1 2 3 4 5 6 7 8; do echo "kept $n" > "$2/kept/$n"; done
sync
for n in 1 2 3 4 5 6 7 8; do echo "late $n" > "$2/late$n"; done
xfs_io -x -c shutdown "$2"
umount "$2"
"""


def in_private_namespace(script, *args):
    run("unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *args)


def region_of(layout):
    return layout["disks"][0]["regions"][0]


@pytest.mark.parametrize("fs", ["xfs", "ext4"])
def test_a_filesystem_shut_down_while_mounted_is_stored_whole_and_its_log_replays_on_the_clone(
        fs, loop_disk, tmp_path):
    master = loop_disk(SIZES[fs], "master.img")
    run("mkfs.xfs" if fs == "xfs" else "mkfs.ext4", "-q", "-f" if fs == "xfs" else "-F", master.device)
    (tmp_path / "mnt").mkdir()
    in_private_namespace(SCRIPT, master.device, str(tmp_path / "mnt"))
    source = capture.CaptureSource(master.device, "partition")
    layout = capture.describe([source])[0]
    region = region_of(layout)
    why = "log needs replay" if fs == "xfs" else "journal needs recovery"
    assert (region["filesystem"], region["map"], region["unclean"]) == (fs, "all", True)
    assert region["used_bytes"] == SIZES[fs]
    replay = ("mount and unmount it to replay its log (not xfs_repair -L, which throws the log away)" if fs == "xfs"
              else "mount and unmount it (or run e2fsck -p) to replay its journal")
    assert capture.unclean_warnings(layout) == [
        f"The {fs} on {master.device} is mounted or was not cleanly unmounted ({why}), so every block "
        f"of it was stored; for a smaller image, unmount it or remount it read-only if it is mounted, else {replay}, "
        "then capture again."]
    if fs == "xfs":
        # Stored whole, the log travels with it: the clone replays it at its first mount and is clean.
        image = str(tmp_path / "unclean.fcimg")
        capture.capture_to_file([source], image, chunk_size=MiB, threads=2)
        target = loop_disk(SIZES[fs], "target.img")
        restore.restore_image(image, [target.device])
        out = tmp_path / "out"
        in_private_namespace('set -e; mount "$1" "$2"; cp -r "$2/kept" "$3"; umount "$2"',
                             target.device, str(tmp_path / "mnt"), str(out))
        assert sorted(os.listdir(out)) == [str(n) for n in range(1, 9)]
        assert (out / "8").read_text() == "kept 8\n"
        run(*FSCK[fs], target.device)
    # Mounted and unmounted cleanly, the same filesystem is mapped by its own allocation maps again.
    in_private_namespace('set -e; mount "$1" "$2"; umount "$2"', master.device, str(tmp_path / "mnt"))
    layout = capture.describe([source])[0]
    region = region_of(layout)
    assert region["map"] == ("xfs" if fs == "xfs" else "ext") and "unclean" not in region
    assert region["used_bytes"] < SIZES[fs] // 2 and capture.unclean_warnings(layout) == []


def test_an_ntfs_marked_dirty_is_stored_whole_until_the_mark_is_cleared(tmp_path):
    volume = str(tmp_path / "ntfs.img")
    with open(volume, "wb") as handle:
        handle.truncate(32 * MiB)
    run("mkntfs", "-q", "-F", "-f", volume)
    # ntfsresize leaves the volume marked for a chkdsk, as Windows leaves one it did not shut down
    run("ntfsresize", "-f", "-f", "--no-progress-bar", "--size", str(24 * MiB), volume)
    layout = capture.describe([capture.CaptureSource(volume, "partition")])[0]
    assert (region_of(layout)["map"], region_of(layout)["unclean"]) == ("all", True)
    assert capture.unclean_warnings(layout)[0].endswith(
        "(volume marked dirty), so every block of it was stored; for a smaller image, shut Windows down fully "
        "(fast startup off) or run chkdsk /f, which clears the mark, then capture again.")
    run("ntfsfix", "-d", volume)
    layout = capture.describe([capture.CaptureSource(volume, "partition")])[0]
    assert region_of(layout)["map"] == "ntfs" and not capture.unclean_warnings(layout)
