#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: multicast_receive
short_description: Join a fleetcast multicast session and write the image onto disks or into a file
version_added: 0.1.0
description:
  - Joins the session that M(fleetcast.imaging.multicast_send) serves on O(group) and O(port), and
    lays the image straight onto O(devices) as it arrives, or saves it as an image file at O(dest).
  - Only a sender that knows O(session_key) is joined. Every control message is authenticated with
    a key derived from it for that session, replays are refused, and every chunk is checked
    against its authenticated GMAC tag and then against its own SHA-256 before anything is written.
  - With O(devices), the layout is validated against the disks (one device per image disk, large
    enough, not mounted, held, or the boot medium) before anything is touched; then each device is
    wiped, partitioned, written, zeroed where the image says so, and verified.
  - With O(dest), the image file is written as C(DEST.partial) and renamed to O(dest) only once
    its image id matches the one the sender announced. After a failure the C(.partial) file stays,
    marked incomplete by its name, for a resume; except when the file system is full, then it is
    removed (one sentence says so), so that a failed receive does not leave the disk full.
  - With O(resume), a receive that was interrupted (the module killed, the sender stopped, the
    network lost) continues from what it already verified when it is run again for the same image
    (the same image id, layout and output). Every chunk it had written is read back and checked
    against its SHA-256; those that match are kept and not needed again, the rest come from the
    session. Disks are not wiped again (their partition tables must still be the image's, or the
    restore starts over). What was written is tracked in a journal, C(DEST.partial.journal) or a
    file in O(resume_dir), removed once the image is complete. The sender still sends every chunk
    once; a resumed receiver lets them pass.
  - The result's RV(digest) is the image id computed from what this host verified and wrote.
  - In check mode nothing is joined or written; the interface, the devices or the destination
    directory are checked and the plan is reported.
author: fleetcast.imaging developers (@fleetcast)
options:
  devices:
    description:
      - Disks to write, one per image disk, in the image's disk order.
      - Mutually exclusive with O(dest).
    type: list
    elements: path
  dest:
    description:
      - Image file to write instead of disks. Mutually exclusive with O(devices).
    type: path
  grow_last:
    description: With O(devices), grow the last partition (and an ext2/3/4 filesystem in it) to the end of the disk.
    type: bool
    default: false
  name:
    description:
      - Name this receiver reports to the sender (its inventory name), matched against the
        sender's O(fleetcast.imaging.multicast_send#module:expected). Default is its address.
    type: str
  timeout:
    description:
      - Seconds without any authenticated message from the sender (or, before joining, without
        finding the session) after which the module fails and the output counts as incomplete.
    type: int
    default: 30
  window_mib:
    description: Memory in MiB for objects being reassembled, verified and written; bounds the receiver's memory whatever the image size.
    type: int
    default: 40
  mode:
    description: Permissions of the image file written at O(dest).
    type: raw
    default: '0600'
  resume:
    description:
      - Keep a journal of what was written and, when a previous receive of the same image onto the
        same output was interrupted, continue from the chunks it verified (see the description).
      - V(false) always starts over and keeps no journal.
    type: bool
    default: true
  resume_dir:
    description: With O(devices), directory of the resume journal (one file per set of devices).
    type: path
    default: /var/lib/fleetcast/resume
extends_documentation_fragment:
  - fleetcast.imaging.multicast_session
  - fleetcast.imaging.attributes
  - fleetcast.imaging.attributes.check_full
notes:
  - Start receivers before the sender (for example with C(async)); a receiver that starts late
    still joins and completes, as long as the sender is still serving.
seealso:
  - module: fleetcast.imaging.multicast_send
  - module: fleetcast.imaging.image_restore
"""

EXAMPLES = r"""
- name: Receive the session straight onto the first disk
  fleetcast.imaging.multicast_receive:
    devices: [/dev/sda]
    interface: eth0
    session_key: "{{ session_key }}"
    name: "{{ inventory_hostname }}"
  async: 3600
  poll: 0
  register: receive_job
  no_log: true

- name: Keep a copy of the session as an image file
  fleetcast.imaging.multicast_receive:
    dest: /srv/images/copy.fcimg
    session_key: "{{ session_key }}"
"""

RETURN = r"""
bytes:
  description: Bytes of image objects verified and written.
  returned: success
  type: int
  sample: 536870912
chunks:
  description: Chunks written in this run (the layout not counted).
  returned: success
  type: int
  sample: 128
resumed_chunks:
  description: Chunks an interrupted earlier receive had written and that verified, so were kept (see O(resume)).
  returned: success
  type: int
  sample: 0
repairs_asked:
  description: Fragments and whole objects this receiver asked the sender for again.
  returned: success
  type: int
  sample: 12
seconds:
  description: Time from the start of the module to the last chunk written.
  returned: success
  type: float
  sample: 4.2
digest:
  description: Image id computed from what was verified and written; equals the image's image id.
  returned: success
  type: str
  sample: 9f2c0c2b5a0e5f1e6f0d7e3c1a4b2d6e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c
sender:
  description: Address of the sender.
  returned: success
  type: str
  sample: 10.0.0.1
offload:
  description: Whether UDP GRO was in use.
  returned: success
  type: bool
encrypted:
  description: Whether the sender encrypted the session.
  returned: success
  type: bool
rejoins:
  description:
    - Times the group went silent for this host and it reported its membership again (an
      IGMP-snooping switch that forgot its port); 0 or 1 is normal, more points at the switch.
  returned: success
  type: int
  sample: 0
plan:
  description: In check mode, what would be done.
  returned: check mode
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import FleetcastError
from ansible_collections.fleetcast.imaging.plugins.module_utils._multicast import session


def main():
    module = AnsibleModule(
        argument_spec=dict(
            devices=dict(type="list", elements="path"),
            dest=dict(type="path"),
            grow_last=dict(type="bool", default=False),
            interface=dict(type="str", default="eth0"),
            group=dict(type="str", default="239.255.42.1"),
            port=dict(type="int", default=9000),
            session_key=dict(type="str", required=True, no_log=True),
            name=dict(type="str"),
            timeout=dict(type="int", default=30),
            window_mib=dict(type="int", default=40),
            offload=dict(type="bool", default=True),
            dscp=dict(type="int", default=0),
            mode=dict(type="raw", default="0600"),
            resume=dict(type="bool", default=True),
            resume_dir=dict(type="path", default="/var/lib/fleetcast/resume"),
        ),
        mutually_exclusive=[("devices", "dest")],
        required_one_of=[("devices", "dest")],
        supports_check_mode=True,
    )
    missing = session.missing_library(disks=bool(module.params["devices"]))
    if missing:
        module.fail_json(msg=missing_required_lib(missing[0]), exception=missing[1])
    error = None
    try:
        report = session.receive(session.ReceiveSpec.from_options(module.params), module.check_mode)
    except FleetcastError as err:
        error = str(err)
    if error:
        # Outside the except block, so that the user sees the sentence and not a traceback.
        module.fail_json(msg=error)
    module.exit_json(**report)


if __name__ == "__main__":
    main()
