# Used-block maps: copying only the mapped extents onto garbage must give a clean, identical filesystem.
import filecmp
import os
import subprocess

import pytest

from ansible_collections.fleetcast.imaging.plugins.module_utils._image import usedmap

MiB = 1 << 20
ENV = dict(os.environ, LC_ALL="C")


def run(*argv):
    return subprocess.run(argv, check=True, capture_output=True, text=True, env=ENV).stdout


def make_tree(root, files=300):
    """A tree with small, medium and sparse-looking files, in subdirectories."""
    for i in range(files):
        sub = root / f"d{i % 7}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i}.bin").write_bytes(os.urandom(37 * i % 9000 + 1))
    (root / "big.bin").write_bytes(os.urandom(3 * MiB + 123))
    (root / "zeros.bin").write_bytes(bytes(2 * MiB))
    return root


def map_of(path):
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        return usedmap.used_map(fd, size)
    finally:
        os.close(fd)


def copy_used_onto_garbage(src, dst, found):
    """The target: random bytes everywhere, the source's bytes only in the used extents."""
    size = os.path.getsize(src)
    with open(dst, "wb") as out:
        for dummy in range(size // MiB):
            out.write(os.urandom(MiB))
        out.write(os.urandom(size % MiB))
    with open(src, "rb") as inp, open(dst, "r+b") as out:
        for offset, length in found.extents:
            inp.seek(offset)
            out.seek(offset)
            out.write(inp.read(length))


@pytest.mark.parametrize("mkfs", [
    ["mkfs.ext4", "-b", "4096"],
    ["mkfs.ext4", "-b", "1024", "-O", "^flex_bg"],
    ["mkfs.ext4", "-b", "4096", "-O", "64bit,metadata_csum", "-G", "4"],
    ["mkfs.ext2", "-b", "2048"],
    ["mkfs.ext4", "-b", "1024", "-O", "sparse_super2,^metadata_csum,uninit_bg", "-g", "2048"],
    ["mkfs.ext3", "-b", "4096", "-g", "1024"],
])
def test_ext_used_blocks_carry_the_whole_filesystem(tmp_path, mkfs):
    tree = make_tree(tmp_path / "tree")
    image = tmp_path / "fs.img"
    run(*mkfs, "-q", "-F", "-d", str(tree), str(image), "48M")
    found = map_of(image)
    assert found.method == "ext" and found.filesystem == mkfs[0].split(".")[1]
    assert 5 * MiB < found.used_bytes < 20 * MiB   # the files, not the 48 MiB
    target = tmp_path / "target.img"
    copy_used_onto_garbage(image, target, found)
    run("e2fsck", "-fn", str(target))
    out = tmp_path / "out"
    out.mkdir()
    run("debugfs", "-R", f"rdump / {out}", str(target))
    assert not filecmp.dircmp(tree, out).diff_files
    for name in ("big.bin", "zeros.bin", "d3/f3.bin"):
        assert (out / name).read_bytes() == (tree / name).read_bytes()


@pytest.mark.parametrize("size_mib, fat_args, expect", [
    (4, ["-F", "12"], "fat12"), (32, ["-F", "16"], "fat16"), (40, ["-F", "32", "-s", "1"], "fat32")])
def test_fat_used_clusters_carry_the_whole_filesystem(tmp_path, size_mib, fat_args, expect):
    tree = make_tree(tmp_path / "tree", files=40 if size_mib == 4 else 200)
    (tree / "big.bin").unlink()
    image = tmp_path / "fs.img"
    with open(image, "wb") as handle:
        handle.truncate(size_mib * MiB)
    run("mkfs.vfat", *fat_args, str(image))
    run("mcopy", "-s", "-i", str(image), *[str(p) for p in tree.iterdir()], "::/")
    found = map_of(image)
    assert found.method == "fat" and found.note == expect
    assert found.used_bytes < size_mib * MiB * 0.8
    target = tmp_path / "target.img"
    copy_used_onto_garbage(image, target, found)
    run("fsck.vfat", "-n", str(target))
    out = tmp_path / "out"
    out.mkdir()
    run("mcopy", "-s", "-n", "-i", str(target), "::/*", str(out))
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in tree.iterdir())
    assert (out / "zeros.bin").read_bytes() == bytes(2 * MiB)
    assert (out / "d5" / "f5.bin").read_bytes() == (tree / "d5" / "f5.bin").read_bytes()


def test_unknown_content_is_mapped_whole(tmp_path):
    image = tmp_path / "raw"
    image.write_bytes(os.urandom(MiB))
    found = map_of(image)
    assert found.method == "all" and found.extents == [(0, MiB)] and found.filesystem is None


def test_merge_extents_joins_small_gaps_and_clips():
    got = usedmap.merge_extents([(100, 10), (0, 50), (60, 10), (1 << 30, 5)], size=1 << 20, gap=20)
    assert got == [(0, 70), (100, 10)]


def test_merge_extents_reports_the_free_bytes_it_joins_over():
    holes = []
    got = usedmap.merge_extents([(100, 10), (0, 50), (60, 10), (1 << 30, 5)], size=1 << 20, gap=20, holes=holes)
    assert got == [(0, 70), (100, 10)] and holes == [(50, 10)]


def test_capture_blanks_the_holes_it_reads_through():
    from ansible_collections.fleetcast.imaging.plugins.module_utils._image import capture

    raw = bytes(range(256)) * 4
    got = capture._blank_holes(raw, 1000, [(900, 150), (1500, 10), (1900, 500), (5000, 1)])
    want = bytearray(raw)
    want[0:50], want[500:510], want[900:1024] = bytes(50), bytes(10), bytes(124)
    assert got == bytes(want)
    assert capture._blank_holes(raw, 1000, [(0, 1000), (2024, 5)]) == raw
