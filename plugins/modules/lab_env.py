#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: lab_env
short_description: Build or tear down the built-in imaging lab on one machine
version_added: 0.1.0
description:
  - Builds a lab with no hardware, used by the C(fleetcast.imaging.imaging_lab) role, C(make demo)
    and the integration tests. Network namespaces on a bridge (inside a switch namespace of
    their own, so the machine's own network is never changed) are an image server, a master
    workstation and participants. Sparse files on loop devices are their disks.
  - The master's disk holds a small but real Linux system (GPT, an EFI vfat partition, an ext4
    root with hostname, machine-id, SSH host keys and netplan). Each participant's disk starts
    dirty, with an identity of its own in an ext4 root, a data partition and a swap partition.
  - Everything made is recorded in a state file in O(directory) as soon as it exists; with
    O(state=absent) exactly that is removed (namespaces carrying the lab's name as prefix, loop
    devices over the lab's files, the files), also after a build that failed half-way.
  - Lab only. Runs on the controller as root; reach the hosts with the
    C(fleetcast.imaging.netns) connection.
author: fleetcast.imaging developers (@fleetcast)
options:
  name:
    description:
      - Name of the lab, used as prefix of every namespace (C(<name>-server), C(<name>-p1)).
      - 2 to 8 lower-case letters or digits, starting with a letter.
    type: str
    default: fclab
  state:
    description:
      - V(present) builds the lab unless the same lab already stands (then nothing changes).
      - V(absent) removes everything the lab made.
    type: str
    choices: [present, absent]
    default: present
  directory:
    description:
      - Directory holding the lab's state file, disk files and image store.
    type: path
    default: /var/tmp/fleetcast-lab
  server:
    description: Host name of the image server.
    type: str
    default: server
  master:
    description: Host name of the master workstation.
    type: str
    default: master
  participants:
    description: Host names of the participants, the machines to be imaged.
    type: list
    elements: str
    default: [p1, p2, p3]
  blank:
    description:
      - Participants that are new computers without an operating system, their disks all zeros (no
        system, no identity); deploy gives them the identity the inventory names.
    type: list
    elements: str
    default: []
  subnet:
    description: First three octets of the lab's /24; hosts get .11 upwards.
    type: str
    default: 10.231.7
  master_disk_mib:
    description: Size of the master's disk in MiB (sparse).
    type: int
    default: 160
  participant_disk_mib:
    description: Size of each participant's disk in MiB (sparse); at least the master's.
    type: int
    default: 192
  master_system:
    description:
      - What the master's disk holds. V(toy) is a small stand-in (a few MiB of files around the
        identity files), quick to build and to image. V(debian) is a real Debian bookworm root with
        its kernel, initrd, systemd and OpenSSH (about 330 MB of files in ~10,000, an image of about
        145 MB in chunks of very different compressed sizes), built once with C(mmdebstrap) and kept
        in C(/var/cache/fleetcast/debian-root) (E(FLEETCAST_CACHE) moves it); the disks then grow to
        what it needs (about 535 MiB), whatever O(master_disk_mib) and O(participant_disk_mib) say.
    type: str
    choices: [toy, debian]
    default: toy
extends_documentation_fragment:
  - fleetcast.imaging.attributes
  - fleetcast.imaging.attributes.check_none
notes:
  - Needs C(ip), C(losetup), C(sgdisk), C(mkfs.ext4), C(mkfs.vfat), mtools, C(mkswap) and
    C(ssh-keygen) on the controller.
"""

EXAMPLES = r"""
- name: Build a lab with two participants
  fleetcast.imaging.lab_env:
    name: demo
    participants: [p1, p2]
  register: lab

- name: Tear it down again
  fleetcast.imaging.lab_env:
    name: demo
    state: absent
"""

RETURN = r"""
lab:
  description: The lab as built (or standing); empty after O(state=absent).
  returned: always
  type: dict
  contains:
    prefix:
      description: The lab's name.
      type: str
    image_dir:
      description: Where the image server keeps image files.
      type: str
    identity_dir:
      description: The controller's identity store for the lab's hosts (removed with the lab).
      type: str
    hosts:
      description: >-
        Per host name, its C(role), C(netns), C(address), C(mac), C(interface), and for machines
        with a disk C(disk_device) (the loop device), C(disk_file), and the C(hostname) and
        C(machine_id) written on it at build time.
      type: dict
  sample:
    prefix: fclab
    image_dir: /var/tmp/fleetcast-lab/images
    hosts:
      p1: {role: participant, netns: fclab-p1, address: 10.231.7.13, disk_device: /dev/loop3,
           hostname: p1-old, machine_id: 702f4f131cda456e8f005db426d7110b}
removed:
  description: What O(state=absent) removed.
  returned: when state is absent
  type: dict
  sample: {namespaces: [fclab-sw, fclab-server], loop_devices: [/dev/loop3], files: [/var/tmp/fleetcast-lab/p1.disk]}
"""

import subprocess

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import FleetcastError
from ansible_collections.fleetcast.imaging.plugins.module_utils._lab import standing

MiB = 1024 * 1024


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", default="fclab"),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            directory=dict(type="path", default="/var/tmp/fleetcast-lab"),
            server=dict(type="str", default="server"),
            master=dict(type="str", default="master"),
            participants=dict(type="list", elements="str", default=["p1", "p2", "p3"]),
            blank=dict(type="list", elements="str", default=[]),
            subnet=dict(type="str", default="10.231.7"),
            master_disk_mib=dict(type="int", default=160),
            participant_disk_mib=dict(type="int", default=192),
            master_system=dict(type="str", choices=["toy", "debian"], default="toy"),
        ),
        supports_check_mode=False,
    )
    params = module.params
    try:
        if params["state"] == "absent":
            removed = standing.destroy(params["directory"], params["name"])
            changed = any(removed.values())
            module.exit_json(changed=changed, lab={}, removed=removed)
        if params["participant_disk_mib"] < params["master_disk_mib"]:
            module.fail_json(msg="participant_disk_mib must be at least master_disk_mib, "
                                 "or the master's image cannot fit on the participants.")
        existed = standing.LabState.load(params["directory"]) is not None
        state = standing.build(params["name"], params["directory"], params["participants"],
                               server=params["server"], master=params["master"],
                               subnet=params["subnet"],
                               master_disk_size=params["master_disk_mib"] * MiB,
                               participant_disk_size=params["participant_disk_mib"] * MiB,
                               blank=params["blank"],
                               master_system=params["master_system"])
    except FleetcastError as err:
        module.fail_json(msg=str(err))
    except subprocess.CalledProcessError as err:
        detail = (err.stderr or "").strip().splitlines()
        module.fail_json(msg="Building lab %s failed running %s: %s." % (
            params["name"], " ".join(err.cmd), detail[-1] if detail else "exit code %d" % err.returncode))
    module.exit_json(changed=not existed, lab=state.to_result())


if __name__ == "__main__":
    main()
