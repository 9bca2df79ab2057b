# NTFS paging and hibernation files: their contents are not stored (the files stay allocated, their
# first 4 KiB restored as zeros, so no clone resumes from an old hibernation header). A volume made
# with ntfs-3g holding random pagefile.sys, swapfile.sys and hiberfil.sys next to ordinary files.
import os

from ansible_collections.fleetcast.imaging.plugins.module_utils._image import capture, restore, usedmap

import fs_volumes
from fs_volumes import FSCK, MiB, run

SIZE = 64 * MiB
SKIPPED = {"pagefile.sys": 12 * MiB, "hiberfil.sys": 6 * MiB, "swapfile.sys": 2 * MiB}


def test_paging_and_hibernation_contents_are_not_stored_and_the_files_stay(tmp_path, monkeypatch):
    tree = tmp_path / "tree"
    (tree / "docs").mkdir(parents=True)
    for number in range(50):
        (tree / "docs" / f"file{number}.txt").write_bytes(os.urandom(3000))
    for name, size in SKIPPED.items():
        (tree / name).write_bytes(b"HIBR" + os.urandom(size - 4))
    volume = str(tmp_path / "ntfs.img")
    with open(volume, "wb") as handle:
        handle.truncate(SIZE)
    fs_volumes.fill("ntfs", volume, str(tree), str(tmp_path))
    image = str(tmp_path / "ntfs.fcimg")
    manifest = capture.capture_to_file([capture.CaptureSource(volume, "partition")], image, chunk_size=MiB, threads=2)
    region = manifest.layout["disks"][0]["regions"][0]
    total = sum(SKIPPED.values())
    assert region["map"] == "ntfs" and region["note"] == (
        f"pagefile.sys, swapfile.sys, hiberfil.sys: {total} bytes of contents not stored")
    assert region["used_bytes"] < 4 * MiB and os.path.getsize(image) < 2 * MiB
    # Without the skip the same volume stores every byte of those files.
    monkeypatch.setattr(usedmap, "NTFS_SKIPPED", ())
    fd = os.open(volume, os.O_RDONLY)
    try:
        assert usedmap.used_map(fd, SIZE).used_bytes >= region["used_bytes"] + total - 3 * 4096
    finally:
        os.close(fd)
    monkeypatch.undo()
    target = tmp_path / "target.img"
    with open(target, "wb") as handle:
        for dummy in range(SIZE // MiB):
            handle.write(os.urandom(MiB))
    restore.restore_image(image, [str(target)])
    run(*FSCK["ntfs"], str(target))
    out = fs_volumes.dump("ntfs", str(target), str(tmp_path / "out"), str(tmp_path))
    for number in range(50):
        name = os.path.join("docs", f"file{number}.txt")
        assert (tree / name).read_bytes() == open(os.path.join(out, name), "rb").read()
    for name, size in SKIPPED.items():
        with open(os.path.join(out, name), "rb") as handle:
            assert os.fstat(handle.fileno()).st_size == size and handle.read(4096) == bytes(4096), name
