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
    its image id matches the one the sender announced; after a failure the C(.partial) file stays,
    marked incomplete by its name.
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
  interface:
    description: Network interface on the imaging LAN; its IPv4 address is used.
    type: str
    default: eth0
  group:
    description: IPv4 multicast group of the session.
    type: str
    default: 239.255.42.1
  port:
    description: UDP port of the session.
    type: int
    default: 9000
  session_key:
    description: The session's secret key, the same as the sender's (a fresh random one per session).
    type: str
    required: true
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
    default: 48
  offload:
    description:
      - Use UDP GRO (the kernel hands over runs of datagrams as one buffer) where the kernel offers
        it. V(false) receives each datagram on its own (still many per C(recvmmsg) call); the
        environment variable E(FLEETCAST_NO_OFFLOAD=1) does the same.
    type: bool
    default: true
  mode:
    description: Permissions of the image file written at O(dest).
    type: raw
    default: '0600'
extends_documentation_fragment:
  - fleetcast.imaging.attributes
  - fleetcast.imaging.attributes.check_full
requirements:
  - python3-numpy, python3-zstandard and python3-cryptography on the target (Debian packages)
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
  description: Chunks written (the layout not counted).
  returned: success
  type: int
  sample: 128
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

import json
import os
import threading
import time

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import FleetcastError, ImageError, ValidationError
from ansible_collections.fleetcast.imaging.plugins.module_utils._image.format import ChunkRecord, ImageWriter, Manifest
from ansible_collections.fleetcast.imaging.plugins.module_utils._image.restore import RestoreSession
from ansible_collections.fleetcast.imaging.plugins.module_utils._image import format as image_format
from ansible_collections.fleetcast.imaging.plugins.module_utils._disk import requirements
from ansible_collections.fleetcast.imaging.plugins.module_utils._transport.netio import NUMPY_IMPORT_ERROR, interface_address
from ansible_collections.fleetcast.imaging.plugins.module_utils._transport.receiver import Receiver, ReceiverConfig


class DiskSink(object):
    """Objects of the session onto the disks through a RestoreSession (validated at object 0)."""

    def __init__(self, devices, grow_last):
        self.devices = devices
        self.grow_last = grow_last
        self.session = None
        self.result = None
        self.entries = {}
        self.lock = threading.Lock()

    @property
    def chunks(self):
        return len(self.entries)

    def __call__(self, index, data):
        if index == 0:
            self.session = RestoreSession(json.loads(bytes(data)), self.devices, self.grow_last)
            self.session.validate()
            self.session.prepare()
            return
        record = ChunkRecord.from_bytes(data)
        self.session.write(record)        # checks the chunk's own digest before writing
        with self.lock:
            self.entries[record.index] = record.entry()

    def finish(self, announced):
        # finish() checks that what was written has the announced image id, then grows and rereads.
        entries = [self.entries[index] for index in sorted(self.entries)]
        self.result = self.session.finish(Manifest(self.session.layout, entries, announced.hex()))
        return bytes.fromhex(self.result.image_id)

    def abort(self):
        if self.session is not None:
            self.session.abort()


class FileSink(object):
    """Objects of the session into an image file, renamed into place once complete."""

    def __init__(self, dest, mode):
        self.dest = dest
        self.partial = dest + ".partial"
        self.mode = mode
        self.handle = None
        self.writer = None
        self.chunks = 0
        self.lock = threading.Lock()

    def __call__(self, index, data):
        with self.lock:
            if index == 0:
                fd = os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, self.mode)
                self.handle = os.fdopen(fd, "wb", buffering=1 << 20)
                self.writer = ImageWriter(self.handle, json.loads(bytes(data)))
                return
            record = ChunkRecord.from_bytes(data)
            record.decompress_verified()        # the chunk's own digest, before it is kept
            self.writer.add(record)
            self.chunks += 1

    def finish(self, announced):
        manifest = self.writer.close()
        if manifest.image_id != announced.hex():
            raise ImageError("The image received into %s has image id %s, not the announced %s; it stays as %s."
                             % (self.dest, manifest.image_id, announced.hex(), self.partial))
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        self.handle = None
        os.chmod(self.partial, self.mode)
        os.replace(self.partial, self.dest)
        return bytes.fromhex(manifest.image_id)

    def abort(self):
        if self.handle is not None:
            self.handle.close()


def check_plan(module, address):
    params = module.params
    if NUMPY_IMPORT_ERROR:
        module.fail_json(msg=missing_required_lib("numpy (apt: python3-numpy)"), exception=NUMPY_IMPORT_ERROR)
    if image_format.ZSTD_IMPORT_ERROR:
        module.fail_json(msg=missing_required_lib("zstandard (apt: python3-zstandard)"),
                         exception=image_format.ZSTD_IMPORT_ERROR)
    plan = {"interface": params["interface"], "address": address, "group": params["group"], "port": params["port"]}
    if params["devices"]:
        from ansible_collections.fleetcast.imaging.plugins.module_utils._disk import safety
        for device in params["devices"]:
            safety.check_target(device)
        plan["devices"] = params["devices"]
    else:
        directory = os.path.dirname(os.path.abspath(params["dest"]))
        if not os.access(directory, os.W_OK):
            raise ValidationError("Directory %s is not writable, so %s cannot be received." % (directory, params["dest"]))
        plan["dest"] = params["dest"]
    return plan


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
            window_mib=dict(type="int", default=48),
            offload=dict(type="bool", default=True),
            mode=dict(type="raw", default="0600"),
        ),
        mutually_exclusive=[("devices", "dest")],
        required_one_of=[("devices", "dest")],
        supports_check_mode=True,
    )
    params = module.params
    started = time.monotonic()
    sink = None
    try:
        # Every library and tool the whole receive needs, in check mode and for real, before the
        # session starts (the layout's own needs are checked again at object 0, before the wipe).
        requirements.require(
            ("numpy", "zstandard") + (("parted",) if params["devices"] else ()),
            requirements.RESTORE_TOOLS if params["devices"] else (),
            "receive onto %s" % ", ".join(params["devices"] or [params["dest"]]))
        address = interface_address(params["interface"])
        if module.check_mode:
            module.exit_json(changed=True, plan=check_plan(module, address))
        if params["devices"]:
            sink = DiskSink(params["devices"], params["grow_last"])
        else:
            mode = int(params["mode"], 8) if isinstance(params["mode"], str) else int(params["mode"])
            sink = FileSink(params["dest"], mode)
        config = ReceiverConfig(
            group=params["group"], port=params["port"], address=address,
            session_key=params["session_key"].encode("utf-8"), name=params["name"] or address,
            timeout=float(params["timeout"]), window_bytes=params["window_mib"] * 1024 * 1024,
            offload=None if params["offload"] else False, layout_first=True)
        result = Receiver(config, sink, finish=sink.finish).run()
    except FleetcastError as err:
        if sink is not None:
            sink.abort()
        module.fail_json(msg=str(err))
    module.exit_json(
        changed=True, bytes=result.bytes, chunks=sink.chunks,
        repairs_asked=result.fragment_requests + result.object_requests,
        seconds=round(time.monotonic() - started, 3), digest=result.digest, sender=result.sender,
        offload=result.gro, encrypted=result.encrypted, rejoins=result.rejoins)


if __name__ == "__main__":
    main()
