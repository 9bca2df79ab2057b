#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: image_restore
short_description: Lay a fleetcast image file down onto target disks
version_added: 0.1.0
description:
  - Restores an image made by M(fleetcast.imaging.image_capture) onto one target per image disk
    (or per captured partition), in the order of the image's disks.
  - Validates everything before the first byte is written. Every chunk of the image is checked
    against its SHA-256 digest; every target must exist, be large enough, and be neither
    mounted, held, nor the boot medium; there must be exactly one target per image disk.
  - Then wipes each target (every signature and partition table), recreates the partition table
    (same label, numbers, sectors, types, names, flags and GUIDs), writes every data chunk, zeroes
    every range the image recorded as zeros, and tells the kernel to re-read the table. Ranges the
    filesystems mark as free are not written and may keep old bytes.
  - Idempotent. A target already holding the image (same partition table, every data and zero
    range reading back with its digest; checked read-only) is reported unchanged and not written.
  - In check mode the same validation and comparison run and the plan is reported; nothing is written.
  - A GPT image restores onto a disk with another logical sector size (512 and 4096 bytes); the
    table is rewritten in the target's sectors when every partition starts 4 KiB aligned. FAT and
    NTFS filesystems whose sector size differs from the target's, and XFS or ext filesystems whose
    sector or block size is smaller, are refused before anything is written, as are msdos tables
    (see C(docs/disks.md)).
author: fleetcast.imaging developers (@fleetcast)
options:
  image:
    description: Path of the image file on the target host.
    type: path
    required: true
  targets:
    description:
      - The devices to restore onto, one per disk of the image, in the image's order (see
        M(fleetcast.imaging.image_info)). Whole disks for a disk image, partitions or any block
        device for an image of partitions. Regular files (raw disk images) work too.
      - Everything on them is destroyed unless they already hold this image.
    type: list
    elements: path
    required: true
  grow_last_partition:
    description:
      - Let the partition that ends last fill a larger target, and grow its ext2/3/4 filesystem
        with C(resize2fs). Other filesystems keep their size inside the grown partition.
      - A target that was grown no longer reads back as the image's chunks. The result then carries
        RV(stamp), which records what the grow left, and keeps it in O(state_dir); a later run
        finds it there (or is given it as O(recorded)) and targets that still match it are
        reported unchanged and not written.
    type: bool
    default: false
  recorded:
    description:
      - The RV(stamp) of an earlier run with O(grow_last_partition) or O(shrink_last_partition).
        When the targets still hold exactly what that run left (same image, same targets, same
        fingerprint of the disks), the restore is unchanged (in check mode too) and nothing is read
        from the image or written.
      - Without it, the stamp kept in O(state_dir) by the last such run onto the same targets is
        used; without either, a target that an earlier run grew or shrank is restored again, since
        a resized partition never reads back as the image's chunks.
    type: dict
  state_dir:
    description:
      - Directory on the target host where a run with O(grow_last_partition) or
        O(shrink_last_partition) keeps its RV(stamp) (one file per set of targets, mode 0600), and
        where a later run finds it when O(recorded) is not given, so that running the same task
        again is unchanged. An empty string keeps nothing.
      - The stamp holds no secret (the image id, the targets and a fingerprint). A target changed
        since, or another image, is restored again whatever the stamp says.
    type: path
    default: /var/lib/fleetcast/restore
  shrink_last_partition:
    description:
      - Restore onto a target smaller than the image's disk by cutting back the partition that ends
        last to the target's end, when its filesystem is ext2/3/4 or NTFS and its used data fits.
      - That filesystem is laid down in a sparse file in O(scratch_dir), shrunk there (C(resize2fs),
        C(ntfsresize); data past the new end is moved) and its used blocks written to the target. A
        shrunk NTFS is left marked for a C(chkdsk) at Windows' next boot, as C(ntfsresize) leaves it.
      - Refused before anything is written, with the sizes, when the filesystem cannot be shrunk,
        its used bytes (plus 32 MiB) do not fit, or O(scratch_dir) lacks the room.
      - Bytes stored from the gap after a resized (grown or shrunk) last partition are not written.
      - A shrunk target no longer reads back as the image's chunks. The result carries RV(stamp),
        which records what the shrink left, and keeps it in O(state_dir); a later run finds it there
        (or is given it as O(recorded)) and targets that still match it are reported unchanged and
        not written.
    type: bool
    default: false
  scratch_dir:
    description: Directory for the shrink's sparse scratch file; the system's temporary directory by default.
    type: path
  threads:
    description: Threads verifying and writing chunks; V(0) means one per CPU.
    type: int
    default: 0
  public_key:
    description:
      - An Ed25519 public key (PEM, or an OpenSSH C(ssh-ed25519) line), inline or as a path on the
        target host. When given, the image is restored only if O(signature) holds a valid signature
        of its image id by this key (see M(fleetcast.imaging.image_sign)); a missing or bad
        signature fails the task, in one sentence, before anything is written.
    type: str
  signature:
    description: The image's signature file; defaults to the image path with C(.sig) appended.
    type: path
