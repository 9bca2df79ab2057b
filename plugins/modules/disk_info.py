#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: disk_info
short_description: Report the block devices of a host and which of them may be imaged
version_added: 0.1.0
description:
  - Lists every block device of the host with its partition table, partitions, filesystems and
    whether it is removable, read-only, mounted or the boot medium.
  - Partitions are read from the partition table itself, so they are listed also on kernels or
    loop devices that have no partition nodes.
  - With O(devices) or O(all_fixed_disks), also reports which disks such a selection would pick in
    M(fleetcast.imaging.disk_wipe) or M(fleetcast.imaging.image_restore), and why every other one is
    refused.
  - Only reads; never opens a device for writing.
author: fleetcast.imaging developers (@fleetcast)
extends_documentation_fragment:
  - fleetcast.imaging.attributes
  - fleetcast.imaging.attributes.info_module
options:
  devices:
    description:
      - Disks to check as a selection, by path (V(/dev/sdb), V(/dev/disk/by-id/...)) or kernel name
        (V(sdb)).
      - Mutually exclusive with O(all_fixed_disks).
    type: list
    elements: str
  all_fixed_disks:
    description:
      - Check the selection "all fixed writable disks" - every disk that is not removable, not
        read-only, not the boot medium (the disk holding V(/), V(/boot), V(/boot/efi) or swap), has
        nothing mounted or stacked on it and is not a virtual device (loop, zram, ram, dm, md).
    type: bool
    default: false
  exclude:
    description: Disks never to select, by path or kernel name.
    type: list
    elements: str
    default: []
notes:
  - Filesystems are found with C(blkid -p) probing each partition's byte range.
seealso:
  - module: fleetcast.imaging.disk_wipe
"""

EXAMPLES = r"""
- name: Show what the host has
  fleetcast.imaging.disk_info:
  register: disks

- name: Which disks would "all fixed disks" wipe here?
  fleetcast.imaging.disk_info:
    all_fixed_disks: true
    exclude: [/dev/disk/by-id/ata-KEEP_ME]
  register: selection

- name: Fail early when a named disk cannot be imaged
  fleetcast.imaging.disk_info:
    devices: [/dev/nvme0n1]
  register: target
  failed_when: target.refused | length > 0
"""

RETURN = r"""
missing_for_restore:
  description:
    - What this host lacks to restore an image onto its disks (Python libraries and tools, with their
      Debian package), checked before anything is wiped; empty when nothing is missing.
  returned: always
  type: list
  elements: str
  sample: ["the Python library parted (python3-parted)"]
disks:
  description: Every block device of the host.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Kernel name.
      type: str
      sample: sda
    path:
      description: Device node.
      type: str
      sample: /dev/sda
    size:
      description: Size in bytes.
      type: int
      sample: 256060514304
    sector_size:
      description: Logical sector size in bytes.
      type: int
      sample: 512
    removable:
      description: The medium is removable.
      type: bool
    read_only:
      description: The kernel marks the device read-only.
      type: bool
    rotational:
      description: A spinning disk.
      type: bool
    model:
      description: Model string, if any.
      type: str
    serial:
      description: Serial number, if the kernel exposes it.
      type: str
    transport:
      description: How it is attached (sata, nvme, usb, virtio, loop...).
      type: str
    is_loop:
      description: A loop device.
      type: bool
    backing_file:
      description: The file behind a loop device.
      type: str
    mounted:
      description: Something on it, on its partitions or stacked on it is mounted or swap.
      type: bool
    mountpoints:
      description: Those mount points (V([SWAP]) for swap).
      type: list
      elements: str
    holders:
      description: RAID, LVM or device-mapper devices using it.
      type: list
      elements: str
    boot_medium:
      description: It holds the running system (V(/), V(/boot), V(/boot/efi) or swap).
      type: bool
    boot_mountpoints:
      description: Which of those it holds.
      type: list
      elements: str
    stacked_on:
      description: Devices this one sits on (a loop device over a disk).
      type: list
      elements: str
    label:
      description: Partition table type (gpt, msdos, none); null when unreadable or empty.
      type: str
    guid:
      description: GPT disk GUID or MBR disk identifier.
      type: str
    filesystem:
      description: Filesystem on the whole disk when it has no partition table.
      type: str
    table_error:
      description: Why the table could not be read, if it could not.
      type: str
    partitions:
      description: Partitions from the partition table.
      type: list
      elements: dict
      contains:
        number:
          description: Partition number.
          type: int
        start:
          description: First sector.
          type: int
        end:
          description: Last sector (inclusive).
          type: int
        size:
          description: Size in bytes.
          type: int
        kind:
          description: primary, extended or logical.
          type: str
        type_guid:
          description: GPT partition type GUID.
          type: str
        mbr_type:
          description: MBR partition type id.
          type: int
        part_uuid:
          description: GPT unique partition GUID.
          type: str
        name:
          description: GPT partition name.
          type: str
        gpt_attributes:
          description: GPT attribute bits (bit 2 is legacy BIOS bootable).
          type: int
        flags:
          description: Flags as parted names them.
          type: list
          elements: str
        fs:
          description: Filesystem type found by blkid.
          type: str
        fs_uuid:
          description: Filesystem UUID.
          type: str
        fs_label:
          description: Filesystem label.
          type: str
        node:
          description: The kernel's partition node, if it has one.
          type: str
        mountpoints:
          description: Where the partition is mounted.
          type: list
          elements: str
  sample:
    - {name: vda, path: /dev/vda, size: 274877906944, label: gpt, boot_medium: true, mounted: true,
       partitions: [{number: 1, start: 2048, end: 2099199, fs: vfat, node: /dev/vda1}]}
selected:
  description: Paths of the disks the given selection picks (empty without a selection).
  returned: always
  type: list
  elements: str
  sample: [/dev/sdb, /dev/sdc]
refused:
  description: Disks the selection does not pick, each with the reason in one sentence.
  returned: always
  type: dict
  sample:
    /dev/sda: /dev/sda is the boot medium of this host (it holds /, /boot/efi).
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import FleetcastError
from ansible_collections.fleetcast.imaging.plugins.module_utils._disk import discover, inventory, requirements, safety


def main():
    module = AnsibleModule(
        argument_spec=dict(
            devices=dict(type="list", elements="str"),
            all_fixed_disks=dict(type="bool", default=False),
            exclude=dict(type="list", elements="str", default=[]),
        ),
        mutually_exclusive=[("devices", "all_fixed_disks")],
        supports_check_mode=True,
    )
    params = module.params
    try:
        devices = discover.list_block_devices()
        selected, refused = [], {}
        if params["devices"] or params["all_fixed_disks"]:
            selection = discover.select_disks(devices, explicit=params["devices"],
                                              all_fixed=params["all_fixed_disks"], exclude=params["exclude"])
            selected, refused = [dev.path for dev in selection.selected], selection.refused
            if params["devices"] and selected and not refused:
                try:  # together: two names for one disk, busy devices over or under them
                    safety.check_targets(selected)
                except FleetcastError as err:
                    refused[", ".join(selected)] = str(err)
        disks = inventory.describe_all(devices)
    except FleetcastError as err:
        module.fail_json(msg=str(err))
    missing = requirements.missing(requirements.RESTORE_LIBRARIES, requirements.RESTORE_TOOLS)
    module.exit_json(changed=False, disks=disks, selected=selected, refused=refused, missing_for_restore=missing)


if __name__ == "__main__":
    main()
