#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: identity_snapshot
short_description: Gather a host's identity record before it is imaged
version_added: 0.1.0
description:
  - Reads everything that makes a machine itself on the network, so that it can be given back
    after a multicast session has copied the master's disk onto it. See the collection's
    C(docs/identity.md) for every item, where it lives and whether it is secret.
  - "Linux: host name, C(/etc/hosts), machine-id (C(/etc/machine-id) and
    C(/var/lib/dbus/machine-id)), SSH host keys, NetworkManager's C(secret_key), every network
    file (netplan under any name, NetworkManager keyfiles with their UUIDs, ifupdown with its
    hook lines, systemd-networkd C(.network), C(.link) and C(.netdev), ifcfg, udev persistent-net
    rules), Samba workgroup and NetBIOS name, the Kerberos keytab."
  - "Windows (offline, through the SYSTEM and SECURITY hives): ComputerName, Tcpip Hostname and
    NV Hostname of the control set C(Select\\Current) names, the IPv4 settings of every interface
    (with its device instance, and its MAC where known), workgroup, domain membership and the
    machine SID (reported only)."
  - The record is keyed by O(inventory_name) plus the hardware identity of the machine the module
    runs on (SMBIOS UUID and the MACs of its physical NICs).
  - From the running system (O(root=/)), from a mounted offline root (O(root)), or from a
    O(device) that the module mounts read-only itself and unmounts (ext2/3/4, xfs, btrfs natively;
    NTFS through ntfs-3g), finding the root partition unless O(partition) names it.