extends_documentation_fragment:
  - fleetcast.imaging.attributes
  - fleetcast.imaging.attributes.check_full
notes:
  - Needs C(wipefs), C(losetup), and for O(grow_last_partition) C(e2fsck) and C(resize2fs); for
    O(shrink_last_partition) also C(ntfsresize) (ntfs-3g) for NTFS.
  - Restoring through a multicast session is M(fleetcast.imaging.multicast_receive); it uses the
    same engine.
seealso:
  - module: fleetcast.imaging.image_capture
  - module: fleetcast.imaging.image_info
"""

EXAMPLES = r"""
- name: Restore the workstation image onto the first disk
  fleetcast.imaging.image_restore:
    image: /srv/images/workstation.fcimg
    targets: [/dev/sda]
    grow_last_partition: true
  register: restored

- name: Again later, from another controller (the stamp given, not found in state_dir)
  fleetcast.imaging.image_restore:
    image: /srv/images/workstation.fcimg
    targets: [/dev/sda]
    grow_last_partition: true
    recorded: "{{ restored.stamp }}"

- name: Restore only an image signed by the controller's key
  fleetcast.imaging.image_restore:
    image: /srv/images/workstation.fcimg
    targets: [/dev/sda]
    public_key: "{{ lookup('ansible.builtin.file', 'keys/images.pub') }}"

- name: Restore onto a smaller disk, shrinking the last partition (a re-run is unchanged)
  fleetcast.imaging.image_restore:
    image: /srv/images/workstation.fcimg
    targets: [/dev/sdb]
    shrink_last_partition: true

- name: Show what a restore would do, without writing
  fleetcast.imaging.image_restore:
    image: /srv/images/workstation.fcimg
    targets: [/dev/nvme0n1]
  check_mode: true
  register: plan
"""

RETURN = r"""
stamp:
  description:
    - With O(grow_last_partition) or O(shrink_last_partition), what the targets hold after the
      restore and the resize (image id, targets, a SHA-256 fingerprint of their layout and used
      bytes); pass it as O(recorded) next time.
  returned: when grow_last_partition or shrink_last_partition is set and the restore ran, or was found unchanged by its stamp
  type: dict
state_file:
  description: Where the RV(stamp) was kept (null when O(state_dir) is empty or the file could not be written).
  returned: when a restore with grow_last_partition or shrink_last_partition ran
  type: str
  sample: /var/lib/fleetcast/restore/3f1c0a9e2b7d4c5a8e6f1b2c3d4e5f60.json
image_id:
  description: The image id (SHA-256 over the layout and the chunk table).
  returned: always
  type: str
  sample: 99c4d9939c84d443c790bbfcabc184b90f253acd7fccb9b36343bfb080d74d6c
