# The sender's membership state machine, driven with a fake clock and hand-made reports: no
# sockets, no sleeping.
import pytest

from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import TransportError
from ansible_collections.fleetcast.imaging.plugins.module_utils._transport import wire
from ansible_collections.fleetcast.imaging.plugins.module_utils._transport.membership import Membership, Policy


class Receiver:
    """A receiver's side of the conversation: numbered, well-formed reports."""

    def __init__(self, receiver_id, name, address):
        self.receiver_id, self.name, self.address, self.seq = receiver_id, name, (address, 40000), 0

    def _next(self):
        self.seq += 1
        return self.seq

    def join(self, members, now, sent=0, nonce=7):
        body = wire.JOIN_BODY.pack(self.receiver_id, nonce) + self.name.encode()
        return members.message(wire.JOIN, self._next(), body, self.address, now, sent)

    def status(self, members, now, sent, delivered, requests=(), frontier=None, overflow=0, datagrams=0,
               data_sent=None):
        body = wire.STATUS_HEAD.pack(self.receiver_id, delivered, delivered, overflow, delivered * 1000,
                                     delivered if frontier is None else frontier, 1 << 20, datagrams,
                                     len(requests))
        body += b"".join(wire.REQUEST.pack(*request) for request in requests)
        return members.message(wire.STATUS, self._next(), body, self.address, now, sent, data_sent)

    def done(self, members, now, sent, digest=b"d" * 32):
        return members.message(wire.DONE, self._next(), wire.DONE_BODY.pack(self.receiver_id, sent, digest),
                               self.address, now, sent)

    def leave(self, members, now, sent, reason):
        return members.message(wire.LEAVE, self._next(), wire.LEAVE_BODY.pack(self.receiver_id) + reason.encode(),
                               self.address, now, sent)


def _members(**policy):
    return Membership(Policy(where="239.1.1.1:9611", **policy))


def _state(members, name):
    return next(peer for peer in members.peers.values() if peer.name == name)


def test_join_is_welcomed_with_the_nonce_and_replays_are_ignored():
    members = _members(expected=["pc1"])
    pc1 = Receiver(1, "pc1", "10.0.0.11")
    replies, requests = pc1.join(members, 0.0, nonce=99)
    assert replies == [(wire.WELCOME, wire.WELCOME_BODY.pack(1, 99), ("10.0.0.11", 40000))] and requests == []
    # the same JOIN datagram again (same sequence number): nothing
    body = wire.JOIN_BODY.pack(1, 99) + b"pc1"
    assert members.message(wire.JOIN, pc1.seq, body, pc1.address, 0.1, 0) == ([], [])
    assert members.ready(0.2)


def test_start_policy_expected_minimum_and_maximum_wait():
    members = _members(expected=["pc1", "pc2"], min_receivers=1, max_wait=10.0)
    Receiver(1, "pc1", "10.0.0.11").join(members, 0.0)
    assert not members.ready(5.0)          # waits for pc2
    assert members.ready(10.0)             # max_wait passed with the minimum
    empty = _members(min_receivers=2, max_wait=3.0)
    Receiver(1, "pc1", "10.0.0.11").join(empty, 0.0)
    with pytest.raises(TransportError, match="Only 1 of the required 2 receivers joined the session on 239.1.1.1:9611 within 3 s"):
        empty.ready(3.0)


def test_status_requests_are_handed_on_and_counted():
    members = _members()
    pc1 = Receiver(1, "pc1", "10.0.0.11")
    pc1.join(members, 0.0)
    wanted = [(wire.REQ_FRAGMENTS, 4, 10, 3), (wire.REQ_OBJECTS, 1, 0, 2)]
    replies, requests = pc1.status(members, 0.1, sent=5, delivered=1, requests=wanted)
    assert replies == [] and requests == wanted
    assert _state(members, "pc1").requests == 2


def test_a_frozen_receiver_is_dropped_after_the_receiver_timeout_and_served_again_when_it_returns():
    members = _members(receiver_timeout=5.0)
    pc1, pc2 = Receiver(1, "pc1", "10.0.0.11"), Receiver(2, "pc2", "10.0.0.12")
    pc1.join(members, 0.0)
    pc2.join(members, 0.0)
    for tick in range(1, 70):               # pc2 freezes at 1 s; pc1 keeps reporting progress
        now = tick / 10
        pc1.status(members, now, sent=tick, delivered=tick)
        if now <= 1.0:
            pc2.status(members, now, sent=tick, delivered=tick)
        members.tick(now, tick)
    frozen = _state(members, "pc2")
    assert frozen.state == "dropped" and frozen.reason == "no message for 5 s (had 10 objects)"
    assert _state(members, "pc1").state == "active"
    # it thaws: served again (its requests go through), without pacing the others
    replies, requests = pc2.status(members, 7.0, sent=70, delivered=10, requests=[(wire.REQ_OBJECTS, 10, 0, 4)])
    assert requests == [(wire.REQ_OBJECTS, 10, 0, 4)]
    assert frozen.state == "active" and frozen.readmitted == 1 and not frozen.paces


