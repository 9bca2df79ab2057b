#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: identity_conflicts
short_description: Check the whole inventory's identity records for duplicates before imaging
version_added: 0.1.0
description:
  - Compares identity records of many hosts and fails, naming the hosts and the item, when two
    of them share a host name, an IP address, a MAC, a machine-id, an SMBIOS UUID or a Windows
    machine SID.
  - Meant to run once on the controller (C(run_once) with C(delegate_to=localhost)) before any
    disk is touched.
author: fleetcast.imaging developers (@fleetcast)
options:
  records:
    description:
      - Identity records by inventory name, as returned by
        M(fleetcast.imaging.identity_snapshot) in C(record). Secrets are not needed.
    type: dict
    required: true
  fail_on_conflict:
    description:
      - Fail when a conflict is found; with V(false) only report them in RV(conflicts).
    type: bool
    default: true
extends_documentation_fragment:
  - fleetcast.imaging.attributes
  - fleetcast.imaging.attributes.info_module
seealso:
  - module: fleetcast.imaging.identity_snapshot
"""

EXAMPLES = r"""
- name: No two participants may come up with the same identity
  fleetcast.imaging.identity_conflicts:
    records: "{{ dict(ansible_play_hosts | zip(ansible_play_hosts | map('extract', hostvars, ['identity', 'record']))) }}"
  run_once: true
  delegate_to: localhost
"""

RETURN = r"""
conflicts:
  description: Each value held by more than one host, with the item and the hosts (sorted).
  returned: always
  type: list
  elements: dict
  sample: [{"item": "hostname", "value": "ws-042", "hosts": ["ws-042", "ws-043"]}]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import FleetcastError
from ansible_collections.fleetcast.imaging.plugins.module_utils._identity import conflicts


def main():
    module = AnsibleModule(
        argument_spec=dict(
            records=dict(type="dict", required=True),
            fail_on_conflict=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    try:
        found = conflicts.find_conflicts(module.params["records"])
    except FleetcastError as err:
        module.fail_json(msg=str(err))
    report = [conflict.to_dict() for conflict in found]
    if found and module.params["fail_on_conflict"]:
        module.fail_json(msg="Identity conflicts across the inventory: %s."
                         % "; ".join(conflict.sentence() for conflict in found), conflicts=report)
    module.exit_json(changed=False, conflicts=report)


if __name__ == "__main__":
    main()
