# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Wire format of a multicast session. Private to the collection: not a public API.

Two kinds of datagram share the group port:

* data: a fixed 32-byte header (type, version, session id, object, fragment, fragment count, an
  8-byte per-datagram tag) and a fixed-size payload, so that every data datagram is exactly
  ``DATAGRAM`` bytes long and a GRO buffer is a 2-D array of rows. The tag (``dmac``) covers the
  header fields and the payload: a forged datagram changes no state. An object is handed on only
  once its bytes also match the GMAC tag (``gcm``) carried by an authenticated META message.
* control: a 20-byte header (type, version, flags, session id, sequence), a body and a truncated
  HMAC-SHA256 tag with a key derived per session (HKDF, RFC 5869) from the session key.
  Sequence numbers pass a sliding replay window, so a captured control datagram cannot be replayed.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import struct
from dataclasses import dataclass
from typing import List, Optional, Tuple

VERSION = 3                           # 3: per-datagram tags, LEAVE; 2: GMAC object tags, STATUS room
DATAGRAM = 1472                       # fits a 1500-byte MTU: 20 IPv4 + 8 UDP + 1472
DATA_HEADER = struct.Struct(">BBHQIII")   # the fields; the 8-byte datagram tag follows them
DATA_TAG_SIZE = 8
DATA_HEADER_SIZE = DATA_HEADER.size + DATA_TAG_SIZE   # 32: where the payload starts
PAYLOAD = DATAGRAM - DATA_HEADER_SIZE
CONTROL_HEADER = struct.Struct(">BBHQQ")
TAG_SIZE = 16
CONTROL_MAX = 1400                    # never DATAGRAM long: GRO must not glue control onto data

# datagram types
DATA = 1
ANNOUNCE = 2
META = 3
WELCOME = 4
END = 5
DONE_ACK = 6
JOIN = 16
STATUS = 17
DONE = 18
LEAVE = 19             # a receiver gives up, with its reason (one sentence)

# STATUS request kinds
REQ_FRAGMENTS = 1      # object, first fragment, fragment count
REQ_OBJECTS = 2        # first object, object count (whole objects)
REQ_META = 3           # first object, object count (their META entries)

ANNOUNCE_BODY = struct.Struct(">IIBBHI32s")
META_HEAD = struct.Struct(">IH")
META_ENTRY = struct.Struct(">I16s")   # wire length, GMAC tag
META_PER_MESSAGE = 60
WELCOME_BODY = struct.Struct(">QQ")
END_BODY = struct.Struct(">B")
DONE_ACK_BODY = struct.Struct(">Q")
JOIN_BODY = struct.Struct(">QQ")
# receiver id, delivered, lowest missing, overflow, bytes done, frontier, free window bytes,
# authentic data datagrams taken (mod 2**32), requests
STATUS_HEAD = struct.Struct(">QIIIQIQIB")
REQUEST = struct.Struct(">BIII")
REQUESTS_PER_STATUS = 80
DONE_BODY = struct.Struct(">QI32s")    # receiver id, objects, final digest (image id)
LEAVE_BODY = struct.Struct(">Q")       # receiver id, then the reason (UTF-8, at most 300 bytes)

END_COMPLETE = 0
END_ABORTED = 1


