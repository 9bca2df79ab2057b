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
* ``RateControl.measured``: congestion ahead of a receiver's kernel (a slow link or NIC, a hypervisor's
  queue, a switch port), which no counter of the receiver sees: the receiver takes far fewer of
  the datagrams sent than random loss explains. The rate is then set to what that receiver took
  (a little more): the slowest path the session must serve sets its pace, as in NORM (RFC 5740).
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
NEVER_REACHED_HOLD = 0.1           # one that has not taken a single data datagram, after this long
LAG_HOLD = 5.0                     # as does one short of room this long while another has room (lagging)
CUT_EVERY = 0.3                    # reports already on their way describe the old rate: one cut per this
# Loss-based congestion (``RateControl.measured``). A receiver is congested when it lost more than
# LOSS_CONGESTED of what was sent in a window (membership.LOSS_OBJECTS), and LOSS_MARGIN more
# than the loss that stayed when the rate was last cut for it (that is the wire's, not the
# rate's). Random loss of 2-5 % never reaches it; the lab's 20 % (nftables drops whole GSO
# packets of up to 64 datagrams, so a window's loss scatters by several points) once: the loss
# stays after the cut, the cut is undone, and 28 % is needed from then on. A path limited to R
# settles between 1.05 and about 1.2 R. A path that takes fewer than LOSS_MIN_TAKEN datagrams a
# window is unreached, not slow: flow control stops pacing on it (FlowGate, MAX_HOLD); it never
# drives the rate to the floor.
LOSS_CONGESTED = 0.15
LOSS_MARGIN = 0.08
LOSS_MIN_TAKEN = 64
# a ceiling its receiver did not renew this long (or for three of its windows) is forgotten
CEILING_HOLD = 3.0
CEILING_ROOM = 1.05                # the rate is cut to what the receiver took, this much more
CEILING_PROBE = 1.05               # each clean window of that receiver raises the ceiling this much


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
        self.ceiling = 0               # the rate a receiver's loss allows (0: none, or forgotten)
        self.ceiling_by = -1           # that receiver
        self.ceiling_at = 0.0          # when it last set or raised the ceiling
        self.ceiling_hold = CEILING_HOLD
        self.before_cut = 0            # the rate before the last cut for loss (undone if it was spurious)
        self.before_congested = False
        self.loss_cuts = 0             # cuts for loss
        self.undone = 0                # of them, undone

    def update(self, now: float, congested: bool) -> int:
        """The rate after one period (about 100 ms) with or without a congestion signal
        (receivers' kernels dropped data, or they had no window room for it)."""
        if congested and now >= self.cut_until:
            self.rate = max(self.floor, int(self.rate * 0.7))
            self.cut_until = now + CUT_EVERY
            self.congested_once = True
        elif not congested:
            # fast growth until the first sign of congestion, then a gentle probe: every overshoot
            # costs datagrams dropped at the receivers and sent again. Never past the ceiling a
            # receiver's loss set while it is recent: that receiver's clean windows raise it
            # (``measured``), not the clock (its windows may be seconds apart).
            if self.ceiling and now - self.ceiling_at > self.ceiling_hold:
                self.ceiling = 0       # it finished, stopped pacing, or its path cleared
            growth = 1.03 if self.congested_once else 1.15
            self.rate = min(self.cap, int(self.rate * growth) + 1000 ** 2)
            if self.ceiling:
                self.rate = min(self.rate, self.ceiling)
        return self.rate

    def measured(self, peers: Iterable[Peer], now: float) -> int:
        """The rate after receivers' loss windows closed (`peers`: those with a fresh window,
        ``Membership.measured``). A pacing receiver that lost more than LOSS_CONGESTED of what
        was sent, and LOSS_MARGIN more than its wire loses anyway, sets a ceiling on the rate:
        what it took, CEILING_ROOM more. The slowest path the session must serve sets its pace.
        Each window of that receiver without congestion raises the ceiling by CEILING_PROBE, so
        a path limited to R is probed from 1.05 R up to where it loses again (about 1.2 R).

        Each call for a cut is judged by the receiver's next window: if it then took data faster
        than the ceiling it called for, its loss was a backlog it worked off (a receiver not
        scheduled for a few ms), and the cut is undone as far as that window shows; if its loss
        did not fall by LOSS_MARGIN with the rate, that loss is its wire's: the cut is undone,
        and only LOSS_MARGIN more than that loss counts from then on.

        Only a receiver that paces counts: one that flow control stopped pacing on (data does not
        reach it, or it lagged: ``FlowGate``), a late joiner, one served again after it was
        dropped, or one silent for PACING_SILENCE catches up through repairs and the carousel and
        steers neither the first pass nor the rate. So a slow receiver holds the others exactly
        as far as the pacing policy lets it."""
        ceiling = None
        by, span = -1, 0.0
        for peer in peers:
            judged = False
            if peer.cut_loss is not None and peer.loss_since >= peer.cut_loss_at:
                # the first window opened after its call for a cut
                judged, latest = True, self.ceiling == peer.cut_ceiling
                if peer.take_rate > peer.cut_ceiling:
                    # back up to what it took meanwhile, at most the rate before the cut (one
                    # window's backlog says little about the path beyond that)
                    self._undo(min(self.before_cut, int(peer.take_rate * CEILING_ROOM)), latest)
                elif peer.loss > peer.cut_loss - LOSS_MARGIN:
                    # the loss did not go with the rate: the wire's, not congestion
                    peer.wire_loss = peer.loss
                    self._undo(self.before_cut, latest)
                else:
                    peer.wire_loss = 0.0
                peer.cut_loss = None
            if (not peer.paces or peer.suspended or now - peer.last_heard > PACING_SILENCE
                    or peer.took < LOSS_MIN_TAKEN):
                continue
            if peer.loss > max(LOSS_CONGESTED, peer.wire_loss + LOSS_MARGIN):
                allowed = max(self.floor, int(peer.take_rate * CEILING_ROOM))
                if allowed < self.rate:          # its call cuts the rate: judged by its next window
                    peer.cut_loss, peer.cut_loss_at, peer.cut_ceiling = peer.loss, now, allowed
                    peer.loss_cuts += 1
                if ceiling is None or allowed < ceiling:
                    ceiling, by, span = allowed, peer.receiver_id, now - peer.loss_since
            elif self.ceiling and peer.receiver_id == self.ceiling_by and not judged:
                # a clean window of the receiver that set the ceiling: probe a step higher
                self.ceiling = min(self.cap, int(self.ceiling * CEILING_PROBE))
                self.ceiling_at = now
        if ceiling is not None:
            # Not held to CUT_EVERY: the ceiling is what the path took, which reports still on
            # their way (sent at the old rate) measure just the same; a first window that
            # overestimated it (a burst the path let through) is corrected by the next one.
            if ceiling < self.rate:
                self.before_cut, self.before_congested = self.rate, self.congested_once
                self.rate = ceiling
                self.loss_cuts += 1
            # it lasts three of that receiver's windows (seconds apart on a slow path) unheard
            self.ceiling, self.ceiling_by, self.ceiling_at = ceiling, by, now
            self.ceiling_hold = max(CEILING_HOLD, 3 * span)
            self.congested_once = True
        return self.rate

    def _undo(self, rate: int, latest: bool) -> None:
        if latest and rate > self.rate:
            self.rate, self.ceiling = rate, 0
            self.congested_once = self.congested_once and self.before_congested
            self.undone += 1
