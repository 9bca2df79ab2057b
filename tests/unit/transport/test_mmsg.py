# sendmmsg/recvmmsg through ctypes, over a pair of UDP sockets on the loopback interface (the
# datagrams never leave this host), and how the receiver sorts what one recvmmsg call returns.
import ctypes
import errno
import socket

import numpy as np
import pytest

from ansible_collections.fleetcast.imaging.plugins.module_utils._transport import mmsg, wire
from ansible_collections.fleetcast.imaging.plugins.module_utils._transport.receiver import VECTOR_FROM, Receiver

pytestmark = pytest.mark.skipif(mmsg.LIBC is None, reason="libc without sendmmsg/recvmmsg")


@pytest.fixture
def pair():
    """(sending socket, receiving socket), both bound on 127.0.0.1, non-blocking."""
    receiving = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sending = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        receiving.bind(("127.0.0.1", 0))
        try:        # room for a few hundred datagrams: SO_RCVBUFFORCE as root, else the sysctl limit
            receiving.setsockopt(socket.SOL_SOCKET, 33, 4 * 1024 * 1024)
        except OSError:
            receiving.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        sending.bind(("127.0.0.1", 0))
        receiving.setblocking(False)
        sending.setblocking(False)
        yield sending, receiving
    finally:
        receiving.close()
        sending.close()


def _rows(count, seed=7):
    return np.random.default_rng(seed).integers(0, 256, (count, wire.DATAGRAM), dtype=np.uint8)


def _drain(receiver):
    """Everything waiting: (rows, lengths, flags, sources), one entry per datagram."""
    rows, lengths, flags, sources = [], [], [], []
    while True:
        count = receiver.receive()
        if not count:
            return np.concatenate(rows) if rows else np.empty((0, wire.DATAGRAM), np.uint8), lengths, flags, sources
        rows.append(receiver.rows[:count].copy())
        lengths += receiver.lengths[:count].tolist()
        flags += receiver.flags[:count].tolist()
        sources += [receiver.source(number) for number in range(count)]


def test_layout_is_the_64_bit_kernel_abi():
    # struct mmsghdr on LP64 Linux (x86-64, arm64, ppc64le, s390x, riscv64): a 56-byte msghdr,
    # the 4-byte length, padding to 8
    assert ctypes.sizeof(mmsg.MsgHdr) == 56 and ctypes.sizeof(mmsg.MMsgHdr) == 64
    assert mmsg.MsgHdr.msg_flags.offset == 48 and mmsg.MMsgHdr.msg_len.offset == 56
    assert ctypes.sizeof(mmsg.SockAddrIn) == 16 and ctypes.sizeof(mmsg.IoVec) == 16
    assert ctypes.sizeof(mmsg._Control) == 24 and mmsg._Control.value.offset == 16   # CMSG_SPACE(4), CMSG_DATA


def test_hundred_rows_arrive_byte_exact_with_lengths_and_source(pair):
    sending, receiving = pair
    rows = _rows(100)
    sender = mmsg.BatchSender(sending, receiving.getsockname())
    receiver = mmsg.BatchReceiver(receiving)
    sent, calls = 0, 0
    while sent < len(rows):
        got = sender.send(rows[sent:])          # slices: the pointers must follow the offset
        assert 0 < got <= mmsg.BATCH
        sent += got
        calls += 1
    assert calls == 2                           # 64 + 36: one call per batch
    received, lengths, flags, sources = _drain(receiver)
    assert received.shape == rows.shape and (received == rows).all()
    assert lengths == [wire.DATAGRAM] * 100
    assert flags == [0] * 100
    assert set(sources) == {sending.getsockname()}


