#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: boot_environment
short_description: Build the imaging environment participants boot into (kernel, initramfs, ISO)
version_added: 0.1.0
description:
  - Builds, from Debian packages with C(mmdebstrap), the small Linux system that participants boot
    over the network (or from an ISO) so that their disks are free for imaging - the whole root
    packed into one initramfs that runs from RAM, plus its kernel.
  - The environment holds every package the collection's modules need on a participant (Python 3
    with yaml, parted, zstandard, numpy, cryptography and hivex bindings, e2fsprogs, dosfstools,
    mtools, ntfs-3g, gdisk, parted, efibootmgr, openssh-server).
  - Root logs in with O(authorized_keys) only (public keys; a private key is refused). The SSH host
    keys come from O(host_keys_dir) (made there when absent), so the controller knows their
    fingerprints before the first connection and never has to trust on first use.
  - Cached twice, by the hash of the inputs - the Debian root under O(cache_dir), the environment
    in O(output_dir) - so that a rebuild with the same inputs changes nothing.
  - Before packing, every file of the environment is searched for private keys; any besides its
    own host keys stops the build.
author: fleetcast.imaging developers (@fleetcast)
extends_documentation_fragment:
  - fleetcast.imaging.attributes
  - fleetcast.imaging.attributes.check_full
attributes:
  idempotent:
    description: A second run with the same inputs builds nothing.
    support: full
options:
  output_dir:
    description: Where C(vmlinuz), C(initrd.img), C(environment.json) and the ISO are written (the HTTP root).
    type: path
    required: true
  authorized_keys:
    description: Public key line(s) of the controller, written to root's C(authorized_keys).
    type: str
    required: true
  host_keys_dir:
    description: Directory of the environment's SSH host key pair(s); made with C(ssh-keygen) if absent.
    type: path
    required: true
  cache_dir:
    description: Cache of Debian root tarballs, shared by later runs and by CI on the same machine.
    type: path
    default: /var/cache/fleetcast/boot
  suite:
    description: Debian suite.
    type: str
    default: bookworm
  extra_packages:
    description: Packages to add to the environment.
    type: list
    elements: str
    default: []
  apt_sources:
    description: An apt sources file (one-line or deb822 C(.sources)) giving the mirror; empty for deb.debian.org.
    type: path
    default: /etc/apt/sources.list.d/debian.sources
  apt_options:
    description: apt.conf files or lines passed to mmdebstrap (proxies, snapshot options).
    type: list
    elements: str
    default: []
  cmdline:
    description: Kernel command line of the environment.
    type: str
    default: console=tty0 console=ttyS0,115200n8 quiet systemd.show_status=1 net.ifnames=0 rootfstype=ramfs
  iso:
    description: Also make C(fleetcast-imaging.iso), a hybrid BIOS/UEFI image for CD, USB stick (C(dd)) or virtual media.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Build the imaging environment into the server's HTTP root
  fleetcast.imaging.boot_environment:
    output_dir: /srv/fleetcast/boot
    authorized_keys: "{{ lookup('ansible.builtin.file', '~/.ssh/id_ed25519.pub') }}"
    host_keys_dir: /srv/fleetcast/boot-hostkeys
    iso: true
"""

RETURN = r"""
actions:
  description: What was (or in check mode would be) built.
  returned: always
  type: list
  elements: str
files:
  description: Files in O(output_dir) and what they are.
  returned: when built or up to date
  type: dict
sizes:
  description: Size in bytes of each file.
  returned: when built or up to date
  type: dict
host_keys:
  description: The environment's SSH host public key lines, by type; write them to the controller's known_hosts.
  returned: when built or up to date
  type: dict
host_key_fingerprints:
  description: SHA256 fingerprints of the host keys.
  returned: always
  type: dict
authorized_key_fingerprints:
  description: Fingerprints of the keys that may log in as root.
  returned: always
  type: list
  elements: str
seconds:
  description: Build time (0 when it came from the cache).
  returned: when built
  type: float
root:
  description: The cached Debian root (path, key, cached, seconds).
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import FleetcastError
from ansible_collections.fleetcast.imaging.plugins.module_utils._boot import build


def main():
    module = AnsibleModule(
        argument_spec=dict(
            output_dir=dict(type="path", required=True),
            authorized_keys=dict(type="str", required=True, no_log=False),   # public keys only
            host_keys_dir=dict(type="path", required=True),
            cache_dir=dict(type="path", default="/var/cache/fleetcast/boot"),
            suite=dict(type="str", default="bookworm"),
            extra_packages=dict(type="list", elements="str", default=[]),
            apt_sources=dict(type="path", default="/etc/apt/sources.list.d/debian.sources"),
            apt_options=dict(type="list", elements="str", default=[]),
            cmdline=dict(type="str", default=build.DEFAULT_CMDLINE),
            iso=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    error = None
    try:
        spec = build.ensure_spec(module.params)
        planned = build.plan(spec)
        result = planned if module.check_mode else dict(build.build(spec), actions=planned["actions"])
    except FleetcastError as err:
        error = str(err)
    if error:
        module.fail_json(msg=error)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
