# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Build the imaging environment from Debian packages, cached by the hash of its inputs.

Private to the collection. Two layers, each cached on its own:

1. the root: ``mmdebstrap`` of the packages the collection needs on targets, as a tarball keyed by
   (suite, packages, apt sources). Minutes cold, reused by every later build;
2. the environment: that root with the controller's PUBLIC key, the environment's SSH host keys
   (made on the controller, so their fingerprints are known in advance) and networkd on DHCP,
   packed whole into one initramfs (the root lives in RAM), plus the kernel; optionally the same as a
   hybrid BIOS/UEFI ISO for USB sticks and virtual media. Keyed by the root and everything added.

A rebuild with the same inputs does nothing (``changed`` false); ``plan()`` says what would be built.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .._errors import FleetcastError, ValidationError
from . import keys as boot_keys

BUILDER_VERSION = 2      # of the environment made from a root
ROOT_VERSION = 1         # of the root tarball (mmdebstrap options)

# What modules import or run on a participant (see docs/architecture.md, "Where the engine runs").
ENV_PACKAGES = (
    "linux-image-cloud-amd64", "systemd-sysv", "udev", "kmod", "openssh-server", "iproute2",
    "python3", "python3-yaml", "python3-parted", "python3-zstandard", "python3-numpy",
    "python3-cryptography", "python3-hivex", "e2fsprogs", "dosfstools", "mtools", "ntfs-3g",
    "gdisk", "parted", "fdisk", "efibootmgr", "zstd",
)
DPKG_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*")
# rootfstype=ramfs: the root is unpacked into the kernel's rootfs, which is otherwise a tmpfs capped
# at half the RAM (the ~450 MB root then fails to unpack on a 1 GiB machine with UEFI firmware).
DEFAULT_CMDLINE = "console=tty0 console=ttyS0,115200n8 quiet systemd.show_status=1 net.ifnames=0 rootfstype=ramfs"
ENV_HOSTNAME = "fleetcast-imaging"


class BuildError(FleetcastError):
    """A build step failed."""


def _sha(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode("utf-8")).hexdigest()


