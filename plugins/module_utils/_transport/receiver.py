# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The receiving side of a multicast session. Private to the collection: not a public API.

Three stages overlap in threads: the network loop (reassembles objects; with GRO a whole buffer of
datagrams is one strided numpy copy), the verifier (decrypts, checks each object against the
digest from an authenticated META message) and the writer (hands verified objects to the sink in
the order they complete). Memory is bounded by ``window_bytes`` whatever the image size: data for
an object that does not fit is dropped and asked for again later.

A receiver joins only a session whose sender answered its own random nonce (WELCOME), so replayed
announcements of an older session lead nowhere; once joined, every datagram of another session id
is ignored.
"""

from __future__ import annotations

import hmac
import os
import queue
import random
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from .._errors import TransportError
from . import gcm, wire
from .dmac import DatagramMac
from .mmsg import MSG_TRUNC, batch_receiver
from .netio import (NUMPY_IMPORT_ERROR, BufferPool, disable_gro, gro_segment_size, np, receiver_sockets,
                    renew_membership, udp_receive_errors)


STATUS_EVERY = 0.025
NACK_AFTER = 0.015            # an object silent this long with holes gets its holes asked for
NACK_RETRY = 0.05
STATUS_DATAGRAMS = 4          # at most this many STATUS datagrams per round
OBJECT_REQUEST_HOLDOFF = 0.3
JOIN_EVERY = 0.2
WINDOW_UPDATE = 8 * 1024 * 1024   # room last reported below this: report freed room at once
REJOIN_AFTER = 0.5            # nothing from the group this long (announcements come every 0.1 s): join again,
REJOIN_MAX = 8.0              # then after twice as long each time, up to this
GRO_PROBE = 4096              # data datagrams after which GRO that never coalesced is given up
GATHER = 0.001                # without GRO, once the socket is drained: let datagrams gather
VECTOR_FROM = 10              # from this many datagrams in a recvmmsg batch, `_rows` beats `_one`
MAX_FRAGMENTS = (64 * 1024 * 1024) // wire.PAYLOAD + 1     # refuse objects over 64 MiB
AHEAD = 4096                  # objects past the announced count a datagram may name (a live source grows)
BUFFER = 65536 + 4096
DATA_SILENCE = 5.0            # the sender sent objects, none of their datagrams came for this long: give up
STALE_PARTIAL = 2.0           # an object with holes that heard nothing this long yields its room
DONE_EVERY = 0.1

# the data header as numpy fields: rows of a GRO buffer viewed through it need no copies
HEADER_ROW = None if NUMPY_IMPORT_ERROR else np.dtype({
    "names": ["prefix", "session", "object", "fragment", "count"],
    "formats": [">u4", ">u8", ">u4", ">u4", ">u4"],
    "offsets": [0, 4, 12, 16, 20], "itemsize": wire.DATAGRAM})

# the data header as (type/version/flags, session id, object, fragment, count) in one unpack
FALLBACK_HEADER = struct.Struct(">IQIII")

# the data header as six native 32-bit words; word 4 is the fragment number, whose big-endian
# bytes for every possible fragment are precomputed as native words
HEADER_WORDS = wire.DATA_HEADER.size // 4     # the fields, not the tag (it differs per row)
FRAGMENT_WORD = 4

FRAGMENT_WORDS = None if NUMPY_IMPORT_ERROR else np.arange(MAX_FRAGMENTS + 1, dtype=">u4").view(np.uint32)

# object states
MISSING, PENDING, DELIVERED = 0, 1, 2


@dataclass
class ReceiverConfig:
    group: str
    port: int
    address: str
    session_key: bytes
    name: str = ""
    timeout: float = 30.0              # silence (or no session at all) that ends with an error
    window_bytes: int = 48 * 1024 * 1024
    offload: Optional[bool] = None
    layout_first: bool = False         # accept other objects only once object 0 was delivered


@dataclass
class ReceiveResult:
    objects: int
    bytes: int
    fragment_requests: int
    object_requests: int
    seconds: float
    digest: str
    announced_image_id: str
    sender: str
    gro: bool
    encrypted: bool
    kernel_drops: int
    window_drops: int
    rejected_objects: int
    datagrams: int = 0                 # data datagrams received
    receive_calls: int = 0             # system calls that returned them (GRO coalesces many in one)
    rejoins: int = 0                   # times the group went silent and its membership was reported again
    gro_dropped: bool = False          # GRO was offered but coalesced nothing, so batches were used
    mmsg: bool = False                 # without GRO: recvmmsg took many datagrams per call
    forged_datagrams: int = 0          # data datagrams of this session whose tag was wrong (dropped)
    evicted_objects: int = 0           # objects with holes that yielded their room (fetched again)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class _Partial:
    __slots__ = ("rows", "got", "remaining", "count", "last_seen", "complete", "newest", "asked")

    def __init__(self, rows: np.ndarray, now: float, newest: bool):
        count = rows.shape[0]
        self.rows = rows
        self.got = np.zeros(count, dtype=bool)
        self.remaining = count
        self.count = count
        self.last_seen = now
        self.complete = False
        self.newest = newest             # started as the newest object: sent in the first pass
        self.asked = False               # its holes were asked for at least once


class _Candidate:
    __slots__ = ("keys", "sender", "nonce", "asked", "announce")

    def __init__(self, keys: wire.SessionKeys, sender: Tuple[str, int]):
        self.keys = keys
        self.sender = sender
        self.nonce = int.from_bytes(os.urandom(8), "big")
        self.asked = 0.0
        self.announce = b""


# A sink gets (index, bytes-like object); the object is only valid during the call.
Sink = Callable[[int, memoryview], None]


class Receiver:
    def __init__(self, config: ReceiverConfig, sink: Sink, finish: Optional[Callable[[bytes], bytes]] = None):
        """`finish(announced image id)` runs once every object was delivered and returns the digest
        this receiver reports (default: the session digest of what it verified)."""
        self.config = config
        self.sink = sink
        self.finish = finish
        self.receiver_id = int.from_bytes(os.urandom(8), "big") or 1
        self.data_sock, self.control_sock, self.gro = receiver_sockets(
            config.group, config.port, config.address, config.offload)
        # non-blocking, waiting in select only when the queue is empty: a socket timeout would
        # cost a poll() before every receive, i.e. one per datagram on the fallback path
        self.data_sock.setblocking(False)
        # without GRO, recvmmsg where libc has it; else one recvfrom per datagram (the last resort)
        self.batch = None
        if not self.gro:
            self._use_batches()
        self.gro_dropped = False           # GRO was on but coalesced nothing: batches instead
        self.pool = BufferPool(wire.PAYLOAD)
        self.datagrams = 0
        self.receive_calls = 0
        self.buffer = bytearray(BUFFER)
        self.view = memoryview(self.buffer)
        self.array = np.frombuffer(self.buffer, dtype=np.uint8)
        self.payload_view = self.array[wire.DATA_HEADER_SIZE:wire.DATAGRAM]   # of a single datagram
        self.single_row = self.array[:wire.DATAGRAM].reshape(1, wire.DATAGRAM)
        self.dmac: Optional[DatagramMac] = None
        self.singles = 0                   # authentic data datagrams that arrived one per call
        self.coalesced = 0                 # GRO buffers that held several authentic datagrams
        self.forged = 0                    # data datagrams of this session whose tag was wrong
        self.recent: Tuple[int, int, Optional[_Partial]] = (-1, 0, None)   # the object last filled
        self.candidates: Dict[int, _Candidate] = {}
        self.keys: Optional[wire.SessionKeys] = None
        self.mac: Optional[gcm.ObjectMac] = None
        self.prefix = b""
        self.prefix_head = 0
        self.sender: Tuple[str, int] = ("", 0)
        self.sender_window = wire.ReplayWindow()
        self.seq = 0
        self.cipher = None
        self.encrypted = False
        self.image_id = b""
        self.final_count: Optional[int] = None
        self.known = 0
        self.sent_through = 0
        self.state = bytearray()
        self.meta: Dict[int, Tuple[int, bytes]] = {}
        self.window: Dict[int, _Partial] = {}
        self.inflight = 0                  # bytes held by the window and the two queues
        self.inflight_lock = threading.Lock()
        self.requested: Dict[int, float] = {}
        self.request_backoff: Dict[int, float] = {}   # objects asked for whole that never came: hold-off
        self.last_data = 0.0               # when the last authentic data datagram came
        self.sent_through_at_data = 0      # the sender's first-pass position then
        self.report_to: List[Tuple[str, int]] = []
        self.data_seen = False             # any authentic data datagram at all
        self.evicted = 0                   # objects with holes that yielded their room, fetched again later
        self.lowest_missing = 0
        self.delivered = 0
        self.delivered_bytes = 0
        self.fragment_requests = 0
        self.object_requests = 0
        self.window_drops = 0
        self.frontier = 0                  # one past the highest object started (the sender's credit base)
        self.status_due = False            # report at once (lost fragments, or room the sender waits for)
        self.reported_free = config.window_bytes
        self.rejoins = 0                   # times the group went silent and was joined again
        self.foreign_versions: set = set()  # wire versions of announcements we cannot speak
        self.rejected_objects = 0
        self.kernel_drops_base = udp_receive_errors()
        self.rejected: "queue.SimpleQueue[int]" = queue.SimpleQueue()
        self.to_verify: "queue.Queue" = queue.Queue()
        self.to_write: "queue.Queue" = queue.Queue(maxsize=1)
        self.error: Optional[BaseException] = None
        self.last_from_sender = 0.0
        self.ended: Optional[int] = None
        self.done_acked = False
        self.digests: List[Tuple[int, bytes]] = []

    def _use_batches(self) -> None:
        self.batch = batch_receiver(self.data_sock)
        if self.batch is not None:      # each row and its payload as views, for `_one`
            self.batch_rows = [self.batch.rows[number:number + 1] for number in range(self.batch.capacity)]
            self.batch_payloads = [row[0, wire.DATA_HEADER_SIZE:] for row in self.batch_rows]

    def _gro_coalesces(self) -> bool:
        """False once GRO has handed over GRO_PROBE authentic data datagrams one by one and never
        several in one buffer: the kernel offers the option but the device does not coalesce (no
        GRO on the NIC or a veth without NAPI). Then GRO is turned off and recvmmsg takes many
        datagrams per call instead. Only authentic datagrams count: stray or forged single
        datagrams say nothing about the path and must not switch GRO off."""
        if self.singles < GRO_PROBE or self.coalesced:
            return True
        if disable_gro(self.data_sock):
            self.gro = False
            self.gro_dropped = True
            self._use_batches()
        return False

    # --- stages ----------------------------------------------------------------------------------
    def _release(self, rows: np.ndarray) -> None:
        with self.inflight_lock:
            self.inflight -= rows.nbytes
        self.pool.give(rows)
        if self.reported_free < WINDOW_UPDATE:
            # the sender may be waiting for room it does not know about yet: tell it now, not at
            # the next status slot (up to 37 ms away)
            self.status_due = True

    def _verify(self) -> None:
        while True:
            item = self.to_verify.get()
            if item is None:
                self.to_write.put(None)
                return
            index, partial, wire_length, digest = item
            rows = partial.rows
            try:
                # a view, not a copy: the GMAC and pwrite release the GIL on it
                data = memoryview(partial.rows).cast("B")[:wire_length]
                if self.cipher is not None:
                    # the AES-GCM tag is the object's authenticator; opening (in place, in the
                    # reassembly buffer) checks it again
                    valid = hmac.compare_digest(bytes(data[-gcm.TAG_SIZE:]), digest)
                    if valid:
                        data = self.cipher.open(wire.object_nonce(index), data,
                                                struct.pack(">Q", self.keys.session_id))
                        valid = data is not None
                else:
                    valid = hmac.compare_digest(self.mac.tag(wire.object_nonce(index), data), digest)
                if not valid:          # forged or damaged: ask again
                    self._release(rows)
                    self.rejected.put(index)
                    continue
                self.to_write.put((index, data, rows))
            except BaseException as err:
                self.error = err
                self._release(rows)
                self.to_write.put(None)
                return

    def _write(self) -> None:
        while True:
            item = self.to_write.get()
            if item is None:
                return
            index, data, rows = item
            try:
                if self.error is None:
                    self.sink(index, data)
                    self.delivered_bytes += data.nbytes if isinstance(data, memoryview) else len(data)
                    self.delivered += 1
            except BaseException as err:
                self.error = err
            finally:
                self._release(rows)      # the sink is done with the view: the buffer is reused

    # --- control ---------------------------------------------------------------------------------
    def _send(self, kind: int, body: bytes, keys: Optional[wire.SessionKeys] = None,
              to: Optional[List[Tuple[str, int]]] = None) -> None:
        """A control message to the sender, unicast and to the group's report port: a host that
        sends with the sender's Ethernet address makes a switch forward unicast meant for the
        sender to itself, but the group reaches every member port whatever the switch learnt.
        The sender's replay window takes each sequence number once."""
        self.seq += 1
        datagram = wire.pack_control(keys or self.keys, kind, self.seq, body)
        for destination in to or self.report_to:
            try:
                self.control_sock.sendto(datagram, destination)
            except (BlockingIOError, OSError):
                pass   # control is retried by the next status round

    def _control_datagram(self, datagram: bytes, source: Tuple[str, int]) -> None:
        head = wire.peek_control(datagram)
        if head is None:
            if self.keys is None:
                other = wire.foreign_version(datagram)
                if other is not None:
                    self.foreign_versions.add(other)
            return
        kind, _flags, session_id, _seq = head
        if self.keys is None:
            self._courting(kind, session_id, datagram, source)
            return
        opened = wire.open_control(self.keys, datagram)
        if opened is None:
            return
        kind, _flags, seq, body = opened
        if not self.sender_window.accept(seq):
            return
        self.last_from_sender = time.monotonic()
        try:
            self._handle(kind, body)
        except struct.error:
            pass

    def _courting(self, kind: int, session_id: int, datagram: bytes, source: Tuple[str, int]) -> None:
        """Before joining: answer authentic announcements with a JOIN, accept only the WELCOME that
        echoes our nonce."""
        candidate = self.candidates.get(session_id)
        if candidate is None:
            if kind != wire.ANNOUNCE or len(self.candidates) > 64:
                return
            keys = wire.SessionKeys.derive(self.config.session_key, session_id)
            if wire.open_control(keys, datagram) is None:
                return
            candidate = _Candidate(keys, source)
            self.candidates[session_id] = candidate
        opened = wire.open_control(candidate.keys, datagram)
        if opened is None:
            return
        kind, _flags, seq, body = opened
        now = time.monotonic()
        if kind == wire.ANNOUNCE:
            candidate.announce = body
        if kind == wire.ANNOUNCE and now - candidate.asked >= JOIN_EVERY:
            candidate.asked = now
            join = wire.JOIN_BODY.pack(self.receiver_id, candidate.nonce) + self.config.name.encode()[:64]
            self._send(wire.JOIN, join, candidate.keys, [source, self._report_port()])
        elif kind == wire.WELCOME:
            receiver_id, nonce = wire.WELCOME_BODY.unpack_from(body)
            if receiver_id == self.receiver_id and nonce == candidate.nonce:
                self._lock(candidate)
                self.sender_window.accept(seq)
                if candidate.announce:
                    self._handle(wire.ANNOUNCE, candidate.announce)

    def _lock(self, candidate: _Candidate) -> None:
        self.keys = candidate.keys
        self.mac = gcm.ObjectMac(self.keys.auth)
        self.sender = candidate.sender
        self.report_to = [self.sender, self._report_port()]
        self.candidates.clear()
        self.prefix = struct.pack(">BBHQ", wire.DATA, wire.VERSION, 0, self.keys.session_id)
        self.prefix_head = struct.unpack(">I", self.prefix[:4])[0]
        self.dmac = DatagramMac(self.keys.data, wire.DATAGRAM)
        self.last_from_sender = self.last_data = time.monotonic()

    def _report_port(self) -> Tuple[str, int]:
        return (self.config.group, self.config.port + 1)

    def _grow(self, count: int) -> None:
        if count > len(self.state):
            self.state.extend(bytes(count - len(self.state)))

    def _handle(self, kind: int, body: bytes) -> None:
        if kind == wire.ANNOUNCE:
            known, sent_through, final, encrypted, payload, _r, image_id = wire.ANNOUNCE_BODY.unpack_from(body)
            if payload != wire.PAYLOAD:
                raise TransportError(f"Sender {self.sender[0]} uses datagrams of another size ({payload}); versions differ.")
            self.known = max(self.known, known)
            self.sent_through = max(self.sent_through, min(sent_through, known))
            if self._holes_lost(self.frontier - 1):
                self.status_due = True   # sent whole, still with holes: they were lost
            self._grow(self.known)
            if encrypted and self.cipher is None:
                self.cipher = gcm.ObjectCipher(self.keys.enc)
            self.encrypted = bool(encrypted)
            if final:
                self.final_count = known
                self.image_id = image_id
        elif kind == wire.META:
            first, count = wire.META_HEAD.unpack_from(body)
            offset = wire.META_HEAD.size
            for index in range(first, first + min(count, wire.META_PER_MESSAGE)):
                if index not in self.meta:
                    self.meta[index] = wire.META_ENTRY.unpack_from(body, offset)
                offset += wire.META_ENTRY.size
                partial = self.window.get(index)
                if partial is not None and partial.complete:
                    self._complete(index, partial)
        elif kind == wire.END:
            self.ended = wire.END_BODY.unpack_from(body)[0]
        elif kind == wire.DONE_ACK:
            if wire.DONE_ACK_BODY.unpack_from(body)[0] == self.receiver_id:
                self.done_acked = True

    def _status(self, now: float) -> None:
        requests: List[bytes] = []
        # several STATUS datagrams per round if need be: scattered single losses make many runs
        budget = wire.REQUESTS_PER_STATUS * STATUS_DATAGRAMS
        for index, partial in list(self.window.items()):
            if len(requests) >= budget:
                break
            if partial.complete:
                requests.append(wire.REQUEST.pack(wire.REQ_META, index, 0, 1))
                continue
            if partial.newest and not partial.asked:
                if not self._holes_lost(index):
                    continue             # a first-pass object still on its way
            elif now - partial.last_seen < NACK_AFTER:
                continue
            partial.asked = True
            missing = np.flatnonzero(~partial.got)
            breaks = np.flatnonzero(np.diff(missing) != 1) + 1
            for run in np.split(missing, breaks)[:budget - len(requests)]:
                requests.append(wire.REQUEST.pack(wire.REQ_FRAGMENTS, index, int(run[0]), len(run)))
                self.fragment_requests += len(run)
            partial.last_seen = now + NACK_RETRY    # ask again only if the repair does not come
        # Whole objects the sender has passed that we never started: as many as the window holds.
        with self.inflight_lock:
            room = self.config.window_bytes - self.inflight
        average = 4 * 1024 * 1024
        if self.meta:
            average = max(wire.PAYLOAD, sum(entry[0] for entry in list(self.meta.values())[-16:]) // min(16, len(self.meta)))
        allowance = max(0, room // average - len(self.window))
        if not self.data_seen:
            allowance = min(allowance, 1)   # data may not reach us at all: ask for one object, not a window
        while self.lowest_missing < len(self.state) and self.state[self.lowest_missing] != MISSING:
            self.lowest_missing += 1
        index = self.lowest_missing
        limit = min(self.sent_through, len(self.state))
        if self.config.layout_first and not self.delivered:
            limit = min(limit, 1)
        run_start, run_length = -1, 0
        while index < limit and allowance > 0 and len(requests) < budget:
            holdoff = self.request_backoff.get(index, OBJECT_REQUEST_HOLDOFF)
            wanted = (self.state[index] == MISSING and index not in self.window
                      and now - self.requested.get(index, 0.0) > holdoff)
            if wanted:
                self.requested[index] = now
                # asked again and again, never a datagram of it: ask less and less often
                self.request_backoff[index] = min(4.0, holdoff * 2)
                allowance -= 1
                self.object_requests += 1
                if run_start >= 0 and run_start + run_length == index:
                    run_length += 1
                else:
                    if run_start >= 0:
                        requests.append(wire.REQUEST.pack(wire.REQ_OBJECTS, run_start, 0, run_length))
                    run_start, run_length = index, 1
            index += 1
        if run_start >= 0:
            requests.append(wire.REQUEST.pack(wire.REQ_OBJECTS, run_start, 0, run_length))
        # The sender sends new objects only while every receiver has room for them (frontier and
        # free bytes below), so a full window rarely drops data; drops left are congestion.
        drops = udp_receive_errors() - self.kernel_drops_base + self.window_drops
        # no room while the sink prepares the disks for the layout: anything else would be dropped
        credit = 0 if self.config.layout_first and not self.delivered else room
        step = wire.REQUESTS_PER_STATUS
        for first in range(0, max(1, len(requests)), step):
            batch = requests[first:first + step]
            self._send(wire.STATUS, self._status_head(drops, credit, len(batch)) + b"".join(batch))

    def _status_head(self, drops: int, room: int, requests: int) -> bytes:
        self.reported_free = room
        return wire.STATUS_HEAD.pack(self.receiver_id, self.delivered, self.lowest_missing, drops,
                                     self.delivered_bytes, self.frontier, max(0, room), requests)

    # --- data ------------------------------------------------------------------------------------
    def _complete(self, index: int, partial: _Partial) -> None:
        partial.complete = True
        meta = self.meta.get(index)
        if meta is None:
            return                       # asked for in the next status
        wire_length, digest = meta
        del self.window[index]
        if wire.fragments_of(wire_length) != partial.count:
            # forged fragments claimed another size: start this object over
            self._release(partial.rows)
            return
        self.state[index] = PENDING
        self.to_verify.put((index, partial, wire_length, digest))

    def _partial(self, index: int, count: int, now: float) -> Optional[_Partial]:
        if index >= len(self.state):
            if self.final_count is not None or index >= self.known + AHEAD:
                return None
            self._grow(index + 1)
        if self.state[index] != MISSING:
            return None
        if self.config.layout_first and index and not self.delivered:
            return None                  # the sink needs the layout first; this comes again
        partial = self.window.get(index)
        if partial is not None:
            return partial if partial.count == count else None
        meta = self.meta.get(index)
        if count > MAX_FRAGMENTS or (meta is not None and wire.fragments_of(meta[0]) != count):
            return None
        size = count * wire.PAYLOAD
        with self.inflight_lock:
            short = self.inflight + size > self.config.window_bytes
        if short and not self._evict_stale(now):
            return None
        with self.inflight_lock:
            if self.inflight + size > self.config.window_bytes:
                return None
            self.inflight += size
            room = self.config.window_bytes - self.inflight
        self.request_backoff.pop(index, None)
        newest = index >= self.frontier
        partial = _Partial(self.pool.take(count, room), now, newest)
        self.window[index] = partial
        if newest:
            previous = self.frontier - 1
            self.frontier = index + 1
            if self._holes_lost(previous):
                self.status_due = True   # a later object started: its holes were lost
        return partial

    def _evict_stale(self, now: float) -> bool:
        """Let go of the object with holes that has heard nothing for longest, if that is over
        STALE_PARTIAL: its repairs are not coming (the sender dropped us for a while, or moved on)
        and its room is wanted. It is asked for again later, whole. True if one was let go."""
        stale = [(partial.last_seen, index) for index, partial in self.window.items()
                 if not partial.complete and now - partial.last_seen > STALE_PARTIAL]
        if not stale:
            return False
        index = min(stale)[1]
        partial = self.window.pop(index)
        partial.complete = True              # `recent` may still point at it
        self.requested.pop(index, None)
        self.evicted += 1
        self._release(partial.rows)
        return True

    def _holes_lost(self, index: int) -> bool:
        """Whether first-pass object `index`, whose holes were not asked for yet, is known to have
        lost them: the first pass sends objects whole and in order, so that is once a later object
        started or the sender announced it sent this one whole. Until then it may still be on its
        way (a sender short of CPU can pause mid-object for tens of milliseconds); afterwards it is
        asked for at once, not after NACK_AFTER of silence (at 2 % loss every object has holes,
        and under flow control the window waits for each repair)."""
        partial = self.window.get(index)
        return (partial is not None and partial.newest and not partial.complete and not partial.asked
                and (index + 1 < self.frontier or index < self.sent_through))

    def _rows(self, rows: np.ndarray, now: float) -> None:
        """Datagrams of one GRO buffer (or one batch), as rows: check, split by object, one copy per
        object."""
        size = rows.shape[0]
        head, session_id, index, first, count = FALLBACK_HEADER.unpack_from(rows[0])
        if (head == self.prefix_head and session_id == self.keys.session_id
                and first + size <= count <= MAX_FRAGMENTS and index < self.known + AHEAD):
            # The usual buffer: consecutive fragments of one object. Checked exactly, in one
            # comparison of every row's 24-byte header (as six native words) against the headers
            # those fragments must have: about 7 us, where field-by-field checks cost 25-30 us.
            words = rows.view(np.uint32)[:, :HEADER_WORDS]
            expected = np.repeat(words[:1], size, axis=0)
            expected[:, FRAGMENT_WORD] = FRAGMENT_WORDS[first:first + size]
            if (words == expected).all():
                # and every row's own tag: nothing forged moves any state past this line
                valid = self.dmac.check_run(rows, index, first)
                if valid.all():
                    if size > 1:
                        self.coalesced += 1
                    self._object_rows(index, count, first, size, rows, now)
                    return
                self.forged += size - int(np.count_nonzero(valid))
                rows = rows[valid]
                if not len(rows):
                    return
        heads = rows.view(HEADER_ROW)[:, 0]       # strided views of the header fields, no copies
        keep = ((heads["prefix"] == self.prefix_head) & (heads["session"] == self.keys.session_id)
                & (heads["fragment"] < heads["count"]) & (heads["count"] <= MAX_FRAGMENTS)
                & (heads["object"] < self.known + AHEAD))     # cheap bounds before the tag check
        if not keep.all():
            rows = rows[keep]
            if not len(rows):
                return
            heads = rows.view(HEADER_ROW)[:, 0]
        valid = self.dmac.check(rows, heads["object"], heads["fragment"])
        if not valid.all():
            self.forged += len(valid) - int(np.count_nonzero(valid))
            rows = rows[valid]
            if not len(rows):
                return
            heads = rows.view(HEADER_ROW)[:, 0]
        if len(rows) > 1:
            self.coalesced += 1
        objects = heads["object"]
        starts = np.flatnonzero(np.diff(objects)) + 1
        bounds = [0] + starts.tolist() + [len(objects)]
        for begin, end in zip(bounds[:-1], bounds[1:]):
            fragments, counts = heads["fragment"][begin:end], heads["count"][begin:end]
            count = int(counts[0])
            first, size = int(fragments[0]), end - begin
            if (counts == count).all() and first + size <= count and (
                    size == 1 or (np.diff(fragments) == 1).all()):
                self._object_rows(int(objects[begin]), count, first, size, rows[begin:end], now)
            else:
                self._object_rows(int(objects[begin]), count, first, size, rows[begin:end], now,
                                  fragments=fragments, counts=counts)

    def _object_rows(self, index: int, count: int, first: int, size: int, rows, now: float,
                     fragments=None, counts=None) -> None:
        """Rows of one object: fragments first .. first+size-1, or (not consecutive) `fragments`."""
        self.last_data, self.sent_through_at_data, self.data_seen = now, self.sent_through, True
        partial = self._partial(index, count, now)
        if partial is None:
            if index < len(self.state) and self.state[index] == MISSING:
                self.window_drops += size
            return
        if fragments is None:
            # one strided copy
            seen = partial.got[first:first + size]
            fresh = size - int(np.count_nonzero(seen))
            partial.rows[first:first + size] = rows[:, wire.DATA_HEADER_SIZE:]
            seen[:] = True
        else:
            good = (fragments < count) & (counts == count)
            fragments, rows = fragments[good], rows[good]
            fresh = int(np.count_nonzero(~partial.got[fragments]))
            partial.rows[fragments] = rows[:, wire.DATA_HEADER_SIZE:]
            partial.got[fragments] = True
        partial.last_seen = now
        partial.remaining -= fresh
        if partial.remaining <= 0:
            partial.remaining = partial.count - int(np.count_nonzero(partial.got))
            if partial.remaining == 0:
                self._complete(index, partial)

    def _one(self, row, payload, now: float) -> None:
        """One datagram (`row`: it as a 1 x DATAGRAM array) without GRO: as little Python per
        datagram as can be (it is the fallback path's cost); consecutive datagrams of one object
        skip the window lookup."""
        head, session_id, index, fragment, count = FALLBACK_HEADER.unpack_from(row[0])
        if (head != self.prefix_head or session_id != self.keys.session_id or fragment >= count
                or count > MAX_FRAGMENTS or index >= self.known + AHEAD):
            return
        if not self.dmac.check_run(row, index, fragment)[0]:
            self.forged += 1
            return
        self.singles += 1
        self.last_data, self.sent_through_at_data, self.data_seen = now, self.sent_through, True
        recent_index, recent_count, partial = self.recent
        if index != recent_index or count != recent_count or partial is None or partial.complete:
            partial = self._partial(index, count, now)
            self.recent = (index, count, partial)
            if partial is None:
                if index < len(self.state) and self.state[index] == MISSING:
                    self.window_drops += 1
                return
        if fragment >= count:
            return
        partial.rows[fragment] = payload
        partial.last_seen = now
        if not partial.got[fragment]:
            partial.got[fragment] = True
            partial.remaining -= 1
            if partial.remaining == 0:
                self._complete(index, partial)

    def _batch(self, count: int, now: float) -> None:
        """The datagrams of one recvmmsg call. A batch of data only goes to `_rows` in one call; a
        short one, or one with control datagrams among the data, datagram by datagram (the fixed
        cost of a `_rows` call is that of some 10 datagrams through `_one`). Control datagrams are
        shorter than DATAGRAM and data exactly as long (`_rows` and `_one` check every header), so
        the length sorts them; a datagram longer than a row (MSG_TRUNC: cut) is ignored."""
        batch = self.batch
        lengths = batch.lengths[:count].tolist()
        flags = batch.flags[:count].tolist()
        if count >= VECTOR_FROM and min(lengths) == wire.DATAGRAM and not any(flags):
            if self.keys is not None:
                self.receive_calls += 1
                self.datagrams += count
                self._rows(batch.rows[:count], now)
            return
        data = 0
        for number, length in enumerate(lengths):
            if length < wire.DATAGRAM:
                self._control_datagram(batch.rows[number, :length].tobytes(), batch.source(number))
            elif self.keys is not None and not flags[number] & MSG_TRUNC:
                data += 1
                self._one(self.batch_rows[number], self.batch_payloads[number], now)
        if data:
            self.receive_calls += 1
            self.datagrams += data

    def _drain_rejected(self) -> None:
        while True:
            try:
                index = self.rejected.get_nowait()
            except queue.Empty:
                return
            self.state[index] = MISSING
            self.rejected_objects += 1
            self.requested.pop(index, None)
            self.lowest_missing = min(self.lowest_missing, index)

    # --- the loop --------------------------------------------------------------------------------
    def run(self) -> ReceiveResult:
        started = time.monotonic()
        verifier = threading.Thread(target=self._verify, daemon=True, name="fleetcast-verify")
        writer = threading.Thread(target=self._write, daemon=True, name="fleetcast-write")
        verifier.start()
        writer.start()
        try:
            try:
                self._loop(started)
            finally:
                self.to_verify.put(None)
                verifier.join()
                writer.join()
                self.data_sock.close()
            if self.error is not None:
                raise self.error
            announced = wire.announced_image_id(self.image_id)
            if self.finish:
                # finishing (fsync, growing a filesystem) can outlast the sender's patience:
                # keep reporting so that this receiver is not dropped as dead meanwhile
                finished = threading.Event()
                beat = threading.Thread(target=self._heartbeat, args=(finished,), daemon=True)
                beat.start()
                try:
                    digest = self.finish(announced)
                finally:
                    finished.set()
                    beat.join()
            else:
                digest = wire.transport_digest([(self.meta[i][0] - (gcm.TAG_SIZE if self.cipher else 0), self.meta[i][1])
                                                for i in range(self.final_count or 0)])
            self._report_done(digest)
        except BaseException as err:
            self._leave(err)
            raise
        finally:
            self.control_sock.close()
        return ReceiveResult(
            objects=self.delivered, bytes=self.delivered_bytes, fragment_requests=self.fragment_requests,
            object_requests=self.object_requests, seconds=round(time.monotonic() - started, 3),
            digest=digest.hex(), announced_image_id=wire.announced_image_id(self.image_id).hex(),
            sender=self.sender[0], gro=self.gro, encrypted=self.encrypted,
            kernel_drops=udp_receive_errors() - self.kernel_drops_base, window_drops=self.window_drops,
            rejected_objects=self.rejected_objects, datagrams=self.datagrams, rejoins=self.rejoins,
            gro_dropped=self.gro_dropped,
            receive_calls=self.receive_calls, mmsg=self.batch is not None, forged_datagrams=self.forged,
            evicted_objects=self.evicted)

    def _where(self) -> str:
        return f"{self.config.group}:{self.config.port}"

    def _loop(self, started: float) -> None:
        self.status_due = False
        next_status = 0.0
        next_control = 0.0
        iterations = 0
        heard = rejoined = time.monotonic()
        rejoin_after = REJOIN_AFTER
        while True:
            if self.error is not None:
                return
            try:
                if self.gro:
                    size, ancillary, _flags, source = self.data_sock.recvmsg_into(
                        [self.buffer], socket.CMSG_SPACE(4))
                elif self.batch is not None:
                    size = self.batch.receive()       # datagrams, not bytes; 0: none waiting
                    if not size:
                        raise BlockingIOError
                else:
                    size, source = self.data_sock.recvfrom_into(self.buffer)
                    ancillary = ()
                got = True
            except (BlockingIOError, InterruptedError):
                got = False
                select.select([self.data_sock], [], [], 0.01)
            now = time.monotonic()
            if got:
                heard = now
                rejoin_after = REJOIN_AFTER
                iterations += 1
                if self.batch is not None:
                    self._batch(size, now)
                    if size < self.batch.capacity:
                        # drained: one call a millisecond later takes ~100 datagrams instead of a
                        # few per call (the 64 MiB socket buffer holds tens of ms even at 10 Gbit/s)
                        time.sleep(GATHER)
                elif size == wire.DATAGRAM and not ancillary:
                    if self.keys is not None:
                        self.receive_calls += 1
                        self.datagrams += 1
                        self._one(self.single_row, self.payload_view, now)
                        if self.gro and self.singles >= GRO_PROBE:
                            self._gro_coalesces()
                elif size >= wire.DATAGRAM and self.buffer[0] == wire.DATA:
                    if self.keys is not None:
                        segment = gro_segment_size(ancillary) or size
                        whole = size // segment * segment if segment == wire.DATAGRAM else 0
                        if whole:
                            self.receive_calls += 1
                            self.datagrams += whole // wire.DATAGRAM
                            self._rows(self.array[:whole].reshape(-1, wire.DATAGRAM), now)
                        if size > whole and segment < size:
                            # a shorter last segment is a control datagram GRO appended
                            self._control_datagram(bytes(self.view[whole:size]), source)
                else:
                    self._control_datagram(bytes(self.view[:size]), source)
                if iterations & 31 and now < next_control:
                    continue
            next_control = now + 0.002
            self._poll_control()
            self._drain_rejected()
            if now - max(heard, rejoined) > rejoin_after:
                # A sender announces every 0.1 s: silence means the group no longer reaches us (an
                # IGMP-snooping switch that missed our report) or no sender is there yet. Report
                # our membership again, less and less often while the silence lasts.
                renew_membership(self.data_sock, self.config.group, self.config.address)
                rejoined = now
                rejoin_after = min(REJOIN_MAX, rejoin_after * 2)
                self.rejoins += 1
            if self.keys is None:
                if now - started > self.config.timeout:
                    if self.foreign_versions:
                        raise TransportError(
                            f"No multicast session of this version on {self._where()} within "
                            f"{self.config.timeout:g} s: a sender there speaks wire version "
                            f"{max(self.foreign_versions)}, this receiver {wire.VERSION} (install the same "
                            "fleetcast.imaging release on the sender and the receivers).")
                    raise TransportError(
                        f"No authenticated multicast session on {self._where()} within {self.config.timeout:g} s: "
                        "no sender is running there, or it uses a different session key.")
                continue
            if self.final_count is not None and self.delivered >= self.final_count:
                return
            if self.ended is not None:
                raise TransportError(
                    f"Sender {self.sender[0]} ended the session on {self._where()} before this receiver had "
                    f"every object ({self.delivered} of {self.final_count}); the output is incomplete.")
            if (self.sent_through > self.sent_through_at_data and now - self.last_data > DATA_SILENCE
                    and now - self.last_from_sender < 1.0):
                total = self.final_count if self.final_count is not None else "?"
                raise TransportError(
                    f"Sender {self.sender[0]} is heard on {self._where()}, but none of the data it sent reached this "
                    f"host for {DATA_SILENCE:g} s ({self.delivered} of {total} objects received): its "
                    f"{wire.DATAGRAM}-byte datagrams do not get through (a smaller MTU on this path, or a filter); "
                    "the output is incomplete.")
            if now - self.last_from_sender > self.config.timeout:
                total = self.final_count if self.final_count is not None else "?"
                raise TransportError(
                    f"Sender {self.sender[0]} went silent on {self._where()} for {self.config.timeout:g} s with "
                    f"{self.delivered} of {total} objects received; the output is incomplete.")
            if now >= next_status or self.status_due:
                self.status_due = False
                self._status(now)
                # randomised spacing: receivers' reports spread out instead of arriving in bursts
                next_status = now + STATUS_EVERY * (0.5 + random.random())

    def _leave(self, err: BaseException) -> None:
        """Tell the sender this receiver gives up, and why, so that it reports the reason and
        nobody waits for a receiver that is gone."""
        if self.keys is None:
            return
        reason = str(err) or type(err).__name__
        body = wire.LEAVE_BODY.pack(self.receiver_id) + reason.encode("utf-8", "replace")[:300]
        for _attempt in range(3):
            self._send(wire.LEAVE, body)

    def _heartbeat(self, finished: threading.Event) -> None:
        body = self._status_head(0, 0, 0)
        while not finished.wait(0.5):
            self._send(wire.STATUS, body)

    def _poll_control(self) -> None:
        for _attempt in range(16):
            try:
                datagram, source = self.control_sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            self._control_datagram(datagram, source)

    def _report_done(self, digest: bytes) -> None:
        """DONE until the sender acknowledges it or ends the session, for up to `timeout`: a
        receiver that stopped reporting early would be dropped by the sender although it wrote
        every byte (one that cannot reach the sender for that long is no better off)."""
        body = wire.DONE_BODY.pack(self.receiver_id, self.delivered, digest)
        control = self.control_sock
        give_up = time.monotonic() + self.config.timeout
        while time.monotonic() < give_up:
            if self.done_acked or self.ended is not None:
                return
            self._send(wire.DONE, body)
            deadline = time.monotonic() + DONE_EVERY
            while time.monotonic() < deadline and not self.done_acked:
                try:
                    control.settimeout(max(0.001, deadline - time.monotonic()))
                    datagram, source = control.recvfrom(2048)
                except (socket.timeout, BlockingIOError):
                    break
                except OSError:
                    return
                self._control_datagram(datagram, source)
