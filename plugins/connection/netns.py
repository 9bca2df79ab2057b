# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: netns
short_description: Run tasks inside a Linux network namespace on the controller
description:
  - Runs every task of a host on the controller, but inside the named Linux network namespace,
    through C(ip netns exec). The host then sees only that namespace's interfaces, addresses,
    routes and nftables rules, while sharing the controller's files.
  - This is how the built-in lab reaches its image server, master workstation and participants,
    which are network namespaces on a bridge. It also serves real use, for example an imaging
    server whose multicast interface lives in a dedicated namespace.
  - Files are copied as with the C(local) connection (the namespace shares the controller's
    file systems), so modules, C(async) jobs and C(fetch) work unchanged.
author: fleetcast.imaging developers (@fleetcast)
version_added: 0.1.0
options:
  netns_name:
    description:
      - Name of the network namespace, as listed by C(ip netns list) (a file under C(/run/netns)).
      - When not set, O(netns_prefix) followed by the host's address (C(ansible_host), which
        defaults to the inventory name) is used. Prefer that to a name templated from
        C(inventory_hostname), which under C(delegate_to) names the wrong host.
    type: str
    vars:
      - name: ansible_netns_name
    env:
      - name: ANSIBLE_NETNS_NAME
  netns_prefix:
    description:
      - Prefix of the namespace name when O(netns_name) is not set, for example V(fclab-) for
        the lab's namespaces C(fclab-server) and C(fclab-p1).
    type: str
    default: ""
    vars:
      - name: ansible_netns_prefix
  netns_ip_executable:
    description:
      - The C(ip) program used to enter the namespace.
    type: str
    default: ip
    vars:
      - name: ansible_netns_ip_executable
  netns_run_dir:
    description:
      - Directory holding the named namespaces, checked before every task so that a missing
        namespace is reported as an unreachable host rather than as a failing command.
    type: path
    default: /run/netns
    vars:
      - name: ansible_netns_run_dir
extends_documentation_fragment:
  - connection_pipelining
notes:
  - Entering a namespace needs C(CAP_SYS_ADMIN), so run ansible-playbook as root.
  - The remote user is ignored; tasks run as the user running Ansible, as with C(local).
"""

EXAMPLES = r"""
# inventory.yml: three hosts that are network namespaces on the controller
all:
  hosts:
    server:
      ansible_connection: fleetcast.imaging.netns
      ansible_netns_name: fclab-server
    p1:
      ansible_connection: fleetcast.imaging.netns
      ansible_netns_name: fclab-p1
---
# the same, by prefix: each host's namespace is fclab-<inventory name>, also under delegate_to
all:
  vars:
    ansible_connection: fleetcast.imaging.netns
    ansible_netns_prefix: fclab-
  hosts:
    server:
    p1:
"""

import os
import shlex

from ansible.errors import AnsibleConnectionFailure
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.connection.local import Connection as LocalConnection
from ansible.utils.display import Display

display = Display()


class Connection(LocalConnection):
    """A local connection whose commands run inside one network namespace."""

    transport = "fleetcast.imaging.netns"
    has_pipelining = True

    def _namespace(self) -> str:
        name = self.get_option("netns_name") or (self.get_option("netns_prefix") or "") + (self._play_context.remote_addr or "")
        if not name or "/" in name or name in (".", ".."):
            raise AnsibleConnectionFailure(f"The network namespace name {name!r} is not valid.")
        return name

    def _connect(self) -> "Connection":
        name = self._namespace()
        run_dir = self.get_option("netns_run_dir")
        if not os.path.exists(os.path.join(run_dir, name)):
            raise AnsibleConnectionFailure(
                f"The network namespace {name} does not exist on the controller (not in {run_dir}).")
        if not self._connected:
            display.vvv(f"ENTER NETWORK NAMESPACE {name}", host=self._play_context.remote_addr)
        return super()._connect()

    def wrap_command(self, cmd) -> str:
        """The shell command line that runs `cmd` (a shell string or argv) inside the namespace."""
        prefix = [self.get_option("netns_ip_executable"), "netns", "exec", self._namespace()]
        if isinstance(cmd, (bytes, str)):
            # A string is a shell command line: give it a shell of its own inside the namespace,
            # so that every part of a compound line (a && b; c) runs there.
            return shlex.join(prefix + ["/bin/sh", "-c", to_text(cmd)])
        return shlex.join(prefix + [to_text(part) for part in cmd])

    def exec_command(self, cmd, in_data=None, sudoable=True):
        self._connect()
        return super().exec_command(self.wrap_command(cmd), in_data=in_data, sudoable=sudoable)
