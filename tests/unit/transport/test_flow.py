# Flow and rate control of the sender, as pure state with a fake clock.
from ansible_collections.fleetcast.imaging.plugins.module_utils._transport import wire
from ansible_collections.fleetcast.imaging.plugins.module_utils._transport.flow import (
    LAG_HOLD, MAX_HOLD, NEVER_REACHED_HOLD, PACING_SILENCE, FlowGate, RateControl)
from ansible_collections.fleetcast.imaging.plugins.module_utils._transport.membership import Peer

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