chunk_count:
  description: Number of chunks in the image.
  returned: always
  type: int
  sample: 212
chunks_written:
  description: Chunks written or zeroed on the targets (0 when unchanged or in check mode).
  returned: always
  type: int
  sample: 212
data_bytes_written:
  description: Bytes of data written.
  returned: always
  type: int
  sample: 31457280
zero_bytes_written:
  description: Bytes zeroed because the image recorded them as zeros.
  returned: always
  type: int
  sample: 67108864
plan:
  description: What was (or, in check mode, would be) done per target.
  returned: always
  type: dict
  contains:
    changed:
      description: Whether any target is (or would be) written.
      type: bool
    targets:
      description: >-
        One entry per target with C(target), C(disk) (image disk index), C(kind), C(target_size),
        C(image_size), C(label), C(partitions) (number, start, end, name as they will be written),
        C(current) (the partitions the target has now), C(wipe) (what wiping removes, one line
        each), C(grow_partition), C(grow_filesystem), C(sector_conversion) (V(512 -> 4096) when the
        table is rewritten for the target's sector size, else null),
        C(shrink_partition), C(shrink_filesystem),
        C(shrink_bytes) (the shrunk partition's size), C(skipped) (image regions not written, and why),
        C(state) (V(restore) or V(unchanged)) and C(reason).
      type: list
      elements: dict
  sample:
    changed: true
    targets:
      - target: /dev/sda
        disk: 0
        kind: disk
        state: restore
        reason: its partition table differs from the image's
        wipe: ["partition table: gpt", "partition 1: sectors 2048-104447 (ext4)"]
        label: gpt
        partitions: [{number: 1, start: 2048, end: 67583, name: EFI system}]
        grow_partition: 3
        grow_filesystem: ext4
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import FleetcastError
from ansible_collections.fleetcast.imaging.plugins.module_utils._image import format as image_format
from ansible_collections.fleetcast.imaging.plugins.module_utils._image import restore, signing


def _diff(plan):
    before, after = {}, {}
    for target in plan["targets"]:
        before[target["target"]] = target["current"]
        after[target["target"]] = "unchanged" if target["state"] == "unchanged" else target["partitions"]
    return {"before": before, "after": after}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            image=dict(type="path", required=True),
            targets=dict(type="list", elements="path", required=True),
            grow_last_partition=dict(type="bool", default=False),
            shrink_last_partition=dict(type="bool", default=False),
            scratch_dir=dict(type="path"),
            threads=dict(type="int", default=0),
            public_key=dict(type="str"),
            signature=dict(type="path"),
            recorded=dict(type="dict"),
            state_dir=dict(type="path", default="/var/lib/fleetcast/restore"),
        ),
        supports_check_mode=True,
    )
    if image_format.ZSTD_IMPORT_ERROR:
        module.fail_json(msg=missing_required_lib("zstandard (apt: python3-zstandard)"),
                         exception=image_format.ZSTD_IMPORT_ERROR)
    params = module.params
    if params["threads"] < 0:
        module.fail_json(msg="threads must be 0 (one per CPU) or more.")
    error = None
    try:
        check = None
        if params["public_key"]:
            def check(manifest):
                return signing.verify(params["image"], manifest.image_id, manifest.layout.get("origin"),
                                      params["public_key"], params["signature"])
        report = restore.restore_image(params["image"], params["targets"], params["grow_last_partition"],
                                       module.check_mode, params["threads"], params["recorded"], check,
                                       params["shrink_last_partition"], params["scratch_dir"],
                                       params["state_dir"] or None)
    except FleetcastError as err:
        error = str(err)
    if error:
        # Outside the except block, so that the user sees the sentence and not a traceback.
        module.fail_json(msg=error)
    if module._diff:
        report["diff"] = _diff(report["plan"])
    module.exit_json(**report)


if __name__ == "__main__":
    main()
