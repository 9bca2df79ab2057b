#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: multicast_send
short_description: Serve a fleetcast image to many hosts at once over IP multicast
version_added: 0.1.0
description:
  - Serves one multicast session on O(group) and O(port) to the receivers started with
    M(fleetcast.imaging.multicast_receive), from an image file (O(image)) or from a live master
    captured on the fly (O(source_devices)), spooled to a temporary file so repairs can be read back.
  - Starts when every O(expected) receiver has joined, or when O(min_receivers) have and
    O(max_wait) seconds have passed. There is no per-slice barrier; receivers report losses and the
    sender repairs them (once per loss for the whole group), then serves what late or restarted
    receivers still miss. A receiver silent for O(receiver_timeout) seconds, or reporting for 30 s
    without receiving anything, is dropped without slowing the others, and served again if it comes
    back while the session runs.
  - The rate is capped by O(rate_mbit) and backs off while receivers report datagrams they had to drop.
  - Control messages are authenticated with keys derived from O(session_key) for this session only;
    O(encrypt) also encrypts every chunk with AES-GCM.
  - The module fails if the session could not start, or if no receiver completed. It succeeds
    otherwise and reports every receiver as V(done) (with the digest it reported and whether it
    matches the image id), V(dropped) (why and when), V(failed) (it gave up, with its own reason),
    V(never_joined) or V(incomplete).
  - In check mode the image (or the master's disks) is read for its size and image id and the plan
    is reported; nothing is sent.
author: fleetcast.imaging developers (@fleetcast)
options:
  image:
    description: Image file to serve. Mutually exclusive with O(source_devices).
    type: path
  source_devices:
    description: Disks of a live master to capture and serve on the fly. Mutually exclusive with O(image).
    type: list
    elements: path
  chunk_size_mib:
    description: With O(source_devices), the size of one chunk in MiB.
    type: int
    default: 4
  compression_level:
    description:
      - With O(source_devices), the zstd level of the chunks.
      - Lower than M(fleetcast.imaging.image_capture)'s default (4) because the capture feeds the
        session as it runs; level 3 captures about 1.3 times faster for about 0.7 % more bytes.
    type: int
    default: 3
  spool_dir:
    description: With O(source_devices), where the temporary spool of captured chunks is kept (deleted at the end).
    type: path
  ttl:
    description: Multicast TTL; 1 keeps the session on the local network.
    type: int
    default: 1
  expected:
    description: Receivers expected to join, by the name they report (their inventory name) or their address.
    type: list
    elements: str
    default: []
  min_receivers:
    description: Receivers that must have joined for the session to start once O(max_wait) has passed.
    type: int
    default: 1
  max_wait:
    description:
      - Seconds to wait for the O(expected) receivers before starting with those present; also how
        long, from the start, a missing expected receiver may still join.
    type: int
    default: 60
  rate_mbit:
    description: Maximum send rate in Mbit/s; V(0) leaves the rate to the adaptive back-off alone.
    type: int
    default: 0
  receiver_timeout:
    description: Seconds without a report after which a receiver is dropped.
    type: int
    default: 8
  encrypt:
    description: Encrypt every chunk with AES-GCM (key derived from O(session_key) for this session).
    type: bool
    default: false
  progress_file:
    description:
      - File to keep replacing with a JSON progress object (C(bytes_done), C(bytes_total),
        C(message), C(receivers)), for M(fleetcast.imaging.progress).
    type: path
  public_key:
    description:
      - An Ed25519 public key (PEM or an OpenSSH C(ssh-ed25519) line), inline or as a path. When
        given, O(image) is sent only if O(signature) holds a valid signature of its image id by
        this key (see M(fleetcast.imaging.image_sign)); a missing or bad signature fails the task,
        in one sentence, before the session starts. Not with O(source_devices).
    type: str
  signature:
    description: The image's signature file; defaults to O(image) with C(.sig) appended.
    type: path
extends_documentation_fragment:
  - fleetcast.imaging.multicast_session
  - fleetcast.imaging.attributes
  - fleetcast.imaging.attributes.check_full
seealso:
  - module: fleetcast.imaging.multicast_receive
  - module: fleetcast.imaging.progress
"""

EXAMPLES = r"""
- name: Serve an image to the whole play
  fleetcast.imaging.multicast_send:
    image: /srv/images/lab-master.fcimg
    interface: eth0
    session_key: "{{ session_key }}"
    expected: "{{ ansible_play_hosts }}"
    min_receivers: 2
    max_wait: 120
  delegate_to: imageserver
  run_once: true
  no_log: true

- name: Serve the master's own disk while it is captured
  fleetcast.imaging.multicast_send:
    source_devices: [/dev/sdb]
    session_key: "{{ session_key }}"
    rate_mbit: 800
    encrypt: true
"""

RETURN = r"""
receivers:
  description: One entry per receiver that joined or was expected.
  returned: success
  type: list
  elements: dict
  contains:
    name:
      description: Name the receiver reported, or the expected name it matched.
      type: str
    address:
      description: Its address.
      type: str
    state:
      description: V(done), V(dropped), V(failed), V(never_joined) or V(incomplete).
      type: str
    digest:
      description: The digest (image id) the receiver computed from what it wrote.
      type: str
    digest_matches:
      description: Whether that digest is the image id.
      type: bool
    reason:
      description: Why it was dropped, failed or never joined.
      type: str
    joined_at:
      description: Seconds from the start when it joined.
      type: float
    finished_at:
      description: Seconds from the start when it finished or was dropped.
      type: float
    objects:
      description: Objects (the layout and the chunks) it reported delivered.
      type: int
    requests:
      description: Repair requests it sent (runs of fragments, whole objects, META entries).
      type: int
    holds:
      description: Objects whose first sending waited for room at this receiver (flow control).
      type: int
    readmitted:
      description: Times it was dropped and then served again because it came back.
      type: int
    loss_cuts:
      description:
        - Times the sending rate was cut to what this receiver took, because it lost far more of
          what was sent than random loss explains (a slow link, NIC or hypervisor queue ahead of it).
      type: int
  sample:
    - {name: pc1, address: 10.0.0.11, state: done, digest: 9f2c, digest_matches: true, reason: ""}
    - {name: pc2, address: 10.0.0.12, state: dropped, reason: "no message for 8 s (had 40 objects)"}
image_id:
  description: Image id of what was served.
  returned: success
  type: str
objects:
  description: Objects served (the layout and every chunk).
  returned: success
  type: int
bytes_sent:
  description: Bytes of datagrams sent, repairs included.
  returned: success
  type: int
repair_datagrams:
  description: Datagrams sent again for receivers that lost them.
  returned: success
  type: int
flow_holds:
  description:
    - Objects whose first sending waited because a receiver had no room for them yet (its disk or
      CPU was behind); the C(holds) of each entry in RV(receivers) shows which host paced the session.
  returned: success
  type: int
  sample: 42
skipped_chunks:
  description:
    - Chunks not sent at all because every receiver already held them (receives of this image that
      resumed where they were interrupted); a receiver that joins later fetches them as it fetches
      anything it lacks.
  returned: success
  type: int
  sample: 0
rate_cuts_for_loss:
  description:
    - Times the sending rate was cut (and not restored) because a receiver lost far more of what was
      sent than random loss explains (a slower path ahead of it, such as its NIC, a hypervisor's
      queue or a switch port). The C(loss_cuts) of each entry in RV(receivers) shows which host it was.
  returned: success
  type: int
  sample: 0
seconds:
  description: Length of the session.
  returned: success
  type: float
offload:
  description: Whether UDP GSO was in use.
  returned: success
  type: bool
encrypted:
  description: Whether the session was encrypted.
  returned: success
  type: bool
plan:
  description: In check mode, what would be served and how.
  returned: check mode
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import FleetcastError
from ansible_collections.fleetcast.imaging.plugins.module_utils._multicast import session


def main():
    module = AnsibleModule(
        argument_spec=dict(
            image=dict(type="path"),
            source_devices=dict(type="list", elements="path"),
            chunk_size_mib=dict(type="int", default=4),
            compression_level=dict(type="int", default=3),
            spool_dir=dict(type="path"),
            interface=dict(type="str", default="eth0"),
            group=dict(type="str", default="239.255.42.1"),
            port=dict(type="int", default=9000),
            ttl=dict(type="int", default=1),
            session_key=dict(type="str", required=True, no_log=True),
            expected=dict(type="list", elements="str", default=[]),
            min_receivers=dict(type="int", default=1),
            max_wait=dict(type="int", default=60),
            rate_mbit=dict(type="int", default=0),
            receiver_timeout=dict(type="int", default=8),
            encrypt=dict(type="bool", default=False),
            offload=dict(type="bool", default=True),
            dscp=dict(type="int", default=0),
            progress_file=dict(type="path"),
            public_key=dict(type="str"),
            signature=dict(type="path"),
        ),
        mutually_exclusive=[("image", "source_devices"), ("public_key", "source_devices")],
        required_one_of=[("image", "source_devices")],
        supports_check_mode=True,
    )
    missing = session.missing_library()
    if missing:
        module.fail_json(msg=missing_required_lib(missing[0]), exception=missing[1])
    failure, report = None, {}
    try:
        report = session.serve(session.SendSpec.from_options(module.params), module.check_mode)
    except session.SessionFailed as err:
        failure, report = str(err), err.report
    except FleetcastError as err:
        failure = str(err)
    if failure:
        # Outside the except blocks, so that the user sees the sentence and not a traceback.
        module.fail_json(msg=failure, **report)
    module.exit_json(**report)


if __name__ == "__main__":
    main()
