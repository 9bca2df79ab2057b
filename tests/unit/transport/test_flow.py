# Flow and rate control of the sender, as pure state with a fake clock.
import numpy as np

from ansible_collections.fleetcast.imaging.plugins.module_utils._transport import wire
from ansible_collections.fleetcast.imaging.plugins.module_utils._transport.flow import (
    CEILING_ROOM, LAG_HOLD, LOSS_MIN_TAKEN, MAX_HOLD, NEVER_REACHED_HOLD, PACING_SILENCE, FlowGate, RateControl)
from ansible_collections.fleetcast.imaging.plugins.module_utils._transport.membership import Membership, Peer, Policy

OBJECT = 100                                  # fragments per object in these tests
LENGTH = OBJECT * wire.PAYLOAD


def _peer(free, frontier=0, heard=0.0, paces=True):
    peer = Peer(1, "pc1", ("10.0.0.11", 4000), 0.0, heard)
    peer.free, peer.frontier, peer.paces = free, frontier, paces
    return peer


def _length(sent):
    return LENGTH


def test_an_object_waits_for_a_pacing_receivers_room_counted_once():
    gate = FlowGate()
    slow = _peer(free=2 * LENGTH, frontier=3, heard=0.1)
    # objects 3 and 4 already sent past its frontier: object 5 does not fit in two objects' room
    assert not gate.room([slow], 5, OBJECT, _length, 0.1)
    assert not gate.room([slow], 5, OBJECT, _length, 0.2)
    assert gate.holds == 1 and slow.holds == 1
    slow.frontier = 4                           # it started object 4: one object's room is enough
    assert gate.room([slow], 5, OBJECT, _length, 0.3)


def test_a_receiver_short_of_room_for_too_long_stops_pacing_until_it_catches_up():
    gate = FlowGate()
    stuck = _peer(free=0, frontier=1, heard=1.0)                     # it keeps reporting, no room
    assert not gate.room([stuck], 2, OBJECT, _length, 1.0)
    stuck.last_heard = 2.0
    assert gate.room([stuck], 2, OBJECT, _length, 1.0 + MAX_HOLD + 0.01)
    assert stuck.suspended and stuck.floor == 2
    stuck.last_heard = 3.0
    assert gate.room([stuck], 3, OBJECT, _length, 3.0)              # still suspended
    stuck.frontier, stuck.free = 3, 10 * LENGTH                      # it received objects sent since
    assert gate.room([stuck], 4, OBJECT, _length, 3.1) and not stuck.suspended


def test_a_fleet_of_slow_receivers_paces_the_first_pass_however_long_each_object_takes():
    # Every receiver is short of room, but takes data (or writes what it has: frontier reached):
    # none stops pacing, so nothing is sent that they would drop.
    gate = FlowGate()
    taking = _peer(free=0, frontier=3, heard=0.0)          # works through objects 3..5 slowly
    writing = _peer(free=0, frontier=6, heard=0.0)         # took everything sent, its disk is busy
    for step in range(200):                                 # 20 s, reports every 0.1 s
        now = step * 0.1
        taking.last_heard = writing.last_heard = now
        taking.datagrams, taking.taking_at = step, now
        assert not gate.room([taking, writing], 6, OBJECT, _length, now)
    assert not taking.suspended and not writing.suspended
    assert gate.holds == 1


def test_a_receiver_data_stops_reaching_stops_pacing_after_max_hold():
    gate = FlowGate()
    start = 10.0
    unreached = _peer(free=10 * LENGTH, frontier=0, heard=start)   # room, but none of 12 objects came
    unreached.datagrams, unreached.taking_at = 500, start - 5.0    # it took some data, long ago
    assert not gate.room([unreached], 12, OBJECT, _length, start)
    unreached.last_heard = start + MAX_HOLD
    assert not gate.room([unreached], 12, OBJECT, _length, start + MAX_HOLD - 0.01)
    unreached.last_heard = start + MAX_HOLD + 0.02
    assert gate.room([unreached], 12, OBJECT, _length, start + MAX_HOLD + 0.02)
    assert unreached.suspended


def test_a_receiver_that_never_took_a_datagram_stops_pacing_after_a_quarter_second():
    # a host behind a smaller MTU hears control and reports room, but no data datagram fits its path:
    # the others must not wait a second for it (the target: slowed by at most 20 %)
    gate = FlowGate()
    start = 10.0
    unreached = _peer(free=10 * LENGTH, frontier=0, heard=start)
    slow = _peer(free=10 * LENGTH, frontier=0, heard=start)
    slow.datagrams, slow.taking_at = 40, start - 0.5                # it takes data, slowly
    assert not gate.room([unreached, slow], 12, OBJECT, _length, start)
    unreached.last_heard = slow.last_heard = start + NEVER_REACHED_HOLD + 0.02
    gate.room([unreached, slow], 12, OBJECT, _length, start + NEVER_REACHED_HOLD + 0.02)
    assert unreached.suspended and not slow.suspended


