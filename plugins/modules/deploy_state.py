#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: deploy_state
short_description: Tell whether a participant still holds what its last deploy left, or record it
version_added: 0.1.0
description:
  - Makes a re-run of a deployment idempotent. A successful deploy records a stamp for each
    participant (the image id, the devices, a fingerprint of the disks and the identity summary it
    applied); a later run asks whether the participant still holds exactly that, and if so leaves
    it alone instead of wiping and re-imaging it.
  - The fingerprint is read the way a capture reads a disk - partition table and layout, the used
    blocks of every filesystem and every byte outside filesystems - and hashed with SHA-256.
  - Only reads; never opens a device for writing.
author: fleetcast.imaging developers (@fleetcast)
extends_documentation_fragment:
  - fleetcast.imaging.attributes
  - fleetcast.imaging.attributes.info_module
options:
  devices:
    description: The participant's disks, in the order the image's disks are written to them.
    type: list
    elements: path
    required: true
  image_id:
    description: The id of the image being deployed (from M(fleetcast.imaging.image_info)).
    type: str
    required: true
  identity:
    description:
      - The identity summary (no secrets) the participant has or was given, from
        the C(record.summary) that M(fleetcast.imaging.identity_snapshot) returns.
    type: dict
    default: {}
  recorded:
    description:
      - The stamp recorded by the last successful deploy of this participant (RV(stamp) of an earlier
        run); empty when none is recorded.
      - When given, RV(unchanged) says whether the participant still holds exactly that.
    type: dict
  threads:
    description: Threads hashing the disks; V(0) picks up to four.
    type: int
    default: 0
notes:
  - Free filesystem blocks are not part of the fingerprint, as a capture leaves them out.
seealso:
  - module: fleetcast.imaging.image_restore
  - module: fleetcast.imaging.disk_info
"""

EXAMPLES = r"""
- name: Is this participant still as its last deploy left it?
  fleetcast.imaging.deploy_state:
    devices: [/dev/nvme0n1]
    image_id: "{{ image.image_id }}"
    identity: "{{ record.summary }}"
    recorded: "{{ stored_stamp | default({}) }}"
  register: state

- name: Record a successful deploy
  fleetcast.imaging.deploy_state:
    devices: [/dev/nvme0n1]
    image_id: "{{ image.image_id }}"
    identity: "{{ record.summary }}"
  register: done
"""

RETURN = r"""
unchanged:
  description: True when O(recorded) was given and the participant still holds exactly what it records.
  returned: always
  type: bool
reason:
  description: One sentence part saying why the participant is or is not unchanged.
  returned: when O(recorded) is given
  type: str
  sample: /dev/sdb changed since the last deploy
stamp:
  description: What the participant holds now, to record after a successful deploy.
  returned: when O(recorded) is not given
  type: dict
  contains:
    format:
      description: Version of the stamp.
      type: str
    image_id:
      description: The image id.
      type: str
    devices:
      description: The devices.
      type: list
      elements: str
    fingerprint:
      description: SHA-256 over the disks' layout and used bytes.
      type: str
    identity:
      description: The identity summary.
      type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import FleetcastError
from ansible_collections.fleetcast.imaging.plugins.module_utils._image import fingerprint


def main():
    module = AnsibleModule(
        argument_spec=dict(
            devices=dict(type="list", elements="path", required=True),
            image_id=dict(type="str", required=True),
            identity=dict(type="dict", default={}),
            recorded=dict(type="dict"),
            threads=dict(type="int", default=0),
        ),
        supports_check_mode=True,
    )
    params = module.params
    error = None
    try:
        if params["recorded"] is not None:
            result = fingerprint.deployed_state(params["recorded"], params["devices"], params["image_id"],
                                                params["identity"], params["threads"])
        else:
            result = {"unchanged": False, "stamp": fingerprint.stamp(params["devices"], params["image_id"],
                                                                     params["identity"], params["threads"])}
    except FleetcastError as err:
        error = str(err)
    if error:
        module.fail_json(msg=error)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