def hkdf(key: bytes, salt: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 (RFC 5869) with one 32-byte output block."""
    prk = hmac.digest(salt, key, "sha256")
    return hmac.digest(prk, info + b"\x01", "sha256")


@dataclass(frozen=True)
class SessionKeys:
    """Keys of one session: the MAC key for control messages and the AES-GCM key for payloads."""

    session_id: int
    mac: bytes
    enc: bytes
    auth: bytes                       # GMAC key of the objects (never the encryption key: nonces repeat)
    data: bytes = b""                 # key of the per-datagram tags of data datagrams

    @classmethod
    def derive(cls, session_key: bytes, session_id: int) -> "SessionKeys":
        salt = struct.pack(">Q", session_id)
        return cls(session_id, hkdf(session_key, salt, b"fleetcast control mac"),
                   hkdf(session_key, salt, b"fleetcast payload aes-gcm"),
                   hkdf(session_key, salt, b"fleetcast object gmac"),
                   hkdf(session_key, salt, b"fleetcast datagram mac"))


@functools.lru_cache(maxsize=16)
def _keyed_hmac(key: bytes):
    return hmac.new(key, digestmod=hashlib.sha256)


def control_tag(keys: SessionKeys, message: bytes) -> bytes:
    """The tag of a control message: HMAC-SHA-256 under the session's control key, truncated.
    From a copy of the keyed state, not ``hmac.digest()``: that one-shot call releases the GIL
    for its few microseconds and then waits for it, up to a switch interval, while another of the
    process's threads runs Python (10 % of a receiver's loop in a profile, for 270 messages)."""
    state = _keyed_hmac(keys.mac).copy()
    state.update(message)
    return state.digest()[:TAG_SIZE]


def pack_control(keys: SessionKeys, kind: int, seq: int, body: bytes, flags: int = 0) -> bytes:
    message = CONTROL_HEADER.pack(kind, VERSION, flags, keys.session_id, seq) + body
    return message + control_tag(keys, message)


def _control_sized(datagram: bytes) -> bool:
    return CONTROL_HEADER.size + TAG_SIZE <= len(datagram) <= CONTROL_MAX


def peek_control(datagram: bytes) -> Optional[Tuple[int, int, int, int]]:
    """(type, flags, session id, sequence) of a well-formed control datagram, unauthenticated."""
    if not _control_sized(datagram):
        return None
    kind, version, flags, session_id, seq = CONTROL_HEADER.unpack_from(datagram)
    if version != VERSION or kind == DATA:
        return None
    return kind, flags, session_id, seq


def foreign_version(datagram: bytes) -> Optional[int]:
    """The wire version of a datagram that looks like a fleetcast announcement of another version
    (a sender running another release of the collection), else None. Unauthenticated: only for
    saying why no session was found."""
    if not _control_sized(datagram):
        return None
    kind, version = datagram[0], datagram[1]
    return version if kind == ANNOUNCE and version != VERSION and 0 < version < 16 else None


def open_control(keys: SessionKeys, datagram: bytes) -> Optional[Tuple[int, int, int, bytes]]:
    """(type, flags, sequence, body) if the tag verifies under this session's key, else None."""
    head = peek_control(datagram)
    if head is None or head[2] != keys.session_id:
        return None
    message, tag = datagram[:-TAG_SIZE], datagram[-TAG_SIZE:]
    if not hmac.compare_digest(control_tag(keys, message), tag):
        return None
    return head[0], head[1], head[3], bytes(datagram[CONTROL_HEADER.size:-TAG_SIZE])


class ReplayWindow:
    """Accepts each sequence number once, and none older than the 1024 before the newest seen."""

    SIZE = 1024

    def __init__(self) -> None:
        self.highest = 0
        self.mask = 0

    def accept(self, seq: int) -> bool:
        if seq > self.highest:
            shift = seq - self.highest
            self.mask = ((self.mask << shift) | 1) & ((1 << self.SIZE) - 1)
            self.highest = seq
            return True
        age = self.highest - seq
        if seq <= 0 or age >= self.SIZE or self.mask >> age & 1:
            return False
        self.mask |= 1 << age
        return True


def image_id_field(image_id: bytes) -> bytes:
    """The ANNOUNCE image id field: the 32-byte id, or 32 zero bytes for none."""
    return image_id[:32].ljust(32, b"\0")


def announced_image_id(field: bytes) -> bytes:
    """Back from the field: b"" for none. An id may itself end in zero bytes, so never strip them."""
    return bytes(field) if any(field) else b""


def object_nonce(index: int) -> bytes:
    """AES-GCM nonce of one object: unique per object within a session (the key is per session)."""
    return b"FCOB" + struct.pack(">Q", index)


def fragments_of(wire_length: int) -> int:
    return max(1, -(-wire_length // PAYLOAD))


def transport_digest(entries: List[Tuple[int, bytes]]) -> bytes:
    """SHA-256 over every object's (length, tag) in index order: the session's own digest (keyed by
    the session, like the tags; sessions of an image report the image id instead)."""
    total = hashlib.sha256()
    for index, (length, digest) in enumerate(entries):
        total.update(struct.pack(">IQ", index, length) + digest)
    return total.digest()
