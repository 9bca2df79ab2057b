# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bootable Debian disks for the VM fleet of ``make e2e``, on raw files. Private to the collection.

One GPT layout boots with BIOS and with UEFI: a 1 MiB BIOS boot partition holds GRUB's core image,
a 32 MiB EFI system partition holds GRUB as \\EFI\\BOOT\\BOOTX64.EFI (the removable path, so a
first boot needs no NVRAM entry) and \\EFI\\debian\\grubx64.efi, and an ext4 root holds Debian with
the host's own identity: hostname, machine-id, SSH host keys, a systemd-networkd file with a static
address or DHCP, bound to its MAC.

No mount and no chroot: the root is unpacked from a cached mmdebstrap tarball, edited as files,
and written with ``mkfs.ext4 -d`` at the partition's offset; the ESP is made with mkfs.vfat and
mtools; GRUB is made with grub-mkimage (modules embedded, early config searching the root by UUID)
and set up for BIOS with grub-bios-setup on a loop device of the whole disk.
Finished disks are cached under the cache directory, keyed by every input.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import tempfile
import uuid
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

from .._boot.build import write_tree_file


MiB = 1024 * 1024
SECTOR = 512
BIOS_START, BIOS_SECTORS = 2048, 2048
ESP_START, ESP_SECTORS = 4096, 65536
ROOT_START = ESP_START + ESP_SECTORS
GUID_BIOS = "21686148-6E69-6F6E-744E-656564454649"
GUID_ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
GUID_LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
DISK_PACKAGES = ("linux-image-cloud-amd64", "systemd-sysv", "udev", "kmod", "openssh-server", "iproute2",
                 "grub-pc-bin", "grub-efi-amd64-bin", "grub2-common", "e2fsprogs")
GRUB_MODULES = ("part_gpt", "part_msdos", "ext2", "search", "search_fs_uuid", "normal", "linux",
                "configfile", "echo", "test", "boot", "serial", "terminal", "gzio", "sleep")
BUILDER_VERSION = 2


@dataclass
class DiskHost:
    """What makes one disk a particular machine."""

    hostname: str
    mac: str
    address: Optional[str] = None         # CIDR, e.g. 10.231.7.21/24; None: DHCP
    marker: str = ""                      # a line written to /etc/fleetcast-e2e-marker (what the disk is)


