# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sockets of a multicast session, with Linux UDP GSO/GRO where the kernel offers them.

Private to the collection: not a public API. ``FLEETCAST_NO_OFFLOAD=1`` (or ``offload=False``)
forces the plain one-datagram-per-system-call path, so both paths stay tested.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
import threading
import traceback
from typing import Dict, List, Optional, Tuple

from .._errors import TransportError
from .wire import DATAGRAM

# numpy is imported here, once, for the sender and the receiver; modules report it missing.
try:
    import numpy as np  # pylint: disable=unused-import
except ImportError:
    np = None
    NUMPY_IMPORT_ERROR: Optional[str] = traceback.format_exc()
else:
    NUMPY_IMPORT_ERROR = None

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
SIOCGIFADDR = 0x8915
GSO_MAX_SEGMENTS = 44               # 44 * 1472 bytes stays under the 64 KiB UDP length limit
SOCKET_BUFFER = 64 * 1024 * 1024
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33


class BufferPool:
    """2-D uint8 buffers (count x width) kept for reuse once their object is done with: a fresh
    4 MiB array costs a page fault and a zeroed page per 4 KiB every time, a reused one nothing.
    Each starts on a page boundary, so that a receiver's complete object can be written to its disk
    straight from it (O_DIRECT, ``_writeback.DiskWriter``)."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.free: Dict[int, List["np.ndarray"]] = {}
        self.bytes = 0
        self.lock = threading.Lock()

    def take(self, count: int, room: int) -> "np.ndarray":
        """A buffer of `count` rows; on a miss, pooled buffers beyond `room` bytes are let go, so
        that pooled and live buffers together stay within the caller's bound."""
        with self.lock:
            stack = self.free.get(count)
            if stack:
                rows = stack.pop()
                if not stack:
                    # never leave an empty list behind: the eviction below pops from whatever
                    # list comes first (an empty one crashed the sender of every image whose
                    # chunks vary in size, "pop from empty list")
                    del self.free[count]
                self.bytes -= rows.nbytes
                return rows
            while self.bytes > max(0, room) and self.free:
                size, stack = next(iter(self.free.items()))
                if stack:           # a size taken empty above leaves an empty list behind
                    self.bytes -= stack.pop().nbytes
                if not stack:
                    del self.free[size]
        return page_aligned(count, self.width)

    def give(self, rows: "np.ndarray") -> None:
        with self.lock:
            self.free.setdefault(rows.shape[0], []).append(rows)
            self.bytes += rows.nbytes


PAGE = 4096


def page_aligned(count: int, width: int) -> "np.ndarray":
    """An uninitialised (count x width) uint8 array whose first byte is on a page boundary."""
    raw = np.empty(count * width + PAGE, dtype=np.uint8)
    shift = -raw.ctypes.data % PAGE
    return raw[shift:shift + count * width].reshape(count, width)


_M_MMAP_THRESHOLD = -3
LARGE_ALLOCATION = 1024 * 1024


def return_large_allocations() -> None:
    """Have malloc map every allocation of LARGE_ALLOCATION bytes or more on its own and unmap it
    when freed. By default glibc raises that threshold to the size of the largest block freed (up
    to 32 MiB): after the first 4 MiB object, chunk copies and reassembly buffers came from the
    heap and the threads' arenas, which kept up to twice that each once freed (a receiver through
    the bridge peaked at 113-119 MiB, 101 MiB with this). Only for the receiving process (its
    long-lived large buffers are pooled, so the cost is a page fault per 4 KiB of a chunk copy).
    Setting that threshold also pins the heap's trim threshold at 128 KiB, so per-call temporaries
    of a few hundred KB would be handed back and faulted in afresh every call: the hot loop keeps
    its own scratch instead (``dmac.DatagramMac``)."""
    try:
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, LARGE_ALLOCATION)
    except (OSError, AttributeError):
        pass                      # not glibc: its own policy stands


def offload_wanted(offload: Optional[bool]) -> bool:
    if offload is not None:
        return offload
    return os.environ.get("FLEETCAST_NO_OFFLOAD", "") in ("", "0")


