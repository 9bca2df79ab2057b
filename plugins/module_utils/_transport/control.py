# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The receiver's control state: the fourth piece of the transport's sans-I/O core, the one that
finds a session, joins it and follows its sender. Private to the collection: not a public API.

``ReceiverControl`` takes control datagrams (with their source address) and the clock; what it
wants sent waits in ``outbox`` (authenticated control datagrams with their destinations), and
``tick`` says whether the receive is complete, whether the group's membership should be reported
again, or raises the ``TransportError`` that ends it. It owns:

* the handshake: an authentic ANNOUNCE is answered with a JOIN carrying a random nonce, and only
  the WELCOME that echoes it joins, so a replayed announcement of an older session leads nowhere;
  once joined, datagrams of any other session are ignored;
* the sender's messages: the replay window, then ANNOUNCE (counts, encryption, image id), META
  (object tags), END and DONE_ACK, handed to the data state (``reassembly.Reassembly``, created on
  joining) or kept here;
* the timers: STATUS every ~25 ms (randomised, at once when the data state asks), membership
  reported again after silence (0.5 s, doubling up to 8 s), and every timeout that ends a receive
  (no session, a silent sender, data that never arrives while control does, END before the last
  object, an aborted session);
* resume: objects an interrupted receive of the same image already verified count as delivered.

