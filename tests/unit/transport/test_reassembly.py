# The receiver's reassembly and loss-repair core, fed with datagrams laid out and tagged by the
# sender's own code and a fake clock: no sockets, no threads, no sleeping.
import random

import numpy as np

from ansible_collections.fleetcast.imaging.plugins.module_utils._transport import wire
from ansible_collections.fleetcast.imaging.plugins.module_utils._transport.dmac import DatagramMac
from ansible_collections.fleetcast.imaging.plugins.module_utils._transport.reassembly import (
    NACK_RETRY, STALE_PARTIAL, Reassembly)
from ansible_collections.fleetcast.imaging.plugins.module_utils._transport.sender import _Prepared

KEYS = wire.SessionKeys.derive(b"session key", 77)
SIGNER = DatagramMac(KEYS.data, wire.DATAGRAM)
MiB = 1024 * 1024


class Session:
    """Objects as the sender lays them out, and a core that has heard the sender announce them."""

    def __init__(self, sizes, window=48 * MiB, seed=1, announce=True):
        generator = random.Random(seed)
        self.objects = [bytes(generator.getrandbits(8) for dummy in range(64)) * (size // 64) + b"x" * (size % 64)
                        for size in sizes]
        self.prepared = [_Prepared(index, KEYS.session_id, data, b"t" * 16, signer=SIGNER)
                         for index, data in enumerate(self.objects)]
        self.delivered = {}
        self.core = Reassembly(KEYS.session_id, KEYS.data, window, self._deliver)
        if announce:
            self.core.announce(len(sizes), len(sizes), True)
            self.core.meta_entries(0, [(len(data), b"t" * 16) for data in self.objects])

    def _deliver(self, index, partial, wire_length, digest):
        assert index not in self.delivered, "delivered twice"
        self.delivered[index] = partial.rows.reshape(-1)[:wire_length].tobytes()
        self.core.delivered_object(wire_length)
        self.core.release(partial.rows)

    def rows(self, index, fragments=None):
        rows = self.prepared[index].rows
        return rows if fragments is None else np.ascontiguousarray(rows[fragments])

    def exact(self):
        return all(self.delivered.get(index) == data for index, data in enumerate(self.objects))


def _feed(core, rows, now, step=44):
    for start in range(0, len(rows), step):
        core.rows(np.ascontiguousarray(rows[start:start + step]), now)


def _requests(core, now):
    packed, credit = core.requests(now)
    return [wire.REQUEST.unpack(entry) for entry in packed], credit


def test_reordered_and_duplicated_datagrams_make_each_object_once_byte_exact():
    session = Session([5000, 3 * MiB + 17, 1448 * 7, 200 * 1024])
    everything = np.concatenate([session.rows(index) for index in range(4)])
    generator = np.random.default_rng(3)
    shuffled = everything[generator.permutation(len(everything))]
    duplicates = everything[generator.integers(0, len(everything), 500)]
    _feed(session.core, np.concatenate([shuffled, duplicates]), 1.0)
    assert session.exact() and session.core.forged == 0 and session.core.window_drops == 0
    # and the per-datagram path agrees
    single = Session([70000, 3000], seed=2)
    for index in (1, 0):
        for row in single.rows(index)[::-1]:
            one = np.ascontiguousarray(row.reshape(1, -1))
            single.core.one(one, one[0, wire.DATA_HEADER_SIZE:], 2.0)
            single.core.one(one, one[0, wire.DATA_HEADER_SIZE:], 2.0)     # every datagram twice
    assert single.exact()


def test_a_loss_burst_is_asked_for_once_a_later_object_starts_and_repaired():
    session = Session([1 * MiB, 1 * MiB, 1 * MiB], announce=False)
    core = session.core
    core.announce(3, 0, True)             # nothing announced as sent whole yet
    core.meta_entries(0, [(len(data), b"t" * 16) for data in session.objects])
    fragments = session.prepared[0].rows.shape[0]
    kept = [f for f in range(fragments) if not 100 <= f < 160]        # a burst of 60 lost
    _feed(core, session.rows(0, kept), 1.0)
    assert _requests(core, 1.001)[0] == []        # it may still be on its way
    _feed(core, session.rows(1, list(range(10))), 1.002)      # the next object starts: the burst was lost
    assert core.status_due
    requests, dummy = _requests(core, 1.003)
    assert (wire.REQ_FRAGMENTS, 0, 100, 60) in requests
    # not asked again before the repair had its chance, asked again after
    assert all(r[1] != 0 for r in _requests(core, 1.003 + NACK_RETRY / 2)[0] if r[0] == wire.REQ_FRAGMENTS)
    assert (wire.REQ_FRAGMENTS, 0, 100, 60) in _requests(core, 1.003 + NACK_RETRY + 0.02)[0]
    _feed(core, session.rows(0, list(range(100, 160))), 1.2)
    assert session.delivered[0] == session.objects[0]
    assert core.fragment_requests == 120


def test_forged_counts_fuzzed_headers_and_floods_move_no_state():
    session = Session([64 * 1024, 64 * 1024], window=1 * MiB)
    core = session.core
    generator = np.random.default_rng(5)
    genuine = session.rows(0)
    forged = []
    for count in (0, 1, 2 ** 32 - 1, 7, 46000):                 # the live header, another count
        rows = genuine.copy()
        rows[:, 20:24] = np.frombuffer(count.to_bytes(4, "big"), dtype=np.uint8)
        forged.append(rows)
    for field in ((12, 16), (16, 20), (24, 32)):                # object, fragment, tag at random
        rows = genuine.copy()
        rows[:, field[0]:field[1]] = generator.integers(0, 256, (len(rows), field[1] - field[0]), dtype=np.uint8)
        forged.append(rows)
    payload = genuine.copy()
    payload[:, 40:] ^= 1                                         # the live header, other bytes
    forged.append(payload)
    flood = generator.integers(0, 256, (2000, wire.DATAGRAM), dtype=np.uint8)
    flood[:, :12] = genuine[0, :12]                              # behind the session's prefix
    forged.append(flood)
    for rows in forged:
        _feed(core, rows, 1.0)
        for row in rows[:50]:
            one = np.ascontiguousarray(row.reshape(1, -1))
            core.one(one, one[0, wire.DATA_HEADER_SIZE:], 1.0)
    assert core.window == {} and core.inflight == 0 and not core.status_due
    assert core.window_drops == 0 and not core.data_seen and core.frontier == 0
    assert core.forged > 0 and session.delivered == {}
    # nor are they counted as data taken (STATUS reports that count: the sender measures loss and
    # congestion with it, so forgeries can neither hide loss nor fake it)
    assert core.authentic == 0
    # the genuine datagrams still make the object afterwards
    _feed(core, genuine, 2.0)
    assert session.delivered[0] == session.objects[0] and core.authentic == len(genuine)


def test_a_full_window_counts_drops_and_a_stale_object_yields_its_room():
    session = Session([1 * MiB, 1 * MiB, 1 * MiB], window=2 * MiB + 1 * MiB // 2)
    core = session.core
    _feed(core, session.rows(0, list(range(300))), 1.0)         # two objects with holes
    _feed(core, session.rows(1, list(range(300))), 1.0)
    _feed(core, session.rows(2, list(range(44))), 1.5)          # no room, nothing stale yet
    assert core.window_drops == 44 and 2 not in core.window
    _feed(core, session.rows(2, list(range(44))), 1.0 + STALE_PARTIAL + 0.5)
    assert core.evicted == 1 and 2 in core.window and 0 not in core.window
    # the evicted object is asked for whole later, and completes when it comes
    _feed(core, session.rows(2, list(range(44, session.prepared[2].rows.shape[0]))), 4.0)
    _feed(core, session.rows(1), 4.0)
    requests, dummy = _requests(core, 5.0)
    assert (wire.REQ_OBJECTS, 0, 0, 1) in requests
    _feed(core, session.rows(0), 5.1)
    assert session.exact()


def test_a_late_joiner_probes_with_one_object_then_asks_for_a_window():
    session = Session([256 * 1024] * 20, window=4 * MiB)
    core = session.core
    requests, credit = _requests(core, 1.0)
    assert requests == [(wire.REQ_OBJECTS, 0, 0, 1)] and credit == 4 * MiB
    # it never came (data does not reach us?): asked again later and later
    assert _requests(core, 1.2)[0] == []
    assert _requests(core, 1.61)[0] == [(wire.REQ_OBJECTS, 0, 0, 1)]
    assert _requests(core, 2.2)[0] == []
    assert _requests(core, 2.85)[0] == [(wire.REQ_OBJECTS, 0, 0, 1)]
    _feed(core, session.rows(0), 3.0)
    requests, dummy = _requests(core, 3.5)
    wanted = sum(r[3] for r in requests if r[0] == wire.REQ_OBJECTS)
    assert wanted >= 10, requests                # a window's worth now that data arrives
    for index in range(1, 20):
        _feed(core, session.rows(index), 4.0)
    assert session.exact()


def test_resume_skips_objects_already_verified():
    session = Session([100 * 1024] * 8)
    core = session.core
    core.skip([0, 1, 2, 5])
    assert core.delivered == 4
    requests, dummy = _requests(core, 1.0)
    asked = {r[1] + n for r in requests if r[0] == wire.REQ_OBJECTS for n in range(r[3])}
    assert asked and asked <= {3, 4, 6, 7}
    for index in range(8):
        _feed(core, session.rows(index), 2.0)
    assert sorted(session.delivered) == [3, 4, 6, 7]
    assert all(session.delivered[i] == session.objects[i] for i in (3, 4, 6, 7))
    assert core.delivered == 8
