# The per-datagram tag of data datagrams: every header field and payload byte is covered, and the
# vectorised checks agree with each other.
import os
import random

import numpy as np

from ansible_collections.fleetcast.imaging.plugins.module_utils._transport import wire
from ansible_collections.fleetcast.imaging.plugins.module_utils._transport.dmac import DatagramMac
from ansible_collections.fleetcast.imaging.plugins.module_utils._transport.sender import _Prepared

KEYS = wire.SessionKeys.derive(b"secret", 42)


def _object(index=5, size=700 * wire.PAYLOAD + 123):
    mac = DatagramMac(KEYS.data, wire.DATAGRAM)
    prepared = _Prepared(index, KEYS.session_id, os.urandom(size), b"d" * 16, signer=mac)
    return mac, prepared.rows


def test_signed_rows_verify_in_runs_and_one_by_one():
    mac, rows = _object()
    assert mac.check_run(rows, 5, 0).all()
    assert mac.check_run(rows[300:344], 5, 300).all()          # a GRO buffer across a pad block
    assert all(mac.check_run(rows[n:n + 1], 5, n)[0] for n in (0, 255, 256, 700))
    shuffled = np.random.default_rng(1).permutation(len(rows))
    objects = np.full(len(rows), 5, dtype=np.uint32)
    assert mac.check(rows[shuffled], objects, shuffled.astype(np.uint32)).all()
    # a receiver with the session's key, not the sender's object, agrees
    assert DatagramMac(KEYS.data, wire.DATAGRAM).check_run(rows, 5, 0).all()


def test_any_flipped_bit_outside_the_tag_is_caught():
    mac, rows = _object(size=3 * wire.PAYLOAD)
    generator = random.Random(7)
    positions = list(range(wire.DATA_HEADER.size)) + generator.sample(range(wire.DATA_HEADER_SIZE, wire.DATAGRAM), 200)
    for position in positions:
        for bit in range(8):
            forged = rows[1:2].copy()
            forged[0, position] ^= 1 << bit
            assert not mac.check_run(forged, 5, 1)[0], (position, bit)


def test_a_genuine_datagram_does_not_verify_as_another_fragment_object_or_session():
    mac, rows = _object()
    assert not mac.check_run(rows[3:4], 5, 4)[0]
    assert not mac.check_run(rows[3:4], 6, 3)[0]
    other = DatagramMac(wire.SessionKeys.derive(b"secret", 43).data, wire.DATAGRAM)
    assert not other.check_run(rows[3:4], 5, 3)[0]
    # and a tag copied onto other bytes (header fields rewritten to another fragment) fails
    moved = rows[3:4].copy()
    moved[0, 16:20] = np.frombuffer((9).to_bytes(4, "big"), dtype=np.uint8)
    assert not mac.check_run(moved, 5, 9)[0]


def test_random_junk_never_verifies():
    mac = DatagramMac(KEYS.data, wire.DATAGRAM)
    junk = np.frombuffer(os.urandom(2000 * wire.DATAGRAM), dtype=np.uint8).reshape(2000, wire.DATAGRAM)
    heads = junk.view(np.dtype({"names": ["object", "fragment"], "formats": [">u4", ">u4"],
                                "offsets": [12, 16], "itemsize": wire.DATAGRAM}))[:, 0]
    assert not mac.check(junk, heads["object"] % 8, heads["fragment"] % 4000).any()
