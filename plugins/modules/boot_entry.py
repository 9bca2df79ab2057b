#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: boot_entry
short_description: Create the UEFI boot entry a restored disk needs
version_added: 0.1.0
description:
  - After an image is restored, the disk holds its boot loader in the EFI system partition, but the
    participant's firmware has no NVRAM entry for it. This module finds the ESP in the disk's GPT,
    chooses the loader on it (shim, then GRUB, then the removable path C(\EFI\BOOT\BOOTX64.EFI)) and
    creates the entry with C(efibootmgr), first in BootOrder.
  - An entry for the same partition and loader is kept as it is (idempotent).
  - Runs on the participant, booted with UEFI (efivarfs mounted); BIOS participants need no entry.
author: fleetcast.imaging developers (@fleetcast)
extends_documentation_fragment:
  - fleetcast.imaging.attributes
  - fleetcast.imaging.attributes.check_full
attributes:
  idempotent:
    description: An existing equal entry is left alone.
    support: full
options:
  device:
    description: The restored disk, e.g. V(/dev/nvme0n1).
    type: path
    required: true
  label:
    description: Label of the entry.
    type: str
    default: fleetcast clone
"""

EXAMPLES = r"""
- name: Let the firmware boot the restored disk
  fleetcast.imaging.boot_entry:
    device: /dev/nvme0n1
  when: imaging_boot_firmware == 'uefi'
"""

RETURN = r"""
entry:
  description: The disk, ESP partition and GUID, loader, label, the existing entry (if any) and the efibootmgr command.
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import FleetcastError
from ansible_collections.fleetcast.imaging.plugins.module_utils._boot import efi


def main():
    module = AnsibleModule(
        argument_spec=dict(
            device=dict(type="path", required=True),
            label=dict(type="str", default="fleetcast clone"),
        ),
        supports_check_mode=True,
    )
    error = None
    try:
        entry = efi.ensure_entry(module.params["device"], module.params["label"], module.check_mode)
    except FleetcastError as err:
        error = str(err)
    if error:
        module.fail_json(msg=error)
    module.exit_json(changed=entry["needed"], entry=entry)


if __name__ == "__main__":
    main()