author: fleetcast.imaging developers (@fleetcast)
options:
  inventory_name:
    description:
      - The name the record is filed under, normally C({{ inventory_hostname }}).
    type: str
    required: true
  root:
    description:
      - Directory holding the system root to read; V(/) for the running system.
      - Defaults to V(/) unless O(device) is given.
    type: path
  device:
    description:
      - Disk (or partition, or disk image file) holding the offline root; it is mounted read-only
        for the time of the snapshot.
    type: path
  partition:
    description:
      - Number of the partition of O(device) holding the root.
      - Without it, a filesystem on the whole device is used, else the first partition holding
        C(etc/os-release) or a Windows SYSTEM hive.
    type: int
  public_copy:
    description:
      - Also write the record without any secret to this file on the host (mode 0644), for example
        on a small partition that wipe and restore leave alone.
    type: path
  assign:
    description:
      - Give the host this identity instead of reading one from a disk, for a new computer without
        an operating system or to give a host a new identity on purpose. Nothing is read from disk.
      - The record gets a fresh machine-id and fresh SSH host keys (Linux); its network files are
        written at apply time in the format the restored image uses.
      - "Keys: C(hostname) (default: O(inventory_name)); C(os) (V(linux), the default, or
        V(windows)); C(interfaces), a list of C(mac) (required), C(name), C(addresses) (with a
        prefix, IPv4 or IPv6; none means DHCP), C(gateway), C(gateway6), C(dns); default: DHCP on
        every physical NIC of the machine; C(workgroup); C(domain)."
      - "Windows: the computer name and host name go into the registry, static addresses into the
        answer file (O(fleetcast.imaging.identity_apply#module:unattend)), and a new SID only
        through sysprep."
    type: dict
  return_secrets:
    description:
      - Also return the secret file contents (SSH host private keys, keytab, NetworkManager
        C(secret_key) and keyfiles or netplan files holding a password) in RV(secrets), to be
        kept in the controller's store. Run such a task with C(no_log=true).
      - Off by default, so that a result shown or logged carries no secret.
    type: bool
    default: false
extends_documentation_fragment:
  - fleetcast.imaging.attributes
  - fleetcast.imaging.attributes.check_full
notes:
  - The module only reads the root; it changes something only when O(public_copy) is written.
  - Secrets (SSH host private keys, NetworkManager and netplan secrets, keytabs) are never in the
    record, so that it can be shown, compared and copied freely; they are returned, in RV(secrets),
    only with O(return_secrets=true). Run such a task with C(no_log=true) and keep the result on the
    controller in a store file of mode 0600, optionally vault-encrypted (see C(docs/identity.md)).
  - Reading Windows hives needs Debian's C(python3-hivex) on the host.
requirements:
  - python3-hivex (Windows roots only)
seealso:
  - module: fleetcast.imaging.identity_apply
  - module: fleetcast.imaging.identity_conflicts
"""

EXAMPLES = r"""
- name: Save the running system's identity before imaging, with its secrets
  fleetcast.imaging.identity_snapshot:
    inventory_name: "{{ inventory_hostname }}"
    return_secrets: true
  register: identity
  no_log: true

- name: Read the identity of the installed system from a PXE imaging environment
  fleetcast.imaging.identity_snapshot:
    inventory_name: "{{ inventory_hostname }}"
    device: /dev/nvme0n1
    public_copy: /mnt/persist/fleetcast-identity.json
  register: identity
  no_log: true

- name: A new computer without an operating system gets the identity its inventory gives it
  fleetcast.imaging.identity_snapshot:
    inventory_name: "{{ inventory_hostname }}"
    assign:
      hostname: ws-043.corp.example
      interfaces:
        - mac: "52:54:00:12:34:57"
          name: eth0
          addresses: [10.20.0.43/24]
          gateway: 10.20.0.1
          dns: [10.20.0.53]
      workgroup: OFFICE
    return_secrets: true
  register: identity
  no_log: true

- name: Show what was found, without the secrets
  ansible.builtin.debug:
    var: identity.record.summary
"""

RETURN = r"""
record:
  description:
    - The identity record (a versioned JSON document, format C(fleetcast.identity)), without secret
      values (its C(secrets) is empty; they are in RV(secrets)).
  returned: success
  type: dict
  contains:
    version:
      description: Record format version.
      type: int
      sample: 1
    inventory_name:
      description: The name the record is filed under.
      type: str
      sample: ws-042
    os:
      description: V(linux) or V(windows).
      type: str
      sample: linux
    hardware:
      description: SMBIOS UUID (C(product_uuid)), physical NICs (C(interfaces)) and their C(macs).
      type: dict
      sample: {"product_uuid": "4c4c4544-0042-3510-8052-b3c04f4e4d32", "macs": ["52:54:00:12:34:56"]}
    summary:
      description: The identity at a glance; what the conflict check compares.
      type: dict
      sample: {"hostname": "ws-042", "machine_id": "3f2b...", "addresses": ["10.20.0.42"]}
    files:
      description: Linux identity files with kind, mode, owner and (non-secret) base64 content.
      type: list
      elements: dict
    network:
      description: Per network configuration file, its format and each stanza's identity values.
      type: list
      elements: dict
    windows:
      description: Values read from the Windows registry hives.
      type: dict
    notes:
      description: Items that were absent or could not be read.
      type: list
      elements: str
secrets:
  description:
    - Base64 contents of the secret files, keyed by path. Pass them to
      M(fleetcast.imaging.identity_apply) in its O(fleetcast.imaging.identity_apply#module:secrets) option.
  returned: when O(return_secrets=true)
  type: dict
  sample: {"/etc/ssh/ssh_host_ed25519_key": "LS0tLS1CRUdJTi..."}
blank:
  description:
    - On failure, V(true) when the device holds no Linux or Windows system at all (a new or wiped
      disk), rather than one that could not be read.
  returned: failure, when the device holds no system
  type: bool
  sample: true
summary:
  description: Same as RV(record.summary), for logs that hide the record.
  returned: success
  type: dict
  sample: {"hostname": "ws-042", "ssh_fingerprints": ["SHA256:Vb5..."]}
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import FleetcastError
from ansible_collections.fleetcast.imaging.plugins.module_utils._identity import api, store, windows
from ansible_collections.fleetcast.imaging.plugins.module_utils._identity.offline import NoSystemError


def main():
    module = AnsibleModule(
        argument_spec=dict(
            inventory_name=dict(type="str", required=True),
            root=dict(type="path"),
            device=dict(type="path"),
            partition=dict(type="int"),
            public_copy=dict(type="path"),
            return_secrets=dict(type="bool", default=False),
            assign=dict(type="dict"),
        ),
        mutually_exclusive=[("root", "device"), ("assign", "root"), ("assign", "device")],
        required_by={"partition": "device"},
        supports_check_mode=True,
    )
    params = module.params
    try:
        if params["assign"] is not None:
            record = api.assign(params["inventory_name"], params["assign"])
        else:
            record = api.snapshot(params["inventory_name"], root=params["root"], device=params["device"],
                                  partition=params["partition"])
        changed, extra = False, {}
        if params["public_copy"]:
            changed, before, after = store.save_public_copy(params["public_copy"], record,
                                                            check_mode=module.check_mode)
            if module._diff and changed:
                extra["diff"] = dict(before=before, after=after, before_header=params["public_copy"],
                                     after_header=params["public_copy"])
    except windows.HivexMissingError:
        module.fail_json(msg=missing_required_lib("hivex (Debian package python3-hivex)"),
                         exception=windows.HIVEX_IMPORT_ERROR)
    except NoSystemError as err:
        # a new or wiped disk: the roles then take the identity the inventory gives (option assign)
        module.fail_json(msg=str(err), blank=True)
    except FleetcastError as err:
        module.fail_json(msg=str(err))
    if params["return_secrets"]:
        extra["secrets"] = record.secrets
    module.exit_json(changed=changed, record=record.public_dict(), summary=record.summary, **extra)


if __name__ == "__main__":
    main()
