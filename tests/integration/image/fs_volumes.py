# Volumes of every filesystem a fleet has (ext4, FAT32, NTFS, XFS, btrfs), made and filled like a used
# disk: thousands of small files, one large file of zeros, and files written then deleted whose data
# carries a marker string (it stays in the free blocks: an image must not carry it). Shared by the
# round-trip tests and bench/bench_image.py. Everything is mounted inside a private mount namespace.
import hashlib
import os
import shutil
import subprocess
import sys

MiB = 1 << 20
ENV = dict(os.environ, LC_ALL="C")
FILESYSTEMS = ("ext4", "vfat", "ntfs", "xfs", "btrfs")
MKFS = {
    "ext4": ["mkfs.ext4", "-q", "-F"],
    "vfat": ["mkfs.vfat", "-F", "32", "-n", "FLEET"],
    "ntfs": ["mkfs.ntfs", "-q", "-F", "-f"],
    "xfs": ["mkfs.xfs", "-q", "-f"],
    "btrfs": ["mkfs.btrfs", "-q", "-f"],
}
FSCK = {
    "ext4": ["e2fsck", "-fn"],
    "vfat": ["fsck.vfat", "-n"],
    "ntfs": ["ntfsfix", "-n"],
    "xfs": ["xfs_repair", "-n"],
    "btrfs": ["btrfs", "check", "--readonly"],
}
# The smallest sizes the tools accept (XFS refuses below 300 MB); sparse, so they cost little.
MIN_SIZE = {"ext4": 16 * MiB, "vfat": 40 * MiB, "ntfs": 16 * MiB, "xfs": 300 * MiB, "btrfs": 120 * MiB}
PARTCLONE = {"ext4": "partclone.ext4", "vfat": "partclone.fat32", "ntfs": "partclone.ntfs",
             "xfs": "partclone.xfs", "btrfs": "partclone.btrfs"}


def run(*argv, check=True, **kwargs):
    proc = subprocess.run([str(a) for a in argv], capture_output=True, env=ENV, check=False, **kwargs)
    if check and proc.returncode:
        raise AssertionError(f"{argv} failed ({proc.returncode}): {proc.stderr[-2000:]!r} {proc.stdout[-2000:]!r}")
    return proc


def mtools_image(device):
    """mtools' name for a FAT on `device`: a loop device's backing file at its offset (mtools cannot
    ask a loop device for its geometry), else the file itself."""
    name = os.path.basename(device)
    backing = f"/sys/block/{name}/loop/backing_file"
    if not os.path.exists(backing):
        return device
    run("blockdev", "--flushbufs", device)
    with open(backing, encoding="utf-8") as handle:
        path = handle.read().strip()
    with open(f"/sys/block/{name}/loop/offset", encoding="utf-8") as handle:
        offset = int(handle.read())
    return f"{path}@@{offset}" if offset else path


def marker_for(fs):
    return f"FLEETCAST-DELETED-{fs}-9f1c27ab".encode()


