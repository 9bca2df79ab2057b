# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A realistic master disk: the cached Debian root (``debian_root``) laid out as a machine has it.
Private to the collection: not a public API.

GPT with an EFI system partition (vfat, holding the root's real kernel and initrd where a boot
loader would look for them) and an ext4 root made from the Debian tree, plus, for the lab, the
identity files of one lab machine. Its image has what a real one has: ~10,000 files, chunks that
compress from a few percent (text, zeros) to nothing (kernel, modules, initrd), so chunk sizes
vary from a few KiB to the full chunk size. It is not made bootable here (no boot loader is
installed); the VM fleet does that on top of the same root.

``ensure_image()`` keeps one generic master disk and its image in the cache beside the root tarball
(``<cache>/debian-root/master-<key>.raw`` and ``.fcimg``), for the tests and the benchmark.
``python -m ...module_utils._lab.debian_disk --build`` builds the root and this master ahead of
time, ``--clear`` empties the cache of both.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import List, Optional

from . import debian_root, loopdisk
from .disk_tools import MiB, make_ext4, partition_bounds, run, sgdisk
from .machine import LabMachine, identity_tree

ESP_MIB = 64
FORMAT = 1                 # bump when the disk's shape changes: the cache key includes it


def _copy_boot_files(tree: str, window: str) -> None:
    """The root's kernel and initrd into the ESP, where systemd-boot or an EFI stub loader finds
    them (real, incompressible bytes: what an ESP holds)."""
    boot = os.path.join(tree, "boot")
    kernels = sorted(name for name in os.listdir(boot) if name.startswith("vmlinuz-"))
    run(["mmd", "-i", window, "::/EFI", "::/EFI/BOOT", "::/EFI/debian"], device=window)
    for kernel in kernels:
        version = kernel[len("vmlinuz-"):]
        run(["mcopy", "-i", window, os.path.join(boot, kernel), "::/EFI/debian/vmlinuz-" + version], device=window)
        initrd = os.path.join(boot, "initrd.img-" + version)
        if os.path.exists(initrd):
            run(["mcopy", "-i", window, initrd, "::/EFI/debian/initrd.img-" + version], device=window)
    if kernels:   # Debian kernels are EFI stubs: the removable-media path holds one
        run(["mcopy", "-i", window, os.path.join(boot, kernels[-1]), "::/EFI/BOOT/BOOTX64.EFI"], device=window)