def test_a_receiver_that_reports_without_progress_is_dropped_and_not_served_until_it_progresses():
    members = _members(receiver_timeout=5.0, progress_timeout=10.0)
    pc1 = Receiver(1, "pc1", "10.0.0.11")
    pc1.join(members, 0.0)
    for tick in range(1, 121):              # it reports every 0.1 s, stuck at 3 objects of 40 sent
        pc1.status(members, tick / 10, sent=40, delivered=3)
        members.tick(tick / 10, 40)
    stuck = _state(members, "pc1")
    assert stuck.state == "dropped" and stuck.stalled
    assert stuck.reason == "reported for 10 s without receiving anything (had 3 of the 40 objects sent)"
    assert members.finished(20.0)           # nobody waits for it
    # still stuck: its requests are not served (they would only keep the carousel busy)
    assert pc1.status(members, 12.5, sent=40, delivered=3, requests=[(wire.REQ_OBJECTS, 3, 0, 12)]) == ([], [])
    # it got somewhere after all: served again
    replies, requests = pc1.status(members, 13.0, sent=40, delivered=4, requests=[(wire.REQ_OBJECTS, 4, 0, 12)])
    assert requests == [(wire.REQ_OBJECTS, 4, 0, 12)] and stuck.state == "active" and stuck.readmitted == 1


def test_a_receiver_with_nothing_to_receive_is_never_stalled():
    members = _members(progress_timeout=1.0)
    pc1 = Receiver(1, "pc1", "10.0.0.11")
    pc1.join(members, 0.0)
    for tick in range(1, 50):               # the source is slow: nothing was sent that it lacks
        pc1.status(members, tick / 10, sent=2, delivered=2)
        members.tick(tick / 10, 2)
    assert _state(members, "pc1").state == "active"


def test_a_late_joiner_does_not_pace_and_a_done_after_a_drop_still_counts():
    members = _members(receiver_timeout=1.0)
    early, late = Receiver(1, "pc1", "10.0.0.11"), Receiver(2, "pc2", "10.0.0.12")
    early.join(members, 0.0, sent=0)
    late.join(members, 0.5, sent=12)
    assert _state(members, "pc1").paces and not _state(members, "pc2").paces
    members.tick(3.0, 12)                   # both silent: dropped
    assert {peer.state for peer in members.peers.values()} == {"dropped"}
    replies, dummy = early.done(members, 3.5, sent=12)
    assert replies == [(wire.DONE_ACK, wire.DONE_ACK_BODY.pack(1), ("10.0.0.11", 40000))]
    reports = {r.name: r for r in members.reports(b"d" * 32, 0.0)}
    assert reports["pc1"].state == "done" and reports["pc1"].digest_matches
    assert reports["pc2"].state == "dropped" and "no message for 1 s" in reports["pc2"].reason


def test_leave_reports_the_receivers_own_reason_and_ends_its_part():
    members = _members(expected=["pc1", "pc2"])
    pc1 = Receiver(1, "pc1", "10.0.0.11")
    pc1.join(members, 0.0)
    pc1.leave(members, 1.0, sent=3, reason="Disk /dev/sda is full at chunk 7.")
    pc1.status(members, 1.1, sent=3, delivered=3)          # whatever comes after: it is gone
    report = {r.name: r for r in members.reports(b"x", 0.0)}
    assert report["pc1"].state == "failed" and report["pc1"].reason == "Disk /dev/sda is full at chunk 7."
    assert report["pc2"].state == "never_joined"
    assert not members.finished(1.0)        # pc2 may still come, until max_wait
    assert members.finished(60.0)


def test_congestion_is_reported_once_per_increase_and_malformed_bodies_change_nothing():
    members = _members()
    pc1 = Receiver(1, "pc1", "10.0.0.11")
    pc1.join(members, 0.0)
    pc1.status(members, 0.1, sent=1, delivered=1, overflow=5)
    assert members.congested() and not members.congested()
    pc1.status(members, 0.2, sent=1, delivered=1, overflow=5)
    assert not members.congested()
    pc1.seq += 1
    assert members.message(wire.STATUS, pc1.seq, b"\x00\x00\x00\x00\x00\x00\x00\x01short", pc1.address, 0.3, 1) == ([], [])
    assert _state(members, "pc1").delivered == 1


