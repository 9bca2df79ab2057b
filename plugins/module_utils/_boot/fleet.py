# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The boot fleet from the inventory, and the dnsmasq configuration and iPXE script that serve it.

Private to the collection. One inventory drives boot, deploy and verification: each participant
names its MAC (``imaging_boot_mac``), its firmware (``bios`` or ``uefi``) and, on an imaging network
where dnsmasq is the DHCP server, its reserved address. Only MACs listed here are answered; any
other machine gets no boot, and dnsmasq logs the MAC it ignored ("... ignored").
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .._errors import ValidationError

MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
FIRMWARES = ("bios", "uefi")
MODES = ("dhcp", "proxy")

# iPXE binaries of Debian's `ipxe` package, served over TFTP to firmware that is not iPXE yet.
IPXE_BIOS = "undionly.kpxe"
IPXE_UEFI = "ipxe.efi"


@dataclass
class BootHost:
    name: str
    mac: str
    firmware: str = "bios"
    address: Optional[str] = None

    @classmethod
    def from_dict(cls, item: Dict[str, Any]) -> "BootHost":
        name = str(item.get("name") or "")
        if not name or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", name):
            raise ValidationError(f"The boot host name {name!r} is not a plain inventory name.")
        mac = str(item.get("mac") or "").strip().lower().replace("-", ":")
        if not MAC_RE.match(mac):
            raise ValidationError(f"{name}: its boot MAC {item.get('mac')!r} is not a MAC address "
                                  "like 52:54:00:12:34:56.")
        firmware = str(item.get("firmware") or "bios").lower()
        if firmware not in FIRMWARES:
            raise ValidationError(f"{name}: firmware {firmware!r} is neither 'bios' nor 'uefi'.")
        address = item.get("address") or None
        if address is not None:
            try:
                address = str(ipaddress.IPv4Address(str(address).split("/", maxsplit=1)[0]))
            except ValueError:
                raise ValidationError(f"{name}: its reserved address {item.get('address')!r} is not "
                                      "an IPv4 address.") from None
        return cls(name=name, mac=mac, firmware=firmware, address=address)


@dataclass
class BootNetwork:
    """The imaging network as dnsmasq sees it."""

    interface: str
    server_address: str
    subnet: str                      # e.g. 10.231.7.0/24
    mode: str = "dhcp"               # dnsmasq is the DHCP server ("dhcp") or beside one ("proxy")
    http_port: int = 8088
    router: Optional[str] = None
    lease_time: str = "1h"
    hosts: List[BootHost] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValidationError(f"The boot mode {self.mode!r} is neither 'dhcp' nor 'proxy'.")
        try:
            net = ipaddress.IPv4Network(self.subnet, strict=False)
        except ValueError:
            raise ValidationError(f"The imaging subnet {self.subnet!r} is not an IPv4 network.") from None
        if ipaddress.IPv4Address(self.server_address) not in net:
            raise ValidationError(f"The image server address {self.server_address} is outside the "
                                  f"imaging subnet {net}.")
        self.subnet = str(net)
        macs: Dict[str, str] = {}
        addresses: Dict[str, str] = {self.server_address: "the image server"}
        for host in self.hosts:
            if host.mac in macs:
                raise ValidationError(f"{host.name}: its boot MAC {host.mac} is also the boot MAC of "
                                      f"{macs[host.mac]}.")
            macs[host.mac] = host.name
            if self.mode == "dhcp" and host.address is None:
                raise ValidationError(f"{host.name}: dnsmasq is the DHCP server of the imaging network, "
                                      "so the host needs a reserved address (imaging_boot_address).")
            if host.address is not None:
                if ipaddress.IPv4Address(host.address) not in net:
                    raise ValidationError(f"{host.name}: its reserved address {host.address} is outside "
                                          f"the imaging subnet {net}.")
                if host.address in addresses:
                    raise ValidationError(f"{host.name}: its reserved address {host.address} is also "
                                          f"the address of {addresses[host.address]}.")
                addresses[host.address] = host.name

    @property
    def http_base(self) -> str:
        return f"http://{self.server_address}:{self.http_port}"


