#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: clone_verify
short_description: Check that a running clone answers with its own identity and not the master's
version_added: 0.1.0
description:
  - Compares what a clone that booted from its new disk reports about itself (the output of the
    probe the C(boot_verify) role runs over SSH) with the host's own identity record - hostname,
    machine-id, every configured address and every SSH host key fingerprint - and with the
    master's identity, which must appear on none of the clones.
  - With O(fleet), also fails when another clone answers with any of the same values.
  - Runs on the controller; changes nothing.
author: fleetcast.imaging developers (@fleetcast)
extends_documentation_fragment:
  - fleetcast.imaging.attributes
  - fleetcast.imaging.attributes.check_full
attributes:
  idempotent:
    description: Reads only.
    support: full
options:
  name:
    description: The host's inventory name.
    type: str
    required: true
  expected:
    description: The host's identity summary (C(hostname), C(machine_id), C(addresses), C(ssh_fingerprints)).
    type: dict
    required: true
  probe_output:
    description: What the probe printed on the running clone.
    type: str
    required: true
  extra_addresses:
    description: Addresses the clone must also answer on (its reserved DHCP address).
    type: list
    elements: str
    default: []
  master:
    description: The master's identity summary, if known.
    type: dict
  fleet:
    description: Probe outputs of the other clones, by host name.
    type: dict
    default: {}
"""

EXAMPLES = r"""
- name: Compare the running clone with its record
  fleetcast.imaging.clone_verify:
    name: "{{ inventory_hostname }}"
    expected: "{{ identity_snapshot_record.summary }}"
    probe_output: "{{ boot_verify_probe_result.stdout }}"
  delegate_to: localhost
"""

RETURN = r"""
observed:
  description: What the clone answered (hostname, machine_id, addresses, ssh_fingerprints).
  returned: always
  type: dict
problems:
  description: Every difference found; empty when the clone is itself.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.fleetcast.imaging.plugins.module_utils._boot import verify


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            expected=dict(type="dict", required=True),
            probe_output=dict(type="str", required=True),
            extra_addresses=dict(type="list", elements="str", default=[]),
            master=dict(type="dict"),
            fleet=dict(type="dict", default={}),
        ),
        supports_check_mode=True,
    )
    params = module.params
    observed = verify.parse_probe(params["probe_output"])
    problems = verify.compare(params["name"], params["expected"], observed, params["master"], params["extra_addresses"])
    everyone = {host: verify.parse_probe(str(text)) for host, text in params["fleet"].items() if host != params["name"]}
    everyone[params["name"]] = observed
    problems += verify.duplicates(everyone).get(params["name"], [])
    if problems:
        module.fail_json(msg=verify.sentence(params["name"], problems), observed=observed, problems=problems)
    module.exit_json(changed=False, observed=observed, problems=[])


if __name__ == "__main__":
    main()
