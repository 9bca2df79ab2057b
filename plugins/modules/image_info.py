#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: image_info
short_description: Describe a fleetcast image file (optionally verifying every chunk), or list a directory of images
version_added: 0.1.0
description:
  - Reads an image file's footer, trailer and chunk table and returns its manifest (the disks
    with their partition tables, partitions and filesystems, sizes, the chunk count, the image id,
    and how many bytes are used and stored).
  - With O(verify), every chunk is read, decompressed and checked against its SHA-256 digest and
    the chunk table; the first bad chunk fails the task, naming the chunk and its byte offset.
  - When O(image) is a directory, every image file in it (found by its contents, whatever its
    name) is listed as a catalogue in RV(catalogue) - when and where each was captured, from which
    disks, with which filesystems, its description and whether it has a signature file.
author: fleetcast.imaging developers (@fleetcast)
options:
  image:
    description: Path of the image file, or of a directory of image files to list as a catalogue.
    type: path
    required: true
  verify:
    description: Check every chunk of the image (reads the whole file). Refused for a directory.
    type: bool
    default: false
  threads:
    description: Threads verifying chunks; V(0) means a few (up to 4).
    type: int
    default: 0
extends_documentation_fragment:
  - fleetcast.imaging.attributes
  - fleetcast.imaging.attributes.info_module
seealso:
  - module: fleetcast.imaging.image_capture
  - module: fleetcast.imaging.image_restore
"""

EXAMPLES = r"""
- name: Read an image's manifest
  fleetcast.imaging.image_info:
    image: /srv/images/workstation.fcimg
  register: workstation

- name: Check every chunk before a deployment
  fleetcast.imaging.image_info:
    image: /srv/images/workstation.fcimg
    verify: true

- name: List every image on the image server
  fleetcast.imaging.image_info:
    image: /srv/images
  register: images

- name: Show the partitions of the image's first disk
  ansible.builtin.debug:
    msg: "{{ workstation.image.disks[0].partitions | map(attribute='filesystem') }}"
"""

RETURN = r"""
catalogue:
  description: When O(image) is a directory, its images, oldest capture first.
  returned: when O(image) is a directory
  type: dict
  contains:
    path:
      description: The directory.
      type: str
    images:
      description: >-
        One entry per image file - C(path), C(image_id), C(format_version), C(captured_at) (UTC,
        ISO 8601), C(host), C(collection_version), C(description), C(disks) (index, source, size,
        model, serial, label), C(filesystems) (disk, region, filesystem, used_bytes),
        C(used_bytes), C(stored_bytes), C(file_size) and C(signature) (the C(.sig) file beside it,
        or null). Images captured before provenance was recorded have null in those fields.
      type: list
      elements: dict
    unreadable:
      description: Files that start like an image but cannot be read, each with the reason.
      type: dict
  sample:
    path: /srv/images
    images:
      - path: /srv/images/lab.fcimg
        captured_at: "2026-12-01T21:15:00Z"
        host: master.lab.example
        description: Lab desktops, December updates
        collection_version: 0.1.0
        disks: [{index: 0, source: /dev/nvme0n1, size: 512110190592, model: WD_BLACK SN770 500GB, serial: 22411V800123}]
        filesystems: [{disk: 0, region: partition 1, filesystem: vfat}, {disk: 0, region: partition 3, filesystem: ntfs}]
        signature: /srv/images/lab.fcimg.sig
    unreadable: {}
image:
  description: The image's manifest.
  returned: when O(image) is an image file
  type: dict
  contains:
    path:
      description: The image file.
      type: str
    format_version:
      description: Version of the image format.
      type: int
    image_id:
      description: SHA-256 (hex) over the layout (less its origin) and every chunk's index, disk, offset, length, kind and digest.
      type: str
    chunk_size:
      description: Largest chunk in bytes.
      type: int
    chunk_count:
      description: Number of chunks.
      type: int
    data_bytes:
      description: Raw bytes in data chunks.
      type: int
    zero_bytes:
      description: Bytes recorded as zeros (nothing stored; zeroed on restore).
      type: int
    used_bytes:
      description: C(data_bytes) plus C(zero_bytes), the bytes a restore writes.
      type: int
    stored_bytes:
      description: Bytes the chunk records take in the file.
      type: int
    file_size:
      description: Size of the image file.
      type: int
    verified:
      description: Whether every chunk was checked.
      type: bool
    origin:
      description: >-
        Where the image came from - C(captured_at) (UTC, ISO 8601), C(host), C(collection_version),
        C(description) and C(disks) (index, source, model, serial, size); null for images captured
        before this was recorded.
      type: dict
    disks:
      description: >-
        One entry per image disk: C(index), C(source), C(kind) (V(disk) or V(partition)), C(size),
        C(sector_size), C(label) (V(gpt), V(msdos), V(none)), C(guid), C(chunk_count),
        C(data_bytes), C(zero_bytes), C(regions) (name, offset, length, filesystem, how used bytes
        were found, used bytes, and a note saying why a region was stored whole or skipped) and C(partitions) (number, start, end, size, kind, type_guid,
        mbr_type, part_uuid, name, flags, filesystem, fs_uuid, fs_label, used_map, used_bytes).
      type: list
      elements: dict
  sample:
    image_id: 99c4d9939c84d443c790bbfcabc184b90f253acd7fccb9b36343bfb080d74d6c
    chunk_count: 212
    disks:
      - index: 0
        label: gpt
        partitions:
          - {number: 1, start: 2048, end: 67583, name: EFI system, filesystem: vfat, used_bytes: 1048576}
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import FleetcastError
from ansible_collections.fleetcast.imaging.plugins.module_utils._image import format as image_format
from ansible_collections.fleetcast.imaging.plugins.module_utils._image import info


def main():
    module = AnsibleModule(
        argument_spec=dict(
            image=dict(type="path", required=True),
            verify=dict(type="bool", default=False),
            threads=dict(type="int", default=0),
        ),
        supports_check_mode=True,
    )
    if image_format.ZSTD_IMPORT_ERROR:
        module.fail_json(msg=missing_required_lib("zstandard (apt: python3-zstandard)"),
                         exception=image_format.ZSTD_IMPORT_ERROR)
    if module.params["threads"] < 0:
        module.fail_json(msg="threads must be 0 or more.")
    error = None
    try:
        image = info.image_info(module.params["image"], module.params["verify"], module.params["threads"])
    except FleetcastError as err:
        error = str(err)
    if error:
        # Outside the except block, so that the user sees the sentence and not a traceback.
        module.fail_json(msg=error)
    if "images" in image:
        module.exit_json(changed=False, catalogue=image)
    module.exit_json(changed=False, image=image)


if __name__ == "__main__":
    main()
