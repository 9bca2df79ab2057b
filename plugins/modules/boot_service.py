#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: boot_service
short_description: Serve the imaging environment to the participants listed by MAC (dnsmasq, iPXE, HTTP)
version_added: 0.1.0
description:
  - Writes a dnsmasq configuration from the list of participants and starts (or stops) dnsmasq and
    an HTTP server for the environment made by M(fleetcast.imaging.boot_environment).
  - O(mode=dhcp) makes dnsmasq the DHCP server of an isolated imaging network, handing each listed
    MAC its reserved address; O(mode=proxy) runs it beside an existing DHCP server (proxy-DHCP),
    which keeps handing out the addresses.
  - Firmware that is already iPXE (virtual machines' NIC ROMs) gets the iPXE script over HTTP; other
    PXE firmware first gets C(undionly.kpxe) (BIOS) or C(ipxe.efi) (UEFI) over TFTP, from Debian's
    C(ipxe) package.
  - Only listed MACs are answered. Any other machine gets no boot; dnsmasq logs its MAC as ignored.
  - O(manager=process) runs plain processes with pid files (the lab); O(manager=systemd) installs and
    starts C(fleetcast-dnsmasq.service) and C(fleetcast-http.service) on a real server.
author: fleetcast.imaging developers (@fleetcast)
extends_documentation_fragment:
  - fleetcast.imaging.attributes
  - fleetcast.imaging.attributes.check_full
attributes:
  idempotent:
    description: An unchanged configuration of a running service changes nothing.
    support: full
options:
  state:
    description: V(started) writes the configuration and (re)starts what changed; V(stopped) stops it.
    type: str
    choices: [started, stopped]
    default: started
  interface:
    description: The server's interface on the imaging network.
    type: str
    required: true
  server_address:
    description: The server's IPv4 address on that interface.
    type: str
    required: true
  subnet:
    description: The imaging network, e.g. V(10.0.42.0/24).
    type: str
    required: true
  mode:
    description: V(dhcp) (dnsmasq is the DHCP server) or V(proxy) (proxy-DHCP beside an existing one).
    type: str
    choices: [dhcp, proxy]
    default: dhcp
  router:
    description: Default gateway handed out in V(dhcp) mode; none when unset.
    type: str
  hosts:
    description:
      - The participants, each with C(name), C(mac), C(firmware) (V(bios) or V(uefi)) and, in V(dhcp)
        mode, C(address) (its reserved address).
    type: list
    elements: dict
    required: true
  http_root:
    description: The environment's directory (the O(fleetcast.imaging.boot_environment#module:output_dir)).
    type: path
    required: true
  http_port:
    description: Port of the HTTP server.
    type: int
    default: 8088
  cmdline:
    description: Kernel command line of the environment.
    type: str
    default: console=tty0 console=ttyS0,115200n8 quiet systemd.show_status=1 net.ifnames=0 rootfstype=ramfs
  state_dir:
    description: Where configuration, pid files, leases and logs go.
    type: path
    required: true
  manager:
    description: V(process) (plain processes) or V(systemd) (unit files).
    type: str
    choices: [process, systemd]
    default: process
"""

EXAMPLES = r"""
- name: Serve the environment on an isolated imaging network
  fleetcast.imaging.boot_service:
    interface: enp3s0
    server_address: 10.0.42.1
    subnet: 10.0.42.0/24
    hosts:
      - {name: pc01, mac: "52:54:00:12:34:01", firmware: uefi, address: 10.0.42.101}
    http_root: /srv/fleetcast/boot
    state_dir: /var/lib/fleetcast/boot
    manager: systemd
"""

RETURN = r"""
actions:
  description: What was (or in check mode would be) done.
  returned: always
  type: list
  elements: str
running:
  description: Pids of dnsmasq and the HTTP server before this task (process manager).
  returned: always
  type: dict
files:
  description: Files written.
  returned: always
  type: list
  elements: str
ipxe_missing:
  description: iPXE binaries not found (install Debian's C(ipxe) package for PXE firmware that is not iPXE).
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import FleetcastError
from ansible_collections.fleetcast.imaging.plugins.module_utils._boot import build, fleet, service


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["started", "stopped"], default="started"),
            interface=dict(type="str", required=True),
            server_address=dict(type="str", required=True),
            subnet=dict(type="str", required=True),
            mode=dict(type="str", choices=["dhcp", "proxy"], default="dhcp"),
            router=dict(type="str"),
            hosts=dict(type="list", elements="dict", required=True),
            http_root=dict(type="path", required=True),
            http_port=dict(type="int", default=8088),
            cmdline=dict(type="str", default=build.DEFAULT_CMDLINE),
            state_dir=dict(type="path", required=True),
            manager=dict(type="str", choices=["process", "systemd"], default="process"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    error = None
    try:
        net = fleet.BootNetwork(interface=params["interface"], server_address=params["server_address"],
                                subnet=params["subnet"], mode=params["mode"], http_port=params["http_port"],
                                router=params["router"], hosts=[fleet.BootHost.from_dict(h) for h in params["hosts"]])
        spec = service.ServiceSpec(net=net, state_dir=params["state_dir"], http_root=params["http_root"],
                                   cmdline=params["cmdline"], manager=params["manager"])
        if module.check_mode:
            result = service.plan(spec, params["state"])
        else:
            result = service.apply(spec, params["state"])
    except FleetcastError as err:
        error = str(err)
    if error:
        module.fail_json(msg=error)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
