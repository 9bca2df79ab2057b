# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Flow and rate control of the sender: the third piece of the transport's sans-I/O core.
Private to the collection: not a public API.

Pure state over the receivers' reports (``membership.Peer``) and the clock, no socket, no clock
of its own:

* ``FlowGate``: credit flow control. A new object goes out in the first pass only while every
  pacing receiver has window room for it on top of everything sent to it that it has not started.
  Data a receiver has no room for would be dropped there and sent again to everyone.
* ``RateControl``: the sending rate. Receivers' reports of datagrams their kernel dropped, or had
  no window room for, are congestion (a receiver or its disk cannot keep up): the rate is cut.
  Random loss on the wire is not (repairs fix it without slowing anyone), nor is anything
  unauthenticated (reports are authenticated control messages, and receivers count only
  authentic data as window drops).
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional

from . import wire
from .membership import Peer

MAX_RATE = 10 * 1000 ** 3
# A receiver silent this long no longer holds the first pass back (a busy slow host may report
# only every few hundred ms).
PACING_SILENCE = 1.0
MAX_HOLD = 1.0                     # one short of room that data did not reach this long stops pacing,
NEVER_REACHED_HOLD = 0.25          # one that has not taken a single data datagram, after this long
LAG_HOLD = 5.0                     # as does one short of room this long while another has room (lagging)
CUT_EVERY = 0.3                    # reports already on their way describe the old rate: one cut per this


class FlowGate:
    def __init__(self) -> None:
        self.holds = 0                 # first-pass objects that waited for a receiver's room
        self.held_for = -1             # the last of them

    def room(self, peers: Iterable[Peer], index: int, fragments: int,
             wire_length: Callable[[int], Optional[int]], now: float) -> bool:
        """Whether first-pass object `index` (`fragments` datagrams) may go out now;
        `wire_length(i)`: the length of object i as sent, None if unknown.

        A receiver short of room holds the first pass back while it works through what it was sent
        (takes the data, writes it, frees room), however slowly: a fleet of slow machines (virtual
        ones, old disks) is paced by them instead of being sent data they would drop. It stops
        pacing (and catches up through repairs and the carousel) when data does not reach it (short
        of room for MAX_HOLD, objects sent past its frontier, none of their datagrams taken: a
        smaller MTU, a filter; NEVER_REACHED_HOLD if it never took a single data datagram, so that
        one host behind a small MTU does not stall everybody for a second) or when it lags (short for LAG_HOLD while another pacing receiver
        has room: the others do not crawl at its pace for long)."""
        short = []
        others_have_room = False
        for peer in peers:
            if peer.state != "active" or not peer.paces or now - peer.last_heard > PACING_SILENCE:
                continue
            if peer.suspended:
                # It held the others long enough. It paces again once it receives objects sent
                # since (what it missed meanwhile it fetches through repairs and the carousel);
                # until then, pacing on it would cost another hold per few objects.
                if peer.frontier > peer.floor:
                    peer.suspended = False
                    peer.floor = index
                    peer.short_since = 0.0
                continue
            needed = fragments * wire.PAYLOAD
            for sent in range(max(peer.frontier, peer.floor), index):
                length = wire_length(sent)
                if length is not None:
                    needed += wire.fragments_of(length) * wire.PAYLOAD
            # (the first object always goes: a receiver that writes a disk offers no room before
            # it has the layout, object 0)
            if needed <= peer.free or index == peer.frontier == 0:
                peer.short_since = 0.0
                others_have_room = True
                continue
            if not peer.short_since:
                peer.short_since = now
            short.append(peer)
        room = True
        for peer in short:
            held = now - peer.short_since
            hold = MAX_HOLD if peer.taking_at else NEVER_REACHED_HOLD
            unreached = peer.frontier < index and now - max(peer.taking_at, peer.short_since) > hold
            if unreached or (others_have_room and held > LAG_HOLD):
                peer.suspended = True
                peer.floor = index
                continue
            if peer.held_for != index:     # counted once per object it held back
                peer.held_for = index
                peer.holds += 1
            room = False
        if not room and self.held_for != index:
            self.held_for = index
            self.holds += 1
        return room


class RateControl:
    def __init__(self, cap: int, start: int, floor: int) -> None:
        self.cap = cap or MAX_RATE
        self.floor = floor
        self.rate = min(self.cap, start)
        self.cut_until = 0.0
        self.congested_once = False

    def update(self, now: float, congested: bool) -> int:
        """The rate after one period (about 100 ms) with or without a congestion signal."""
        if congested and now >= self.cut_until:
            self.rate = max(self.floor, int(self.rate * 0.7))
            self.cut_until = now + CUT_EVERY
            self.congested_once = True
        elif not congested:
            # fast growth until the first sign of congestion, then a gentle probe: every overshoot
            # costs datagrams dropped at the receivers and sent again
            growth = 1.03 if self.congested_once else 1.15
            self.rate = min(self.cap, int(self.rate * growth) + 1000 ** 2)
        return self.rate