def _run(argv: List[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("capture_output", True)
    proc = subprocess.run(argv, check=False, **kwargs)
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace") if isinstance(proc.stderr, bytes) else (proc.stderr or "")
        lines = err.strip().splitlines()
        errors = [line for line in lines if line.startswith(("E:", "W:", "Err:"))]
        tail = " ".join((errors or lines)[-3:])
        raise BuildError(f"{what} failed (exit {proc.returncode}): {tail or 'no message'}.")
    return proc


@dataclass
class RootSpec:
    """The inputs of a cached Debian root tarball."""

    suite: str = "bookworm"
    packages: List[str] = field(default_factory=lambda: list(ENV_PACKAGES))
    sources: str = "/etc/apt/sources.list.d/debian.sources"     # the machine's apt sources
    apt_options: List[str] = field(default_factory=list)          # apt.conf files or lines
    variant: str = "minbase"

    def inputs(self) -> Dict[str, Any]:
        sources_text = ""
        if self.sources and os.path.isfile(self.sources):
            with open(self.sources, encoding="utf-8") as handle:
                sources_text = handle.read()
        return {"builder": ROOT_VERSION, "suite": self.suite, "packages": sorted(set(self.packages)),
                "sources": sources_text or self.sources, "apt_options": list(self.apt_options),
                "variant": self.variant, "excludes": list(DPKG_EXCLUDES)}

    def key(self) -> str:
        return _sha(self.inputs())[:16]


def root_tarball(spec: RootSpec, cache_dir: str, check_mode: bool = False) -> Dict[str, Any]:
    """The cached root tarball for ``spec``: built with mmdebstrap unless it is in the cache."""
    path = os.path.join(cache_dir, "roots", f"{spec.suite}-{spec.key()}.tar")
    result = {"path": path, "key": spec.key(), "cached": os.path.isfile(path), "seconds": 0.0}
    if result["cached"] or check_mode:
        return result
    if not shutil.which("mmdebstrap"):
        raise BuildError("mmdebstrap is not installed (apt: mmdebstrap), so the root cannot be built.")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    argv = ["mmdebstrap", f"--variant={spec.variant}", "--mode=root", "--format=tar"]
    for option in spec.apt_options:
        argv.append(f"--aptopt={option}")
    for pattern in DPKG_EXCLUDES:
        argv.append(f"--dpkgopt=path-exclude={pattern}")
    argv.append("--dpkgopt=path-include=/usr/share/locale/locale.alias")
    argv += ["--include=" + ",".join(sorted(set(spec.packages))), spec.suite, path + ".part"]
    if spec.sources:
        argv.append(spec.sources)
    started = time.monotonic()
    try:
        _run(argv, f"mmdebstrap of {spec.suite} ({len(spec.packages)} packages)")
        os.replace(path + ".part", path)
    finally:
        if os.path.exists(path + ".part"):
            os.unlink(path + ".part")
    with open(path + ".json", "w", encoding="utf-8") as handle:
        json.dump(spec.inputs(), handle, indent=2, sort_keys=True)
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


@dataclass
class EnvSpec:
    """Everything that goes into one imaging environment."""

    root: RootSpec
    authorized_keys: str                  # the controller's PUBLIC key line(s)
    host_keys_dir: str                    # on the controller; made here if absent
    output_dir: str
    cache_dir: str = "/var/cache/fleetcast/boot"
    cmdline: str = DEFAULT_CMDLINE
    iso: bool = False
    host_key_types: List[str] = field(default_factory=lambda: ["ed25519"])


def _env_key(spec: EnvSpec, root_key: str, host_public: Dict[str, str], key_lines: List[str]) -> str:
    return _sha({"builder": BUILDER_VERSION, "root": root_key, "authorized_keys": key_lines,
                 "host_keys": host_public, "cmdline": spec.cmdline, "iso": spec.iso})[:16]


def _manifest_path(spec: EnvSpec) -> str:
    return os.path.join(spec.output_dir, "environment.json")


def plan(spec: EnvSpec) -> Dict[str, Any]:
    """What build() would do, without doing it (check mode): nothing is written."""
    key_lines = boot_keys.check_authorized_keys(spec.authorized_keys, "authorized_keys")
    host_public = {}
    for key_type in spec.host_key_types:
        pub = os.path.join(spec.host_keys_dir, f"ssh_host_{key_type}_key.pub")
        if os.path.isfile(pub):
            with open(pub, encoding="ascii") as handle:
                host_public[key_type] = handle.read().strip()
    root = root_tarball(spec.root, spec.cache_dir, check_mode=True)
    current = _read_manifest(spec)
    env_key = _env_key(spec, root["key"], host_public, key_lines) if len(host_public) == len(spec.host_key_types) else None
    up_to_date = bool(env_key and current and current.get("key") == env_key and _outputs_exist(spec, current))
    actions = []
    if not root["cached"]:
        actions.append(f"build the Debian {spec.root.suite} root with mmdebstrap into {root['path']}")
    if len(host_public) != len(spec.host_key_types):
        actions.append(f"make the environment's SSH host keys in {spec.host_keys_dir}")
    if not up_to_date:
        actions.append(f"pack kernel and initramfs{' and ISO' if spec.iso else ''} into {spec.output_dir}")
    return {"changed": bool(actions), "actions": actions, "root": root, "key": env_key,
            "output_dir": spec.output_dir,
            "authorized_key_fingerprints": [boot_keys.fingerprint(line) for line in key_lines],
            "host_key_fingerprints": {t: boot_keys.fingerprint(line) for t, line in host_public.items()}}


def _read_manifest(spec: EnvSpec) -> Optional[Dict[str, Any]]:
    try:
        with open(_manifest_path(spec), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def _outputs_exist(spec: EnvSpec, manifest: Dict[str, Any]) -> bool:
    return all(os.path.isfile(os.path.join(spec.output_dir, name)) for name in manifest.get("files", {}))


def write_tree_file(tree: str, rel: str, text: str, mode: int = 0o644) -> None:
    """Write `text` at `rel` inside the root `tree` (replacing a file or a symlink there, never
    following one out of the tree), with `mode`."""
    path = os.path.join(tree, rel.lstrip("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.lexists(path):
        os.unlink(path)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, mode)


def _customize(tree: str, spec: EnvSpec, key_lines: List[str]) -> None:
    """Turn the unpacked root into the imaging environment (runs on the controller, no chroot)."""
    def write(rel: str, text: str, mode: int = 0o644) -> None:
        write_tree_file(tree, rel, text, mode)

    # The kernel runs /init from the initramfs: systemd, with the whole root in RAM.
    init = os.path.join(tree, "init")
    if os.path.lexists(init):
        os.unlink(init)
    os.symlink("/lib/systemd/systemd", init)
    write("/etc/hostname", ENV_HOSTNAME + "\n")
    write("/etc/hosts", f"127.0.0.1 localhost\n127.0.1.1 {ENV_HOSTNAME}\n")
    write("/etc/machine-id", "")          # empty: systemd makes a transient one per boot
    write("/etc/fstab", "# the imaging environment runs from RAM\n")
    write("/etc/systemd/network/50-imaging-dhcp.network",
          "[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n\n"
          "[DHCPv4]\nUseHostname=no\n\n"
          # The imaging network has no default route: multicast needs a route of its own.
          "[Route]\nDestination=224.0.0.0/4\nScope=link\n")
    wants = os.path.join(tree, "etc/systemd/system/multi-user.target.wants")
    os.makedirs(wants, exist_ok=True)
    for unit in ("systemd-networkd.service", "ssh.service"):
        link = os.path.join(wants, unit)
        if not os.path.lexists(link):
            os.symlink(f"/lib/systemd/system/{unit}", link)
    # Host keys: only ours (openssh-server's postinst made some in the root: they would be shared
    # by every environment built from this root and unknown to the controller).
    ssh_dir = os.path.join(tree, "etc/ssh")
    for name in os.listdir(ssh_dir):
        if name.startswith("ssh_host_"):
            os.unlink(os.path.join(ssh_dir, name))
    for key_type in spec.host_key_types:
        for suffix, mode in (("", 0o600), (".pub", 0o644)):
            name = f"ssh_host_{key_type}_key{suffix}"
            shutil.copyfile(os.path.join(spec.host_keys_dir, name), os.path.join(ssh_dir, name))
            os.chmod(os.path.join(ssh_dir, name), mode)
    write("/etc/ssh/sshd_config.d/fleetcast.conf",
          "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
          "UseDNS no\n" + "".join(f"HostKey /etc/ssh/ssh_host_{t}_key\n" for t in spec.host_key_types))
    os.makedirs(os.path.join(tree, "root/.ssh"), mode=0o700, exist_ok=True)
    write("/root/.ssh/authorized_keys", "\n".join(key_lines) + "\n", 0o600)
    write("/etc/fleetcast-imaging-environment", "This system runs from RAM; its disks are free for imaging.\n")
    # Nothing in RAM needs these; they only slow the boot down.
    # (Measured on TCG guests, where every unit costs seconds: these are what the console showed
    # waiting for before sshd was up.)
    for unit in ("apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "e2scrub_reap.service",
                 "fstrim.timer", "dpkg-db-backup.timer", "systemd-tmpfiles-clean.timer", "systemd-timesyncd.service",
                 "getty-static.service", "getty@tty1.service", "systemd-binfmt.service",
                 "proc-sys-fs-binfmt_misc.automount", "proc-sys-fs-binfmt_misc.mount", "systemd-update-utmp.service",
                 "systemd-update-utmp-runlevel.service", "ldconfig.service", "systemd-hwdb-update.service",
                 "systemd-journal-catalog-update.service", "systemd-pstore.service", "systemd-random-seed.service",
                 "systemd-networkd-wait-online.service"):
        link = os.path.join(tree, "etc/systemd/system", unit)
        if not os.path.lexists(link):
            os.symlink("/dev/null", link)


def write_cpio(tree: str, out) -> int:
    """Write ``tree`` as a newc cpio archive (the initramfs format) to ``out``; returns the bytes
    written. Hard links become separate files; the kernel unpacks either."""
    written = 0
    inode = 0

    def emit(name: str, st, data: bytes = b"") -> None:
        nonlocal written, inode
        inode += 1
        encoded = name.encode("utf-8", "surrogateescape") + b"\0"
        fields = (inode, st.st_mode if st else 0, st.st_uid if st else 0, st.st_gid if st else 0, 1,
                  int(st.st_mtime) if st else 0, len(data),
                  0, 0, os.major(st.st_rdev) if st else 0, os.minor(st.st_rdev) if st else 0, len(encoded), 0)
        header = b"070701" + b"".join(b"%08X" % (value & 0xFFFFFFFF) for value in fields)
        chunk = header + encoded
        chunk += b"\0" * (-len(chunk) % 4)
        chunk += data + b"\0" * (-len(data) % 4)
        out.write(chunk)
        written += len(chunk)

    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, tree)
        for name in sorted(dirnames) + sorted(filenames):
            path = os.path.join(dirpath, name)
            rel = name if rel_dir == "." else os.path.join(rel_dir, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                emit(rel, st, os.readlink(path).encode("utf-8", "surrogateescape"))
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as handle:
                    emit(rel, st, handle.read())
            else:                       # directories, devices, fifos, sockets: no data
                emit(rel, st)
        # os.walk does not descend into symlinked directories: they were written as links above.
    emit("TRAILER!!!", None)
    return written


def _pack(tree: str, out_dir: str, spec: EnvSpec) -> Dict[str, str]:
    boot = os.path.join(tree, "boot")
    kernels = sorted(name for name in os.listdir(boot) if name.startswith("vmlinuz-"))
    if not kernels:
        raise BuildError("The root holds no kernel (/boot/vmlinuz-*): add linux-image-cloud-amd64 to the packages.")
    files = {}
    shutil.copyfile(os.path.join(boot, kernels[-1]), os.path.join(out_dir, "vmlinuz"))
    files["vmlinuz"] = kernels[-1]
    for name in os.listdir(boot):          # the kernel is served apart; no need to carry it twice
        if name.startswith(("vmlinuz-", "initrd.img-")):
            os.unlink(os.path.join(boot, name))
    initrd = os.path.join(out_dir, "initrd.img")
    with open(initrd + ".part", "wb") as out:
        zstd = subprocess.Popen(["zstd", "-q", "-T0", "-6", "-c"], stdin=subprocess.PIPE, stdout=out)
        try:
            write_cpio(tree, zstd.stdin)
        finally:
            zstd.stdin.close()
        code = zstd.wait()
    if code:
        os.unlink(initrd + ".part")
        raise BuildError(f"Compressing the initramfs with zstd failed (exit {code}).")
    os.replace(initrd + ".part", initrd)
    files["initrd.img"] = "root as a zstd cpio"
    if spec.iso:
        files["fleetcast-imaging.iso"] = "hybrid BIOS/UEFI ISO"
        _iso(out_dir, spec)
    return files


def _iso(out_dir: str, spec: EnvSpec) -> None:
    """The same environment as a hybrid ISO (CD, USB stick with dd, BMC virtual media)."""
    if not shutil.which("grub-mkrescue"):
        raise BuildError("grub-mkrescue is not installed (apt: grub-common, grub-pc-bin, "
                         "grub-efi-amd64-bin, xorriso, mtools), so no ISO can be made.")
    with tempfile.TemporaryDirectory(prefix="fleetcast-iso-") as stage:
        os.makedirs(os.path.join(stage, "boot/grub"))
        for name in ("vmlinuz", "initrd.img"):
            os.link(os.path.join(out_dir, name), os.path.join(stage, name))
        with open(os.path.join(stage, "boot/grub/grub.cfg"), "w", encoding="utf-8") as handle:
            handle.write("set timeout=3\nserial --unit=0 --speed=115200\nterminal_input console serial\n"
                         "terminal_output console serial\n"
                         "menuentry 'fleetcast imaging environment' {\n"
                         f"  linux /vmlinuz {spec.cmdline}\n  initrd /initrd.img\n}}\n")
        iso = os.path.join(out_dir, "fleetcast-imaging.iso")
        _run(["grub-mkrescue", "-o", iso + ".part", stage, "--", "-volid", "FLEETCAST"], "grub-mkrescue")
        os.replace(iso + ".part", iso)


def build(spec: EnvSpec) -> Dict[str, Any]:
    """Build (or find up to date) the imaging environment; returns what was built and where."""
    key_lines = boot_keys.check_authorized_keys(spec.authorized_keys, "authorized_keys")
    host_public, keys_changed = boot_keys.ensure_host_keys(spec.host_keys_dir, spec.host_key_types)
    root = root_tarball(spec.root, spec.cache_dir)
    env_key = _env_key(spec, root["key"], host_public, key_lines)
    current = _read_manifest(spec)
    result = {"changed": keys_changed, "root": root, "key": env_key, "output_dir": spec.output_dir,
              "host_keys": host_public,
              "host_key_fingerprints": {t: boot_keys.fingerprint(line) for t, line in host_public.items()},
              "authorized_key_fingerprints": [boot_keys.fingerprint(line) for line in key_lines]}
    if current and current.get("key") == env_key and _outputs_exist(spec, current):
        result.update(files=current["files"], sizes=current["sizes"], seconds=0.0, cached=True)
        return result
    started = time.monotonic()
    os.makedirs(spec.output_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fleetcast-env-", dir=spec.cache_dir) as tree:
        _run(["tar", "-x", "-p", "--numeric-owner", "-f", root["path"], "-C", tree], f"unpacking {root['path']}")
        _customize(tree, spec, key_lines)
        found = boot_keys.private_keys_in_tree(tree)
        allowed = {f"etc/ssh/ssh_host_{t}_key" for t in spec.host_key_types}
        stray = [path for path in found if path not in allowed]
        if stray:
            raise BuildError(f"The environment would hold private keys besides its own host keys: "
                             f"{', '.join(stray[:5])}; refusing to pack it.")
        files = _pack(tree, spec.output_dir, spec)
    sizes = {name: os.path.getsize(os.path.join(spec.output_dir, name)) for name in files}
    manifest = {"key": env_key, "root": root["key"], "files": files, "sizes": sizes, "cmdline": spec.cmdline,
                "host_key_fingerprints": result["host_key_fingerprints"],
                "authorized_key_fingerprints": result["authorized_key_fingerprints"]}
    with open(_manifest_path(spec), "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2, sort_keys=True)
    result.update(changed=True, files=files, sizes=sizes, cached=False,
                  seconds=round(time.monotonic() - started + root["seconds"], 1))
    return result


def ensure_spec(params: Dict[str, Any]) -> EnvSpec:
    """An EnvSpec from module parameters, with the sentences a user sees for bad input."""
    if not params.get("authorized_keys"):
        raise ValidationError("authorized_keys is empty: give the controller's public key so that it can log in.")
    root = RootSpec(suite=params.get("suite") or "bookworm",
                    packages=list(ENV_PACKAGES) + list(params.get("extra_packages") or []),
                    sources=params.get("apt_sources") or "",
                    apt_options=list(params.get("apt_options") or []))
    return EnvSpec(root=root, authorized_keys=params["authorized_keys"], host_keys_dir=params["host_keys_dir"],
                   output_dir=params["output_dir"], cache_dir=params.get("cache_dir") or "/var/cache/fleetcast/boot",
                   cmdline=params.get("cmdline") or DEFAULT_CMDLINE, iso=bool(params.get("iso")))
