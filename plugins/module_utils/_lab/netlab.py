# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Network namespaces on a bridge, standing in for a LAN of hosts. Private to the collection.

The bridge lives in a namespace of its own (the "switch"), so the machine's own network namespace is
never changed: every address, route and nftables rule made here exists only inside namespaces whose
names carry the lab's prefix, and `close()` deletes them all.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional


def _ip(*args: str, netns: Optional[str] = None) -> None:
    argv = ["ip"] + (["-n", netns] if netns else []) + list(args)
    subprocess.run(argv, check=True, capture_output=True, text=True)


@dataclass
class LabHost:
    name: str
    netns: str
    address: str
    interface: str = "eth0"
    mac: str = ""
    port: str = ""                 # its port on the lab switch

    def argv(self, argv: List[str]) -> List[str]:
        """Prefix a command line so that it runs inside this host's namespace."""
        return ["ip", "netns", "exec", self.netns] + list(argv)

    def run(self, argv: List[str], check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(self.argv(argv), check=check, **kwargs)

    def popen(self, argv: List[str], **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.argv(argv), **kwargs)

    def nft(self, script: str) -> None:
        self.run(["nft", "-f", "-"], input=script)

    def filter_incoming(self, rule: str, hook: str = "input", priority: int = 0) -> None:
        """Add `rule` to this namespace's lab filter on `hook` (rules added before stay)."""
        self.nft(
            "table inet fleetcast_lab {\n"
            f" chain {hook} {{ type filter hook {hook} priority {priority}; policy accept;\n"
            f"  {rule}\n"
            " }\n}\n")

    def drop_incoming_udp(self, percent: float, port: Optional[int] = None) -> None:
        """Drop `percent` % of incoming UDP at random (real loss, in this namespace only)."""
        threshold = max(0, min(10000, int(round(percent * 100))))
        match = f"udp dport {port} " if port else "meta l4proto udp "
        # nft refuses "numgen random mod 10000 < 10000": a total cut is a plain drop.
        verdict = "drop" if threshold >= 10000 else f"numgen random mod 10000 < {threshold} drop"
        self.filter_incoming(f"{match}{verdict}")

    def limit_incoming_udp(self, bytes_per_second: int, burst: int = 256 * 1024) -> None:
        """Drop incoming UDP beyond `bytes_per_second` (a slow link or NIC ahead of this host's
        kernel: what it drops, no UDP counter of this host counts)."""
        self.filter_incoming(
            f"meta l4proto udp limit rate over {int(bytes_per_second)} bytes/second burst {int(burst)} bytes drop")

    def cut_incoming_udp(self, port: Optional[int] = None) -> None:
        """Drop all incoming UDP (a receive path cut)."""
        self.drop_incoming_udp(100.0, port)

    def narrow_path(self, mtu: int) -> None:
        """This host's interface takes frames of at most `mtu` bytes: a receiver behind a smaller
        MTU. Setting the link's MTU alone is not that: a veth hands on a GSO packet (the sender's
        batches) whatever its MTU, and drops only single datagrams; so packets longer than `mtu`
        are dropped here, as the smaller link would."""
        self.run(["ip", "link", "set", "eth0", "mtu", str(int(mtu))])
        self.filter_incoming(f"ip length > {int(mtu)} drop", hook="prerouting", priority=-300)

    def clear_rules(self) -> None:
        self.run(["nft", "flush", "ruleset"], check=False)


@dataclass
class NetLab:
    """A bridge in a switch namespace and any number of hosts on /24 addresses behind it."""

    prefix: str = ""
    subnet: str = "10.231.7"
    mtu: int = 1500
    hosts: Dict[str, LabHost] = field(default_factory=dict)
    _created: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.prefix:
            self.prefix = "fc" + secrets.token_hex(3)
        self.switch = f"{self.prefix}-sw"
        _ip("netns", "add", self.switch)
        self._created.append(self.switch)
        try:
            self._build_switch()
        except BaseException:
            self.close()              # a half-built lab is never left behind
            raise

    def _build_switch(self) -> None:
        _ip("link", "add", "br0", "type", "bridge", netns=self.switch)
        # IGMP snooping with the bridge as IGMPv3 querier, as on a well-configured switch. Linux
        # floods all multicast until one query response interval after the querier is turned on
        # (default 10 s): 1 s, set first, makes the lab filter by membership almost at once, like a
        # switch that has been up for a while. IGMPv3: under v2, hosts suppress their report when
        # they hear another member's, and the switch then never learns their port.
        _ip("link", "set", "br0", "type", "bridge", "mcast_snooping", "1", "mcast_igmp_version", "3",
            "mcast_query_response_interval", "100", netns=self.switch)
        _ip("link", "set", "br0", "type", "bridge", "mcast_querier", "1", netns=self.switch)
        _ip("link", "set", "br0", "up", netns=self.switch)
        self.started = time.monotonic()

    def add_host(self, name: str) -> LabHost:
        index = len(self.hosts) + 1
        netns = f"{self.prefix}-{name}"
        port = f"p{index}"
        _ip("netns", "add", netns)
        self._created.append(netns)
        _ip("link", "add", port, "mtu", str(self.mtu), "type", "veth", "peer", "name", "eth0",
            "netns", netns, netns=self.switch)
        _ip("link", "set", port, "master", "br0", "up", netns=self.switch)
        address = f"{self.subnet}.{10 + index}"
        _ip("link", "set", "lo", "up", netns=netns)
        _ip("link", "set", "eth0", "mtu", str(self.mtu), "up", netns=netns)
        _ip("addr", "add", f"{address}/24", "dev", "eth0", netns=netns)
        # Multicast leaves through the lab interface; nothing else is routed anywhere.
        _ip("route", "add", "224.0.0.0/4", "dev", "eth0", netns=netns)
        mac = subprocess.run(["ip", "-n", netns, "-br", "link", "show", "eth0"], check=True,
                             capture_output=True, text=True).stdout.split()[2]
        host = LabHost(name=name, netns=netns, address=address, mac=mac, port=port)
        self.hosts[name] = host
        return host

    def forget_membership(self, host: LabHost, group: str) -> bool:
        """Make the switch forget that `host` joined `group` (as an IGMP-snooping switch does when
        a membership report is lost, or after it restarted): the group stops reaching that port
        until the host reports again. False if the switch had no such entry."""
        done = subprocess.run(["bridge", "-n", self.switch, "mdb", "del", "dev", "br0", "port", host.port,
                               "grp", group], capture_output=True, text=True, check=False)
        return done.returncode == 0

    def segment_at_port(self, host: LabHost) -> None:
        """Make the switch cut GSO packets into single datagrams before they reach `host`, as a
        real NIC puts frames on the wire (veth and the bridge otherwise pass GSO packets whole)."""
        _ip("link", "set", host.port, "gso_max_segs", "1", netns=self.switch)

    def memberships(self, group: str) -> List[str]:
        """Ports (host names) the switch forwards `group` to."""
        shown = subprocess.run(["bridge", "-n", self.switch, "mdb", "show"], capture_output=True, text=True,
                               check=True).stdout
        ports = {line.split(" port ")[1].split()[0] for line in shown.splitlines()
                 if f" grp {group} " in line + " " and " port " in line}
        return sorted(h.name for h in self.hosts.values() if h.port in ports)

    def close(self) -> None:
        for netns in reversed(self._created):
            # Processes still inside would keep the namespace alive: end them first.
            pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True,
                                  check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "delete", netns], capture_output=True, check=False)
        self._created.clear()
        self.hosts.clear()

    def __enter__(self) -> "NetLab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