def _run(argv: List[str], **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("capture_output", True)
    proc = subprocess.run(argv, check=False, **kwargs)
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace") if isinstance(proc.stderr, bytes) else str(proc.stderr)
        raise RuntimeError(f"{argv[0]} failed (exit {proc.returncode}): {err.strip()[-400:]}")
    return proc


def _link(tree: str, rel: str, target: str) -> None:
    path = os.path.join(tree, rel.lstrip("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.lexists(path):
        os.unlink(path)
    os.symlink(target, path)


def network_file(host: DiskHost) -> str:
    """The host's systemd-networkd file: its MAC, and a static address or DHCP."""
    lines = ["[Match]", f"MACAddress={host.mac}", "", "[Network]"]
    if host.address:
        lines.append(f"Address={host.address}")
    else:
        lines.append("DHCP=ipv4")
    lines += ["LinkLocalAddressing=no", "IPv6AcceptRA=no", ""]
    return "\n".join(lines)


def _customize(tree: str, host: DiskHost, root_uuid: str, authorized_keys: str, cmdline: str) -> None:
    write_tree_file(tree, "/etc/hostname", host.hostname + "\n")
    write_tree_file(tree, "/etc/hosts", f"127.0.0.1 localhost\n127.0.1.1 {host.hostname}\n")
    write_tree_file(tree, "/etc/machine-id", secrets.token_hex(16) + "\n", 0o444)
    write_tree_file(tree, "/etc/fstab", f"UUID={root_uuid} / ext4 errors=remount-ro 0 1\n")
    write_tree_file(tree, "/etc/systemd/network/10-lan.network", network_file(host))
    write_tree_file(tree, "/etc/fleetcast-e2e-marker", (host.marker or host.hostname) + "\n")
    _link(tree, "/etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
          "/lib/systemd/system/systemd-networkd.service")
    # What TCG guests were seen waiting for at boot (seconds each under emulation); none matters here.
    for unit in ("systemd-networkd-wait-online.service", "apt-daily.timer", "apt-daily-upgrade.timer",
                 "e2scrub_all.timer", "e2scrub_reap.service", "fstrim.timer", "systemd-timesyncd.service",
                 "dpkg-db-backup.timer", "systemd-binfmt.service", "proc-sys-fs-binfmt_misc.automount",
                 "systemd-update-utmp.service", "systemd-update-utmp-runlevel.service", "ldconfig.service",
                 "systemd-hwdb-update.service", "systemd-journal-catalog-update.service", "getty@tty1.service"):
        _link(tree, f"/etc/systemd/system/{unit}", "/dev/null")
    ssh_dir = os.path.join(tree, "etc/ssh")
    for name in os.listdir(ssh_dir):
        if name.startswith("ssh_host_"):
            os.unlink(os.path.join(ssh_dir, name))
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{host.hostname}",
          "-f", os.path.join(ssh_dir, "ssh_host_ed25519_key")])
    os.makedirs(os.path.join(tree, "root/.ssh"), mode=0o700, exist_ok=True)
    write_tree_file(tree, "/root/.ssh/authorized_keys", authorized_keys.strip() + "\n", 0o600)
    boot = os.path.join(tree, "boot")
    kernel = sorted(name for name in os.listdir(boot) if name.startswith("vmlinuz-"))[-1]
    initrd = "initrd.img-" + kernel[len("vmlinuz-"):]
    write_tree_file(tree, "/boot/grub/grub.cfg", "\n".join([
        "serial --unit=0 --speed=115200", "terminal_input serial console", "terminal_output serial console",
        "set timeout=0",
        f"search --no-floppy --fs-uuid --set=root {root_uuid}",
        f"linux /boot/{kernel} root=UUID={root_uuid} ro {cmdline}",
        f"initrd /boot/{initrd}", "boot", ""]))


def _grub_images(work: str, root_uuid: str) -> Dict[str, str]:
    early = os.path.join(work, "early.cfg")
    with open(early, "w", encoding="utf-8") as handle:
        handle.write(f"search --no-floppy --fs-uuid --set=root {root_uuid}\n"
                     "set prefix=($root)/boot/grub\nconfigfile ($root)/boot/grub/grub.cfg\n")
    images = {}
    for fmt, name, extra in (("i386-pc", "core.img", ["biosdisk"]), ("x86_64-efi", "BOOTX64.EFI", [])):
        out = os.path.join(work, name)
        _run(["grub-mkimage", "-O", fmt, "-o", out, "-c", early, "-p", "/boot/grub"] + extra + list(GRUB_MODULES))
        images[fmt] = out
    return images


def _bios_setup(disk: str, core_path: str) -> None:
    """What grub-bios-setup does (it ships only with grub-pc, which would manage this machine's own
    boot loader): boot.img's code into the MBR, pointing at core.img written into the BIOS boot
    partition, whose first sector (diskboot) lists where the rest of core.img lies."""
    with open("/usr/lib/grub/i386-pc/boot.img", "rb") as handle:
        boot = bytearray(handle.read())
    with open(core_path, "rb") as handle:
        core = bytearray(handle.read())
    sectors = (len(core) + SECTOR - 1) // SECTOR
    if len(boot) != SECTOR or sectors > BIOS_SECTORS:
        raise RuntimeError(f"GRUB's core image ({len(core)} bytes) does not fit the BIOS boot partition.")
    boot[0x5C:0x64] = BIOS_START.to_bytes(8, "little")            # GRUB_BOOT_MACHINE_KERNEL_SECTOR
    core[0x1F4:0x1FC] = (BIOS_START + 1).to_bytes(8, "little")    # diskboot blocklist: start
    core[0x1FC:0x1FE] = (sectors - 1).to_bytes(2, "little")       # ... length in sectors
    core[0x1FE:0x200] = (0x820).to_bytes(2, "little")             # ... load segment
    with open(disk, "r+b") as handle:
        mbr = bytearray(handle.read(SECTOR))
        mbr[0:0x1B8] = boot[0:0x1B8]          # code only: keep disk signature and protective MBR
        handle.seek(0)
        handle.write(mbr)
        handle.seek(BIOS_START * SECTOR)
        handle.write(core)


def build(tarball: str, out_path: str, host: DiskHost, authorized_keys: str, size: int = 1536 * MiB,
          cmdline: str = "console=ttyS0,115200n8 console=tty0", work_dir: Optional[str] = None) -> Dict[str, str]:
    """Write a bootable disk for ``host`` to ``out_path`` (a raw file); returns its UUIDs."""
    root_uuid = str(uuid.uuid4())
    total_sectors = size // SECTOR
    root_sectors = total_sectors - ROOT_START - 34
    root_sectors -= root_sectors % 8
    with tempfile.TemporaryDirectory(prefix="fleetcast-disk-", dir=work_dir) as work:
        tree = os.path.join(work, "root")
        os.makedirs(tree)
        _run(["tar", "-x", "-p", "--numeric-owner", "-f", tarball, "-C", tree])
        _customize(tree, host, root_uuid, authorized_keys, cmdline)
        with open(out_path, "wb") as handle:
            handle.truncate(size)
        table = "\n".join([
            "label: gpt",
            f"start={BIOS_START}, size={BIOS_SECTORS}, type={GUID_BIOS}, name=bios",
            f"start={ESP_START}, size={ESP_SECTORS}, type={GUID_ESP}, name=esp",
            f"start={ROOT_START}, size={root_sectors}, type={GUID_LINUX}, name=root", ""])
        _run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", out_path], input=table.encode())
        _run(["mkfs.ext4", "-q", "-F", "-U", root_uuid, "-L", "root", "-d", tree,
              "-E", f"offset={ROOT_START * SECTOR}", out_path, f"{root_sectors * SECTOR // 1024}k"])
        images = _grub_images(work, root_uuid)
        esp = os.path.join(work, "esp.img")
        _run(["mkfs.vfat", "-F", "16", "-n", "ESP", "-C", esp, str(ESP_SECTORS * SECTOR // 1024)])
        env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
        _run(["mmd", "-i", esp, "::/EFI", "::/EFI/BOOT", "::/EFI/debian"], env=env)
        _run(["mcopy", "-i", esp, images["x86_64-efi"], "::/EFI/BOOT/BOOTX64.EFI"], env=env)
        _run(["mcopy", "-i", esp, images["x86_64-efi"], "::/EFI/debian/grubx64.efi"], env=env)
        _run(["dd", f"if={esp}", f"of={out_path}", f"bs={SECTOR}", f"seek={ESP_START}", "conv=notrunc,sparse",
              "status=none"])
        _bios_setup(out_path, images["i386-pc"])
    return {"root_uuid": root_uuid}


def cache_key(tarball: str, host: DiskHost, authorized_keys: str, size: int) -> str:
    stat = os.stat(tarball)
    return hashlib.sha256(json.dumps({"v": BUILDER_VERSION, "tar": [tarball, stat.st_size, stat.st_mtime_ns],
                                      "host": asdict(host), "keys": authorized_keys.strip(), "size": size},
                                     sort_keys=True).encode()).hexdigest()[:16]


def cached_disk(tarball: str, cache_dir: str, host: DiskHost, authorized_keys: str, dest: str,
                size: int = 1536 * MiB) -> Dict[str, object]:
    """Copy the cached disk for ``host`` to ``dest`` (sparse), building it first when absent."""
    key = cache_key(tarball, host, authorized_keys, size)
    path = os.path.join(cache_dir, f"{host.hostname}-{key}.raw")
    built = False
    if not os.path.isfile(path):
        os.makedirs(cache_dir, exist_ok=True)
        info = build(tarball, path + ".part", host, authorized_keys, size, work_dir=cache_dir)
        with open(path + ".json", "w", encoding="utf-8") as handle:
            json.dump(dict(info, host=asdict(host)), handle)
        os.replace(path + ".part", path)
        built = True
    _run(["cp", "--sparse=always", path, dest])
    return {"path": dest, "cached": not built, "key": key}
