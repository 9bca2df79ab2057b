#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: image_capture
short_description: Capture disks, partitions or a raw disk-image file into a fleetcast image file
version_added: 0.1.0
description:
  - Images a master into one file of independent, zstd-compressed, SHA-256-checked chunks plus a
    manifest (see C(docs/image-format.md)).
  - With O(disks), every partition of every disk (MBR or GPT), the boot code and the bytes outside
    partitions (before the first, between partitions, after the last; up to 64 MiB of each gap,
    the rest recorded as skipped) are captured, together with the partition table. With
    O(partitions), each volume is captured on its own. A raw disk-image file can be given in O(disks).
  - Only used bytes are stored. ext2/3/4 is read through its block bitmaps, FAT12/16/32 through
    its allocation table, NTFS through C($Bitmap), XFS through its free-space B+trees and btrfs
    through its extent tree; free space and deleted files' data are never stored. The contents of
    NTFS's C(pagefile.sys), C(swapfile.sys) and C(hiberfil.sys) are not stored either (the files
    stay allocated; their first 4 KiB restore as zeros, so no clone resumes from an old hibernation). Any other
    content, and the gaps, are stored whole except that runs of zeros become zero chunks (nothing
    stored, zeroed on restore).
  - A filesystem that was not cleanly unmounted (an ext3/4 journal needing recovery, an XFS log or
    a btrfs log tree to replay, an NTFS marked dirty) is stored whole, because its on-disk
    allocation maps may be behind its journal; the journal travels with it and is replayed at the
    clone's first mount. The task warns, naming the partition and what to do for a smaller image
    (mount and unmount it; for NTFS a full shutdown of Windows or C(chkdsk /f)).
  - Chunks are compressed by several threads while the source is read; memory stays bounded.
  - The file is written beside O(dest) and renamed into place when complete, so O(dest) is
    never a half-written image.
