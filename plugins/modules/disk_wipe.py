#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: disk_wipe
short_description: Remove every partition and filesystem, RAID, LVM and table signature from disks
version_added: 0.1.0
description:
  - Wipes the named disks, or all fixed writable disks of the host, so that nothing on them is found
    any more by C(blkid), C(wipefs) or a partitioning tool - every partition, both GPT copies, the
    MBR and extended boot records, and every filesystem, swap, RAID (also md superblocks at the end
    of a partition) and LVM signature, inside each partition and on the whole disk.
  - The partition tables and the signatures go, and with them the key material of encrypted volumes
    (every LUKS1/LUKS2 key slot, both LUKS2 headers, BitLocker's FVE metadata blocks), the LVM
    metadata areas and md superblocks wherever they sit (0.90 and 1.0 at the end of the disk or of a
    partition, 1.1 at the start, 1.2 at 4 KiB). Other data blocks are only erased with O(secure_erase).
  - Never wipes the boot medium (the disk holding V(/), V(/boot), V(/boot/efi) or swap), a disk
    with anything mounted or swapped on it (also through a loop device stacked on it), or a disk
    held by RAID, LVM or device-mapper. O(force) does not change that.
  - Every selected disk is checked before the first one is touched. A disk that is already blank is
    left alone and reported unchanged.
author: fleetcast.imaging developers (@fleetcast)
extends_documentation_fragment:
  - fleetcast.imaging.attributes
  - fleetcast.imaging.attributes.check_full
attributes:
  idempotent:
    description: Running it twice changes nothing the second time.
    support: full
options:
  devices:
    description:
      - Disks to wipe, by path (V(/dev/sdb), V(/dev/disk/by-id/...)) or kernel name (V(sdb)).
      - The task fails, before anything is written, if any of them may not be written (see above),
        is a partition rather than a whole disk, or does not exist.
      - One of O(devices) and O(all_fixed_disks) is required; they are mutually exclusive.
    type: list
    elements: str
  all_fixed_disks:
    description:
      - Wipe every fixed writable disk - every disk that is not removable, not read-only, not the
        boot medium, has nothing mounted or stacked on it and is not a virtual device (loop, zram,
        ram, dm, md). The others are reported in RV(refused) and left alone.
      - Because this selection is computed on the host at run time, a disk that is not blank is only
        wiped with O(force=true). Run in check mode first to see what would go.
    type: bool
  exclude:
    description: Disks never to wipe, by path or kernel name, even when selected.
    type: list
    elements: str
    default: []
  force:
    description:
      - Needed with O(all_fixed_disks) to wipe disks that still hold partitions or signatures.
      - Never allows wiping the boot medium, a mounted disk or a held disk.
    type: bool
    default: false
  secure_erase:
    description:
      - Also erase all data on each disk, after its partitions and signatures are gone.
      - V(auto) picks, per disk, the first that the disk supports - V(nvme) (C(nvme format) with
        cryptographic erase where the controller supports it, else user data erase; needs nvme-cli),
        V(ata) (ATA SECURITY ERASE UNIT through C(hdparm), enhanced where supported; not on drives
        whose security is frozen), V(discard) (BLKSECDISCARD, else BLKDISCARD, then every block that
        does not read back as zeros is overwritten), V(overwrite) (zeros over every byte).
      - A discard only guarantees that the disk reads back as zeros afterwards (which is checked);
        an SSD may keep the old flash pages until its garbage collection erases them. Use V(nvme)
        or V(ata) when the flash itself must be erased.
      - Naming a method the disk does not support fails before anything is written, naming the disk
        and the reason. Check mode reports the method each disk would get.
      - With O(all_fixed_disks), every selected disk needs O(force=true), blank or not.
    type: str
    choices: [auto, nvme, ata, discard, overwrite, none]
    default: none
notes:
  - Uses C(wipefs), C(blkid) and C(losetup) (util-linux); on kernels without partition nodes each
    partition is reached through a temporary loop device over its byte range.
  - The kernel is told to re-read the (now empty) partition table.
seealso:
  - module: fleetcast.imaging.disk_info
"""

EXAMPLES = r"""
- name: Wipe two disks by their stable names
  fleetcast.imaging.disk_wipe:
    devices:
      - /dev/disk/by-id/ata-SAMSUNG_SSD_870_S5Y1NX0R123456
      - /dev/disk/by-id/nvme-WD_BLACK_SN770_22411V800123

- name: See what wiping all fixed disks would remove (writes nothing)
  fleetcast.imaging.disk_wipe:
    all_fixed_disks: true
  check_mode: true
  diff: true

- name: Wipe and securely erase a disk, with whatever method it supports best
  fleetcast.imaging.disk_wipe:
    devices: [/dev/nvme0n1]
    secure_erase: auto

- name: Wipe all fixed disks but one
  fleetcast.imaging.disk_wipe:
    all_fixed_disks: true
    exclude: [/dev/sdc]
    force: true
"""

RETURN = r"""
wiped:
  description: One entry per selected disk, with what was removed (in check mode, what would be).
  returned: always
  type: list
  elements: dict
  contains:
    device:
      description: The disk.
      type: str
      sample: /dev/sdb
    changed:
      description: Something was (or would be) removed; false for a disk already blank.
      type: bool
    label:
      description: The partition table found (gpt, msdos, none).
      type: str
      sample: gpt
    partitions:
      description: The partitions removed.
      type: list
      elements: dict
      sample: [{number: 1, start: 2048, end: 1050623, fs: ext4}]
    signatures:
      description: The signatures removed, with their absolute byte offset on the disk.
      type: list
      elements: dict
      sample: [{where: partition 1, offset: 1049656, type: ext4, length: 2, uuid: 5d2c1b8e-0f3a-4c55-9a61-2f4be0a1c9d7,
                label: data, detail: null},
               {where: partition 2, offset: 537939968, type: crypto_LUKS, length: 16760832,
                uuid: 4bcc8432-169d-42d6-a4b8-2d3ab5d1d261, label: null, detail: LUKS2 secondary header}]
    secure_erase:
      description:
        - With O(secure_erase), the method used (in check mode, the one that would be) and why.
        - After the erase also the seconds it took, the bytes erased and what was run and verified.
      returned: when O(secure_erase) is not V(none)
      type: dict
      sample: {path: /dev/sdb, method: discard, seconds: 4.2, bytes: 512110190592,
               detail: "BLKDISCARD over 512110190592 bytes, then read back: every block reads as zeros"}
refused:
  description: Disks left alone, each with the reason in one sentence.
  returned: always
  type: dict
  sample:
    /dev/sda: /dev/sda is the boot medium of this host (it holds /, /boot/efi).
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import FleetcastError
from ansible_collections.fleetcast.imaging.plugins.module_utils._disk import discover, wipe


def main():
    module = AnsibleModule(
        argument_spec=dict(
            devices=dict(type="list", elements="str"),
            all_fixed_disks=dict(type="bool"),
            exclude=dict(type="list", elements="str", default=[]),
            force=dict(type="bool", default=False),
            secure_erase=dict(type="str", default="none", choices=["auto", "nvme", "ata", "discard", "overwrite",
                                                                   "none"]),
        ),
        mutually_exclusive=[("devices", "all_fixed_disks")],
        required_one_of=[("devices", "all_fixed_disks")],
        supports_check_mode=True,
    )
    params = module.params
    try:
        run = wipe.wipe_disks(discover.list_block_devices(), explicit=params["devices"],
                              all_fixed=bool(params["all_fixed_disks"]), exclude=params["exclude"],
                              force=params["force"], check_mode=module.check_mode,
                              secure_erase=params["secure_erase"])
    except FleetcastError as err:
        module.fail_json(msg=str(err))
    module.exit_json(changed=run.changed, wiped=run.results(), refused=run.refused, diff=run.diff())


if __name__ == "__main__":
    main()