def write_master(path: str, machine: Optional[LabMachine] = None, subnet: str = "10.231.7",
                 min_size: int = 0, tarball: Optional[str] = None) -> int:
    """Create `path` as a Debian master disk; return its size. `machine` adds that lab host's
    identity (hostname, machine-id, hosts, SSH host keys, netplan); without it a generic one."""
    tarball = tarball or debian_root.ensure_root().path
    machine = machine or LabMachine(name="master", role="master", netns="", address=f"{subnet}.12",
                                    mac="02:fc:00:00:00:12", hostname="master.lab.fleetcast.test",
                                    machine_id=uuid.uuid4().hex)
    with tempfile.TemporaryDirectory(prefix="fleetcast-debian-", dir="/var/tmp") as scratch:
        tree = os.path.join(scratch, "root")
        debian_root.extract(tarball, tree)
        identity_tree(tree, machine, subnet, machine.hostname or f"{machine.name}.lab.fleetcast.test")
        with open(os.path.join(tree, "etc/fstab"), "w", encoding="utf-8") as handle:
            handle.write("LABEL=root / ext4 defaults 0 1\nLABEL=EFI /boot/efi vfat umask=0077 0 1\n")
        os.makedirs(os.path.join(tree, "etc/network/interfaces.d"), exist_ok=True)
        with open(os.path.join(tree, "etc/network/interfaces.d/lab0"), "w", encoding="utf-8") as handle:
            handle.write(f"auto lab0\niface lab0 inet static\n    address {machine.address}/24\n")
        os.makedirs(os.path.join(tree, "boot/efi"), exist_ok=True)
        # ext4 needs room beyond the files (metadata, journal, reserved blocks): a quarter more,
        # plus 64 MiB; rounded to whole MiB.
        root_bytes = (debian_root.tree_bytes(tree) * 5 // 4 + 64 * MiB + MiB - 1) // MiB * MiB
        size = max(min_size, (1 + ESP_MIB) * MiB + root_bytes + MiB)
        with open(path, "wb") as handle:
            handle.truncate(size)
        sgdisk(path, "-o", "-n", f"1:2048:+{ESP_MIB}M", "-t", "1:ef00", "-c", "1:EFI system",
               "-n", "2:0:0", "-t", "2:8304", "-c", "2:root")
        efi_offset, efi_size = partition_bounds(path, 1)
        root_offset, root_size = partition_bounds(path, 2)
        window = loopdisk.attach(path, offset=efi_offset, sizelimit=efi_size)
        try:
            run(["mkfs.vfat", "-F", "32", "-n", "EFI", window], device=window)
            _copy_boot_files(tree, window)
        finally:
            loopdisk.detach(window)
        make_ext4(path, root_offset, root_size, tree, "root")
    return size


@dataclass
class CachedImage:
    raw: str              # the master disk (a sparse file): what every clone must equal
    image: str            # its image (capture_to_file defaults: 4 MiB chunks, zstd level 4)
    image_id: str
    chunks: int
    stored_bytes: int
    size: int
    built: bool
    seconds: float


def ensure_image(cache: Optional[str] = None) -> CachedImage:
    """The generic Debian master disk and its image, from the cache or built (root included)."""
    from .._image.capture import capture_to_file
    from .._image.format import ImageReader

    root = debian_root.ensure_root(cache=cache)
    directory = debian_root.cache_dir(cache)
    stem = os.path.join(directory, f"master-{root.key}-{FORMAT}")
    raw, image, meta = stem + ".raw", stem + ".fcimg", stem + ".json"
    with open(os.path.join(directory, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(meta):
            with open(meta, encoding="utf-8") as handle:
                return CachedImage(raw, image, built=False, seconds=0.0, **json.load(handle))
        started = time.monotonic()
        try:
            size = write_master(raw + ".partial", tarball=root.path)
            os.replace(raw + ".partial", raw)
            manifest = capture_to_file([raw], image)
            with ImageReader(image) as reader:
                stored = reader.manifest.stored_bytes
            facts = {"image_id": manifest.image_id, "chunks": manifest.chunk_count, "stored_bytes": stored,
                     "size": size}
            with open(meta + ".partial", "w", encoding="utf-8") as handle:
                json.dump(facts, handle)
            os.replace(meta + ".partial", meta)
        except BaseException:
            for leftover in (raw + ".partial", raw, image, meta + ".partial"):
                if os.path.exists(leftover):
                    os.unlink(leftover)
            raise
        return CachedImage(raw, image, built=True, seconds=time.monotonic() - started, **facts)


def clear(cache: Optional[str] = None) -> None:
    directory = debian_root.cache_dir(cache)
    for name in os.listdir(directory) if os.path.isdir(directory) else []:
        if name.startswith("master-"):
            path = os.path.join(directory, name)
            (shutil.rmtree if os.path.isdir(path) else os.unlink)(path)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Build or clear the cached Debian root of the fleetcast lab "
                                                 "(and the master disk and image made from it).")
    parser.add_argument("--build", action="store_true", help="build the root and the master image unless cached")
    parser.add_argument("--clear", action="store_true", help="remove every cached root, master disk and image")
    default = "$%s or %s" % (debian_root.CACHE_ENV, debian_root.DEFAULT_CACHE)
    parser.add_argument("--cache", help="cache directory (default %s)" % default)
    args = parser.parse_args(argv)
    if args.clear:
        clear(args.cache)
        for path in debian_root.clear(args.cache):
            sys.stdout.write("removed %s\n" % path)
    if args.build or not args.clear:
        root = debian_root.ensure_root(cache=args.cache)
        image = ensure_image(args.cache)
        facts = {"root": root.path, "key": root.key, "root_built": root.built,
                 "root_seconds": round(root.seconds, 1), "root_bytes": os.path.getsize(root.path),
                 "master": image.raw, "image": image.image, "image_id": image.image_id,
                 "chunks": image.chunks, "stored_bytes": image.stored_bytes, "disk_bytes": image.size,
                 "image_built": image.built, "image_seconds": round(image.seconds, 1)}
        sys.stdout.write(json.dumps(facts) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
