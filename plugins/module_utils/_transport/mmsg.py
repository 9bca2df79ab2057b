# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Many datagrams per system call: ``sendmmsg(2)`` and ``recvmmsg(2)`` through ctypes, without UDP
GSO/GRO, and ``recvmmsg`` of several GRO buffers per call with it.

Private to the collection: not a public API. Without offload, one system call per 1472-byte
datagram was most of the transport's cost on both sides; with these one call sends up to ``BATCH``
and receives up to ``RECEIVE_BATCH`` datagrams. The rows of a 2-D numpy array are sent or received
in place: one iovec per row, the pointers refilled with one numpy operation. ctypes releases the GIL
during the call, so the other threads (hashing, writing) run meanwhile.

The structures follow the C declarations and let ctypes lay them out, so they hold on any 64-bit
Linux (no hard-coded offsets). Where libc lacks the calls, or ``FLEETCAST_NO_MMSG=1`` is set, the
factories return None and the callers keep the one-datagram-per-call path, so both stay tested.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
from typing import Optional, Tuple

from .netio import np
from .wire import DATAGRAM

BATCH = 64                      # datagrams per sendmmsg (a burst the size of a GSO send)
RECEIVE_BATCH = 256             # datagrams per recvmmsg at most (a 377 KB array)
GRO_ROWS = 44                   # full datagrams in one GRO buffer at most (UDP GRO stops at 64 KiB)
GRO_BATCH = 8                   # GRO buffers per recvmmsg (a 518 KB array)
GRO_SPILL = 1024                # room after the 44 rows: a shorter datagram GRO appended (65507 - 64768 at most)
SOL_UDP = 17
UDP_GRO = 104
MSG_TRUNC = 0x20
MSG_DONTWAIT = 0x40
_RETRY = (errno.EINTR,)
_WOULD_BLOCK = (errno.EAGAIN, errno.EWOULDBLOCK)


class IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class MsgHdr(ctypes.Structure):
    # the kernel's struct user_msghdr: lengths are size_t (glibc declares them so on 64-bit)
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.c_void_p), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", MsgHdr), ("msg_len", ctypes.c_uint)]


class SockAddrIn(ctypes.Structure):
    # port and address in network byte order, as the kernel reads and writes them
    _fields_ = [("sin_family", ctypes.c_ushort), ("sin_port", ctypes.c_ubyte * 2),
                ("sin_addr", ctypes.c_ubyte * 4), ("sin_zero", ctypes.c_ubyte * 8)]


def _libc():
    """libc with both calls, prototypes set; None where they are missing."""
    # the running interpreter's own symbols first: find_library would run ldconfig
    for name in (None, "c"):
        try:
            libc = ctypes.CDLL(name and ctypes.util.find_library(name), use_errno=True)
            send, receive = libc.sendmmsg, libc.recvmmsg
        except (OSError, AttributeError, TypeError, ValueError):
            continue
        send.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
        send.restype = ctypes.c_int
        receive.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
        receive.restype = ctypes.c_int
        return libc
    return None


LIBC = _libc() if os.uname().sysname == "Linux" else None


def mmsg_wanted() -> bool:
    """Batched calls are used when libc has them and FLEETCAST_NO_MMSG is not set."""
    return LIBC is not None and np is not None and os.environ.get("FLEETCAST_NO_MMSG", "") in ("", "0")


_IOV_VIEW = None if np is None else np.dtype({
    "names": ["base", "len"], "formats": [np.uintp, np.uintp],
    "offsets": [IoVec.iov_base.offset, IoVec.iov_len.offset], "itemsize": ctypes.sizeof(IoVec)})
# what the kernel writes back per message: its length and flags (MSG_TRUNC)
_RESULT_VIEW = None if np is None else np.dtype({
    "names": ["len", "flags"], "formats": [np.uint32, np.int32],
    "offsets": [MMsgHdr.msg_len.offset, MMsgHdr.msg_hdr.offset + MsgHdr.msg_flags.offset],
    "itemsize": ctypes.sizeof(MMsgHdr)})


