# Helpers: a master disk like a real workstation's (GPT: EFI vfat, BIOS boot, ext4 root with thousands of
# files) and dirty targets to restore onto. All on loop devices the tests make.
import hashlib
import json
import os
import subprocess
import sys

MiB = 1 << 20
SECTOR = 512
ENV = dict(os.environ, LC_ALL="C")
# (number, first sector, last sector, type code, name)
MASTER_PARTS = [
    (1, 2048, 2048 + 32 * 2048 - 1, "ef00", "EFI system"),
    (2, 67584, 67584 + 2048 - 1, "ef02", "BIOS boot"),
    (3, 69632, 0, "8300", "root"),
]
MASTER_SIZE = 224 * MiB


def run(*argv, check=True):
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=ENV, check=False)
    if check and proc.returncode:
        raise AssertionError(f"{argv} failed ({proc.returncode}): {proc.stderr or proc.stdout}")
    return proc


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def ansible(module, args, check=False):
    """Run one of the collection's modules on localhost: (the status line, the result dict)."""
    argv = [os.path.join(ROOT, ".venv", "bin", "ansible"), "localhost", "-m", f"fleetcast.imaging.{module}",
            "-a", json.dumps(args)] + (["--check", "--diff"] if check else [])
    env = dict(ENV, LC_ALL="C.UTF-8", ANSIBLE_STDOUT_CALLBACK="minimal", ANSIBLE_CALLBACK_RESULT_FORMAT="json",
               ANSIBLE_CONFIG=os.path.join(ROOT, "tests", "ansible.cfg"),
               ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".build", "collections"))
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False, cwd=ROOT)
    head, dummy, body = proc.stdout.partition(" => ")
    assert body, proc.stdout + proc.stderr
    return head, json.loads(body)


def part_range(number, disk_size=MASTER_SIZE):
    """(offset, size) in bytes of a master partition; the last one ends before the backup GPT."""
    first, last = MASTER_PARTS[number - 1][1:3]
    last = last or disk_size // SECTOR - 34
    return first * SECTOR, (last - first + 1) * SECTOR


def fat_path(disk, number=1):
    """mtools' name for the FAT in partition `number`: the backing file at the partition's offset
    (mtools cannot ask a loop device for its geometry)."""
    run("blockdev", "--flushbufs", disk.device)
    return f"{disk.path}@@{part_range(number)[0]}"


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(4 * MiB), b""):
            digest.update(block)
    return digest.hexdigest()


def make_master(disk, tree):
    run("sgdisk", "-Z", disk.device)
    args = []
    for number, first, last, code, name in MASTER_PARTS:
        args += [f"-n{number}:{first}:{last or 0}", f"-t{number}:{code}", f"-c{number}:{name}"]
    run("sgdisk", *args, disk.device)
    efi = disk.window(*part_range(1))
    run("mkfs.vfat", "-I", "-n", "EFI", efi)
    os.makedirs(tree / "efi" / "EFI" / "debian")
    (tree / "efi" / "EFI" / "debian" / "grubx64.efi").write_bytes(os.urandom(700 * 1024))
    (tree / "efi" / "EFI" / "debian" / "grub.cfg").write_text("search --fs-uuid\n")
    run("blockdev", "--flushbufs", efi)
    run("mcopy", "-s", "-i", fat_path(disk), tree / "efi" / "EFI", "::/")
    with open(disk.device, "r+b") as handle:     # the BIOS boot partition holds GRUB's core image
        handle.seek(part_range(2)[0])
        handle.write(os.urandom(MiB))
        handle.seek(0)
        handle.write(os.urandom(440))            # boot code
        handle.seek(40 * SECTOR)
        handle.write(os.urandom(8 * SECTOR))     # something in the gap before the first partition
    root = disk.window(*part_range(3))
    run("mkfs.ext4", "-q", "-L", "root", root)
    mnt = tree / "mnt"
    mnt.mkdir()
    # Mounted in a private mount namespace: a namespace another process creates meanwhile (any
    # `ip netns exec` on this shared machine) would otherwise keep a copy of the mount alive
    # after our umount, and the filesystem would never be flushed to the disk.
    run("unshare", "--mount", "--propagation", "private", sys.executable, __file__, "populate", root, mnt)
    run("blockdev", "--flushbufs", disk.device)


def populate_root(device, mnt):
    """Mount `device`, write thousands of files, 64 MiB of zeros and a deleted file, unmount."""
    run("mount", device, mnt)
    try:
        for i in range(3000):
            sub = os.path.join(mnt, "usr", f"d{i % 40}")
            os.makedirs(sub, exist_ok=True)
            with open(os.path.join(sub, f"file{i}"), "wb") as handle:
                handle.write(os.urandom(i % 5000 + 1) if i % 3 else b"config %d\n" % i * (i % 50))
        os.symlink("usr/d1/file1", os.path.join(mnt, "link"))
        run("dd", "if=/dev/zero", f"of={mnt}/zeros.bin", "bs=1M", "count=64", "conv=fsync")
        # A deleted file leaves free blocks with old bytes: they must not be needed on the target.
        run("dd", "if=/dev/urandom", f"of={mnt}/deleted.bin", "bs=1M", "count=8", "conv=fsync")
        os.unlink(os.path.join(mnt, "deleted.bin"))
    finally:
        run("umount", mnt)


def extract_ext(device, out):
    """The whole tree of an ext filesystem, read with debugfs (no mount, nothing to leak)."""
    os.makedirs(out)
    run("debugfs", "-R", f"rdump / {out}", device)
    return out


def make_dirty(disk, stride=MiB):
    """A used disk: random bytes (in every `stride`-th MiB), another table, a filesystem where ours will go."""
    with open(disk.device, "r+b") as handle:
        for offset in range(0, disk.size, stride):
            handle.seek(offset)
            handle.write(os.urandom(MiB))
    run("sgdisk", "-Z", disk.device)
    run("sgdisk", "-n1:2048:+50M", "-n2:0:+20M", "-n3:0:0", disk.device)
    run("mkfs.ext2", "-q", "-F", disk.window(2048 * SECTOR + 50 * MiB, 20 * MiB))


if __name__ == "__main__":
    if sys.argv[1:2] == ["populate"]:
        populate_root(sys.argv[2], sys.argv[3])