def make_tree(root, files=2000, zeros_mib=16, seed=b""):
    """The files to put on a volume: `files` small ones in 40 directories, a large file of zeros."""
    for i in range(files):
        sub = os.path.join(root, f"dir{i % 40}")
        os.makedirs(sub, exist_ok=True)
        block = hashlib.sha256(seed + b"%d" % i).digest()
        size = (i * 7919) % 12000 + 1
        body = (block * (size // 32 + 1))[:size] if i % 3 else os.urandom(size)
        with open(os.path.join(sub, f"file{i}.dat"), "wb") as handle:
            handle.write(body)
    with open(os.path.join(root, "zeros.bin"), "wb") as handle:
        for dummy in range(zeros_mib):
            handle.write(bytes(MiB))
    return root


def deleted_payload(fs, count=6, size=256 << 10, small=8):
    """Bodies of the files written then deleted, named: the marker all through random bytes. Large
    ones (256 KiB), written last, and small ones (12 KiB: not inline or resident anywhere) written
    between the kept files, so that their free blocks end up in small gaps between used ones."""
    marker = marker_for(fs)
    bodies = {}
    for number in range(count + small):
        body = bytearray(os.urandom(size if number < count else 12 << 10))
        for at in range(0, size - len(marker), 4096):
            body[at:at + len(marker)] = marker
        bodies[f"gone{number}.bin" if number < count else f"small{number}.bin"] = bytes(body)
    return bodies


def fill(fs, device, tree, scratch):
    """Make filesystem `fs` on `device` (a block device or file), copy `tree` onto it, then write and
    delete the marker files. Mounting happens in a child inside a private mount namespace."""
    run(*MKFS[fs], device)
    deleted = os.path.join(scratch, f"deleted-{fs}")
    os.makedirs(deleted, exist_ok=True)
    for name, body in deleted_payload(fs).items():
        with open(os.path.join(deleted, name), "wb") as handle:
            handle.write(body)
    if fs == "vfat":
        image = mtools_image(device)
        for group in _order(tree, deleted):
            run("mcopy", "-s", "-i", image, *group, "::/")
        for name in sorted(os.listdir(deleted)):
            run("mdel", "-i", image, f"::/{name}")
        return
    mnt = os.path.join(scratch, f"mnt-{fs}")
    os.makedirs(mnt, exist_ok=True)
    run("unshare", "--mount", "--propagation", "private", sys.executable, os.path.abspath(__file__), "populate", fs,
        device, mnt, tree, deleted)


def _mount(fs, device, mnt, read_only=False):
    """Mount; NTFS through ntfs-3g kept in the foreground so that unmounting can wait for its flush."""
    if fs == "ntfs":
        options = "ro,no_detach" if read_only else "no_detach"
        proc = subprocess.Popen(["ntfs-3g", "-o", options, device, mnt], env=ENV)
        for dummy in range(200):
            if os.path.ismount(mnt):
                return proc
            if proc.poll() is not None:
                raise AssertionError(f"ntfs-3g {device} failed ({proc.returncode})")
            subprocess.run(["sleep", "0.05"], check=False)
        raise AssertionError(f"ntfs-3g {device} did not mount")
    options = ["-o", "ro,norecovery" if fs == "xfs" else "ro"] if read_only else []
    loop = [] if device.startswith("/dev/") else ["-o", "loop"]
    run("mount", *loop, *options, device, mnt)
    return None


def _umount(mnt, proc):
    run("umount", mnt)
    if proc is not None:
        proc.wait(timeout=120)


def _order(tree, deleted):
    """What to copy, in order: half the tree, the small files to delete, the rest, the large ones."""
    names = sorted(os.listdir(tree))
    half = len(names) // 2
    doomed = sorted(os.listdir(deleted))
    return [[os.path.join(tree, name) for name in names[:half]],
            [os.path.join(deleted, name) for name in doomed if name.startswith("small")],
            [os.path.join(tree, name) for name in names[half:]],
            [os.path.join(deleted, name) for name in doomed if name.startswith("gone")]]


def populate(fs, device, mnt, tree, deleted):
    proc = _mount(fs, device, mnt)
    try:
        for group in _order(tree, deleted):
            for source in group:
                name = os.path.basename(source)
                if os.path.isdir(source):
                    shutil.copytree(source, os.path.join(mnt, name))
                else:
                    shutil.copyfile(source, os.path.join(mnt, name))
            os.sync()
        for name in sorted(os.listdir(deleted)):
            os.unlink(os.path.join(mnt, name))
        os.sync()
    finally:
        _umount(mnt, proc)


def dump(fs, device, out, scratch):
    """Copy the whole tree of the filesystem on `device` into `out` (mounted read-only; FAT by mtools)."""
    os.makedirs(out)
    if fs == "vfat":
        run("mcopy", "-s", "-n", "-i", mtools_image(device), "::/*", out)
        return out
    mnt = os.path.join(scratch, f"ro-{fs}-{os.path.basename(out)}")
    os.makedirs(mnt, exist_ok=True)
    run("unshare", "--mount", "--propagation", "private", sys.executable, os.path.abspath(__file__), "dump", fs,
        device, mnt, out)
    return out


def _dump(fs, device, mnt, out):
    proc = _mount(fs, device, mnt, read_only=True)
    try:
        for name in sorted(os.listdir(mnt)):
            if name in ("lost+found", "System Volume Information") or name.startswith("$"):
                continue
            source = os.path.join(mnt, name)
            if os.path.isdir(source):
                shutil.copytree(source, os.path.join(out, name))
            else:
                shutil.copyfile(source, os.path.join(out, name))
    finally:
        _umount(mnt, proc)


if __name__ == "__main__":
    if sys.argv[1] == "populate":
        populate(*sys.argv[2:7])
    elif sys.argv[1] == "dump":
        _dump(*sys.argv[2:6])
