# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Who takes part in a session, from the sender's side: the first piece of the transport's sans-I/O
core. Private to the collection: not a public API.

``Membership`` is pure state. It takes the receivers' authenticated control messages (already
opened by ``wire.open_control``) and the clock as input, and returns the control messages to send
and the repair requests to serve; it never touches a socket or reads the clock, so unit tests drive
it with a fake clock. It holds: the handshake (JOIN -> WELCOME), each receiver's replay window,
its reports (progress, room, congestion), the start policy (expected receivers, minimum count,
maximum wait), the end of the session, dropping (silent, or reporting without progress),
serving dropped receivers again when they come back, and each receiver's final report.
"""

from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Set, Tuple

from .._errors import TransportError
from . import wire

START_CREDIT = 16 * 1024 * 1024    # window bytes assumed free at a receiver before its first STATUS
# Loss measured per receiver, against its position in the first pass: every datagram sent before
# the first datagram of the last object it started (its frontier - 1) has reached it or is lost
# (a LAN path keeps datagrams in order), whatever it still holds unread in its socket buffer
# (64 MiB: a busy receiver's backlog is seconds of data, which a count of everything sent would
# take for loss). Over a window, loss = 1 - (datagrams it took) / (datagrams sent before its
# position). It took some of the object it is in at either end, so a window spans at least
# LOSS_OBJECTS of the largest objects (and LOSS_MIN_SENT datagrams, LOSS_SHORTEST seconds): that
# error is an eighth at most, below what counts as congestion (flow.LOSS_CONGESTED). A loss
# clear beyond that error (LOSS_CLEAR more than it) closes a window after two objects already:
# at the start rate, a slow path's position runs with the sender (it starts every object, from
# the few datagrams it gets), and eight objects would be most of a small image. Datagrams sent
# after that first datagram and already taken (repairs sent meanwhile) only make the loss look
# smaller. A window whose position does not move (flow control holds the first pass; the first
# pass is over, only repairs go out) measures nothing, and starts over after LOSS_STALE.
LOSS_OBJECTS = 8
LOSS_CLEAR = 0.25
LOSS_MIN_SENT = 512
LOSS_SHORTEST = 0.02
LOSS_STALE = 2.0

Address = Tuple[str, int]
Reply = Tuple[int, bytes, Address]           # (control type, body, destination)
Request = Tuple[int, int, int, int]          # (kind, object, first, count) from a STATUS


@dataclass
class ReceiverReport:
    name: str
    address: str
    state: str                       # done | dropped | failed (it left, with its reason) | never_joined | incomplete
    digest: str = ""
    digest_matches: bool = False
    reason: str = ""
    joined_at: Optional[float] = None
    finished_at: Optional[float] = None
    objects: int = 0
    requests: int = 0
    holds: int = 0                   # objects whose first sending waited for this receiver's room
    readmitted: int = 0              # times it was dropped and then served again (it came back)
    loss_cuts: int = 0               # times its loss (a slow path ahead of it) cut the session's rate

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Peer:
    receiver_id: int
    name: str
    address: Address
    joined_at: float
    last_heard: float
    window: wire.ReplayWindow = field(default_factory=wire.ReplayWindow)
    state: str = "active"
    digest: bytes = b""
    reason: str = ""
    finished_at: Optional[float] = None
    delivered: int = 0
    overflow: int = 0
    overflow_seen: int = 0
    requests: int = 0
    bytes_done: int = 0
    frontier: int = 0                # one past the highest object it has started
    lowest_missing: int = 0          # every object before this one it holds (as of its last STATUS)
    free: int = START_CREDIT         # bytes of window it has free (as of its last STATUS)
    paces: bool = True               # its room limits the first pass (not a late joiner)
    floor: int = 0                   # objects before this one it is not expected to hold
    short_since: float = 0.0         # when it started lacking room for the next object
    suspended: bool = False          # lacked room for too long: not pacing until it catches up
    holds: int = 0                   # objects whose first sending waited for its room
    held_for: int = -1               # the last of them
    progress: Tuple[int, int, int] = (0, 0, 0)   # (delivered, bytes, frontier) when it last changed
    progress_at: float = 0.0
    datagrams: int = 0               # authentic data datagrams it has taken (its count, mod 2**32)
    taking_at: float = 0.0           # when that count last grew: data reaches it, however slowly
    stalled: bool = False            # dropped for making no progress: served again once it does
    loss_mark: Optional[Tuple[float, int, int, int]] = None   # (time, position, its count, sent) opening a window
    loss: float = 0.0                # the fraction of the datagrams sent in its last window it did not take
    took: int = 0                    # datagrams it took in that window
    take_rate: float = 0.0           # bytes per second it took in that window
    loss_since: float = 0.0          # when that window opened
    measured: int = 0                # windows measured so far
    measured_seen: int = 0           # the last of them rate control looked at
    wire_loss: float = 0.0           # loss that stayed when the rate was cut for its loss: the wire's
    cut_loss: Optional[float] = None     # its loss when it last called for a cut (judged by the next window)
    cut_loss_at: float = 0.0
    cut_ceiling: int = 0             # the rate it called for then
    loss_cuts: int = 0               # its calls that cut the rate
    readmitted: int = 0              # times it was dropped and came back


@dataclass
class Policy:
    where: str                           # "group:port", for messages
    expected: Sequence[str] = ()         # receiver names or addresses
    min_receivers: int = 1
    max_wait: float = 60.0
    receiver_timeout: float = 5.0
    progress_timeout: float = 30.0


class Membership:
    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.peers: Dict[int, Peer] = {}
        self.fresh = 0                   # loss windows closed since the last ``measured()``
        self.sent_before = array("q")    # per first-pass object: data datagrams sent before it (8 bytes each)
        self.largest = 1                 # the most fragments of an object sent

    # --- input: a receiver's message -------------------------------------------------------------
    def message(self, kind: int, seq: int, body: bytes, address: Address, now: float,
                sent: int, data_sent: Optional[int] = None) -> Tuple[List[Reply], List[Request]]:
        """An authenticated control message from a receiver; `sent`: objects sent once so far;
        `data_sent`: data datagrams sent to the group so far (first pass and repairs; None: the
        receivers' loss is not measured). Returns the replies to send and the repair requests to
        serve. A malformed body (struct error) changes nothing."""
        try:
            return self._message(kind, seq, body, address, now, sent, data_sent)
        except struct.error:
            return [], []

    def _message(self, kind, seq, body, address, now, sent, data_sent=None):
        if kind == wire.JOIN:
            receiver_id, nonce = wire.JOIN_BODY.unpack_from(body)
            name = body[wire.JOIN_BODY.size:].decode("utf-8", "replace")
            peer = self.peers.get(receiver_id)
            if peer is None:
                peer = Peer(receiver_id, self._match_name(name, address[0]), address, now, now)
                # a late joiner catches up from the carousel; it does not hold back the others
                peer.paces = sent == 0
                if not peer.window.accept(seq):
                    return [], []
                self.peers[receiver_id] = peer
            elif not peer.window.accept(seq):
                return [], []
            peer.last_heard = now
            return [(wire.WELCOME, wire.WELCOME_BODY.pack(receiver_id, nonce), peer.address)], []
        receiver_id = struct.unpack_from(">Q", body)[0]
        peer = self.peers.get(receiver_id)
        if peer is None or not peer.window.accept(seq) or peer.state == "failed":
            return [], []                # unknown, replayed, or gone with its own reason
        peer.last_heard = now
        if kind == wire.STATUS:
            return [], self._status(peer, body, now, data_sent)
        if kind == wire.DONE:
            dummy, count, digest = wire.DONE_BODY.unpack_from(body)
            if peer.state != "done":     # from a dropped receiver too: it was slow, not dead
                peer.state, peer.reason, peer.digest = "done", "", digest
                peer.delivered, peer.finished_at = count, now
            return [(wire.DONE_ACK, wire.DONE_ACK_BODY.pack(receiver_id), peer.address)], []
        if kind == wire.LEAVE and peer.state != "done":
            reason = body[wire.LEAVE_BODY.size:wire.LEAVE_BODY.size + 300].decode("utf-8", "replace")
            peer.state, peer.reason, peer.finished_at = "failed", reason or "it left the session", now
        return [], []

    def first_pass(self, index: int, datagrams: int, fragments: int) -> None:
        """Object `index` (`fragments` datagrams) goes out for the first time, after `datagrams`
        data datagrams (first pass and repairs) were sent to the group: the positions against
        which receivers' loss is measured. Objects skipped (every receiver held them) get the
        position of the next one sent."""
        while len(self.sent_before) <= index:
            self.sent_before.append(datagrams)
        self.largest = max(self.largest, fragments)

    def _status(self, peer: Peer, body: bytes, now: float, data_sent: Optional[int] = None) -> List[Request]:
        (dummy, delivered, lowest_missing, overflow, done_bytes, frontier, free, datagrams,
         count) = wire.STATUS_HEAD.unpack_from(body)
        progress = (delivered, done_bytes, frontier)
        if progress != peer.progress:
            peer.progress, peer.progress_at = progress, now
        # datagrams sent before its position (None: it started no object yet, or not measured)
        position = None
        if data_sent is not None and 0 < frontier <= len(self.sent_before):
            position = self.sent_before[frontier - 1]
        if (datagrams - peer.datagrams) & 0xFFFFFFFF >= 1 << 31:
            # a count behind the last one (an older STATUS overtaken by a newer one; its seq was
            # still in the replay window): its measure of loss is stale, the rest is not
            position = None
        elif datagrams != peer.datagrams:
            peer.datagrams, peer.taking_at = datagrams, now
        if peer.state == "dropped":
            # Back (it was silent: a pause, a cut path) or getting somewhere again (it was
            # stalled): served what it lacks from the carousel, without pacing the others. One
            # dropped for making no progress is not served until it makes some, so that a receiver
            # data cannot reach (its MTU) does not keep the carousel busy for nothing.
            if peer.stalled and delivered <= peer.delivered:
                return []
            peer.state, peer.reason, peer.finished_at = "active", "", None
            peer.stalled, peer.paces = False, False
            peer.progress_at = now
            peer.readmitted += 1
            peer.loss_mark = None         # what it took while dropped measures nothing
        if (position is not None and peer.state == "active"
                and _measure_loss(peer, now, position, data_sent, self.largest)):
            self.fresh += 1
        peer.delivered, peer.bytes_done, peer.overflow = delivered, done_bytes, overflow
        peer.frontier, peer.free, peer.lowest_missing = frontier, free, lowest_missing
        requests = []
        offset = wire.STATUS_HEAD.size
        for dummy in range(min(count, wire.REQUESTS_PER_STATUS)):
            requests.append(wire.REQUEST.unpack_from(body, offset))
            offset += wire.REQUEST.size
        peer.requests += len(requests)
        return requests

    def held_by_all(self) -> int:
        """How many first objects every receiver of the session holds already (resumed receives of
        the same image report them as delivered), so that the first pass need not send them: 0
        until at least min_receivers take part, every expected receiver among them, and each
        has reported. A receiver that joins later, or one dropped meanwhile, fetches them through
        the carousel like anything else it lacks."""
        taking_part = [peer for peer in self.peers.values() if peer.state in ("active", "done")]
        if len(taking_part) < max(1, self.policy.min_receivers):
            return 0
        names = {peer.name for peer in taking_part}
        if any(expected not in names for expected in self.policy.expected):
            return 0
        return self.needed_from()

    def needed_from(self) -> int:
        """The lowest object a receiver taking part still lacks, as of its last STATUS: no one
        asks for a repair of anything before it (0 while no receiver takes part or reported).
        A receiver that joins later, or is served again after it was dropped, may: what it asks for
        is read and laid out again."""
        taking_part = [peer.lowest_missing for peer in self.peers.values() if peer.state in ("active", "done")]
        return min(taking_part) if taking_part else 0

    def _match_name(self, name: str, address: str) -> str:
        for expected in self.policy.expected:
            if expected in (name, address):
                return expected
        return name or address

    # --- input: the clock ------------------------------------------------------------------------
    def tick(self, now: float, sent: int) -> None:
        """Drop receivers silent for `receiver_timeout`, and those that report but lack objects
        sent long ago and received nothing for `progress_timeout`."""
        policy = self.policy
        for peer in self.peers.values():
            if peer.state != "active":
                continue
            if now - peer.last_heard > policy.receiver_timeout:
                peer.state, peer.finished_at = "dropped", now
                peer.reason = f"no message for {policy.receiver_timeout:g} s (had {peer.delivered} objects)"
            elif peer.delivered < sent and now - max(peer.progress_at, peer.joined_at) > policy.progress_timeout:
                # it reports, but data does not reach it (a smaller MTU, a filter) or it cannot
                # take any; nobody waits for it
                peer.state, peer.finished_at, peer.stalled = "dropped", now, True
                peer.reason = (f"reported for {policy.progress_timeout:g} s without receiving anything "
                               f"(had {peer.delivered} of the {sent} objects sent)")

    # --- questions -------------------------------------------------------------------------------
    def joined_expected(self) -> Set[str]:
        names = {peer.name for peer in self.peers.values()}
        return {name for name in self.policy.expected if name in names}

    def ready(self, elapsed: float) -> bool:
        """Whether the session may start; raises when it cannot (too few joined in time)."""
        policy = self.policy
        joined = len(self.peers)
        if policy.expected and len(self.joined_expected()) == len(set(policy.expected)):
            return True
        if not policy.expected and joined >= policy.min_receivers:
            return True
        if elapsed >= policy.max_wait:
            if joined >= policy.min_receivers:
                return True
            raise TransportError(
                f"Only {joined} of the required {policy.min_receivers} receivers joined the session on "
                f"{policy.where} within {policy.max_wait:g} s.")
        return False

    def finished(self, elapsed: float) -> bool:
        """Whether nobody is left to serve (given that every object went out once)."""
        if not self.peers or any(peer.state == "active" for peer in self.peers.values()):
            return False
        if self.policy.expected and len(self.joined_expected()) < len(set(self.policy.expected)):
            return elapsed >= self.policy.max_wait
        return True

    def done_addresses(self) -> List[Tuple[str, int]]:
        """Where the receivers that finished listen for control: the session's END goes there too,
        because such a receiver has closed its group socket and waits only for DONE_ACK or END on
        its own (a lost DONE_ACK kept it waiting out its whole timeout)."""
        return [peer.address for peer in self.peers.values() if peer.state == "done"]

    def congested(self) -> bool:
        """Whether an active receiver reported more drops (its kernel's, or data it had no room
        for) since the last call."""
        congested = False
        for peer in self.peers.values():
            if peer.state == "active" and peer.overflow > peer.overflow_seen:
                congested = True
            peer.overflow_seen = peer.overflow
        return congested

    def measured(self) -> List[Peer]:
        """Active receivers with a loss measured since the last call (see ``flow.RateControl.measured``)."""
        fresh = []
        self.fresh = 0
        for peer in self.peers.values():
            if peer.state == "active" and peer.measured > peer.measured_seen:
                fresh.append(peer)
            peer.measured_seen = peer.measured
        return fresh

    def reports(self, digest: bytes, origin: float) -> List[ReceiverReport]:
        """Every receiver's outcome; times in seconds from `origin` (the session's start)."""
        reports: List[ReceiverReport] = []
        seen: Set[str] = set()
        for peer in self.peers.values():
            seen.update((peer.name, peer.address[0]))
            reports.append(ReceiverReport(
                name=peer.name, address=peer.address[0],
                state=peer.state if peer.state != "active" else "incomplete",
                digest=peer.digest.hex(), digest_matches=peer.digest == digest, reason=peer.reason,
                joined_at=round(peer.joined_at - origin, 3),
                finished_at=None if peer.finished_at is None else round(peer.finished_at - origin, 3),
                objects=peer.delivered, requests=peer.requests, holds=peer.holds, readmitted=peer.readmitted,
                loss_cuts=peer.loss_cuts))
        for name in self.policy.expected:
            if name not in seen:
                reports.append(ReceiverReport(name=name, address="", state="never_joined",
                                              reason="never joined the session"))
        return reports


def _measure_loss(peer: Peer, now: float, position: int, data_sent: int, largest: int) -> bool:
    """Close the receiver's loss window if its position moved far enough (LOSS_OBJECTS objects
    of `largest` datagrams, see there), open the next; whether one closed. Its count is mod
    2**32; a wrap between two reports is a plain difference mod 2**32."""
    taken = peer.datagrams
    mark = peer.loss_mark
    if mark is None:
        peer.loss_mark = (now, position, taken, data_sent)
        return False
    since, position_then, taken_then, data_sent_then = mark
    span, passed = now - since, position - position_then
    took = (taken - taken_then) & 0xFFFFFFFF
    # the loss both counts agree on: against everything sent, a growing backlog looks like loss;
    # against its position, what it took of the objects it is in at either end blurs the figure
    loss = max(0.0, 1.0 - took / max(1, min(passed, data_sent - data_sent_then)))
    enough = passed >= LOSS_OBJECTS * largest or (
        passed >= 2 * largest and loss - largest / passed >= LOSS_CLEAR)
    if not enough or passed < LOSS_MIN_SENT or span < LOSS_SHORTEST:
        if passed == 0 and span > LOSS_STALE:
            peer.loss_mark = (now, position, taken, data_sent)
        return False
    peer.loss = loss
    peer.took = took
    peer.take_rate = took * wire.DATAGRAM / span
    peer.loss_since = since
    peer.measured += 1
    peer.loss_mark = (now, position, taken, data_sent)
    return True
