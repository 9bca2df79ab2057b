# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A standing lab that outlives the process that built it. Private to the collection.

`NetLab` and `LoopDisk` remove what they made when their owner exits; a playbook needs the lab to
stay up between tasks. Here every namespace, backing file and loop device is written to a state
file in the lab directory as soon as it exists, so `destroy()` (a later process) removes exactly
what was made, even after a build that failed half-way. Destroy also sweeps namespaces carrying the
lab's prefix and loop devices over files in the lab directory, and nothing else.

Disks get content: the master a Linux system (GPT, an EFI vfat partition and an ext4 root with
hostname, machine-id, SSH host keys and netplan): either a small stand-in (``master_system="toy"``,
a few MiB, for quick tests) or a real Debian bookworm root with its kernel (``"debian"``, from the
cached root of ``debian_root``; see ``debian_disk``); each participant a dirty disk with an identity
of its own in an ext4 root, plus other partitions, as a machine in use would have.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

from .._errors import ValidationError
from . import debian_disk, loopdisk
from .disk_tools import MiB, make_ext4, partition_bounds, run, sgdisk
from .machine import LabMachine, identity_tree
from .netlab import NetLab

STATE_FILE = "state.json"
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{1,7}$")
MASTER_SYSTEMS = ("toy", "debian")


