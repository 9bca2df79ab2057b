# The wire format's authentication, replay window and object layout, without any network.
import pytest

from ansible_collections.fleetcast.imaging.plugins.module_utils._transport import wire
from ansible_collections.fleetcast.imaging.plugins.module_utils._transport.netio import BufferPool
from ansible_collections.fleetcast.imaging.plugins.module_utils._transport.sender import _Prepared
from ansible_collections.fleetcast.imaging.plugins.module_utils._transport.source import SpoolSource


def test_control_messages_open_only_with_the_right_key_and_session():
    keys = wire.SessionKeys.derive(b"secret", 42)
    datagram = wire.pack_control(keys, wire.META, 7, b"body bytes")
    assert wire.open_control(keys, datagram) == (wire.META, 0, 7, b"body bytes")
    assert wire.open_control(wire.SessionKeys.derive(b"other", 42), datagram) is None
    assert wire.open_control(wire.SessionKeys.derive(b"secret", 43), datagram) is None
    tampered = bytearray(datagram)
    tampered[-20] ^= 1
    assert wire.open_control(keys, bytes(tampered)) is None


def test_keys_differ_per_session():
    first, second = wire.SessionKeys.derive(b"k", 1), wire.SessionKeys.derive(b"k", 2)
    assert first.mac != second.mac and first.enc != second.enc and first.mac != first.enc


def test_replay_window_accepts_each_sequence_once():
    window = wire.ReplayWindow()
    assert window.accept(5) and window.accept(3) and window.accept(9)
    assert not window.accept(5) and not window.accept(9) and not window.accept(0)
    assert window.accept(4000)
    assert not window.accept(4000 - wire.ReplayWindow.SIZE)
    assert window.accept(4000 - wire.ReplayWindow.SIZE + 1)


def test_prepared_object_rows_carry_header_and_padded_payload():
    data = bytes(range(256)) * 20          # 5120 bytes: three full rows and a padded tail
    prepared = _Prepared(9, 0x1122334455667788, data, b"d" * 16)
    rows = prepared.rows
    assert rows.shape == (wire.fragments_of(len(data)), wire.DATAGRAM)
    for fragment, row in enumerate(rows):
        fields = wire.DATA_HEADER.unpack_from(row.tobytes())
        assert fields == (wire.DATA, wire.VERSION, 0, 0x1122334455667788, 9, fragment, rows.shape[0])
    payload = rows[:, wire.DATA_HEADER_SIZE:].reshape(-1).tobytes()
    assert payload[:len(data)] == data and payload[len(data):] == bytes(len(payload) - len(data))


def test_prepared_object_in_a_reused_buffer_carries_nothing_over():
    pool = BufferPool(wire.DATAGRAM)
    first = _Prepared(1, 7, b"\xff" * (3 * wire.PAYLOAD), b"d" * 16, pool)
    pool.give(first.rows)
    data = b"\x01" * (2 * wire.PAYLOAD + 10)      # same row count, a short tail this time
    second = _Prepared(2, 7, data, b"d" * 16, pool)
    assert second.rows is first.rows
    payload = second.rows[:, wire.DATA_HEADER_SIZE:].reshape(-1).tobytes()
    assert payload == data + bytes(len(payload) - len(data))
    assert [wire.DATA_HEADER.unpack_from(row.tobytes())[4] for row in second.rows] == [2, 2, 2]


def test_buffer_pool_reuses_by_size_and_lets_go_beyond_the_room():
    pool = BufferPool(100)
    buffers = [pool.take(count, 10 ** 6) for count in (4, 4, 8)]
    for rows in buffers:
        pool.give(rows)
    assert pool.bytes == 1600
    assert pool.take(8, 0) is buffers[2]           # a hit costs nothing, whatever the room
    fresh = pool.take(16, 400)                     # a miss: pooled bytes beyond 400 are let go
    assert fresh.shape == (16, 100) and pool.bytes <= 400


def test_buffer_pool_survives_objects_of_varied_sizes():
    # The sender's pattern on a real image: chunks of many compressed sizes, a cache of the last
    # 16 objects whose buffers go back to the pool on eviction. Taking the last pooled buffer of a
    # size once left an empty list behind, and a later eviction popped from it.
    import random
    generator = random.Random(202)
    pool = BufferPool(wire.DATAGRAM)
    room = 4 * 4 * 1024 * 1024
    cache = []
    for number in range(600):
        # a few sizes recur (so hits take the last buffer of a size), most are new
        count = generator.choice([1, 3, 45, 2897]) if number % 3 else generator.randint(1, 2900)
        rows = pool.take(count, room)
        assert rows.shape == (count, wire.DATAGRAM)
        cache.append(rows)
        if len(cache) > 16:
            pool.give(cache.pop(0))
        # what the pool holds is exactly what it counts, and it keeps no empty list
        assert all(pool.free.values())
        assert pool.bytes == sum(r.nbytes for stack in pool.free.values() for r in stack)


def test_spool_source_reads_back_objects_while_they_are_produced():
    produced = [bytes([i]) * (1000 + i) for i in range(20)]
    spool = SpoolSource(iter(produced), image_id=lambda: b"id")
    try:
        while spool.final_count() is None:
            spool.wait(0.1)
        assert spool.available() == 20 and spool.final_count() == 20
        assert [spool.read(i) for i in (19, 0, 7)] == [produced[19], produced[0], produced[7]]
        assert spool.image_id() == b"id"
    finally:
        spool.close()


def test_spool_source_reports_a_failing_producer():
    def broken():
        yield b"one"
        raise OSError("disk vanished")

    spool = SpoolSource(broken())
    try:
        with pytest.raises(OSError, match="disk vanished"):
            for _poll in range(50):
                spool.final_count()
                spool.wait(0.05)
    finally:
        spool.close()


def test_announced_image_id_keeps_trailing_zero_bytes():
    image_id = bytes.fromhex("8f64983eb6d2eef7b56485afb3c87be33d7c9684d24e0648ef1bb2b6cb270e00")
    assert wire.announced_image_id(wire.image_id_field(image_id)) == image_id
    assert wire.announced_image_id(wire.image_id_field(b"")) == b""


def test_announcements_of_another_wire_version_are_recognised_not_opened():
    keys = wire.SessionKeys.derive(b"secret", 42)
    announce = bytearray(wire.pack_control(keys, wire.ANNOUNCE, 1, bytes(wire.ANNOUNCE_BODY.size)))
    assert wire.foreign_version(bytes(announce)) is None            # our own version
    announce[1] = wire.VERSION - 1
    assert wire.foreign_version(bytes(announce)) == wire.VERSION - 1
    assert wire.peek_control(bytes(announce)) is None                 # never opened
    data = bytearray(wire.DATAGRAM)
    data[0], data[1] = wire.DATA, wire.VERSION - 1
    assert wire.foreign_version(bytes(data)) is None                  # data, and too long
