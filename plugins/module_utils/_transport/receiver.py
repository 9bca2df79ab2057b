# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The receiving side of a multicast session: the driver of the receiver's sans-I/O core.
Private to the collection: not a public API.

The protocol lives in ``control.ReceiverControl`` (the handshake, the sender's messages, status
cadence and every timeout) and ``reassembly.Reassembly`` (data, windows, repair requests); this
module does their I/O: sockets (GRO with batched ``recvmmsg``, ``recvmmsg`` alone, plain), sending
what the control state queues, and three stages that overlap in threads: the network loop
(reassembles objects; with GRO a run of buffers is one strided numpy copy), the verifier (decrypts,
checks each object against the digest from an authenticated META message) and the writer (hands
verified objects to the sink in the order they complete). Memory is bounded by ``window_bytes``
whatever the image size: data for an object that does not fit is dropped and asked for again later.
"""

from __future__ import annotations

import hmac
import queue
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

from . import gcm, wire
from .control import ReceiverControl
from .mmsg import GRO_ROWS, MSG_TRUNC, batch_receiver, gro_batch_receiver
from .netio import disable_gro, gro_segment_size, mark, np, receiver_sockets, renew_membership, udp_receive_errors
from .reassembly import Reassembly


GRO_PROBE = 4096              # authentic single datagrams after which GRO that never coalesced is given up
GATHER = 0.001                # without GRO, once the socket is drained: let datagrams gather
VECTOR_FROM = 10              # from this many datagrams in a recvmmsg batch, `_rows` beats `_one`
BUFFER = 65536 + 4096
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
    dscp: int = 0                      # DSCP class of this receiver's reports (0: unmarked)
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


# A sink gets (index, bytes-like object); the object is only valid during the call.
Sink = Callable[[int, memoryview], None]


class Receiver:
    def __init__(self, config: ReceiverConfig, sink: Sink, finish: Optional[Callable[[bytes], bytes]] = None):
        """`finish(announced image id)` runs once every object was delivered and returns the digest
        this receiver reports (default: the session digest of what it verified)."""
        self.config = config
        self.sink = sink
        self.finish = finish
        self.control = ReceiverControl(config, self._deliver, time.monotonic())
        self.core: Optional[Reassembly] = None     # the session's data state, once joined
        self.data_sock, self.control_sock, self.gro = receiver_sockets(
            config.group, config.port, config.address, config.offload)
        mark(self.control_sock, config.dscp)
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
        self.rejected_objects = 0
        self.kernel_drops_base = udp_receive_errors()
        self.rejected: "queue.SimpleQueue[int]" = queue.SimpleQueue()
        self.to_verify: "queue.Queue" = queue.Queue()
        self.to_write: "queue.Queue" = queue.Queue(maxsize=1)
        self.error: Optional[BaseException] = None

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
                control = self.control
                if control.cipher is not None:
                    # the AES-GCM tag is the object's authenticator; opening (in place, in the
                    # reassembly buffer) checks it again
                    valid = hmac.compare_digest(bytes(data[-gcm.TAG_SIZE:]), digest)
                    if valid:
                        data = control.cipher.open(wire.object_nonce(index), data,
                                                   struct.pack(">Q", control.keys.session_id))
                        valid = data is not None
                else:
                    valid = hmac.compare_digest(control.mac.tag(wire.object_nonce(index), data), digest)
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

    # --- control: the sans-I/O control state (control.py) does the protocol --------------------
    def _control_datagram(self, datagram: bytes, source) -> None:
        self.control.datagram(datagram, source, time.monotonic())
        if self.core is None:
            self.core = self.control.core
        self._send_queued()

    def _send_queued(self) -> None:
        for datagram, destinations in self.control.take_outbox():
            for destination in destinations:
                try:
                    self.control_sock.sendto(datagram, destination)
                except (BlockingIOError, OSError):
                    pass   # control is retried by the next status round

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
            if self.core is not None:
                self.receive_calls += 1
                self.datagrams += count
                self._rows(batch.rows[:count], now)
            return
        data = 0
        for number, length in enumerate(lengths):
            if length < wire.DATAGRAM:
                self._control_datagram(batch.rows[number, :length].tobytes(), batch.source(number))
            elif self.core is not None and not flags[number] & MSG_TRUNC:
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
            if run[1] > run[0] and self.core is not None:
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
                    if self.core is not None:
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
        if datagrams and self.core is not None:
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
            control = self.control
            announced = wire.announced_image_id(control.image_id)
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
                digest = control.session_digest()
            self._report_done(digest)
        except BaseException as err:
            self._leave(err)
            raise
        finally:
            self.control_sock.close()
        core, control = self.core, self.control
        return ReceiveResult(
            objects=core.delivered, bytes=core.delivered_bytes, fragment_requests=core.fragment_requests,
            object_requests=core.object_requests, seconds=round(time.monotonic() - started, 3),
            digest=digest.hex(), announced_image_id=wire.announced_image_id(control.image_id).hex(),
            sender=control.sender[0], gro=self.gro, encrypted=control.encrypted,
            kernel_drops=self._kernel_drops(), window_drops=core.window_drops,
            rejected_objects=self.rejected_objects, datagrams=self.datagrams, rejoins=control.rejoins,
            gro_dropped=self.gro_dropped,
            receive_calls=self.receive_calls, mmsg=self.batch is not None, forged_datagrams=core.forged,
            evicted_objects=core.evicted)

    def _loop(self, started: float) -> None:
        next_control = 0.0
        iterations = 0
        control = self.control
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
                control.heard_something(now)
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
                    if self.core is not None:
                        self.receive_calls += 1
                        self.datagrams += 1
                        self._one(self.single_row, self.payload_view, now)
                        if self.gro and self.core.singles >= GRO_PROBE:
                            self._gro_coalesces()
                elif size >= wire.DATAGRAM and self.buffer[0] == wire.DATA:
                    if self.core is not None:
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
            tick = control.tick(now, self._kernel_drops)
            self._send_queued()
            if tick.renew:
                renew_membership(self.data_sock, self.config.group, self.config.address)
            if tick.complete:
                return

    def _kernel_drops(self) -> int:
        """Datagrams this namespace's kernel dropped for full socket buffers since the receive began."""
        return udp_receive_errors() - self.kernel_drops_base

    def _leave(self, err: BaseException) -> None:
        """Tell the sender this receiver gives up, and why, so that it reports the reason and
        nobody waits for a receiver that is gone."""
        self.control.leave(str(err) or type(err).__name__)
        self._send_queued()

    def _heartbeat(self, finished: threading.Event) -> None:
        while not finished.wait(0.5):
            self.control.heartbeat()
            self._send_queued()

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
        state = self.control
        control = self.control_sock
        give_up = time.monotonic() + self.config.timeout
        while time.monotonic() < give_up:
            if state.done_acked or state.ended is not None:
                return
            state.done(digest)
            self._send_queued()
            deadline = time.monotonic() + DONE_EVERY
            while time.monotonic() < deadline and not state.done_acked:
                try:
                    control.settimeout(max(0.001, deadline - time.monotonic()))
                    datagram, source = control.recvfrom(2048)
                except (socket.timeout, BlockingIOError):
                    break
                except OSError:
                    return
                self._control_datagram(datagram, source)