def test_more_than_a_batch_waiting_takes_several_calls(pair):
    sending, receiving = pair
    rows = _rows(mmsg.RECEIVE_BATCH + 10, seed=3)
    sender = mmsg.BatchSender(sending, receiving.getsockname())
    receiver = mmsg.BatchReceiver(receiving)
    sent = 0
    while sent < len(rows):
        sent += sender.send(rows[sent:])
    assert receiver.receive() == mmsg.RECEIVE_BATCH
    assert (receiver.rows == rows[:mmsg.RECEIVE_BATCH]).all()
    assert receiver.receive() == 10
    assert (receiver.rows[:10] == rows[mmsg.RECEIVE_BATCH:]).all()
    assert receiver.receive() == 0


def test_short_and_truncated_datagrams(pair):
    sending, receiving = pair
    receiver = mmsg.BatchReceiver(receiving)
    target = receiving.getsockname()
    sending.sendto(b"c" * 100, target)
    sending.sendto(b"L" * 2000, target)                 # longer than a row: cut, flagged
    sending.sendto(b"d" * wire.DATAGRAM, target)
    assert receiver.receive() == 3
    assert receiver.lengths[:3].tolist() == [100, wire.DATAGRAM, wire.DATAGRAM]
    assert [bool(flag & mmsg.MSG_TRUNC) for flag in receiver.flags[:3].tolist()] == [False, True, False]
    assert receiver.rows[0, :100].tobytes() == b"c" * 100
    assert receiver.rows[2].tobytes() == b"d" * wire.DATAGRAM
    # the flags are written afresh by every call: a later datagram in that slot is not flagged
    sending.sendto(b"e" * 10, target)
    sending.sendto(b"f" * 10, target)
    assert receiver.receive() == 2 and receiver.flags[:2].tolist() == [0, 0]


def test_empty_socket_returns_zero_at_once(pair):
    receiver = mmsg.BatchReceiver(pair[1])
    assert receiver.receive() == 0
    assert receiver.receive() == 0


def test_errors_other_than_would_block_raise(pair):
    sending, receiving = pair
    sender = mmsg.BatchSender(sending, receiving.getsockname())
    receiver = mmsg.BatchReceiver(receiving)
    # the descriptors are kept from set-up; closing the sockets makes them invalid
    sending.close()
    receiving.close()
    with pytest.raises(OSError) as sent:
        sender.send(_rows(2))
    assert sent.value.errno == errno.EBADF and not isinstance(sent.value, BlockingIOError)
    with pytest.raises(OSError) as received:
        receiver.receive()
    assert received.value.errno == errno.EBADF


def test_no_mmsg_environment_selects_the_one_datagram_path(pair, monkeypatch):
    sending, receiving = pair
    assert mmsg.batch_sender(sending, receiving.getsockname()) is not None
    monkeypatch.setenv("FLEETCAST_NO_MMSG", "1")
    assert mmsg.batch_sender(sending, receiving.getsockname()) is None
    assert mmsg.batch_receiver(receiving) is None


class _Sorting(Receiver):
    """A receiver reduced to `_batch`: records what goes where instead of reassembling."""

    def __init__(self, receiving):        # pylint: disable=super-init-not-called
        self.batch = mmsg.BatchReceiver(receiving)
        self.batch_rows = [self.batch.rows[number:number + 1] for number in range(self.batch.capacity)]
        self.batch_payloads = [row[0, wire.DATA_HEADER_SIZE:] for row in self.batch_rows]
        self.core = object()              # joined: data goes on
        self.datagrams = self.receive_calls = 0
        self.seen = []

    def _rows(self, rows, now):
        self.seen.append(("rows", len(rows), rows[:, 1].tolist()))

    def _one(self, row, payload, now):
        assert len(payload) == wire.PAYLOAD
        self.seen.append(("one", int(row[0, 1])))

    def _control_datagram(self, datagram, source):
        self.seen.append(("control", datagram, source))


def _data(number):
    datagram = bytearray(wire.DATAGRAM)
    datagram[0], datagram[1] = wire.DATA, number
    return bytes(datagram)