It opens no socket and reads no clock; the receiver (``receiver.py``) is the driver, and unit tests
drive this class with datagrams laid out by the sender's own code and a fake time.
"""

from __future__ import annotations

import os
import random
import struct
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

from .._errors import TransportError
from . import gcm, wire
from .reassembly import MISSING, Deliver, Reassembly

STATUS_EVERY = 0.025
JOIN_EVERY = 0.2
REJOIN_AFTER = 0.5            # nothing from the group this long (announcements come every 0.1 s): join again,
REJOIN_MAX = 8.0              # then after twice as long each time, up to this
DATA_SILENCE = 5.0            # the sender sent objects, none of their datagrams came for this long: give up
MAX_CANDIDATES = 64           # sessions heard before joining one (authentic announcements only)

Address = Tuple[str, int]


class Tick(NamedTuple):
    complete: bool            # every object was delivered
    renew: bool               # report the group's membership again (the group went silent)


class _Candidate:
    __slots__ = ("keys", "sender", "nonce", "asked", "announce")

    def __init__(self, keys: wire.SessionKeys, sender: Address):
        self.keys = keys
        self.sender = sender
        self.nonce = int.from_bytes(os.urandom(8), "big")
        self.asked = float("-inf")
        self.announce = b""


class ReceiverControl:
    """`config`: the receiver's (``receiver.ReceiverConfig``); `deliver`: the data state's hand-off
    of complete objects (to the verify stage); `now`: when the receive started."""

    def __init__(self, config, deliver: Deliver, now: float) -> None:
        self.config = config
        self.deliver = deliver
        self.receiver_id = int.from_bytes(os.urandom(8), "big") or 1
        self.started = now
        self.candidates: Dict[int, _Candidate] = {}
        self.keys: Optional[wire.SessionKeys] = None
        self.core: Optional[Reassembly] = None     # the session's data state, once joined
        self.mac: Optional[gcm.ObjectMac] = None
        self.cipher: Optional[gcm.ObjectCipher] = None
        self.encrypted = False
        self.sender: Address = ("", 0)
        self.sender_window = wire.ReplayWindow()
        self.seq = 0
        self.image_id = b""
        self.report_to: List[Address] = []
        self.foreign_versions: set = set()  # wire versions of announcements we cannot speak
        self.last_from_sender = 0.0
        self.ended: Optional[int] = None
        self.done_acked = False
        self.held: Optional[List[int]] = None   # resume: objects the sink holds, until counted
        self.resumed = 0
        self.outbox: List[Tuple[bytes, List[Address]]] = []
        self.heard = self.rejoined = now         # anything on the data socket; membership reported
        self.rejoin_after = REJOIN_AFTER
        self.rejoins = 0
        self.next_status = 0.0

    # --- inputs ----------------------------------------------------------------------------------
    def heard_something(self, now: float) -> None:
        """The data socket returned something (the group reaches us)."""
        self.heard = now
        self.rejoin_after = REJOIN_AFTER

    def datagram(self, datagram: bytes, source: Address, now: float) -> None:
        """A control datagram (or anything not data) from `source`."""
        head = wire.peek_control(datagram)
        if head is None:
            if self.keys is None:
                other = wire.foreign_version(datagram)
                if other is not None:
                    self.foreign_versions.add(other)
            return
        kind, _flags, session_id, _seq = head
        if self.keys is None:
            self._courting(kind, session_id, datagram, source, now)
            return
        opened = wire.open_control(self.keys, datagram)
        if opened is None:
            return
        kind, _flags, seq, body = opened
        if not self.sender_window.accept(seq):
            return
        self.last_from_sender = now
        try:
            self._handle(kind, body)
        except struct.error:
            pass                          # a short body of an authentic message: nothing to take

    def tick(self, now: float, kernel_drops: Callable[[], int] = lambda: 0) -> Tick:
        """Timers, once per loop round. `kernel_drops()`: datagrams this host's kernel dropped since
        the receive started (reported as congestion), asked only when a STATUS goes out (reading
        the kernel's counters every round would cost the loop for nothing). Raises the
        TransportError that ends the receive."""
        renew = False
        if now - max(self.heard, self.rejoined) > self.rejoin_after:
            # A sender announces every 0.1 s: silence means the group no longer reaches us (an
            # IGMP-snooping switch that missed our report) or no sender is there yet. Report our
            # membership again, less and less often while the silence lasts.
            renew = True
            self.rejoined = now
            self.rejoin_after = min(REJOIN_MAX, self.rejoin_after * 2)
            self.rejoins += 1
        if self.keys is None:
            if now - self.started > self.config.timeout:
                raise self._no_session()
            return Tick(False, renew)
        core = self.core
        if self.held and (core.delivered or not self.config.layout_first):
            self._count_held()
        if core.final_count is not None and core.delivered >= core.final_count:
            return Tick(True, renew)
        self._check_ended(core)
        # (not "the sender moved on since our last data": its announcement that it sent an object
        # whole comes after the object, and a live source may then pause for long)
        total = core.final_count if core.final_count is not None else "?"
        if core.lacking() and now - core.last_data > DATA_SILENCE and now - self.last_from_sender < 1.0:
            raise TransportError(
                f"Sender {self.sender[0]} is heard on {self.where()}, but none of the data it sent reached this "
                f"host for {DATA_SILENCE:g} s ({core.delivered} of {total} objects received): its "
                f"{wire.DATAGRAM}-byte datagrams do not get through (a smaller MTU on this path, or a filter); "
                "the output is incomplete.")
        if now - self.last_from_sender > self.config.timeout:
            raise TransportError(
                f"Sender {self.sender[0]} went silent on {self.where()} for {self.config.timeout:g} s with "
                f"{core.delivered} of {total} objects received; the output is incomplete.")
        if now >= self.next_status or core.status_due:
            core.status_due = False
            self._status(now, kernel_drops())
            # randomised spacing: receivers' reports spread out instead of arriving in bursts
            self.next_status = now + STATUS_EVERY * (0.5 + random.random())
        return Tick(False, renew)

    # --- outputs ---------------------------------------------------------------------------------
    def take_outbox(self) -> List[Tuple[bytes, List[Address]]]:
        outbox, self.outbox = self.outbox, []
        return outbox

    def status_head(self, drops: int, room: int, requests: int) -> bytes:
        core = self.core
        core.reported_free = room
        return wire.STATUS_HEAD.pack(self.receiver_id, core.delivered, core.lowest_missing, drops,
                                     core.delivered_bytes, core.frontier, max(0, room),
                                     core.authentic & 0xFFFFFFFF, requests)

    def heartbeat(self) -> None:
        """A STATUS that only says this receiver is alive (while its sink finishes)."""
        self._send(wire.STATUS, self.status_head(0, 0, 0))

    def done(self, digest: bytes) -> None:
        """DONE with the digest this receiver reports (sent until acknowledged: `done_acked`)."""
        self._send(wire.DONE, wire.DONE_BODY.pack(self.receiver_id, self.core.delivered, digest))

    def leave(self, reason: str) -> None:
        """LEAVE with the reason this receiver gives up, so the sender reports it and waits no more."""
        if self.keys is None:
            return
        body = wire.LEAVE_BODY.pack(self.receiver_id) + reason.encode("utf-8", "replace")[:300]
        for _attempt in range(3):
            self._send(wire.LEAVE, body)

    def where(self) -> str:
        return f"{self.config.group}:{self.config.port}"

    def session_digest(self) -> bytes:
        """The digest of a plain session (no sink digest): every object's wire length and tag."""
        meta = self.core.meta
        return wire.transport_digest([(meta[i][0] - (gcm.TAG_SIZE if self.cipher else 0), meta[i][1])
                                      for i in range(self.core.final_count or 0)])

    # --- internals -------------------------------------------------------------------------------
    def _send(self, kind: int, body: bytes, keys: Optional[wire.SessionKeys] = None,
              to: Optional[List[Address]] = None) -> None:
        """A control message to the sender, unicast and to the group's report port: a host that
        sends with the sender's Ethernet address makes a switch forward unicast meant for the
        sender to itself, but the group reaches every member port whatever the switch learnt. The
        sender's replay window takes each sequence number once."""
        self.seq += 1
        self.outbox.append((wire.pack_control(keys or self.keys, kind, self.seq, body), list(to or self.report_to)))

    def _courting(self, kind: int, session_id: int, datagram: bytes, source: Address, now: float) -> None:
        """Before joining: answer authentic announcements with a JOIN, accept only the WELCOME that
        echoes our nonce."""
        candidate = self.candidates.get(session_id)
        if candidate is None:
            if kind != wire.ANNOUNCE or len(self.candidates) >= MAX_CANDIDATES:
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
        if kind == wire.ANNOUNCE:
            candidate.announce = body
        if kind == wire.ANNOUNCE and now - candidate.asked >= JOIN_EVERY:
            candidate.asked = now
            join = wire.JOIN_BODY.pack(self.receiver_id, candidate.nonce) + self.config.name.encode()[:64]
            self._send(wire.JOIN, join, candidate.keys, [source, self._report_port()])
        elif kind == wire.WELCOME:
            receiver_id, nonce = wire.WELCOME_BODY.unpack_from(body)
            if receiver_id == self.receiver_id and nonce == candidate.nonce:
                self._join(candidate, now)
                self.sender_window.accept(seq)
                if candidate.announce:
                    self._handle(wire.ANNOUNCE, candidate.announce)

    def _join(self, candidate: _Candidate, now: float) -> None:
        self.keys = candidate.keys
        self.mac = gcm.ObjectMac(self.keys.auth)
        self.sender = candidate.sender
        self.report_to = [self.sender, self._report_port()]
        self.candidates.clear()
        self.core = Reassembly(self.keys.session_id, self.keys.data, self.config.window_bytes,
                               self.deliver, self.config.layout_first)
        self.core.skip(self.config.have)
        self.last_from_sender = self.core.last_data = now

    def _report_port(self) -> Address:
        return (self.config.group, self.config.port + 1)

    def _handle(self, kind: int, body: bytes) -> None:
        if kind == wire.ANNOUNCE:
            known, sent_through, final, encrypted, payload, _r, image_id = wire.ANNOUNCE_BODY.unpack_from(body)
            if payload != wire.PAYLOAD:
                raise TransportError(f"Sender {self.sender[0]} uses datagrams of another size ({payload}); versions differ.")
            self.core.announce(known, sent_through, bool(final))
            if encrypted and self.cipher is None:
                self.cipher = gcm.ObjectCipher(self.keys.enc)
            self.encrypted = bool(encrypted)
            if final:
                self.image_id = image_id
                if self.config.resume is not None and self.held is None:
                    self.held = self.config.resume(wire.announced_image_id(image_id))
        elif kind == wire.META:
            first, count = wire.META_HEAD.unpack_from(body)
            entries = [wire.META_ENTRY.unpack_from(body, wire.META_HEAD.size + number * wire.META_ENTRY.size)
                       for number in range(min(count, wire.META_PER_MESSAGE))]
            self.core.meta_entries(first, entries)
        elif kind == wire.END:
            self.ended = wire.END_BODY.unpack_from(body)[0]
        elif kind == wire.DONE_ACK:
            if wire.DONE_ACK_BODY.unpack_from(body)[0] == self.receiver_id:
                self.done_acked = True

    def _status(self, now: float, kernel_drops: int) -> None:
        requests, credit = self.core.requests(now)
        # The sender sends new objects only while every receiver has room for them (frontier and
        # free bytes), so a full window rarely drops data; drops left are congestion.
        drops = kernel_drops + self.core.window_drops
        step = wire.REQUESTS_PER_STATUS
        for first in range(0, max(1, len(requests)), step):
            batch = requests[first:first + step]
            self._send(wire.STATUS, self.status_head(drops, credit, len(batch)) + b"".join(batch))

    def _check_ended(self, core: Reassembly) -> None:
        if self.ended == wire.END_ABORTED:
            raise TransportError(
                f"Sender {self.sender[0]} aborted the session on {self.where()} (it was stopped or failed) "
                f"with {core.delivered} of {core.final_count} objects received here; the output is incomplete.")
        if self.ended is not None:
            raise TransportError(
                f"Sender {self.sender[0]} ended the session on {self.where()} before this receiver had "
                f"every object ({core.delivered} of {core.final_count}); the output is incomplete.")

    def _no_session(self) -> TransportError:
        if self.foreign_versions:
            return TransportError(
                f"No multicast session of this version on {self.where()} within "
                f"{self.config.timeout:g} s: a sender there speaks wire version "
                f"{max(self.foreign_versions)}, this receiver {wire.VERSION} (install the same "
                "fleetcast.imaging release on the sender and the receivers).")
        return TransportError(
            f"No authenticated multicast session on {self.where()} within {self.config.timeout:g} s: "
            "no sender is running there, or it uses a different session key.")

    def _count_held(self) -> None:
        """Objects an interrupted receive of the same image already verified (config.resume):
        delivered, not asked for. Only once the layout is in (the sink has opened its output); one
        that has started reassembling meanwhile completes normally (the sink skips what it holds)."""
        core = self.core
        fresh = [index for index in self.held if index > 0 and index not in core.window
                 and (index >= len(core.state) or core.state[index] == MISSING)]
        with core.inflight_lock:
            core.skip(fresh)
        self.resumed = len(fresh)
        self.held = []
