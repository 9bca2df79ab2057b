# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A real Debian root filesystem with a kernel, built once and cached. Private to the collection.

The lab's toy master (a few MiB of random bytes) never exercised what a real operating system
brings: thousands of files, a kernel and its modules, chunks that compress from 2 % to 100 % of
their size. This builds a Debian bookworm root with ``mmdebstrap`` from the machine's own apt
sources and keeps it as a tarball in a cache outside any clone, keyed by everything that decides its
content (suite, variant, architecture, package list, apt sources), so the tests, the demo, the
benchmark and CI on the same machine build it once. A fresh machine builds it on first use (a few
minutes, most of it downloading); ``python -m ...module_utils._lab.debian_disk --build`` does it
ahead of time (with the master disk made of it) and ``--clear`` empties the cache.

API (also used by the VM fleet, which makes a bootable disk of it)::

    ensure_root(packages=DEFAULT_PACKAGES, cache_dir=None) -> RootTarball   # .path, .key, .packages
    extract(tarball_path, directory)                                       # as root, owners kept
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence

from .._errors import FleetcastError

SUITE = "bookworm"
VARIANT = "minbase"
# What a small real server has: a kernel (the cloud flavour: the same image, fewer hardware
# modules, so ~450 MB instead of ~900 MB unpacked), an init system, SSH, and two of the network
# configuration formats identity handling reads and writes.
DEFAULT_PACKAGES = (
    "linux-image-cloud-amd64", "initramfs-tools", "systemd-sysv", "udev", "dbus", "kmod",
    "openssh-server", "ifupdown", "iproute2", "netbase", "isc-dhcp-client", "e2fsprogs",
    "dosfstools", "less", "procps", "ca-certificates",
)
CACHE_ENV = "FLEETCAST_CACHE"
DEFAULT_CACHE = "/var/cache/fleetcast"


class DebianRootError(FleetcastError):
    """The Debian root could not be built (mmdebstrap failed or is missing)."""


@dataclass
class RootTarball:
    path: str             # the cached tarball (.tar.zst)
    key: str              # hex digest of what decides its content
    packages: List[str]
    built: bool           # True if this call built it, False if it came from the cache
    seconds: float        # build time (0 when cached)


def cache_dir(override: Optional[str] = None) -> str:
    return os.path.join(override or os.environ.get(CACHE_ENV) or DEFAULT_CACHE, "debian-root")


def _sources() -> str:
    """The machine's apt sources (both styles), which decide the mirror and the snapshot."""
    texts = []
    for path in sorted(glob.glob("/etc/apt/sources.list") + glob.glob("/etc/apt/sources.list.d/*.sources")
                       + glob.glob("/etc/apt/sources.list.d/*.list")):
        with open(path, encoding="utf-8", errors="replace") as handle:
            texts.append("# " + path + "\n" + handle.read())
    return "\n".join(texts)


def _debian_sources() -> str:
    """Only the Debian entries of the machine's sources, as deb822 (third-party repositories such
    as a cloud SDK's are not wanted inside the image)."""
    stanzas = []
    for stanza in _sources().split("\n\n"):
        lines = [line for line in stanza.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        fields = dict(line.split(":", 1) for line in lines if ":" in line and not line.startswith(" "))
        uris = fields.get("URIs", "")
        if "debian" in uris and "Types" in fields:
            stanzas.append("\n".join(lines))
    if not stanzas:
        # No deb822 Debian entry (a one-line sources.list, or another layout): the public mirror.
        stanzas.append("Types: deb\nURIs: http://deb.debian.org/debian\nSuites: %s %s-updates\n"
                       "Components: main\n" % (SUITE, SUITE))
    return "\n\n".join(stanzas) + "\n"


def root_key(packages: Sequence[str]) -> str:
    identity = {"suite": SUITE, "variant": VARIANT, "arch": "amd64", "packages": sorted(packages),
                "sources": _debian_sources(), "format": 1}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def ensure_root(packages: Sequence[str] = DEFAULT_PACKAGES, cache: Optional[str] = None,
                log=None) -> RootTarball:
    """The cached tarball for `packages`, built first if absent. Safe to call from several processes
    at once: one builds, the others wait on the lock and then find it."""
    directory = cache_dir(cache)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    key = root_key(packages)
    path = os.path.join(directory, "bookworm-%s.tar.zst" % key)
    with open(os.path.join(directory, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(path):
            return RootTarball(path, key, sorted(packages), False, 0.0)
        if shutil.which("mmdebstrap") is None:
            raise DebianRootError("mmdebstrap is not installed, so the Debian root for the lab cannot be "
                                  "built (apt-get install mmdebstrap).")
        started = time.monotonic()
        partial = path + ".partial.tar.zst"     # mmdebstrap compresses by the name
        sources = os.path.join(directory, "sources-%s.sources" % key)
        with open(sources, "w", encoding="utf-8") as handle:
            handle.write(_debian_sources())
        argv = ["mmdebstrap", "--mode=root", "--variant=" + VARIANT, "--format=tar",
                "--include=" + ",".join(sorted(packages)),
                # Keep the tarball lean: no apt lists, no downloaded .debs, no man pages or docs.
                "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/doc/*",
                "--dpkgopt=path-include=/usr/share/doc/*/copyright",
                "--dpkgopt=path-exclude=/usr/share/locale/*",
                # A clone gets its identity from the fleet, not from the build machine.
                "--customize-hook=rm -f \"$1\"/etc/ssh/ssh_host_* && : > \"$1\"/etc/machine-id",
                SUITE, partial, sources]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, check=False,
                                  env=dict(os.environ, LC_ALL="C.UTF-8", DEBIAN_FRONTEND="noninteractive"))
            if log is not None:
                log(proc.stderr)
            if proc.returncode != 0 or not os.path.exists(partial):
                detail = (proc.stderr or proc.stdout).strip().splitlines()
                reason = detail[-1].rstrip(".") if detail else "exit code %d" % proc.returncode
                raise DebianRootError("mmdebstrap could not build the Debian root %s: %s." % (path, reason))
            os.replace(partial, path)
        finally:
            for leftover in (partial, sources):
                if os.path.exists(leftover):
                    os.unlink(leftover)
        seconds = time.monotonic() - started
        facts = {"packages": sorted(packages), "suite": SUITE, "variant": VARIANT,
                 "build_seconds": round(seconds, 1), "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with open(path + ".json", "w", encoding="utf-8") as handle:
            json.dump(facts, handle, indent=1)
        return RootTarball(path, key, sorted(packages), True, seconds)


def extract(tarball: str, directory: str) -> None:
    """Unpack a cached root into `directory` (as root: owners, modes and links kept)."""
    os.makedirs(directory, exist_ok=True)
    subprocess.run(["tar", "--zstd", "-xpf", tarball, "-C", directory, "--numeric-owner",
                    "--xattrs", "--xattrs-include=*"], check=True, capture_output=True)


def tree_bytes(directory: str) -> int:
    """Bytes the tree needs on disk (du), to size a filesystem for it."""
    out = subprocess.run(["du", "-sx", "--block-size=1", directory], check=True, capture_output=True,
                         text=True).stdout
    return int(out.split()[0])


def clear(cache: Optional[str] = None) -> List[str]:
    directory = cache_dir(cache)
    removed = sorted(glob.glob(os.path.join(directory, "bookworm-*")))
    for path in removed:
        os.unlink(path)
    return removed
