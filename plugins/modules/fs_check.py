#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: fs_check
short_description: Check every file system on a disk, read-only
version_added: 0.1.0
description:
  - Reads the partition table of each disk in O(devices) and runs the file-system checker of
    every partition whose file system it knows, in its no-change mode (C(e2fsck -f -n),
    C(fsck.vfat -n), C(xfs_repair -n), C(btrfs check --readonly)). Partitions are reached through
    the kernel's partition nodes where they exist, else through a read-only loop device over the
    partition's byte range, so the check also works where the kernel has no partition support
    (the built-in lab).
  - Fails, naming the disk, partition and file system, if any checker reports a problem.
  - Nothing is ever written. Used by C(deploy.yml) to verify freshly imaged disks, on real
    hardware as in the built-in lab.
author: fleetcast.imaging developers (@fleetcast)
options:
  devices:
    description: Disks (or disk image files) to check.
    type: list
    elements: path
    required: true
extends_documentation_fragment:
  - fleetcast.imaging.attributes
  - fleetcast.imaging.attributes.info_module
notes:
  - Needs e2fsprogs, dosfstools, xfsprogs and btrfs-progs for the file systems present.
"""

EXAMPLES = r"""
- name: Check the file systems of a freshly imaged disk
  fleetcast.imaging.fs_check:
    devices: [/dev/sda]
"""

RETURN = r"""
checked:
  description: One entry per partition checked.
  returned: always
  type: list
  elements: dict
  contains:
    device:
      description: The disk.
      type: str
    partition:
      description: Partition number.
      type: int
    filesystem:
      description: The file system found.
      type: str
    clean:
      description: Whether the checker found nothing to repair.
      type: bool
    output:
      description: The checker's last lines of output.
      type: str
  sample:
    - {device: /dev/sda, partition: 2, filesystem: ext4, clean: true, output: "root: 25/32768 files"}
skipped:
  description: Partitions with no file system this module checks (swap, unknown, none).
  returned: always
  type: list
  elements: dict
  sample: [{device: /dev/sda, partition: 3, filesystem: swap}]
"""

import os
import subprocess

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import FleetcastError
from ansible_collections.fleetcast.imaging.plugins.module_utils._disk import blockdev, table

# The checker of each file system, in its mode that never writes; and the exit codes meaning clean.
CHECKERS = {
    "ext2": (["e2fsck", "-f", "-n"], (0,)),
    "ext3": (["e2fsck", "-f", "-n"], (0,)),
    "ext4": (["e2fsck", "-f", "-n"], (0,)),
    "vfat": (["fsck.vfat", "-n"], (0,)),
    "xfs": (["xfs_repair", "-n"], (0,)),
    "btrfs": (["btrfs", "check", "--readonly"], (0,)),
}


def check_disk(device):
    checked, skipped = [], []
    layout = table.read_layout(device)
    for part in layout.partitions:
        if part.fs not in CHECKERS:
            skipped.append(dict(device=device, partition=part.number, filesystem=part.fs or "none"))
            continue
        argv, clean_codes = CHECKERS[part.fs]
        with blockdev.partition_path(device, part, read_only=True) as node:
            proc = subprocess.run(argv + [node], capture_output=True, text=True, check=False,
                                  env=dict(os.environ, LC_ALL="C"))
        lines = (proc.stdout + proc.stderr).strip().splitlines()
        checked.append(dict(device=device, partition=part.number, filesystem=part.fs,
                            clean=proc.returncode in clean_codes, output="\n".join(lines[-3:])))
    return checked, skipped


def main():
    module = AnsibleModule(
        argument_spec=dict(devices=dict(type="list", elements="path", required=True)),
        supports_check_mode=True,
    )
    checked, skipped = [], []
    try:
        for device in module.params["devices"]:
            more_checked, more_skipped = check_disk(device)
            checked += more_checked
            skipped += more_skipped
    except FleetcastError as err:
        module.fail_json(msg=str(err), checked=checked, skipped=skipped)
    except OSError as err:
        module.fail_json(msg="Cannot run a file-system checker: %s." % err, checked=checked, skipped=skipped)
    dirty = [entry for entry in checked if not entry["clean"]]
    if dirty:
        module.fail_json(
            msg="The file-system check found problems on %s." % "; ".join(
                "partition %d (%s) of %s: %s" % (entry["partition"], entry["filesystem"], entry["device"],
                                                 entry["output"].splitlines()[-1] if entry["output"] else "no output")
                for entry in dirty),
            checked=checked, skipped=skipped)
    module.exit_json(changed=False, checked=checked, skipped=skipped)


if __name__ == "__main__":
    main()
