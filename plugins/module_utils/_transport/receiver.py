# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The receiving side of a multicast session. Private to the collection: not a public API.

Three stages overlap in threads: the network loop (reassembles objects; with GRO a whole buffer of
datagrams is one strided numpy copy), the verifier (decrypts, checks each object against the
digest from an authenticated META message) and the writer (hands verified objects to the sink in
the order they complete). Memory is bounded by ``window_bytes`` whatever the image size: data for
an object that does not fit is dropped and asked for again later.

A receiver joins only a session whose sender answered its own random nonce (WELCOME), so replayed
announcements of an older session lead nowhere; once joined, every datagram of another session id
is ignored.
"""

from __future__ import annotations

import hmac
import os
import queue
import random
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from .._errors import TransportError
from . import gcm, wire
from .mmsg import GRO_ROWS, MSG_TRUNC, batch_receiver, gro_batch_receiver
from .netio import disable_gro, gro_segment_size, np, receiver_sockets, renew_membership, udp_receive_errors
from .reassembly import MISSING, Reassembly


STATUS_EVERY = 0.025
JOIN_EVERY = 0.2
REJOIN_AFTER = 0.5            # nothing from the group this long (announcements come every 0.1 s): join again,
REJOIN_MAX = 8.0              # then after twice as long each time, up to this
GRO_PROBE = 4096              # authentic single datagrams after which GRO that never coalesced is given up
GATHER = 0.001                # without GRO, once the socket is drained: let datagrams gather
VECTOR_FROM = 10              # from this many datagrams in a recvmmsg batch, `_rows` beats `_one`
BUFFER = 65536 + 4096
DATA_SILENCE = 5.0            # the sender sent objects, none of their datagrams came for this long: give up
DONE_EVERY = 0.1


@dataclass
class ReceiverConfig:
    group: str
    port: int
    address: str
    session_key: bytes
    name: str = ""
    timeout: float = 30.0              # silence (or no session at all) that ends with an error
    window_bytes: int = 48 * 1024 * 1024
    offload: Optional[bool] = None
    layout_first: bool = False         # accept other objects only once object 0 was delivered
    # resume: given the announced image id, a list of the objects the sink holds of that image;
    # once object 0 was delivered (the sink may narrow the list in place until then) they count as
    # delivered and are never asked for
    resume: Optional[Callable[[bytes], Iterable[int]]] = None
    # objects already verified (a resumed output): not received again; pass `finish` too (the
    # session digest of a plain session needs every object's META)
    have: Sequence[int] = ()


@dataclass
class ReceiveResult:
    objects: int
    bytes: int
    fragment_requests: int
    object_requests: int
    seconds: float
    digest: str
    announced_image_id: str
    sender: str
    gro: bool
    encrypted: bool
    kernel_drops: int
    window_drops: int
    rejected_objects: int
    datagrams: int = 0                 # data datagrams received
    receive_calls: int = 0             # system calls that returned them (GRO coalesces many in one)
    rejoins: int = 0                   # times the group went silent and its membership was reported again
    gro_dropped: bool = False          # GRO was offered but coalesced nothing, so batches were used
    mmsg: bool = False                 # without GRO: recvmmsg took many datagrams per call
    forged_datagrams: int = 0          # data datagrams of this session whose tag was wrong (dropped)
    evicted_objects: int = 0           # objects with holes that yielded their room (fetched again)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class _Candidate:
    __slots__ = ("keys", "sender", "nonce", "asked", "announce")

    def __init__(self, keys: wire.SessionKeys, sender: Tuple[str, int]):
        self.keys = keys
        self.sender = sender
        self.nonce = int.from_bytes(os.urandom(8), "big")
        self.asked = 0.0
        self.announce = b""


# A sink gets (index, bytes-like object); the object is only valid during the call.
Sink = Callable[[int, memoryview], None]


class Receiver:
    def __init__(self, config: ReceiverConfig, sink: Sink, finish: Optional[Callable[[bytes], bytes]] = None):
        """`finish(announced image id)` runs once every object was delivered and returns the digest
        this receiver reports (default: the session digest of what it verified)."""
        self.config = config
        self.sink = sink
        self.finish = finish
        self.receiver_id = int.from_bytes(os.urandom(8), "big") or 1
        self.data_sock, self.control_sock, self.gro = receiver_sockets(
            config.group, config.port, config.address, config.offload)
        # non-blocking, waiting in select only when the queue is empty: a socket timeout would
        # cost a poll() before every receive, i.e. one per datagram on the fallback path
        self.data_sock.setblocking(False)
        # without GRO, recvmmsg where libc has it; else one recvfrom per datagram (the last resort)
        self.batch = None
        self.gro_batch = None
        if not self.gro:
            self._use_batches()
        else:
            self._use_gro_batches()
        self.gro_dropped = False           # GRO was on but coalesced nothing: batches instead
        self.datagrams = 0
        self.receive_calls = 0
        self.buffer = bytearray(BUFFER)
        self.view = memoryview(self.buffer)
        self.array = np.frombuffer(self.buffer, dtype=np.uint8)
        self.payload_view = self.array[wire.DATA_HEADER_SIZE:wire.DATAGRAM]   # of a single datagram
        self.single_row = self.array[:wire.DATAGRAM].reshape(1, wire.DATAGRAM)
        self.candidates: Dict[int, _Candidate] = {}
        self.keys: Optional[wire.SessionKeys] = None
        self.core: Optional[Reassembly] = None     # the session's data state, once joined
        self.mac: Optional[gcm.ObjectMac] = None
        self.sender: Tuple[str, int] = ("", 0)
        self.sender_window = wire.ReplayWindow()
        self.seq = 0
        self.cipher = None
        self.encrypted = False
        self.image_id = b""
        self.report_to: List[Tuple[str, int]] = []
        self.rejoins = 0                   # times the group went silent and was joined again
        self.foreign_versions: set = set()  # wire versions of announcements we cannot speak
        self.rejected_objects = 0
        self.kernel_drops_base = udp_receive_errors()
        self.rejected: "queue.SimpleQueue[int]" = queue.SimpleQueue()
        self.to_verify: "queue.Queue" = queue.Queue()
        self.to_write: "queue.Queue" = queue.Queue(maxsize=1)
        self.error: Optional[BaseException] = None
        self.last_from_sender = 0.0
        self.ended: Optional[int] = None
        self.done_acked = False
        self.digests: List[Tuple[int, bytes]] = []
        self.held: Optional[List[int]] = None   # resume: objects the sink holds, until counted
        self.resumed = 0

    def _use_batches(self) -> None:
        self.batch = batch_receiver(self.data_sock)
        if self.batch is not None:      # each row and its payload as views, for `_one`
            self.batch_rows = [self.batch.rows[number:number + 1] for number in range(self.batch.capacity)]
            self.batch_payloads = [row[0, wire.DATA_HEADER_SIZE:] for row in self.batch_rows]

    def _use_gro_batches(self) -> None:
        """Several GRO buffers per call where recvmmsg is there: a full buffer holds 44 datagrams,
        so one buffer per call still cost about 30 us of Python and numpy per 64 KB; buffers that
        follow each other go to `_rows` as one run."""
        self.gro_batch = gro_batch_receiver(self.data_sock)
        if self.gro_batch is not None:   # each slot's first row and its payload as views, for `_one`
            rows = self.gro_batch.rows
            self.gro_singles = [rows[number * GRO_ROWS:number * GRO_ROWS + 1]
                                for number in range(self.gro_batch.capacity)]
            self.gro_payloads = [row[0, wire.DATA_HEADER_SIZE:] for row in self.gro_singles]

    def _gro_coalesces(self) -> bool:
        """False once GRO has handed over GRO_PROBE authentic data datagrams one by one and never
        several in one buffer: the kernel offers the option but the device does not coalesce (no
        GRO on the NIC or a veth without NAPI). Then GRO is turned off and recvmmsg takes many
        datagrams per call instead. Only authentic datagrams count: stray or forged single
        datagrams say nothing about the path and must not switch GRO off."""
        if self.core.singles < GRO_PROBE or self.core.coalesced:
            return True
        if disable_gro(self.data_sock):
            self.gro = False
            self.gro_dropped = True
            self.gro_batch = None
            self._use_batches()
        return False

    # --- stages ----------------------------------------------------------------------------------
    def _deliver(self, index: int, partial, wire_length: int, digest: bytes) -> None:
        """A reassembled object, to the verifier."""
        self.to_verify.put((index, partial, wire_length, digest))

    def _verify(self) -> None:
        while True:
            item = self.to_verify.get()
            if item is None:
                self.to_write.put(None)
                return
            index, partial, wire_length, digest = item
            rows = partial.rows
            try:
                # a view, not a copy: the GMAC and pwrite release the GIL on it
                data = memoryview(partial.rows).cast("B")[:wire_length]
                if self.cipher is not None:
                    # the AES-GCM tag is the object's authenticator; opening (in place, in the
                    # reassembly buffer) checks it again
                    valid = hmac.compare_digest(bytes(data[-gcm.TAG_SIZE:]), digest)
                    if valid:
                        data = self.cipher.open(wire.object_nonce(index), data,
                                                struct.pack(">Q", self.keys.session_id))
                        valid = data is not None
                else:
                    valid = hmac.compare_digest(self.mac.tag(wire.object_nonce(index), data), digest)
                if not valid:          # forged or damaged: ask again
                    self.core.release(rows)
                    self.rejected.put(index)
                    continue
                self.to_write.put((index, data, rows))
            except BaseException as err:
                self.error = err
                self.core.release(rows)
                self.to_write.put(None)
                return

    def _write(self) -> None:
        while True:
            item = self.to_write.get()
            if item is None:
                return
            index, data, rows = item
            try:
                if self.error is None:
                    self.sink(index, data)
                    with self.core.inflight_lock:     # _count_held() counts held objects from the loop
                        self.core.delivered_object(data.nbytes if isinstance(data, memoryview) else len(data))
            except BaseException as err:
                self.error = err
            finally:
                self.core.release(rows)      # the sink is done with the view: the buffer is reused

    # --- control ---------------------------------------------------------------------------------
    def _send(self, kind: int, body: bytes, keys: Optional[wire.SessionKeys] = None,
              to: Optional[List[Tuple[str, int]]] = None) -> None:
        """A control message to the sender, unicast and to the group's report port: a host that
        sends with the sender's Ethernet address makes a switch forward unicast meant for the
        sender to itself, but the group reaches every member port whatever the switch learnt.
        The sender's replay window takes each sequence number once."""
        self.seq += 1
        datagram = wire.pack_control(keys or self.keys, kind, self.seq, body)
        for destination in to or self.report_to:
            try:
                self.control_sock.sendto(datagram, destination)
            except (BlockingIOError, OSError):
                pass   # control is retried by the next status round

    def _control_datagram(self, datagram: bytes, source: Tuple[str, int]) -> None:
        head = wire.peek_control(datagram)
        if head is None:
            if self.keys is None:
                other = wire.foreign_version(datagram)
                if other is not None:
                    self.foreign_versions.add(other)
            return
        kind, _flags, session_id, _seq = head
        if self.keys is None:
            self._courting(kind, session_id, datagram, source)
            return
        opened = wire.open_control(self.keys, datagram)
        if opened is None:
            return
        kind, _flags, seq, body = opened
        if not self.sender_window.accept(seq):
            return
        self.last_from_sender = time.monotonic()
        try:
            self._handle(kind, body)
        except struct.error:
            pass

    def _courting(self, kind: int, session_id: int, datagram: bytes, source: Tuple[str, int]) -> None:
        """Before joining: answer authentic announcements with a JOIN, accept only the WELCOME that
        echoes our nonce."""
        candidate = self.candidates.get(session_id)
        if candidate is None:
            if kind != wire.ANNOUNCE or len(self.candidates) > 64:
                return
            keys = wire.SessionKeys.derive(self.config.session_key, session_id)
            if wire.open_control(keys, datagram) is None:
                return
            candidate = _Candidate(keys, source)
            self.candidates[session_id] = candidate
        opened = wire.open_control(candidate.keys, datagram)
        if opened is None:
            return
        kind, _flags, seq, body = opened
        now = time.monotonic()
        if kind == wire.ANNOUNCE:
            candidate.announce = body
        if kind == wire.ANNOUNCE and now - candidate.asked >= JOIN_EVERY:
            candidate.asked = now
            join = wire.JOIN_BODY.pack(self.receiver_id, candidate.nonce) + self.config.name.encode()[:64]
            self._send(wire.JOIN, join, candidate.keys, [source, self._report_port()])
        elif kind == wire.WELCOME:
            receiver_id, nonce = wire.WELCOME_BODY.unpack_from(body)
            if receiver_id == self.receiver_id and nonce == candidate.nonce:
                self._lock(candidate)
                self.sender_window.accept(seq)
                if candidate.announce:
                    self._handle(wire.ANNOUNCE, candidate.announce)

    def _lock(self, candidate: _Candidate) -> None:
        self.keys = candidate.keys
        self.mac = gcm.ObjectMac(self.keys.auth)
        self.sender = candidate.sender
        self.report_to = [self.sender, self._report_port()]
        self.candidates.clear()
        self.core = Reassembly(self.keys.session_id, self.keys.data, self.config.window_bytes,
                               self._deliver, self.config.layout_first)
        self.core.skip(self.config.have)
        self.last_from_sender = self.core.last_data = time.monotonic()

    def _report_port(self) -> Tuple[str, int]:
        return (self.config.group, self.config.port + 1)

    def _handle(self, kind: int, body: bytes) -> None:
        if kind == wire.ANNOUNCE:
            known, sent_through, final, encrypted, payload, _r, image_id = wire.ANNOUNCE_BODY.unpack_from(body)
            if payload != wire.PAYLOAD:
                raise TransportError(f"Sender {self.sender[0]} uses datagrams of another size ({payload}); versions differ.")
            self.core.announce(known, sent_through, bool(final))
            if encrypted and self.cipher is None:
                self.cipher = gcm.ObjectCipher(self.keys.enc)
            self.encrypted = bool(encrypted)
            if final:
                self.image_id = image_id
                if self.config.resume is not None and self.held is None:
                    self.held = self.config.resume(wire.announced_image_id(image_id))
        elif kind == wire.META:
            first, count = wire.META_HEAD.unpack_from(body)
            entries = [wire.META_ENTRY.unpack_from(body, wire.META_HEAD.size + number * wire.META_ENTRY.size)
                       for number in range(min(count, wire.META_PER_MESSAGE))]
            self.core.meta_entries(first, entries)
        elif kind == wire.END:
            self.ended = wire.END_BODY.unpack_from(body)[0]
        elif kind == wire.DONE_ACK:
            if wire.DONE_ACK_BODY.unpack_from(body)[0] == self.receiver_id:
                self.done_acked = True

    def _status(self, now: float) -> None:
        requests, credit = self.core.requests(now)
        # The sender sends new objects only while every receiver has room for them (frontier and
        # free bytes), so a full window rarely drops data; drops left are congestion.
        drops = udp_receive_errors() - self.kernel_drops_base + self.core.window_drops
        step = wire.REQUESTS_PER_STATUS
        for first in range(0, max(1, len(requests)), step):
            batch = requests[first:first + step]
            self._send(wire.STATUS, self._status_head(drops, credit, len(batch)) + b"".join(batch))

    def _status_head(self, drops: int, room: int, requests: int) -> bytes:
        core = self.core
        core.reported_free = room
        return wire.STATUS_HEAD.pack(self.receiver_id, core.delivered, core.lowest_missing, drops,
                                     core.delivered_bytes, core.frontier, max(0, room),
                                     core.authentic & 0xFFFFFFFF, requests)

    # --- data ------------------------------------------------------------------------------------
    def _rows(self, rows, now: float) -> None:
        self.core.rows(rows, now)

    def _one(self, row, payload, now: float) -> None:
        self.core.one(row, payload, now)

    def _batch(self, count: int, now: float) -> None:
        """The datagrams of one recvmmsg call. A batch of data only goes to `_rows` in one call; a
        short one, or one with control datagrams among the data, datagram by datagram (the fixed
        cost of a `_rows` call is that of some 10 datagrams through `_one`). Control datagrams are
        shorter than DATAGRAM and data exactly as long (`_rows` and `_one` check every header), so
        the length sorts them; a datagram longer than a row (MSG_TRUNC: cut) is ignored."""
        batch = self.batch
        lengths = batch.lengths[:count].tolist()
        flags = batch.flags[:count].tolist()
        if count >= VECTOR_FROM and min(lengths) == wire.DATAGRAM and not any(flags):
            if self.keys is not None:
                self.receive_calls += 1
                self.datagrams += count
                self._rows(batch.rows[:count], now)
            return
        data = 0
        for number, length in enumerate(lengths):
            if length < wire.DATAGRAM:
                self._control_datagram(batch.rows[number, :length].tobytes(), batch.source(number))
            elif self.keys is not None and not flags[number] & MSG_TRUNC:
                data += 1
                self._one(self.batch_rows[number], self.batch_payloads[number], now)
        if data:
            self.receive_calls += 1
            self.datagrams += data

    def _gro_buffers(self, count: int, now: float) -> None:
        """The GRO buffers of one recvmmsg call, in order. Data rows of buffers that follow each
        other without a gap (every buffer but the run's last one full) go to `_rows` in one call; a
        datagram that came alone goes to `_one` (it counts towards the GRO probe); control
        datagrams, alone, GRO-coalesced among themselves or appended shorter after data rows, are
        split by the segment size the kernel reports. A buffer cut short (MSG_TRUNC) is ignored."""
        batch = self.gro_batch
        lengths = batch.lengths[:count].tolist()
        segments = batch.segments(count).tolist()
        flags = batch.flags[:count].tolist()
        run = [0, 0]                                  # rows run[0]:run[1] wait for `_rows`
        datagrams = 0

        def flush() -> None:
            if run[1] > run[0] and self.keys is not None:
                self._rows(batch.rows[run[0]:run[1]], now)
            run[0] = run[1] = 0

        for number in range(count):
            length, segment = lengths[number], segments[number]
            if flags[number] & MSG_TRUNC or not length:
                continue
            if segment == wire.DATAGRAM or (not segment and length == wire.DATAGRAM):
                rows = min(length // wire.DATAGRAM, GRO_ROWS)
                datagrams += rows
                first = number * GRO_ROWS
                if not segment:                       # it came alone
                    flush()
                    if self.keys is not None:
                        self._one(self.gro_singles[number], self.gro_payloads[number], now)
                elif run[1] == first and run[1] > run[0]:
                    run[1] += rows                    # the previous buffer was full: one run
                else:
                    flush()
                    run[0], run[1] = first, first + rows
                if length > rows * wire.DATAGRAM:      # a shorter datagram GRO appended
                    flush()
                    self._control_datagram(batch.message(number)[rows * wire.DATAGRAM:], batch.source(number))
                continue
            flush()
            whole = batch.message(number)
            for start in range(0, length, segment or length):   # one size, coalesced, or alone
                self._control_datagram(whole[start:start + (segment or length)], batch.source(number))
        flush()
        if datagrams and self.keys is not None:
            self.receive_calls += 1
            self.datagrams += datagrams
            if self.gro and self.core.singles >= GRO_PROBE:
                self._gro_coalesces()

    def _drain_rejected(self) -> None:
        while True:
            try:
                index = self.rejected.get_nowait()
            except queue.Empty:
                return
            self.core.rejected(index)
            self.rejected_objects += 1

    # --- the loop --------------------------------------------------------------------------------
    def run(self) -> ReceiveResult:
        started = time.monotonic()
        verifier = threading.Thread(target=self._verify, daemon=True, name="fleetcast-verify")
        writer = threading.Thread(target=self._write, daemon=True, name="fleetcast-write")
        verifier.start()
        writer.start()
        try:
            try:
                self._loop(started)
            finally:
                self.to_verify.put(None)
                verifier.join()
                writer.join()
                self.data_sock.close()
            if self.error is not None:
                raise self.error
            announced = wire.announced_image_id(self.image_id)
            if self.finish:
                # finishing (fsync, growing a filesystem) can outlast the sender's patience:
                # keep reporting so that this receiver is not dropped as dead meanwhile
                finished = threading.Event()
                beat = threading.Thread(target=self._heartbeat, args=(finished,), daemon=True)
                beat.start()
                try:
                    digest = self.finish(announced)
                finally:
                    finished.set()
                    beat.join()
            else:
                meta = self.core.meta
                digest = wire.transport_digest([(meta[i][0] - (gcm.TAG_SIZE if self.cipher else 0), meta[i][1])
                                                for i in range(self.core.final_count or 0)])
            self._report_done(digest)
        except BaseException as err:
            self._leave(err)
            raise
        finally:
            self.control_sock.close()
        core = self.core
        return ReceiveResult(
            objects=core.delivered, bytes=core.delivered_bytes, fragment_requests=core.fragment_requests,
            object_requests=core.object_requests, seconds=round(time.monotonic() - started, 3),
            digest=digest.hex(), announced_image_id=wire.announced_image_id(self.image_id).hex(),
            sender=self.sender[0], gro=self.gro, encrypted=self.encrypted,
            kernel_drops=udp_receive_errors() - self.kernel_drops_base, window_drops=core.window_drops,
            rejected_objects=self.rejected_objects, datagrams=self.datagrams, rejoins=self.rejoins,
            gro_dropped=self.gro_dropped,
            receive_calls=self.receive_calls, mmsg=self.batch is not None, forged_datagrams=core.forged,
            evicted_objects=core.evicted)

    def _where(self) -> str:
        return f"{self.config.group}:{self.config.port}"

    def _loop(self, started: float) -> None:
        next_status = 0.0
        next_control = 0.0
        iterations = 0
        heard = rejoined = time.monotonic()
        rejoin_after = REJOIN_AFTER
        while True:
            if self.error is not None:
                return
            try:
                if self.gro_batch is not None:
                    size = self.gro_batch.receive()   # GRO buffers, not bytes; 0: none waiting
                    if not size:
                        raise BlockingIOError
                elif self.gro:
                    size, ancillary, _flags, source = self.data_sock.recvmsg_into(
                        [self.buffer], socket.CMSG_SPACE(4))
                elif self.batch is not None:
                    size = self.batch.receive()       # datagrams, not bytes; 0: none waiting
                    if not size:
                        raise BlockingIOError
                else:
                    size, source = self.data_sock.recvfrom_into(self.buffer)
                    ancillary = ()
                got = True
            except (BlockingIOError, InterruptedError):
                got = False
                select.select([self.data_sock], [], [], 0.01)
            now = time.monotonic()
            if got:
                heard = now
                rejoin_after = REJOIN_AFTER
                iterations += 1
                if self.gro_batch is not None:
                    drained = size < self.gro_batch.capacity
                    self._gro_buffers(size, now)      # may turn GRO off (the probe)
                    if drained:
                        # drained: let buffers gather for a millisecond, as without GRO (one call
                        # then takes several instead of one, each call's Python paid once)
                        time.sleep(GATHER)
                elif self.batch is not None:
                    self._batch(size, now)
                    if size < self.batch.capacity:
                        # drained: one call a millisecond later takes ~100 datagrams instead of a
                        # few per call (the 64 MiB socket buffer holds tens of ms even at 10 Gbit/s)
                        time.sleep(GATHER)
                elif size == wire.DATAGRAM and not ancillary:
                    if self.keys is not None:
                        self.receive_calls += 1
                        self.datagrams += 1
                        self._one(self.single_row, self.payload_view, now)
                        if self.gro and self.core.singles >= GRO_PROBE:
                            self._gro_coalesces()
                elif size >= wire.DATAGRAM and self.buffer[0] == wire.DATA:
                    if self.keys is not None:
                        segment = gro_segment_size(ancillary) or size
                        whole = size // segment * segment if segment == wire.DATAGRAM else 0
                        if whole:
                            self.receive_calls += 1
                            self.datagrams += whole // wire.DATAGRAM
                            self._rows(self.array[:whole].reshape(-1, wire.DATAGRAM), now)
                        if size > whole and segment < size:
                            # a shorter last segment is a control datagram GRO appended
                            self._control_datagram(bytes(self.view[whole:size]), source)
                else:
                    self._control_datagram(bytes(self.view[:size]), source)
                if iterations & 31 and now < next_control:
                    continue
            next_control = now + 0.002
            self._poll_control()
            self._drain_rejected()
            if now - max(heard, rejoined) > rejoin_after:
                # A sender announces every 0.1 s: silence means the group no longer reaches us (an
                # IGMP-snooping switch that missed our report) or no sender is there yet. Report
                # our membership again, less and less often while the silence lasts.
                renew_membership(self.data_sock, self.config.group, self.config.address)
                rejoined = now
                rejoin_after = min(REJOIN_MAX, rejoin_after * 2)
                self.rejoins += 1
            if self.keys is None:
                if now - started > self.config.timeout:
                    if self.foreign_versions:
                        raise TransportError(
                            f"No multicast session of this version on {self._where()} within "
                            f"{self.config.timeout:g} s: a sender there speaks wire version "
                            f"{max(self.foreign_versions)}, this receiver {wire.VERSION} (install the same "
                            "fleetcast.imaging release on the sender and the receivers).")
                    raise TransportError(
                        f"No authenticated multicast session on {self._where()} within {self.config.timeout:g} s: "
                        "no sender is running there, or it uses a different session key.")
                continue
            core = self.core
            if self.held and (core.delivered or not self.config.layout_first):
                self._count_held()
            if core.final_count is not None and core.delivered >= core.final_count:
                return
            if self.ended == wire.END_ABORTED:
                raise TransportError(
                    f"Sender {self.sender[0]} aborted the session on {self._where()} (it was stopped or failed) "
                    f"with {core.delivered} of {core.final_count} objects received here; the output is incomplete.")
            if self.ended is not None:
                raise TransportError(
                    f"Sender {self.sender[0]} ended the session on {self._where()} before this receiver had "
                    f"every object ({core.delivered} of {core.final_count}); the output is incomplete.")
            # (not "the sender moved on since our last data": its announcement that it sent an
            # object whole comes after the object, and a live source may then pause for long)
            if (core.lacking() and now - core.last_data > DATA_SILENCE
                    and now - self.last_from_sender < 1.0):
                total = core.final_count if core.final_count is not None else "?"
                raise TransportError(
                    f"Sender {self.sender[0]} is heard on {self._where()}, but none of the data it sent reached this "
                    f"host for {DATA_SILENCE:g} s ({core.delivered} of {total} objects received): its "
                    f"{wire.DATAGRAM}-byte datagrams do not get through (a smaller MTU on this path, or a filter); "
                    "the output is incomplete.")
            if now - self.last_from_sender > self.config.timeout:
                total = core.final_count if core.final_count is not None else "?"
                raise TransportError(
                    f"Sender {self.sender[0]} went silent on {self._where()} for {self.config.timeout:g} s with "
                    f"{core.delivered} of {total} objects received; the output is incomplete.")
            if now >= next_status or core.status_due:
                core.status_due = False
                self._status(now)
                # randomised spacing: receivers' reports spread out instead of arriving in bursts
                next_status = now + STATUS_EVERY * (0.5 + random.random())

    def _count_held(self) -> None:
        """Objects an interrupted receive of the same image already verified (config.resume):
        delivered, not asked for. Only once the layout is in (the sink has opened its output); one
        that has started reassembling meanwhile completes normally (the sink skips what it holds)."""
        core = self.core
        fresh = [index for index in self.held if index > 0 and index not in core.window
                 and (index >= len(core.state) or core.state[index] == MISSING)]
        with core.inflight_lock:
            core.skip(fresh)
        self.resumed = len(fresh)
        self.held = []

    def _leave(self, err: BaseException) -> None:
        """Tell the sender this receiver gives up, and why, so that it reports the reason and
        nobody waits for a receiver that is gone."""
        if self.keys is None:
            return
        reason = str(err) or type(err).__name__
        body = wire.LEAVE_BODY.pack(self.receiver_id) + reason.encode("utf-8", "replace")[:300]
        for _attempt in range(3):
            self._send(wire.LEAVE, body)

    def _heartbeat(self, finished: threading.Event) -> None:
        body = self._status_head(0, 0, 0)
        while not finished.wait(0.5):
            self._send(wire.STATUS, body)

    def _poll_control(self) -> None:
        for _attempt in range(16):
            try:
                datagram, source = self.control_sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            self._control_datagram(datagram, source)

    def _report_done(self, digest: bytes) -> None:
        """DONE until the sender acknowledges it or ends the session, for up to `timeout`: a
        receiver that stopped reporting early would be dropped by the sender although it wrote
        every byte (one that cannot reach the sender for that long is no better off)."""
        body = wire.DONE_BODY.pack(self.receiver_id, self.core.delivered, digest)
        control = self.control_sock
        give_up = time.monotonic() + self.config.timeout
        while time.monotonic() < give_up:
            if self.done_acked or self.ended is not None:
                return
            self._send(wire.DONE, body)
            deadline = time.monotonic() + DONE_EVERY
            while time.monotonic() < deadline and not self.done_acked:
                try:
                    control.settimeout(max(0.001, deadline - time.monotonic()))
                    datagram, source = control.recvfrom(2048)
                except (socket.timeout, BlockingIOError):
                    break
                except OSError:
                    return
                self._control_datagram(datagram, source)