author: fleetcast.imaging developers (@fleetcast)
options:
  disks:
    description:
      - Whole disks (or raw disk-image files) to capture, in order; they become the image's
        disks 0, 1, ...
    type: list
    elements: path
  partitions:
    description: Single partitions or volumes to capture, each on its own, in order.
    type: list
    elements: path
  dest:
    description: Path of the image file to write.
    type: path
    required: true
  force:
    description:
      - Capture again even if O(dest) exists. Without it an existing O(dest) is left alone and
        reported unchanged (with its manifest), so that re-runs do not image again.
    type: bool
    default: false
  chunk_size_mib:
    description: Largest chunk in MiB (1 to 32). Chunks of one disk start at multiples of it.
    type: int
    default: 4
  level:
    description:
      - zstd compression level (1 to 19), per chunk. The default 5 keeps images no larger than
        C(partclone) piped through C(zstd -3) (independent chunks lose a stream's history).
    type: int
    default: 5
  threads:
    description: Compression threads; V(0) means one per CPU.
    type: int
    default: 0
  mode:
    description: Permissions of the image file (it may hold secrets such as SSH host keys).
    type: raw
    default: '0600'
  description:
    description:
      - Free text recorded in the image (for example what is installed and why), shown by
        M(fleetcast.imaging.image_info) beside the capture time, host, source disks (model,
        serial, size), filesystems and collection version, which are always recorded.
    type: str
extends_documentation_fragment:
  - fleetcast.imaging.attributes
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Reads the partition tables and used-block maps and reports what would be captured.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
notes:
  - The source should not be mounted read-write while it is captured, or the image may be
    inconsistent. Capturing reads only. A mounted ext4, XFS or btrfs is usually stored whole (its
    journal or log is live); remount it read-only during the capture for a consistent and smaller
    image (C(fsfreeze -f) does it for ext4, not for XFS; see C(docs/disks.md)).
  - A LUKS volume, and a BitLocker volume whose protectors are active, are refused (their contents
    cannot be read without the key, and clones would share it); capture the opened LUKS volume as
    a partition, and suspend or turn off BitLocker first. Members of md RAID arrays and LVM
    physical volumes are stored whole (zero runs skipped), so arrays and volume groups come up on
    the targets as on the master. See C(docs/disks.md).
seealso:
  - module: fleetcast.imaging.image_info
  - module: fleetcast.imaging.image_restore
"""

EXAMPLES = r"""
- name: Capture the master workstation's disk
  fleetcast.imaging.image_capture:
    disks: [/dev/sda]
    dest: /srv/images/workstation.fcimg

- name: Capture one partition, replacing an older image
  fleetcast.imaging.image_capture:
    partitions: [/dev/sda2]
    dest: /srv/images/root.fcimg
    force: true

- name: Capture with a description for the catalogue
  fleetcast.imaging.image_capture:
    disks: [/dev/nvme0n1]
    dest: /srv/images/lab-2026-12.fcimg
    description: Lab desktops, Windows 11 23H2 with the December updates

- name: Capture a raw disk-image file with stronger compression
  fleetcast.imaging.image_capture:
    disks: [/var/tmp/vm.raw]
    dest: /srv/images/vm.fcimg
    level: 9
"""

RETURN = r"""
plan:
  description: >-
    In check mode, what would be captured - C(disks) as in RV(image), with each region's
    C(used_bytes) - and C(used_bytes), the bytes that would be read and stored or zeroed.
  returned: check mode, when a capture would run
  type: dict
  sample: {used_bytes: 98566144, disks: [{index: 0, kind: disk, label: gpt}]}
image:
  description: >-
    The image's manifest as M(fleetcast.imaging.image_info) reports it: C(image_id),
    C(chunk_count), C(chunk_size), C(data_bytes), C(zero_bytes), C(used_bytes), C(stored_bytes),
    C(file_size), and C(disks) with their partitions, filesystems and used bytes.
  returned: success, except in check mode when a capture would run
  type: dict
  sample:
    image_id: 99c4d9939c84d443c790bbfcabc184b90f253acd7fccb9b36343bfb080d74d6c
    chunk_count: 212
    data_bytes: 31457280
    zero_bytes: 67108864
    stored_bytes: 9437184
    disks: [{index: 0, source: /dev/sda, kind: disk, label: gpt, size: 234881024}]
"""

import os

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import FleetcastError
from ansible_collections.fleetcast.imaging.plugins.module_utils._image import capture
from ansible_collections.fleetcast.imaging.plugins.module_utils._image import format as image_format
from ansible_collections.fleetcast.imaging.plugins.module_utils._image import info, usedmap

MiB = 1024 * 1024


def main():
    module = AnsibleModule(
        argument_spec=dict(
            disks=dict(type="list", elements="path"),
            partitions=dict(type="list", elements="path"),
            dest=dict(type="path", required=True),
            force=dict(type="bool", default=False),
            chunk_size_mib=dict(type="int", default=4),
            level=dict(type="int", default=5),
            threads=dict(type="int", default=0),
            mode=dict(type="raw", default="0600"),
            description=dict(type="str"),
        ),
        mutually_exclusive=[("disks", "partitions")],
        required_one_of=[("disks", "partitions")],
        supports_check_mode=True,
    )
    for error, package in ((image_format.ZSTD_IMPORT_ERROR, "zstandard"), (usedmap.NUMPY_IMPORT_ERROR, "numpy")):
        if error:
            module.fail_json(msg=missing_required_lib("%s (apt: python3-%s)" % (package, package)), exception=error)
    params = module.params
    if params["threads"] < 0:
        module.fail_json(msg="threads must be 0 (one per CPU) or more.")
    try:
        mode = int(params["mode"], 8) if isinstance(params["mode"], str) else int(params["mode"])
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o7777:
        module.fail_json(msg="mode %r is not an octal permission such as '0600'." % (params["mode"],))
    dest = params["dest"]
    error = None
    try:
        if os.path.exists(dest) and not params["force"]:
            module.exit_json(changed=False, image=info.image_info(dest))
        kind = "disk" if params["disks"] else "partition"
        sources = [capture.CaptureSource(path, kind) for path in params["disks"] or params["partitions"]]
        if module.check_mode:
            capture.check_destination(dest)
            layout = capture.describe(sources, params["chunk_size_mib"] * MiB, params["description"])[0]
            for line in capture.unclean_warnings(layout):
                module.warn(line)
            plan = info.summary(image_format.Manifest(layout))
            module.exit_json(changed=True, plan={"disks": plan["disks"], "used_bytes": sum(
                region["used_bytes"] for disk in plan["disks"] for region in disk["regions"])})
        manifest = capture.capture_to_file(sources, dest, params["chunk_size_mib"] * MiB, params["level"],
                                           params["threads"], mode, description=params["description"])
        for line in capture.unclean_warnings(manifest.layout):
            module.warn(line)
        result = info.summary(manifest)
        result.update(path=dest, file_size=os.path.getsize(dest), verified=False)
    except FleetcastError as err:
        error = str(err)
    if error:
        # Outside the except block, so that the user sees the sentence and not a traceback.
        module.fail_json(msg=error)
    module.exit_json(changed=True, image=result)


if __name__ == "__main__":
    main()
