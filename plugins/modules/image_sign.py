#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: image_sign
short_description: Sign a fleetcast image with an Ed25519 key, for verification before restores
version_added: 0.1.0
description:
  - Makes a detached signature of an image's id - a SHA-256 over its layout and every chunk's
    place and digest, so the signature vouches for every byte a restore writes - and of its capture
    record (when, where, from which disks, description). M(fleetcast.imaging.image_restore) and M(fleetcast.imaging.multicast_send)
    check it when given the public key, and refuse an image whose signature is missing or bad.
  - Meant to run on the controller (C(delegate_to) V(localhost)), where the private key stays. The
    image itself need not be there - its id and capture record (O(image_id) and O(origin), from
    M(fleetcast.imaging.image_info)) are all that is signed; copy RV(signature) next to the image
    as C(<image>.sig).
  - Idempotent - an existing O(dest) that already holds a valid signature of this image id by
    this key is left alone.
author: fleetcast.imaging developers (@fleetcast)
options:
  image:
    description:
      - An image file on the host the module runs on; its id is read from it, and O(dest)
        defaults to this path with C(.sig) appended.
      - One of O(image) and O(image_id) is required.
    type: path
  image_id:
    description: The image id to sign (64 hexadecimal digits), for an image held elsewhere.
    type: str
  origin:
    description:
      - With O(image_id), the image's capture record (RV(fleetcast.imaging.image_info#module:image.origin)),
        which the signature covers too. Leave it out for an image that has none (captured before it
        was recorded).
    type: dict
  private_key:
    description:
      - The Ed25519 private key, as a path or inline - PEM (PKCS#8, as C(openssl genpkey -algorithm
        ed25519) writes) or OpenSSH (C(ssh-keygen -t ed25519)).
    type: str
    required: true
  private_key_passphrase:
    description: The private key's passphrase, if it has one.
    type: str
  dest:
    description:
      - Where to write the signature file. Defaults to O(image) with C(.sig) appended; with only
        O(image_id) and no O(dest), nothing is written and RV(signature) is returned.
    type: path
extends_documentation_fragment:
  - fleetcast.imaging.attributes
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
  idempotent:
    description: Running it twice changes nothing the second time.
    support: full
requirements:
  - cryptography (apt python3-cryptography)
seealso:
  - module: fleetcast.imaging.image_info
  - module: fleetcast.imaging.image_restore
"""

EXAMPLES = r"""
- name: Sign an image on the controller's image store
  fleetcast.imaging.image_sign:
    image: /srv/images/lab.fcimg
    private_key: ~/.config/fleetcast/images.key
  delegate_to: localhost

- name: Sign an image held on the image server, by its id
  fleetcast.imaging.image_sign:
    image_id: "{{ lab_image.image.image_id }}"
    origin: "{{ lab_image.image.origin }}"
    private_key: ~/.config/fleetcast/images.key
  delegate_to: localhost
  register: signed

- name: Put the signature beside the image
  ansible.builtin.copy:
    content: "{{ signed.signature | to_nice_json }}"
    dest: /srv/images/lab.fcimg.sig
    mode: "0644"
"""

RETURN = r"""
image_id:
  description: The image id signed.
  returned: success
  type: str
  sample: 99c4d9939c84d443c790bbfcabc184b90f253acd7fccb9b36343bfb080d74d6c
dest:
  description: The signature file written (or left alone), or null when none was asked for.
  returned: success
  type: str
  sample: /srv/images/lab.fcimg.sig
signature:
  description: The signature document (what the C(.sig) file holds).
  returned: success
  type: dict
  sample:
    format: fleetcast-image-signature
    version: 1
    algorithm: ed25519
    image_id: 99c4d9939c84d443c790bbfcabc184b90f253acd7fccb9b36343bfb080d74d6c
    origin_sha256: 5f0e4a1c86d2a1b6f8c1f0a4e0a2f0c3d3b0b5e2a7c1d9e8f6a5b4c3d2e1f0a9
    key: SHA256:8C9kx2Y0uQ0m7Y0t2m7cZ2rS0Gv3yO5lHnJmL0X1a2Q
    signature: 3q2+7w...
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import FleetcastError
from ansible_collections.fleetcast.imaging.plugins.module_utils._image import signing


def main():
    module = AnsibleModule(
        argument_spec=dict(
            image=dict(type="path"),
            image_id=dict(type="str"),
            private_key=dict(type="str", required=True, no_log=True),
            private_key_passphrase=dict(type="str", no_log=True),
            dest=dict(type="path"),
            origin=dict(type="dict"),
        ),
        mutually_exclusive=[("image", "image_id"), ("image", "origin")],
        required_one_of=[("image", "image_id")],
        supports_check_mode=True,
    )
    if signing.CRYPTOGRAPHY_IMPORT_ERROR:
        module.fail_json(msg=missing_required_lib("cryptography (apt: python3-cryptography)"),
                         exception=signing.CRYPTOGRAPHY_IMPORT_ERROR)
    params = module.params
    error = None
    try:
        result = signing.sign_image(params["image"], params["image_id"], params["private_key"],
                                    params["private_key_passphrase"], params["dest"], module.check_mode,
                                    params["origin"])
    except FleetcastError as err:
        error = str(err)
    if error:
        # Outside the except block, so that the user sees the sentence and not a traceback.
        module.fail_json(msg=error)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