@dataclass
class LabState:
    prefix: str
    directory: str
    subnet: str
    namespaces: List[str] = field(default_factory=list)
    files: List[str] = field(default_factory=list)
    machines: Dict[str, LabMachine] = field(default_factory=dict)

    @property
    def image_dir(self) -> str:
        return os.path.join(self.directory, "images")

    @property
    def resume_dir(self) -> str:
        # The participants' resume journals (multicast_receive): lab hosts share this machine's
        # files, so they are kept with the lab and go with it.
        return os.path.join(self.directory, "resume")

    @property
    def identity_dir(self) -> str:
        # The controller's identity store for the lab's hosts: it goes with the lab.
        return os.path.join(self.directory, "identity")

    def save(self) -> None:
        data = asdict(self)
        tmp = os.path.join(self.directory, STATE_FILE + ".tmp")
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w",
                  encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
        os.replace(tmp, os.path.join(self.directory, STATE_FILE))

    @classmethod
    def load(cls, directory: str) -> Optional["LabState"]:
        try:
            with open(os.path.join(directory, STATE_FILE), encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return None
        machines = {name: LabMachine(**fields) for name, fields in data.pop("machines").items()}
        return cls(machines=machines, **data)

    def to_result(self) -> dict:
        return {"prefix": self.prefix, "directory": self.directory, "image_dir": self.image_dir,
                "identity_dir": self.identity_dir, "resume_dir": self.resume_dir,
                "hosts": {name: asdict(machine) for name, machine in self.machines.items()}}


def check_prefix(prefix: str) -> None:
    # Namespace and interface names derive from the prefix; keep them short and unambiguous.
    if not _PREFIX_RE.match(prefix):
        raise ValidationError(f"The lab name {prefix!r} must be 2 to 8 lower-case letters or digits, "
                              "starting with a letter.")


def build(prefix: str, directory: str, participants: List[str], server: str = "server",
          master: str = "master", subnet: str = "10.231.7", master_disk_size: int = 160 * MiB,
          participant_disk_size: int = 192 * MiB, blank: List[str] = (), master_system: str = "toy") -> LabState:
    """Build the lab (or return the standing one with the same prefix); destroy on any failure.

    ``blank``: participants that are new computers, their disks all zeros (no system, no identity).
    With master_system "debian" the disks grow to what the Debian root needs (participants at
    least as large as the master).
    """
    check_prefix(prefix)
    if master_system not in MASTER_SYSTEMS:
        raise ValidationError(f"The lab's master system must be one of {', '.join(MASTER_SYSTEMS)}, "
                              f"not {master_system!r}.")
    existing = LabState.load(directory)
    names = [server, master] + list(participants)
    if existing is not None:
        if existing.prefix != prefix or sorted(existing.machines) != sorted(names):
            raise ValidationError(f"A different lab ({existing.prefix}) stands in {directory}: "
                                  "tear it down first.")
        return existing
    if len(set(names)) != len(names):
        raise ValidationError(f"The lab host names {names} must be distinct.")
    strangers = sorted(set(blank) - set(participants))
    if strangers:
        raise ValidationError(f"The blank lab hosts {strangers} are not among the participants {list(participants)}.")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.makedirs(os.path.join(directory, "images"), mode=0o700, exist_ok=True)
    state = LabState(prefix=prefix, directory=os.path.abspath(directory), subnet=subnet)
    state.save()
    try:
        _build_network(state, server, master, participants)
        _build_disks(state, master, participants, master_disk_size, participant_disk_size, list(blank),
                     master_system)
    except BaseException:
        destroy(directory, prefix)
        raise
    return state


def _build_network(state: LabState, server: str, master: str, participants: List[str]) -> None:
    lab = NetLab(prefix=state.prefix, subnet=state.subnet)
    state.namespaces = list(lab._created)
    state.save()
    roles = [(server, "server"), (master, "master")] + [(name, "participant") for name in participants]
    for name, role in roles:
        host = lab.add_host(name)
        state.namespaces = list(lab._created)
        state.machines[name] = LabMachine(name=name, role=role, netns=host.netns,
                                          address=host.address, mac=host.mac)
        state.save()
    # The namespaces stand until destroy(): forget them here so nothing closes them early.
    lab._created.clear()


def _build_disks(state: LabState, master: str, participants: List[str], master_size: int,
                 participant_size: int, blank: List[str], master_system: str = "toy") -> None:
    for name in [master] + list(participants):
        machine = state.machines[name]
        path = os.path.join(state.directory, f"{name}.disk")
        state.files.append(path)
        state.save()
        with open(path, "wb") as handle:
            handle.truncate(master_size if name == master else participant_size)
        if name in blank:
            # a new computer: a disk of zeros, no system, no identity of its own
            machine.disk_file = path
            machine.disk_device = loopdisk.attach(path)
            state.save()
            continue
        machine.hostname = f"{name}.lab.fleetcast.test" if name == master else f"{name}-old"
        machine.machine_id = uuid.uuid4().hex
        if name == master and master_system == "debian":
            master_size = debian_disk.write_master(path, machine, state.subnet, min_size=master_size)
            participant_size = max(participant_size, master_size)
        elif name == master:
            write_master_system(path, machine, state.subnet)
        else:
            write_dirty_participant(path, machine, state.subnet)
        machine.disk_file = path
        machine.disk_device = loopdisk.attach(path)
        state.save()


def write_master_system(path: str, machine: LabMachine, subnet: str) -> None:
    """GPT + EFI system partition (vfat) + ext4 root holding a small Linux system tree."""
    sgdisk(path, "-o", "-n", "1:2048:+32M", "-t", "1:ef00", "-c", "1:EFI system",
           "-n", "2:0:0", "-t", "2:8304", "-c", "2:root")
    efi_offset, efi_size = partition_bounds(path, 1)
    root_offset, root_size = partition_bounds(path, 2)
    with tempfile.TemporaryDirectory(prefix="fleetcast-lab-") as scratch:
        window = loopdisk.attach(path, offset=efi_offset, sizelimit=efi_size)
        try:
            run(["mkfs.vfat", "-I", "-n", "EFI", window], device=window)
            loader = os.path.join(scratch, "BOOTX64.EFI")
            with open(loader, "wb") as handle:
                # Stand-in for a boot loader: a recognisable, incompressible payload.
                handle.write(b"MZ" + os.urandom(256 * 1024))
            run(["mmd", "-i", window, "::/EFI", "::/EFI/BOOT"], device=window)
            run(["mcopy", "-i", window, loader, "::/EFI/BOOT/BOOTX64.EFI"], device=window)
        finally:
            loopdisk.detach(window)
        tree = os.path.join(scratch, "root")
        identity_tree(tree, machine, subnet, machine.hostname)
        for inner, size in (("usr/lib/fleetcast-lab/payload.bin", 6 * MiB),
                            ("usr/share/doc/fleetcast-lab/README", 0)):
            target = os.path.join(tree, inner)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as handle:
                handle.write(os.urandom(size) if size else b"A disk image made by the fleetcast lab.\n")
        os.makedirs(os.path.join(tree, "boot/efi"), exist_ok=True)
        with open(os.path.join(tree, "etc/fstab"), "w", encoding="utf-8") as handle:
            handle.write("LABEL=root / ext4 defaults 0 1\nLABEL=EFI /boot/efi vfat umask=0077 0 1\n")
        make_ext4(path, root_offset, root_size, tree, "root")


def write_dirty_participant(path: str, machine: LabMachine, subnet: str) -> None:
    """A disk in use: its own identity in an ext4 root, plus a data partition and stale bytes."""
    sgdisk(path, "-o", "-n", "1:2048:+96M", "-t", "1:8304", "-c", "1:old root",
           "-n", "2:0:+32M", "-t", "2:8300", "-c", "2:old data", "-n", "3:0:0", "-t", "3:8200",
           "-c", "3:old swap")
    root_offset, root_size = partition_bounds(path, 1)
    data_offset, data_size = partition_bounds(path, 2)
    swap_offset, swap_size = partition_bounds(path, 3)
    with tempfile.TemporaryDirectory(prefix="fleetcast-lab-") as scratch:
        tree = os.path.join(scratch, "root")
        identity_tree(tree, machine, subnet, machine.hostname)
        make_ext4(path, root_offset, root_size, tree, "oldroot")
    with open(path, "r+b") as handle:
        handle.seek(data_offset)
        handle.write(os.urandom(min(data_size, 2 * MiB)))
    window = loopdisk.attach(path, offset=swap_offset, sizelimit=swap_size)
    try:
        run(["mkswap", "-L", "oldswap", window], device=window)
    finally:
        loopdisk.detach(window)


def destroy(directory: str, prefix: Optional[str] = None) -> dict:
    """Remove every namespace, loop device and file the lab in `directory` made. Idempotent."""
    state = LabState.load(directory)
    prefix = prefix or (state.prefix if state else None)
    removed = {"namespaces": [], "loop_devices": [], "files": []}
    namespaces = list(state.namespaces) if state else []
    if prefix:
        check_prefix(prefix)
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                check=False).stdout.split("\n")
        namespaces += [line.split()[0] for line in listed
                       if line.strip() and line.split()[0].startswith(prefix + "-")]
    namespaces = list(dict.fromkeys(namespaces))
    if namespaces:
        # NetLab.close() knows how to end what runs inside and delete; hand it our namespaces.
        lab = NetLab.__new__(NetLab)
        lab.hosts, lab._created = {}, list(namespaces)
        lab.close()
        removed["namespaces"] = namespaces
    if state is not None:
        real_dir = os.path.realpath(directory)
        for name in sorted(os.listdir("/sys/block")):
            backing = loopdisk.backing_file(name) if name.startswith("loop") else None
            if backing and os.path.dirname(os.path.realpath(backing.replace(" (deleted)", ""))) == real_dir:
                loopdisk.detach("/dev/" + name)
                removed["loop_devices"].append("/dev/" + name)
        # Only what the lab made: its disks, its image store and its state file; the directory
        # itself goes only if nothing else was put in it.
        for path in state.files:
            if os.path.exists(path):
                os.unlink(path)
                removed["files"].append(path)
        for made in (state.image_dir, state.identity_dir, state.resume_dir):
            if os.path.isdir(made):
                shutil.rmtree(made)
                removed["files"].append(made)
        os.unlink(os.path.join(directory, STATE_FILE))
        if not os.listdir(directory):
            os.rmdir(directory)
    return removed