def dnsmasq_config(net: BootNetwork, tftp_root: str, pid_file: str, lease_file: str,
                   log_file: Optional[str] = None, user: Optional[str] = None) -> str:
    """The dnsmasq configuration: DHCP or proxy-DHCP, TFTP for iPXE, the iPXE script over HTTP.

    Every participant's MAC gets the tag ``known``; requests without it are ignored (and logged),
    so an unlisted machine never boots into the imaging environment.
    """
    net_obj = ipaddress.IPv4Network(net.subnet)
    lines = [
        "# Written by fleetcast.imaging (boot_service); changes here are overwritten.",
        "port=0",                              # no DNS: dnsmasq only boots the fleet
        f"interface={net.interface}",
        "bind-interfaces",
        f"listen-address={net.server_address}",
        f"pid-file={pid_file}",
        f"dhcp-leasefile={lease_file}",
        "log-dhcp",
        "dhcp-ignore=tag:!known",
        "enable-tftp",
        f"tftp-root={tftp_root}",
        "tftp-secure",
    ]
    if log_file:
        lines.append(f"log-facility={log_file}")
    if user:
        lines.append(f"user={user}")              # dnsmasq drops to this user (default: nobody)
    if net.mode == "dhcp":
        lines.append(f"dhcp-range={net_obj.network_address},static,{net_obj.netmask},{net.lease_time}")
        lines.append("dhcp-authoritative")
        if net.router:
            lines.append(f"dhcp-option=option:router,{net.router}")
        else:
            lines.append("dhcp-option=option:router")       # no default route on the imaging network
        lines.append("dhcp-option=option:dns-server")
    else:
        lines.append(f"dhcp-range={net_obj.network_address},proxy,{net_obj.netmask}")
    lines += [
        # Firmware that is iPXE already (qemu's NIC ROMs, or our chainloaded binaries) gets the script.
        "dhcp-userclass=set:ipxe,iPXE",
        "dhcp-match=set:efi64,option:client-arch,7",
        "dhcp-match=set:efi64,option:client-arch,9",
    ]
    script = f"{net.http_base}/boot.ipxe"
    if net.mode == "dhcp":
        lines += [
            f"dhcp-boot=tag:known,tag:ipxe,{script}",
            f"dhcp-boot=tag:known,tag:!ipxe,tag:efi64,{IPXE_UEFI}",
            f"dhcp-boot=tag:known,tag:!ipxe,tag:!efi64,{IPXE_BIOS}",
        ]
    else:
        # Proxy-DHCP: the boot file comes through the PXE menu (pxe-service); the existing DHCP
        # server keeps handing out addresses.
        lines += [
            f"dhcp-boot=tag:known,tag:ipxe,{script}",
            f"pxe-service=tag:known,tag:!ipxe,x86PC,\"fleetcast imaging (BIOS)\",{IPXE_BIOS.rsplit('.', 1)[0]}",
            f"pxe-service=tag:known,tag:!ipxe,X86-64_EFI,\"fleetcast imaging (UEFI)\",{IPXE_UEFI}",
        ]
    for host in sorted(net.hosts, key=lambda item: item.name):
        entry = f"dhcp-host={host.mac},set:known,set:{host.firmware}"
        if net.mode == "dhcp" and host.address:
            entry += f",{host.address},{host.name}"
        lines.append(entry)
    return "\n".join(lines) + "\n"


def ipxe_script(net: BootNetwork, kernel: str, initrd: str, cmdline: str) -> str:
    """The iPXE script every participant loads: the environment's kernel and initrd over HTTP."""
    return "\n".join([
        "#!ipxe",
        "# Written by fleetcast.imaging (boot_service).",
        f"kernel {net.http_base}/{kernel} initrd={initrd.rsplit('/', 1)[-1]} {cmdline}".rstrip(),
        f"initrd {net.http_base}/{initrd}",
        "boot",
        "",
    ])


def systemd_units(config_path: str, http_root: str, http_address: str, http_port: int) -> Dict[str, str]:
    """Unit files for a real image server: dnsmasq with this configuration, and the HTTP server."""
    return {
        "fleetcast-dnsmasq.service": "\n".join([
            "[Unit]", "Description=fleetcast imaging: DHCP/proxy-DHCP and TFTP for network boot",
            "After=network-online.target", "Wants=network-online.target", "",
            "[Service]", "Type=simple",
            f"ExecStart=/usr/sbin/dnsmasq --keep-in-foreground --conf-file={config_path}",
            "Restart=on-failure", "", "[Install]", "WantedBy=multi-user.target", ""]),
        "fleetcast-http.service": "\n".join([
            "[Unit]", "Description=fleetcast imaging: the imaging environment over HTTP",
            "After=network-online.target", "Wants=network-online.target", "",
            "[Service]", "Type=simple",
            f"ExecStart=/usr/bin/python3 -m http.server --bind {http_address} --directory {http_root} {http_port}",
            "DynamicUser=yes", "Restart=on-failure", "", "[Install]", "WantedBy=multi-user.target", ""]),
    }
