# The sender's repair scheduler, with a fake clock: one repair per loss for the whole group, the
# carousel in index order, META first.
from ansible_collections.fleetcast.imaging.plugins.module_utils._transport import wire
from ansible_collections.fleetcast.imaging.plugins.module_utils._transport.repair import (
    CLOCKS, HOLDOFF, OBJECT_HOLDOFF, RepairScheduler)

COUNTS = {index: 100 for index in range(10)}        # objects 0..9 of 100 fragments, META known


def _ask(scheduler, what, index, first, amount, now, sent=10, available=10):
    scheduler.request(what, index, first, amount, now, sent, available, COUNTS.get)


def _drain(scheduler, now):
    jobs = []
    while True:
        job = scheduler.next(now)
        if job is None:
            return jobs
        jobs.append(job)


def test_one_loss_asked_for_by_several_receivers_is_repaired_once():
    scheduler = RepairScheduler()
    scheduler.sent(3, 100, 0, 100, 1.0, repair=False)         # the first pass
    for receiver in range(3):                                  # three receivers lost 10..19
        _ask(scheduler, wire.REQ_FRAGMENTS, 3, 10, 10, 1.01 + receiver * 0.001)
    assert _drain(scheduler, 1.02) == [("fragments", 3, 10, 20)]
    scheduler.sent(3, 100, 10, 20, 1.03, repair=True)
    _ask(scheduler, wire.REQ_FRAGMENTS, 3, 10, 10, 1.03 + HOLDOFF / 2)     # its NACK crossed the repair
    assert _drain(scheduler, 1.05) == []
    _ask(scheduler, wire.REQ_FRAGMENTS, 3, 12, 3, 1.03 + HOLDOFF + 0.01)   # the repair was lost too
    assert _drain(scheduler, 1.2) == [("fragments", 3, 12, 15)]


def test_overlapping_requests_queue_only_what_is_not_queued_yet_and_stay_in_bounds():
    scheduler = RepairScheduler()
    scheduler.sent(2, 100, 0, 100, 0.0, repair=False)
    _ask(scheduler, wire.REQ_FRAGMENTS, 2, 5, 10, 1.0)         # 5..14
    _ask(scheduler, wire.REQ_FRAGMENTS, 2, 10, 10, 1.0)        # 10..19: only 15..19 are new
    _ask(scheduler, wire.REQ_FRAGMENTS, 2, 95, 50, 1.0)        # clipped to the object's 100
    _ask(scheduler, wire.REQ_FRAGMENTS, 2, 400, 5, 1.0)        # beyond it: nothing
    _ask(scheduler, wire.REQ_FRAGMENTS, 12, 0, 5, 1.0)         # an object never sent: nothing
    _ask(scheduler, wire.REQ_FRAGMENTS, 7, 0, 5, 1.0, sent=5)  # not sent yet: nothing
    assert _drain(scheduler, 1.0) == [("fragments", 2, 5, 15), ("fragments", 2, 15, 20), ("fragments", 2, 95, 100)]


def test_whole_objects_go_out_lowest_first_once_per_hold_off_within_what_was_sent():
    scheduler = RepairScheduler()
    _ask(scheduler, wire.REQ_OBJECTS, 6, 0, 3, 1.0)            # 6, 7, 8
    _ask(scheduler, wire.REQ_OBJECTS, 2, 0, 5, 1.0, sent=5)    # 2, 3, 4 (5, 6 not sent yet as far as it knows)
    _ask(scheduler, wire.REQ_OBJECTS, 7, 0, 1, 1.0)            # already queued
    assert _drain(scheduler, 1.1) == [("object", i) for i in (2, 3, 4, 6, 7, 8)]
    _ask(scheduler, wire.REQ_OBJECTS, 2, 0, 1, 1.1 + OBJECT_HOLDOFF / 2)   # another receiver, too soon
    assert _drain(scheduler, 1.2) == []
    _ask(scheduler, wire.REQ_OBJECTS, 2, 0, 1, 1.1 + OBJECT_HOLDOFF + 0.01)
    assert _drain(scheduler, 1.5) == [("object", 2)]
    _ask(scheduler, wire.REQ_OBJECTS, 0, 0, 1000, 2.0, sent=1000, available=1000)
    assert len(_drain(scheduler, 2.0)) == 64                   # at most 64 per request


def test_meta_comes_first_then_fragments_then_objects():
    scheduler = RepairScheduler()
    scheduler.sent(1, 100, 0, 100, 0.0, repair=False)
    _ask(scheduler, wire.REQ_OBJECTS, 4, 0, 1, 1.0)
    _ask(scheduler, wire.REQ_FRAGMENTS, 1, 0, 2, 1.0)
    _ask(scheduler, wire.REQ_META, 8, 0, 5, 1.0)               # 8, 9 known; 10..12 not
    assert _drain(scheduler, 1.0) == [("meta", [8, 9]), ("fragments", 1, 0, 2), ("object", 4)]


def test_fragment_clocks_stay_bounded():
    scheduler = RepairScheduler()
    counts = {index: 4 for index in range(CLOCKS + 500)}
    for index in range(CLOCKS + 500):
        scheduler.sent(index, 4, 0, 4, 0.0, repair=False)
        scheduler.request(wire.REQ_FRAGMENTS, index, 0, 4, 1.0, CLOCKS + 500, CLOCKS + 500, counts.get)
    assert len(scheduler.clocks) == CLOCKS