def test_a_slow_receiver_holds_a_faster_one_back_only_for_lag_hold():
    gate = FlowGate()
    fast = _peer(free=100 * LENGTH, frontier=9, heard=0.0)
    slow = _peer(free=0, frontier=5, heard=0.0)
    for step in range(100):
        now = step * 0.1
        fast.last_heard = slow.last_heard = now
        slow.datagrams, slow.taking_at = step, now                  # it works, slowly
        if gate.room([fast, slow], 10, OBJECT, _length, now):
            break
    assert slow.suspended and LAG_HOLD < now <= LAG_HOLD + 0.11


def test_silent_late_and_dropped_receivers_never_hold_the_first_pass():
    gate = FlowGate()
    silent = _peer(free=0, heard=0.0)
    late = _peer(free=0, heard=1.0, paces=False)
    dropped = _peer(free=0, heard=1.0)
    dropped.state = "dropped"
    assert gate.room([silent, late, dropped], 1, OBJECT, _length, PACING_SILENCE + 0.01)
    assert gate.holds == 0


def test_rate_is_cut_on_congestion_once_per_reaction_time_and_grows_gently_after():
    rates = RateControl(cap=0, start=100_000_000, floor=2_000_000)
    grown = int(100_000_000 * 1.15) + 1_000_000
    assert rates.update(0.1, False) == grown                 # 15 % + 1 MB/s before any congestion
    cut = rates.update(0.2, True)
    assert cut == int(grown * 0.7)
    assert rates.update(0.3, True) == cut                    # within the reaction time: no second cut
    assert rates.update(0.6, True) == int(cut * 0.7)
    grown = rates.update(0.7, False)
    assert grown == int(int(cut * 0.7) * 1.03) + 1_000_000   # 3 % + 1 MB/s after congestion was seen
    for step in range(200):
        rates.update(1.0 + step, True)
    assert rates.rate == 2_000_000                           # never below the floor
    capped = RateControl(cap=50_000_000, start=500_000_000, floor=2_000_000)
    assert capped.rate == 50_000_000 and capped.update(0.1, False) == 50_000_000