def test_receiver_hands_a_batch_of_data_to_rows_in_one_call(pair):
    sending, receiving = pair
    sorting = _Sorting(receiving)
    for number in range(40):
        sending.sendto(_data(number), receiving.getsockname())
    count = sorting.batch.receive()
    assert count == 40
    sorting._batch(count, 0.0)
    assert sorting.seen == [("rows", 40, list(range(40)))]
    assert (sorting.datagrams, sorting.receive_calls) == (40, 1)


def test_receiver_sorts_a_mixed_or_short_batch_datagram_by_datagram(pair):
    sending, receiving = pair
    sorting = _Sorting(receiving)
    target = receiving.getsockname()
    for number in range(30):
        sending.sendto(_data(number), target)
        if number == 10:
            sending.sendto(b"\x02control", target)
        if number == 20:
            sending.sendto(b"\x01" * 3000, target)            # cut: ignored
    count = sorting.batch.receive()
    assert count == 32
    sorting._batch(count, 0.0)
    expected = [("one", n) for n in range(11)] + [("control", b"\x02control", sending.getsockname())]
    expected += [("one", n) for n in range(11, 21)] + [("one", n) for n in range(21, 30)]
    assert sorting.seen == expected
    assert (sorting.datagrams, sorting.receive_calls) == (30, 1)
    # a few datagrams go one by one too: a `_rows` call costs more than that
    sorting.seen.clear()
    for number in range(VECTOR_FROM - 1):
        sending.sendto(_data(number), target)
    sorting._batch(sorting.batch.receive(), 0.0)
    assert sorting.seen == [("one", number) for number in range(VECTOR_FROM - 1)]


UDP_SEGMENT = 103


def _gso_send(sending, target, payload, segment):
    """One send that the kernel splits into `segment`-byte datagrams (UDP GSO); looped back to a
    socket with UDP_GRO on, it arrives whole, as a GRO buffer would."""
    sending.setsockopt(mmsg.SOL_UDP, UDP_SEGMENT, segment)
    sending.sendto(payload, target)


class _GroSorting(_Sorting):
    """A receiver reduced to `_gro_buffers`."""

    def __init__(self, receiving):        # pylint: disable=super-init-not-called
        receiving.setsockopt(mmsg.SOL_UDP, mmsg.UDP_GRO, 1)
        self.gro = False                  # no GRO probe here
        self.data_sock = receiving
        Receiver._use_gro_batches(self)
        self.core = object()              # joined: data goes on
        self.datagrams = self.receive_calls = 0
        self.seen = []


def test_gro_buffers_that_follow_each_other_go_to_rows_as_one_run(pair):
    sending, receiving = pair
    sorting = _GroSorting(receiving)
    target = receiving.getsockname()
    full = b"".join(_data(number) for number in range(44))
    for dummy in range(3):
        _gso_send(sending, target, full, wire.DATAGRAM)                    # three full buffers
    _gso_send(sending, target, full[:10 * wire.DATAGRAM], wire.DATAGRAM)  # a short one after them
    sending.sendto(_data(99), target)                                     # a datagram alone
    _gso_send(sending, target, full[:5 * wire.DATAGRAM] + b"\x03appended", wire.DATAGRAM)
    _gso_send(sending, target, b"\x02" + b"a" * 99 + b"\x02" + b"b" * 99 + b"\x02tail", 100)   # control, coalesced
    count = sorting.gro_batch.receive()
    assert count == 7
    assert sorting.gro_batch.segments(count).tolist() == [wire.DATAGRAM] * 4 + [0, wire.DATAGRAM, 100]
    sorting._gro_buffers(count, 0.0)
    source = sending.getsockname()
    assert sorting.seen == [
        ("rows", 142, list(range(44)) * 3 + list(range(10))),
        ("one", 99),
        ("rows", 5, list(range(5))),
        ("control", b"\x03appended", source),
        ("control", b"\x02" + b"a" * 99, source), ("control", b"\x02" + b"b" * 99, source),
        ("control", b"\x02tail", source)]
    assert (sorting.datagrams, sorting.receive_calls) == (148, 1)