class _Vectors:
    """`capacity` message headers, each with one iovec and one address, allocated once."""

    def __init__(self, sock: socket.socket, capacity: int, addresses: int) -> None:
        self.fd = sock.fileno()
        self.capacity = capacity
        self.iov = (IoVec * capacity)()
        self.names = (SockAddrIn * addresses)()
        self.headers = (MMsgHdr * capacity)()
        self.address = ctypes.addressof(self.headers)
        iov, names = ctypes.addressof(self.iov), ctypes.addressof(self.names)
        for number, header in enumerate(self.headers):
            header.msg_hdr.msg_name = names + (number % addresses) * ctypes.sizeof(SockAddrIn)
            header.msg_hdr.msg_namelen = ctypes.sizeof(SockAddrIn)
            header.msg_hdr.msg_iov = iov + number * ctypes.sizeof(IoVec)
            header.msg_hdr.msg_iovlen = 1
        self.vectors = np.frombuffer(self.iov, dtype=_IOV_VIEW)
        self.offsets = np.zeros(capacity, dtype=np.uintp)
        self.shape = (-1, -1)

    def point(self, base: int, stride: int, width: int, count: int) -> None:
        """iovec i covers `width` bytes at base + i * stride."""
        if (stride, width) != self.shape:
            self.offsets[:] = np.arange(self.capacity, dtype=np.uintp) * stride
            self.vectors["len"] = width
            self.shape = (stride, width)
        np.add(self.offsets[:count], base, out=self.vectors["base"][:count])


def _error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def _receive(fd: int, headers: int, capacity: int) -> int:
    """One non-blocking recvmmsg into `capacity` prepared message headers: messages received, 0 if
    none is waiting; OSError on any error but an interruption (retried)."""
    while True:
        # an AF_INET name is always sockaddr_in long: msg_namelen never needs resetting
        count = LIBC.recvmmsg(fd, headers, capacity, MSG_DONTWAIT, None)
        if count >= 0:
            return count
        code = ctypes.get_errno()
        if code in _WOULD_BLOCK:
            return 0
        if code not in _RETRY:
            raise _error(code)


def _address_of(name: "SockAddrIn") -> Tuple[str, int]:
    """(address, port) of a sockaddr_in the kernel filled in."""
    return socket.inet_ntoa(bytes(name.sin_addr)), int.from_bytes(bytes(name.sin_port), "big")


class BatchSender:
    """Sends the rows of a 2-D uint8 array to one destination, one datagram per row."""

    def __init__(self, sock: socket.socket, destination: Tuple[str, int], capacity: int = BATCH) -> None:
        self.vectors = _Vectors(sock, capacity, 1)
        target = self.vectors.names[0]
        target.sin_family = socket.AF_INET
        target.sin_port[:] = list(destination[1].to_bytes(2, "big"))
        target.sin_addr[:] = list(socket.inet_aton(destination[0]))

    def send(self, rows: "np.ndarray") -> int:
        """Datagrams sent (from the first row on, at most the capacity; fewer when the socket
        buffer fills). BlockingIOError when not even one fitted; OSError on any other error."""
        count = min(rows.shape[0], self.vectors.capacity)
        if count == 0:
            return 0
        if rows.strides[1] != 1:
            raise ValueError("rows must be contiguous")
        self.vectors.point(rows.ctypes.data, rows.strides[0], rows.shape[1], count)
        while True:
            sent = LIBC.sendmmsg(self.vectors.fd, self.vectors.address, count, MSG_DONTWAIT)
            if sent >= 0:
                return sent
            code = ctypes.get_errno()
            if code in _WOULD_BLOCK:
                raise BlockingIOError(code, os.strerror(code))
            if code not in _RETRY:
                raise _error(code)


class BatchReceiver:
    """Receives up to `capacity` datagrams per call into the rows of a preallocated array.

    After ``count = receive()``: ``rows[:count]`` hold the datagrams (each at most one row long),
    ``lengths[:count]`` their lengths, ``flags[:count]`` MSG_TRUNC for one that was longer than a
    row (cut), and ``source(i)`` the sender's (address, port)."""

    def __init__(self, sock: socket.socket, capacity: int = RECEIVE_BATCH, width: int = DATAGRAM) -> None:
        self.vectors = _Vectors(sock, capacity, capacity)
        self.capacity = capacity
        self.rows = np.zeros((capacity, width), dtype=np.uint8)
        self.vectors.point(self.rows.ctypes.data, width, width, capacity)
        results = np.frombuffer(self.vectors.headers, dtype=_RESULT_VIEW)
        self.lengths = results["len"]
        self.flags = results["flags"]

    def receive(self) -> int:
        """Datagrams received, 0 if none is waiting (never blocks); OSError on any error."""
        return _receive(self.vectors.fd, self.vectors.address, self.vectors.capacity)

    def source(self, number: int) -> Tuple[str, int]:
        return _address_of(self.vectors.names[number])


class _Control(ctypes.Structure):
    # struct cmsghdr followed by one int: what UDP_GRO puts in each message's control buffer
    _fields_ = [("cmsg_len", ctypes.c_size_t), ("cmsg_level", ctypes.c_int), ("cmsg_type", ctypes.c_int),
                ("value", ctypes.c_int), ("pad", ctypes.c_int)]


_CONTROL_VIEW = None if np is None else np.dtype({
    "names": ["level", "type", "value"], "formats": [np.int32, np.int32, np.int32],
    "offsets": [_Control.cmsg_level.offset, _Control.cmsg_type.offset, _Control.value.offset],
    "itemsize": ctypes.sizeof(_Control)})