class _Path:
    """One receiver behind a path, in 5 ms steps of a fake clock: the sender sends the first pass
    (objects of OBJECT datagrams) at the rate control's rate; the path lets `capacity` bytes per
    second through (a token bucket: a slow link, a NIC, a hypervisor's queue) and loses `loss` of
    the rest at random; the receiver takes what arrives and reports every 25 ms, as the sender's
    loop feeds its reports to Membership and RateControl."""

    STEP = 0.005

    def __init__(self, capacity=None, loss=0.0, seed=1, reached=True, start=500_000_000):
        self.members = Membership(Policy(where="239.1.1.1:9611"))
        self.rates = RateControl(cap=0, start=start, floor=2_000_000)
        self.plain = RateControl(cap=0, start=start, floor=2_000_000)   # today's: no loss measured
        self.capacity, self.loss, self.reached = capacity, loss, reached
        self.random = np.random.default_rng(seed)
        self.sent = self.taken = self.objects = self.seq = self.frontier = 0
        self.credit = self.tokens = 0.0
        self.now = 0.0
        self.rates_seen = []
        self._message(wire.JOIN, wire.JOIN_BODY.pack(1, 1) + b"pc1")

    def _message(self, kind, body):
        self.seq += 1
        return self.members.message(kind, self.seq, body, ("10.0.0.11", 40000), self.now, self.objects, self.sent)

    def run(self, seconds):
        for step in range(int(round(seconds / self.STEP))):
            self.now += self.STEP
            self.credit += self.rates.rate * self.STEP
            count = int(self.credit // wire.DATAGRAM)
            self.credit -= count * wire.DATAGRAM
            while self.objects * OBJECT < self.sent + count:      # each object's start, as the sender marks it
                self.members.first_pass(self.objects, self.objects * OBJECT, OBJECT)
                self.objects += 1
            self.sent += count
            through = count
            if self.capacity is not None:
                self.tokens = min(self.tokens + self.capacity * self.STEP, 64 * 1024)
                through = min(count, int(self.tokens // wire.DATAGRAM))
                self.tokens -= through * wire.DATAGRAM
            if not self.reached:
                through = 0
            took = int(self.random.binomial(through, 1.0 - self.loss)) if through else 0
            self.taken += took
            if took:                                   # it started the object being sent
                self.frontier = (self.sent - 1) // OBJECT + 1
            if step % 5 == 4:
                self._message(wire.STATUS, wire.STATUS_HEAD.pack(1, 0, 0, 0, 0, self.frontier, 1 << 30,
                                                                 self.taken & 0xFFFFFFFF, 0))
                if self.members.fresh:
                    self.rates.measured(self.members.measured(), self.now)
            if step % 20 == 19:
                self.rates.update(self.now, self.members.congested())
                self.plain.update(self.now, False)
                self.rates_seen.append(self.rates.rate)
        return self


def test_a_rate_limited_path_sets_the_rate_near_what_it_takes():
    capacity = 10_000_000
    path = _Path(capacity=capacity).run(10.0)
    settled = path.rates_seen[-50:]                      # the last 5 s
    assert capacity <= sum(settled) / len(settled) <= 1.25 * capacity, settled
    assert max(settled) <= 1.4 * capacity and min(settled) >= 0.9 * capacity, settled
    # most of what was sent got through: the session does not crawl through repairs
    assert path.taken > 0.8 * path.sent - 500_000_000 * 0.05 / wire.DATAGRAM
    assert path.members.peers[1].loss_cuts == path.rates.loss_cuts > 0
    # and with some random loss on that path as well
    lossy = _Path(capacity=capacity, loss=0.03, seed=2).run(10.0)
    settled = lossy.rates_seen[-50:]
    assert 0.9 * capacity <= sum(settled) / len(settled) <= 1.3 * capacity, settled


def test_random_loss_alone_does_not_cut_the_rate():
    for loss in (0.02, 0.05):
        path = _Path(loss=loss, start=50_000_000).run(3.0)
        assert path.rates.loss_cuts == 0 and path.rates.rate == path.plain.rate, loss
    # 20 % (the lab's loss test): one cut at most, undone when the loss stays at the lower rate
    # (it is the wire's: from then on only 28 % counts)
    path = _Path(loss=0.20, start=50_000_000, seed=3).run(3.0)
    assert path.rates.loss_cuts <= 1 and path.rates.undone == path.rates.loss_cuts
    assert path.rates.rate >= 0.5 * path.plain.rate


def test_a_receiver_data_does_not_reach_never_drives_the_rate_down():
    # none of the data reaches it (its MTU, a filter): flow control's business (MAX_HOLD), not
    # congestion; its position never moves, so no loss is measured at all
    path = _Path(reached=False).run(2.0)
    assert path.rates.loss_cuts == 0 and path.rates.rate == path.plain.rate
    assert path.members.peers[1].measured == 0
    # one that took data, then none (a path cut mid-session): its position stops, no loss either
    path = _Path(start=50_000_000).run(0.5)
    path.reached = False
    path.run(2.0)
    assert path.rates.loss_cuts == 0 and path.rates.rate == path.plain.rate


def test_only_pacing_receivers_steer_the_rate_and_a_spurious_cut_is_undone():
    def lossy(**state):
        peer = _peer(free=0, heard=1.0)
        peer.loss, peer.took, peer.take_rate, peer.loss_since = 0.9, 1000, 10_000_000, 0.5
        for name, value in state.items():
            setattr(peer, name, value)
        return peer
    suspended, late, silent = lossy(suspended=True), lossy(paces=False), lossy(last_heard=0.0)
    trickle = lossy(took=LOSS_MIN_TAKEN - 1)                 # a few datagrams: unreached, not slow
    rates = RateControl(cap=0, start=100_000_000, floor=2_000_000)
    assert rates.measured([suspended, late, silent, trickle], 1.0 + PACING_SILENCE / 2) == 100_000_000
    assert rates.loss_cuts == 0
    pacing = lossy()
    assert rates.measured([pacing], 1.0) == int(10_000_000 * CEILING_ROOM) and rates.loss_cuts == 1
    # its next window: it took faster than the ceiling it called for (a backlog it worked off)
    pacing.loss, pacing.take_rate, pacing.loss_since = 0.0, 60_000_000, 1.0
    assert rates.measured([pacing], 1.3) == int(60_000_000 * CEILING_ROOM) and rates.undone == 1
    # a cut for loss that stays when the rate falls makes that loss the wire's
    wire_lossy = lossy(loss=0.2)
    rates.measured([wire_lossy], 1.0)
    wire_lossy.loss, wire_lossy.take_rate, wire_lossy.loss_since = 0.19, 8_000_000, 1.1
    rates.measured([wire_lossy], 1.4)
    assert wire_lossy.wire_loss == 0.19