def test_objects_every_receiver_holds_are_known_once_all_reported():
    # resumed receives report what they hold as delivered; the first pass may skip the common prefix
    members = _members(expected=["pc1", "pc2"], min_receivers=2)
    pc1, pc2 = Receiver(1, "pc1", "10.0.0.11"), Receiver(2, "pc2", "10.0.0.12")
    pc1.join(members, 0.0)
    pc1.status(members, 0.1, 1, 40)
    assert members.held_by_all() == 0             # pc2 expected, not there yet
    pc2.join(members, 0.2)
    assert members.held_by_all() == 0             # pc2 has not reported
    pc2.status(members, 0.3, 1, 25)
    assert members.held_by_all() == 25
    pc2.leave(members, 0.4, 1, "disk full")
    assert members.held_by_all() == 0             # fewer than min_receivers take part


def test_the_sender_keeps_objects_for_repair_only_until_every_receiver_taking_part_holds_them():
    members = _members(expected=["pc1", "pc2"], min_receivers=2)
    assert members.needed_from() == 0             # nobody yet: nothing is known to be held
    pc1, pc2 = Receiver(1, "pc1", "10.0.0.11"), Receiver(2, "pc2", "10.0.0.12")
    pc1.join(members, 0.0)
    pc2.join(members, 0.0)
    pc1.status(members, 0.1, 50, 40)
    assert members.needed_from() == 0             # pc2 has not reported: it may lack object 0
    pc2.status(members, 0.2, 50, 12)
    assert members.needed_from() == 12
    pc2.leave(members, 0.3, 50, "disk full")
    assert members.needed_from() == 40            # a receiver gone asks for nothing more


def _first_pass(members, objects, fragments=100):
    for index in range(objects):
        members.first_pass(index, index * fragments, fragments)


def test_loss_is_measured_against_the_receivers_position_so_a_backlog_is_no_loss():
    members = _members(expected=["pc1", "pc2"])
    behind, lossy = Receiver(1, "pc1", "10.0.0.11"), Receiver(2, "pc2", "10.0.0.12")
    for receiver in (behind, lossy):
        receiver.join(members, 0.0)
    _first_pass(members, 40)
    # 4000 datagrams sent. pc1 worked through objects 0-9 only (the rest waits in its socket
    # buffer): it lost nothing. pc2 is at object 39 with half of everything: it lost half.
    behind.status(members, 0.0, 1, 0, frontier=1, datagrams=0, data_sent=0)
    lossy.status(members, 0.0, 1, 0, frontier=1, datagrams=0, data_sent=0)
    assert members.measured() == []
    behind.status(members, 0.5, 40, 9, frontier=10, datagrams=900, data_sent=4000)
    lossy.status(members, 0.5, 40, 9, frontier=40, datagrams=1950, data_sent=4000)
    assert len(members.measured()) == 2 and members.measured() == [] and members.fresh == 0
    pc1, pc2 = _state(members, "pc1"), _state(members, "pc2")
    assert pc1.loss == 0.0 and pc1.took == 900
    assert abs(pc2.loss - 0.5) < 0.01 and pc2.took == 1950 and abs(pc2.take_rate - 1950 * wire.DATAGRAM / 0.5) < 1
    # a window closes only once the position moved by LOSS_OBJECTS of the largest objects
    behind.status(members, 1.0, 40, 12, frontier=13, datagrams=1200, data_sent=4000)
    assert members.measured() == []
    behind.status(members, 1.5, 40, 39, frontier=40, datagrams=3900, data_sent=4000)
    assert members.measured() == [pc1] and pc1.loss == 0.0


def test_loss_survives_the_counter_wrapping_and_ignores_an_overtaken_report():
    members = _members()
    pc1 = Receiver(1, "pc1", "10.0.0.11")
    pc1.join(members, 0.0)
    _first_pass(members, 20)
    start = 2 ** 32 - 300
    pc1.status(members, 0.0, 0, 0, frontier=0, datagrams=2 ** 31 - 1, data_sent=0)   # counts climb...
    pc1.status(members, 0.0, 1, 0, frontier=1, datagrams=start, data_sent=0)           # ...to near 2**32
    # an older report arriving late (its count behind): measures nothing, changes nothing
    pc1.status(members, 0.3, 1, 0, frontier=15, datagrams=start - 50, data_sent=1500)
    assert members.measured() == [] and _state(members, "pc1").datagrams == start
    pc1.status(members, 0.5, 20, 10, frontier=11, datagrams=(start + 800) % 2 ** 32, data_sent=1000)
    pc1_state = _state(members, "pc1")
    assert members.measured() == [pc1_state] and abs(pc1_state.loss - 0.2) < 0.01


def test_no_loss_is_measured_for_a_receiver_without_a_first_pass_position():
    # a late joiner, or the first pass over: its position does not move, only repairs go out
    members = _members()
    pc1 = Receiver(1, "pc1", "10.0.0.11")
    pc1.join(members, 0.0)
    _first_pass(members, 5)
    for step in range(30):
        pc1.status(members, step * 0.1, 5, 4, frontier=5, datagrams=step, data_sent=500 + 1000 * step)
    assert members.measured() == [] and _state(members, "pc1").measured == 0