_CONTROLLEN_VIEW = None if np is None else np.dtype({
    "names": ["controllen"], "formats": [np.uintp],
    "offsets": [MMsgHdr.msg_hdr.offset + MsgHdr.msg_controllen.offset], "itemsize": ctypes.sizeof(MMsgHdr)})


class GroBatchReceiver:
    """Receives up to `capacity` GRO buffers per recvmmsg call on a socket with UDP_GRO on.

    Buffer i lands in rows i * GRO_ROWS .. of one array, so that buffers of GRO_ROWS full datagrams
    follow each other without a gap (several of them are then one run of rows), and whatever follows
    those rows (a shorter datagram GRO appended) in ``spill[i]``. After ``count = receive()``:
    ``lengths[:count]``, ``flags[:count]`` (MSG_TRUNC), ``segments(count)`` (the segment size GRO
    reports, 0 for a datagram that came alone) and ``source(i)``."""

    def __init__(self, sock: socket.socket, capacity: int = GRO_BATCH) -> None:
        self.fd = sock.fileno()
        self.capacity = capacity
        self.rows = np.zeros((capacity * GRO_ROWS, DATAGRAM), dtype=np.uint8)
        self.spill = np.zeros((capacity, GRO_SPILL), dtype=np.uint8)
        self.iov = (IoVec * (2 * capacity))()
        self.names = (SockAddrIn * capacity)()
        self.controls = (_Control * capacity)()
        self.headers = (MMsgHdr * capacity)()
        self.address = ctypes.addressof(self.headers)
        slot = GRO_ROWS * DATAGRAM
        for number, header in enumerate(self.headers):
            self.iov[2 * number].iov_base = self.rows.ctypes.data + number * slot
            self.iov[2 * number].iov_len = slot
            self.iov[2 * number + 1].iov_base = self.spill.ctypes.data + number * GRO_SPILL
            self.iov[2 * number + 1].iov_len = GRO_SPILL
            header.msg_hdr.msg_name = ctypes.addressof(self.names) + number * ctypes.sizeof(SockAddrIn)
            header.msg_hdr.msg_namelen = ctypes.sizeof(SockAddrIn)
            header.msg_hdr.msg_iov = ctypes.addressof(self.iov) + 2 * number * ctypes.sizeof(IoVec)
            header.msg_hdr.msg_iovlen = 2
            header.msg_hdr.msg_control = ctypes.addressof(self.controls) + number * ctypes.sizeof(_Control)
        results = np.frombuffer(self.headers, dtype=_RESULT_VIEW)
        self.lengths = results["len"]
        self.flags = results["flags"]
        # the kernel writes back how much control data it put: reset to the room before each call
        self.controllen = np.frombuffer(self.headers, dtype=_CONTROLLEN_VIEW)["controllen"]
        self.control = np.frombuffer(self.controls, dtype=_CONTROL_VIEW)
        self.control_room = ctypes.sizeof(_Control)

    def receive(self) -> int:
        """GRO buffers received, 0 if none is waiting (never blocks); OSError on any error."""
        self.controllen[:] = self.control_room
        return _receive(self.fd, self.address, self.capacity)

    def segments(self, count: int) -> "np.ndarray":
        control = self.control[:count]
        present = ((self.controllen[:count] >= _Control.pad.offset) & (control["level"] == SOL_UDP)
                   & (control["type"] == UDP_GRO))
        return np.where(present, control["value"], 0)

    def message(self, number: int) -> bytes:
        """The whole of buffer `number` as bytes (for control datagrams, which are rare)."""
        length = int(self.lengths[number])
        slot = GRO_ROWS * DATAGRAM
        head = self.rows[number * GRO_ROWS:(number + 1) * GRO_ROWS].reshape(-1)[:min(length, slot)].tobytes()
        return head + self.spill[number, :max(0, length - slot)].tobytes()

    def source(self, number: int) -> Tuple[str, int]:
        return _address_of(self.names[number])


def gro_batch_receiver(sock: socket.socket) -> Optional[GroBatchReceiver]:
    """A GroBatchReceiver for a socket with UDP_GRO on, or None for one GRO buffer per call."""
    return GroBatchReceiver(sock) if mmsg_wanted() else None


def batch_sender(sock: socket.socket, destination: Tuple[str, int]) -> Optional[BatchSender]:
    """A BatchSender for the socket, or None for the one-datagram-per-call path."""
    return BatchSender(sock, destination) if mmsg_wanted() else None


def batch_receiver(sock: socket.socket) -> Optional[BatchReceiver]:
    """A BatchReceiver for the socket, or None for the one-datagram-per-call path."""
    return BatchReceiver(sock) if mmsg_wanted() else None
