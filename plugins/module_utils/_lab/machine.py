# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One host of the lab, and the files that make a Linux system that host. Private to the collection.

``LabMachine`` is what the standing lab records of each host (``standing``) and what a master disk
is written for (``standing``'s toy master, ``debian_disk``'s Debian one); ``identity_tree`` writes
its identity into a root tree: what identity snapshot must keep.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .disk_tools import run


@dataclass
class LabMachine:
    """One host of the lab: its namespace on the bridge and, optionally, its disk."""

    name: str
    role: str                      # "server" | "master" | "participant"
    netns: str
    address: str
    mac: str
    interface: str = "eth0"
    disk_file: str = ""
    disk_device: str = ""
    hostname: str = ""
    machine_id: str = ""


def identity_tree(tree: str, machine: LabMachine, subnet: str, hostname: str) -> None:
    """The files that make a Linux system this machine: what identity snapshot must keep."""
    def put(inner: str, text: str, mode: int = 0o644) -> None:
        target = os.path.join(tree, inner.lstrip("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w",
                  encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(target, mode)

    short = hostname.split(".")[0]
    put("/etc/os-release", 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\n'
        'VERSION_ID="12"\nID=debian\n')
    put("/etc/hostname", hostname + "\n")
    put("/etc/machine-id", machine.machine_id + "\n", 0o444)
    put("/etc/hosts", f"127.0.0.1 localhost\n127.0.1.1 {hostname} {short}\n")
    put("/etc/netplan/01-fleetcast-lab.yaml",
        "network:\n  version: 2\n  ethernets:\n    lab0:\n"
        f"      match:\n        macaddress: \"{machine.mac}\"\n      set-name: lab0\n"
        f"      addresses: [\"{machine.address}/24\"]\n", 0o600)
    os.makedirs(os.path.join(tree, "etc/ssh"), exist_ok=True)
    for kind in ("ed25519", "ecdsa"):
        run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", f"root@{short}",
             "-f", os.path.join(tree, f"etc/ssh/ssh_host_{kind}_key")], device=machine.name)