def interface_address(interface: str) -> str:
    """IPv4 address of a network interface, e.g. ``eth0`` -> ``10.0.0.5``."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        request = struct.pack("256s", interface.encode()[:15])
        return socket.inet_ntoa(fcntl.ioctl(probe.fileno(), SIOCGIFADDR, request)[20:24])
    except OSError as err:
        raise TransportError(f"Interface {interface} has no IPv4 address usable for multicast ({err.strerror}).") from None
    finally:
        probe.close()


def _big_buffers(sock: socket.socket, option: int) -> None:
    # SO_*BUFFORCE passes the sysctl limits when we run as root (imaging runs as root).
    forced = SO_RCVBUFFORCE if option == socket.SO_RCVBUF else SO_SNDBUFFORCE
    try:
        sock.setsockopt(socket.SOL_SOCKET, forced, SOCKET_BUFFER)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)


def sender_socket(address: str, port: int, ttl: int, offload: Optional[bool]) -> Tuple[socket.socket, bool]:
    """The sender's one socket: sends to the group, receives receivers' unicast control. Returns
    (socket, GSO in use)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(address))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        _big_buffers(sock, socket.SO_SNDBUF)
        _big_buffers(sock, socket.SO_RCVBUF)
    except OSError as err:
        sock.close()
        raise TransportError(f"Cannot open the multicast sender socket on {address}:{port} ({err.strerror}).") from None
    gso = False
    if offload_wanted(offload):
        try:
            # Set once on the socket: a send longer than one segment is cut by the kernel (or the
            # NIC) into DATAGRAM-sized datagrams; shorter sends (control) go out as they are.
            sock.setsockopt(SOL_UDP, UDP_SEGMENT, DATAGRAM)
            gso = True
        except OSError:
            gso = False
    return sock, gso


def mark(sock: socket.socket, dscp: int) -> None:
    """Mark what `sock` sends with a DSCP class (RFC 2474: the six high bits of the IPv4 TOS byte),
    so that a network's QoS policy can tell imaging traffic apart (CS1, 8: lower effort); 0 leaves
    the datagrams unmarked."""
    if dscp:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, dscp << 2)


def report_socket(group: str, port: int, address: str) -> socket.socket:
    """The sender's second way in: receivers send every report both to the sender's address and to
    (group, port + 1). A host sending with the sender's Ethernet address makes a learning switch
    forward the unicast reports to itself; group traffic reaches every member port regardless."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((group, port + 1))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, _membership(group, address))
        sock.setblocking(False)
    except OSError as err:
        sock.close()
        raise TransportError(f"Cannot join multicast group {group}:{port + 1} on {address} for receivers' reports ({err.strerror}).") from None
    return sock


def receiver_sockets(group: str, port: int, address: str, offload: Optional[bool]) -> Tuple[socket.socket, socket.socket, bool]:
    """(group socket, control socket, GRO in use) of a receiver on the interface with `address`."""
    data = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    control = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        data.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        data.bind((group, port))
        data.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, _membership(group, address))
        _big_buffers(data, socket.SO_RCVBUF)
        control.bind((address, 0))
        # reports also go to the group's report port (see `report_socket`), on this interface
        control.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(address))
        control.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        control.setblocking(False)
    except OSError as err:
        data.close()
        control.close()
        raise TransportError(f"Cannot join multicast group {group}:{port} on {address} ({err.strerror}).") from None
    gro = False
    if offload_wanted(offload):
        try:
            data.setsockopt(SOL_UDP, UDP_GRO, 1)
            gro = True
        except OSError:
            gro = False
    return data, control, gro


def _membership(group: str, address: str) -> bytes:
    """The ip_mreq of `group` on the interface with `address`."""
    return socket.inet_aton(group) + socket.inet_aton(address)


def renew_membership(sock: socket.socket, group: str, address: str) -> None:
    """Leave and join `group` again, so that the kernel sends a fresh IGMP membership report.

    An IGMP-snooping switch forwards a group only to ports it has seen a report from. A report lost
    under load (or a switch that restarted) leaves a receiver cut off until the next general query,
    which may be minutes away; in the lab a lost report cut a receiver off for 25 s."""
    membership = _membership(group, address)
    try:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_DROP_MEMBERSHIP, membership)
    except OSError:
        pass
    try:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
    except OSError as err:
        raise TransportError(f"Cannot join multicast group {group} again on {address} ({err.strerror}).") from None


def disable_gro(sock: socket.socket) -> bool:
    """Turn UDP GRO off on a receiving socket (from then on every datagram arrives on its own)."""
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 0)
        return True
    except OSError:
        return False


def gro_segment_size(ancillary) -> int:
    """Segment size the kernel reports for a coalesced GRO buffer, 0 for a single datagram."""
    for level, kind, value in ancillary:
        if level == SOL_UDP and kind == UDP_GRO:
            return struct.unpack("=i", value[:4])[0] if len(value) >= 4 else struct.unpack("=H", value[:2])[0]
    return 0


def udp_receive_errors() -> int:
    """Datagrams the kernel dropped in this network namespace because a socket buffer was full."""
    try:
        with open("/proc/net/snmp", encoding="ascii") as snmp:
            lines = [line.split() for line in snmp if line.startswith("Udp:")]
        names, values = lines[0], lines[1]
        return int(values[names.index("RcvbufErrors")])
    except (OSError, IndexError, ValueError):
        return 0
