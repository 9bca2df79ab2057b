#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: identity_apply
short_description: Give a freshly imaged host its own identity back
version_added: 0.1.0
description:
  - Writes a record saved by M(fleetcast.imaging.identity_snapshot) onto a restored root, replacing
    the master's host name, addresses, machine-id, SSH host keys, Samba names and (Windows)
    ComputerName, Tcpip host names and per-interface IPv4 settings.
  - Identity files (host name, C(/etc/hosts), machine-id, SSH host keys, keytab, NetworkManager
    C(secret_key), and every network file of netplan, NetworkManager, ifupdown, systemd-networkd
    including C(.link) files, ifcfg and udev persistent-net rules) are written whole as saved, with
    the saved mode and owner (secrets never more open than 0600). The master's identity files and
    network files that the host did not have are removed (a value-free DHCP file stays only when
    the host had no network file at all). Only C(smb.conf) keeps the image's content, with the
    host's workgroup and NetBIOS name put in.
  - "Windows: the names and every NIC's IPv4 settings go into every control set; a restored
    interface is the host's by GUID, device instance or MAC; the master's other interfaces become
    DHCP; a static NIC of the host with no place in the registry fails the task unless O(unattend)
    carries it."
  - A record made by O(fleetcast.imaging.identity_snapshot#module:assign) gets its network files
    in the format the restored image uses.
  - Everything is planned (and every hive opened and checked) before the first write; a
    second run changes nothing.
  - What cannot be restored faithfully is said in RV(notes) with the supported path, namely a domain
    membership (re-join) and a Windows machine SID (sysprep with the O(unattend) answer file).
author: fleetcast.imaging developers (@fleetcast)
options:
  record:
    description:
      - The identity record, as returned by M(fleetcast.imaging.identity_snapshot) in C(record).
    type: dict
  secrets:
    description:
      - The record's secrets, as returned by M(fleetcast.imaging.identity_snapshot) in C(secrets)
        (base64 file contents by path). Needed when the record has secret items (SSH host keys).
      - Never logged.
    type: dict
    default: {}
  record_path:
    description:
      - A record file on the host, instead of O(record), in the store format the roles write (see
        C(docs/identity.md)), that is the JSON object with the keys C(record) and C(secrets), as a
        whole ansible-vault file or in clear; a bare record with its C(secrets) is read too.
        O(secrets) adds to its secrets.
    type: path
  vault_password:
    description:
      - Password of a vault-encrypted O(record_path) file, or of secret values encrypted one by
        one (the older store format) there or in O(secrets).
      - Decrypting needs ansible-core's vault library on the host the module runs on (the
        controller has it, an imaging environment usually not); the roles decrypt the store on
        the controller and pass O(record) and O(secrets) instead.
      - Never logged.
    type: str
  root:
    description:
      - Directory holding the root to write; V(/) for the running system.
      - Defaults to V(/) unless O(device) is given.
    type: path
  device:
    description:
      - Disk (or partition, or disk image file) holding the restored root; mounted read-write for
        the time of the apply (read-only in check mode) and unmounted. The boot medium and
        mounted disks are refused.
    type: path
  partition:
    description:
      - Number of the partition of O(device) holding the root; found automatically when omitted.
    type: int
  force:
    description:
      - Apply a record whose hardware identity (SMBIOS UUID, MACs) is not this machine's.
    type: bool
    default: false
  unattend:
    description:
      - For a Windows record, also write a sysprep answer file (C(unattend.xml)) to this path on
        the host, with ComputerName, per-MAC static TCP/IP settings and the workgroup.
    type: path
extends_documentation_fragment:
  - fleetcast.imaging.attributes
  - fleetcast.imaging.attributes.check_full
notes:
  - On a running system (O(root=/)) the files change at once; services read them when restarted
    or at the next boot.
  - Once written, the root is read again and compared with the record, item by item; anything that
    still differs fails the task, naming the items.
  - With C(--diff), the content of secret files (keys, keyfiles holding a psk or password) is shown
    as its size only, whether written or removed.
requirements:
  - python3-hivex (Windows roots only)
seealso:
  - module: fleetcast.imaging.identity_snapshot
"""

EXAMPLES = r"""
- name: Give each participant its identity back after the multicast session
  fleetcast.imaging.identity_apply:
    record: "{{ saved_identity.record }}"
    secrets: "{{ saved_identity.secrets }}"
    device: /dev/nvme0n1

- name: Windows participant; also leave a sysprep answer file for the supported SID change
  fleetcast.imaging.identity_apply:
    record: "{{ saved_identity.record }}"
    secrets: "{{ saved_identity.secrets }}"
    device: /dev/sda
    partition: 3
    unattend: /mnt/persist/unattend-{{ inventory_hostname }}.xml
"""

RETURN = r"""
changes:
  description:
    - What was (or in check mode would be) changed, one entry per file or registry value, and the
      O(unattend) answer file when it was (or would be) written.
  returned: always
  type: list
  elements: dict
  sample: [{"path": "/etc/hostname", "item": "hostname", "action": "write", "mode": "0644", "secret": false}]
notes:
  description: What could not be restored faithfully, and what to do about it.
  returned: always
  type: list
  elements: str
  sample: ["Domain membership cannot be restored faithfully (the machine account password rotates): re-join the domain."]
unattend:
  description: Path of the answer file written, when O(unattend) was given for a Windows record.
  returned: when O(unattend) was given
  type: str
"""


from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import FleetcastError
from ansible_collections.fleetcast.imaging.plugins.module_utils._identity import api, store, windows
from ansible_collections.fleetcast.imaging.plugins.module_utils._identity.record import IdentityRecord
from ansible_collections.fleetcast.imaging.plugins.module_utils._identity.rootfs import atomic_write


def _write_unattend(module, record, path):
    """Write the answer file; True when it changed."""
    text = windows.unattend_xml(record).encode("utf-8")
    try:
        with open(path, "rb") as handle:
            if handle.read() == text:
                return False
    except OSError:
        pass
    if not module.check_mode:
        # it names the host and its addresses, nothing secret; keep it private all the same
        try:
            atomic_write(path, text, 0o600)
        except OSError as err:
            module.fail_json(msg="Cannot write the answer file %s: %s." % (path, err.strerror))
    return True


def main():
    module = AnsibleModule(
        argument_spec=dict(
            record=dict(type="dict"),
            secrets=dict(type="dict", default={}, no_log=True),
            record_path=dict(type="path"),
            vault_password=dict(type="str", no_log=True),
            root=dict(type="path"),
            device=dict(type="path"),
            partition=dict(type="int"),
            force=dict(type="bool", default=False),
            unattend=dict(type="path"),
        ),
        mutually_exclusive=[("record", "record_path"), ("root", "device")],
        required_one_of=[("record", "record_path")],
        required_by={"partition": "device"},
        supports_check_mode=True,
    )
    params = module.params
    extra = {}
    try:
        if params["record_path"]:
            record = store.load_record(params["record_path"], vault_password=params["vault_password"])
        else:
            record = IdentityRecord.from_dict(params["record"], source="the record option")
        record.secrets.update(params["secrets"])
        store.decrypt_secrets(record, params["vault_password"], params["record_path"] or "the record option")
        if params["unattend"] and record.os != "windows":
            # checked before anything is written
            module.fail_json(msg="unattend applies to Windows records only; the record of %s is for %s."
                             % (record.inventory_name, record.os))
        result = api.apply(record, root=params["root"], device=params["device"], partition=params["partition"],
                           force=params["force"], check_mode=module.check_mode,
                           unattend=bool(params["unattend"]))
        changed = result.changed
        if params["unattend"]:
            if _write_unattend(module, record, params["unattend"]):
                changed = True
                result.changes.append({"path": params["unattend"], "item": "unattend", "action": "write",
                                       "mode": "0600", "secret": False})
            extra["unattend"] = params["unattend"]
    except windows.HivexMissingError:
        module.fail_json(msg=missing_required_lib("hivex (Debian package python3-hivex)"),
                         exception=windows.HIVEX_IMPORT_ERROR)
    except FleetcastError as err:
        module.fail_json(msg=str(err))
    if module._diff:
        extra["diff"] = result.diff
    module.exit_json(changed=changed, changes=result.changes, notes=result.notes, **extra)


if __name__ == "__main__":
    main()
