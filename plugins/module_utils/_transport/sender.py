# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The sending side of a multicast session. Private to the collection: not a public API.

One loop, no per-slice barrier: it streams every object once (the first pass), and between GSO
batches serves what receivers ask for (NORM-style NACKs, RFC 5740): missing fragments first, then
META entries, then whole objects in index order (the carousel that lets a late or restarted
receiver finish). A request already served within the hold-off is not served again, so a repair
goes to the group once however many receivers lost it. New objects go out only while every pacing
receiver has window room for them (credit from its STATUS). A receiver silent for ``receiver_timeout``
is dropped; nobody ever waits for it. The rate has a cap and backs off when receivers report
datagrams their kernel had to drop, or take far fewer of the datagrams sent than random loss
explains (a slow path ahead of them: it is set to what they take).

The protocol's decisions are made by the sans-I/O core: ``membership`` (who takes part), ``flow``
(credit and rate), ``repair`` (what to resend next); this class is their driver (sockets,
GSO/mmsg, pacing, the prefetch worker, the object cache).
"""

from __future__ import annotations

import os
import select
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .._errors import TransportError
from . import gcm, wire
from .dmac import DatagramMac
from .flow import FlowGate, RateControl
from .repair import RepairScheduler
from .membership import Membership, Policy, ReceiverReport
from .mmsg import BATCH, batch_sender
from .netio import GSO_MAX_SEGMENTS, BufferPool, mark, np, report_socket, sender_socket
from .source import ObjectSource

ANNOUNCE_EVERY = 0.1
RATE_EVERY = 0.1
# Laid-out objects kept for repairs until every receiver holds them (``Membership.needed_from``),
# and at most this much: every byte of it is memory the process touches afresh (on a virtual
# machine, host pages faulted in: 16 cached objects whatever the receivers held cost 0.2 s of CPU
# and a peak RSS of 122-131 MiB). Receivers that lag ask for repairs of objects sent tens of MB
# before; an object evicted by then is read and laid out again.
CACHE_BYTES = 48 * 1024 * 1024
CACHE_MIN_OBJECTS = 2
CONTROL_PER_CALL = 1024        # receivers' datagrams read per socket between two sends
PREFETCH = 3
PREFETCH_WORKERS = 1           # two outran three receivers on two cores: drops, repairs, no gain
POOL_BYTES = 4 * 4 * 1024 * 1024   # buffers of evicted objects kept for the next ones


@dataclass
class SenderConfig:
    group: str
    port: int
    address: str                       # the sender's own address on the imaging interface
    session_key: bytes
    ttl: int = 1
    dscp: int = 0                      # DSCP class of every datagram the sender sends (0: unmarked)
    expected: Sequence[str] = ()       # receiver names or addresses
    min_receivers: int = 1
    max_wait: float = 60.0
    rate_cap: int = 0                  # bytes per second, 0 = none (adaptive only)
    start_rate: int = 500 * 1000 ** 2
    min_rate: int = 2 * 1000 ** 2
    receiver_timeout: float = 5.0
    progress_timeout: float = 30.0     # a receiver that reports but gets nowhere this long is dropped
    encrypt: bool = False
    offload: Optional[bool] = None
    progress: Optional[Callable[[dict], None]] = None   # called about once a second


@dataclass
class SendResult:
    receivers: List[ReceiverReport]
    objects: int
    bytes: int
    datagrams_sent: int
    repair_datagrams: int
    whole_object_resends: int
    seconds: float
    final_rate: int
    flow_holds: int                    # first-pass objects that waited for a receiver's window room
    gso: bool
    encrypted: bool
    digest: str
    session_id: str
    mmsg: bool = False                 # without GSO: sendmmsg sent many datagrams per call
    skipped_objects: int = 0           # first-pass objects every receiver held already (resumed), not sent
    loss_cuts: int = 0                 # rate cuts for a receiver's loss (a slow path ahead of it)
    loss_cuts_undone: int = 0          # of them, undone (the loss was a backlog the receiver worked off)

    def to_dict(self) -> dict:
        value = dict(self.__dict__)
        value["receivers"] = [r.to_dict() for r in self.receivers]
        return value


class _Prepared:
    """One object laid out as its datagrams: a (fragments x DATAGRAM) array, headers included."""

    __slots__ = ("index", "rows", "wire_length", "digest")

    def __init__(self, index: int, session_id: int, data: bytes, digest: bytes,
                 pool: Optional[BufferPool] = None, signer: Optional[DatagramMac] = None) -> None:
        """`data`: the object as it goes on the wire (ciphertext and tag if encrypted);
        `digest`: its authenticator (GMAC tag, or the AES-GCM tag), which META carries;
        `signer`: the session's datagram MAC (without one, the tags stay zero: tests only)."""
        count = wire.fragments_of(len(data))
        # every byte is set below, so a reused buffer carries nothing over
        rows = pool.take(count, POOL_BYTES) if pool else np.empty((count, wire.DATAGRAM), dtype=np.uint8)
        rows[:, :wire.DATA_HEADER.size] = np.frombuffer(wire.DATA_HEADER.pack(
            wire.DATA, wire.VERSION, 0, session_id, index, 0, count), dtype=np.uint8)
        rows[:, wire.DATA_HEADER.size:wire.DATA_HEADER_SIZE] = 0
        rows[:, 16:20] = np.arange(count, dtype=">u4").view(np.uint8).reshape(count, 4)
        flat = np.frombuffer(data, dtype=np.uint8)
        whole = len(data) // wire.PAYLOAD
        rows[:whole, wire.DATA_HEADER_SIZE:] = flat[:whole * wire.PAYLOAD].reshape(whole, wire.PAYLOAD)
        tail = flat[whole * wire.PAYLOAD:]
        if whole < count:             # the last fragment: its bytes, then zero padding
            rows[whole, wire.DATA_HEADER_SIZE:wire.DATA_HEADER_SIZE + len(tail)] = tail
            rows[whole, wire.DATA_HEADER_SIZE + len(tail):] = 0
        if signer is not None:
            signer.sign(rows, index)
        self.index = index
        self.rows = rows
        self.wire_length = len(data)
        self.digest = digest


class Sender:
    def __init__(self, config: SenderConfig, source: ObjectSource):
        self.config = config
        self.source = source
        self.session_id = int.from_bytes(os.urandom(8), "big") or 1
        self.keys = wire.SessionKeys.derive(config.session_key, self.session_id)
        self.cipher = gcm.ObjectCipher(self.keys.enc) if config.encrypt else None
        self.mac = gcm.ObjectMac(self.keys.auth)
        self.signer = DatagramMac(self.keys.data, wire.DATAGRAM)
        self.sock, self.gso = sender_socket(config.address, config.port, config.ttl, config.offload)
        mark(self.sock, config.dscp)
        self.sock.setblocking(False)
        try:
            self.reports = report_socket(config.group, config.port, config.address)
        except TransportError:
            self.sock.close()
            raise
        self.destination = (config.group, config.port)
        # which of the two sockets has a receiver's message waiting, in one system call: between
        # two GSO sends a failing recvfrom on each cost two calls and two exceptions
        self.control_poll = select.poll()
        for sock in (self.sock, self.reports):
            self.control_poll.register(sock, select.POLLIN)
        # without GSO, sendmmsg where libc has it; else one sendto per datagram (the last resort)
        self.batch = batch_sender(self.sock, self.destination)
        self.seq = 0
        self.members = Membership(Policy(
            where=f"{config.group}:{config.port}", expected=config.expected, min_receivers=config.min_receivers,
            max_wait=config.max_wait, receiver_timeout=config.receiver_timeout,
            progress_timeout=config.progress_timeout))
        self.peers = self.members.peers
        self.meta: Dict[int, Tuple[int, bytes]] = {}
        self.cache: "OrderedDict[int, _Prepared]" = OrderedDict()
        self.pool = BufferPool(wire.DATAGRAM)
        self.repairs = RepairScheduler()
        self.next_index = 0                # first pass position
        self.skipped = 0                   # first-pass objects every receiver held already
        self.rates = RateControl(config.rate_cap, config.start_rate, config.min_rate)
        self.rate = self.rates.rate
        self.flow = FlowGate()
        self.pace_time = 0.0
        self.datagrams = 0
        self.repair_datagrams = 0
        self.resends = 0
        self.bytes = 0
        self._prefetched: Dict[int, _Prepared] = {}
        self._prefetch_claimed = 0         # next first-pass index a prefetch worker takes on
        self._prefetch_taken = 0           # next first-pass index the loop sends
        self._prefetch_ready = threading.Condition()
        # a worker that finished an object wakes the loop at once instead of at its next timeout
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._prefetch_error: Optional[BaseException] = None
        self._stop = False

    # --- objects -------------------------------------------------------------------------------
    def _prepare(self, index: int) -> _Prepared:
        data = self.source.read(index)
        if self.cipher is not None:
            # the AES-GCM tag authenticates the ciphertext and is the object's digest; the sealed
            # bytes are laid out into rows below, before this thread seals another object
            data = self.cipher.seal(wire.object_nonce(index), data, struct.pack(">Q", self.session_id))
            digest = bytes(data[-gcm.TAG_SIZE:])
        else:
            digest = self.mac.tag(wire.object_nonce(index), data)
        known = self.meta.get(index)
        if known is not None and known[1] != digest:
            # never sent: a second tag under the same nonce stays in this process
            raise TransportError(f"Object {index} changed while the session was serving it.")
        return _Prepared(index, self.session_id, data, digest, self.pool, self.signer)

    def _remember(self, prepared: _Prepared) -> None:
        self.meta[prepared.index] = (prepared.wire_length, prepared.digest)
        self.cache[prepared.index] = prepared
        self.cache.move_to_end(prepared.index)
        # sendto() copied their bytes into the kernel: nothing refers to an evicted object
        needed_from = self.members.needed_from()
        for held in [index for index in self.cache if index < needed_from and index != prepared.index]:
            self._evict(held)
        while (len(self.cache) > CACHE_MIN_OBJECTS
               and sum(cached.rows.nbytes for cached in self.cache.values()) > CACHE_BYTES):
            self._evict(next(iter(self.cache)))

    def _evict(self, index: int) -> None:
        self.pool.give(self.cache.pop(index).rows)

    def _object(self, index: int) -> _Prepared:
        prepared = self.cache.get(index)
        if prepared is None:
            prepared = self._prepare(index)
            self._remember(prepared)
        else:
            self.cache.move_to_end(index)
        return prepared

    def _prefetch(self) -> None:
        # Reading, hashing, encrypting and laying out the next objects overlaps with sending;
        # each worker claims the next index, and the loop takes them back in index order.
        try:
            while not self._stop:
                with self._prefetch_ready:
                    while self._prefetch_claimed - self._prefetch_taken >= PREFETCH and not self._stop:
                        self._prefetch_ready.wait(0.1)
                    index = self._prefetch_claimed
                    final = self.source.final_count()
                    if final is not None and index >= final:
                        return
                    ready = index < self.source.available()
                    if ready:
                        self._prefetch_claimed += 1
                if not ready:
                    self.source.wait(0.05)
                    continue
                prepared = self._prepare(index)
                with self._prefetch_ready:
                    if index < self._prefetch_taken:
                        self.pool.give(prepared.rows)      # skipped meanwhile: every receiver has it
                    else:
                        self._prefetched[index] = prepared
                    self._prefetch_ready.notify_all()
                self._wake()
        except BaseException as err:
            self._prefetch_error = err
            with self._prefetch_ready:
                self._prefetch_ready.notify_all()
            self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_write, b"!")
        except (BlockingIOError, OSError):
            pass           # already signalled (or shutting down)

    def _idle(self, timeout: float) -> None:
        """Wait for a receiver's message or a prepared object, at most `timeout` seconds."""
        readable = select.select([self.sock, self.reports, self._wake_read], [], [], timeout)[0]
        if self._wake_read in readable:
            try:
                os.read(self._wake_read, 4096)
            except BlockingIOError:
                pass

    def _room_for_next(self) -> bool:
        """Whether every pacing receiver has window room for the next first-pass object on top of
        everything sent to it that it has not started yet (credit flow control: data a receiver
        has no room for would be dropped there and sent again to everyone)."""
        with self._prefetch_ready:
            prepared = self._prefetched.get(self._prefetch_taken)
        if prepared is None:
            return True                  # nothing to decide yet
        entry = self.meta.get
        return self.flow.room(self.peers.values(), prepared.index, prepared.rows.shape[0],
                              lambda sent: (entry(sent) or (None,))[0], time.monotonic())

    def _skip_held(self, final: Optional[int]) -> None:
        """Move the first pass past the objects every receiver already holds (resumed receives of
        this image): they are neither read nor sent. Only when the source names its image (what
        receivers report as their digest); a plain session's digest needs every object's META."""
        if self.next_index == 0 or not self.source.image_id():
            return
        below = self.members.held_by_all()
        if final is not None:
            below = min(below, final)
        if below <= self.next_index:
            return
        with self._prefetch_ready:
            for index in range(self._prefetch_taken, below):
                prepared = self._prefetched.pop(index, None)
                if prepared is not None:
                    self.pool.give(prepared.rows)
            self._prefetch_taken = max(self._prefetch_taken, below)
            self._prefetch_claimed = max(self._prefetch_claimed, below)
            self._prefetch_ready.notify_all()
        self.skipped += below - self.next_index
        self.next_index = below
        self._announce(final)

    def _next_first_pass(self) -> Optional[_Prepared]:
        with self._prefetch_ready:
            prepared = self._prefetched.pop(self._prefetch_taken, None)
            if prepared is None:
                return None
            self._prefetch_taken += 1
            self._prefetch_ready.notify_all()
        self._remember(prepared)
        return prepared

    # --- sending -------------------------------------------------------------------------------
    def _control(self, kind: int, body: bytes, to: Optional[Tuple[str, int]] = None) -> None:
        self.seq += 1
        datagram = wire.pack_control(self.keys, kind, self.seq, body)
        try:
            self.sock.sendto(datagram, to or self.destination)
        except BlockingIOError:
            select.select([], [self.sock], [], 0.05)
            self.sock.sendto(datagram, to or self.destination)

    def _announce(self, final: Optional[int]) -> None:
        image_id = self.source.image_id() if final is not None else b""
        self._control(wire.ANNOUNCE, wire.ANNOUNCE_BODY.pack(
            final if final is not None else self.source.available(), self.next_index,
            1 if final is not None else 0, 1 if self.cipher else 0, wire.PAYLOAD, 0,
            wire.image_id_field(image_id)))

    def _send_meta(self, indexes: List[int]) -> None:
        for start in range(0, len(indexes), wire.META_PER_MESSAGE):
            batch = indexes[start:start + wire.META_PER_MESSAGE]
            # META entries are consecutive runs; split a batch at every gap.
            run: List[int] = []
            for index in batch + [-1]:
                if run and index != run[-1] + 1:
                    body = wire.META_HEAD.pack(run[0], len(run)) + b"".join(
                        wire.META_ENTRY.pack(*self.meta[i]) for i in run)
                    self._control(wire.META, body)
                    run = []
                if index >= 0:
                    run.append(index)

    def _pace(self, size: int) -> None:
        now = time.monotonic()
        if self.pace_time < now - 0.005:
            self.pace_time = now - 0.005       # a little burst credit, never a backlog of it
        self.pace_time += size / self.rate
        if self.pace_time > now + 0.0005:
            time.sleep(self.pace_time - now)

    def _send_rows(self, rows: np.ndarray) -> None:
        size = rows.shape[0] * wire.DATAGRAM
        self._pace(size)
        sent = 0                           # rows gone; a full socket buffer resumes after them
        while sent < rows.shape[0]:
            try:
                if self.gso:
                    self.sock.sendto(rows, self.destination)
                    sent = rows.shape[0]
                elif self.batch is not None:
                    sent += self.batch.send(rows[sent:])
                else:
                    for row in rows[sent:]:
                        self.sock.sendto(row, self.destination)
                        sent += 1
            except BlockingIOError:
                select.select([], [self.sock], [], 0.05)
            except OSError as err:
                if self.gso and err.errno in (5, 22, 95):   # EIO/EINVAL/EOPNOTSUPP: no GSO here
                    self.gso = False
                    continue
                raise TransportError(f"Sending to {self.config.group}:{self.config.port} failed ({err.strerror}).") from None
        self.datagrams += rows.shape[0]
        self.bytes += size

    def _send_fragments(self, prepared: _Prepared, first: int, end: int, repair: bool) -> None:
        step = GSO_MAX_SEGMENTS if self.gso else BATCH if self.batch is not None else 16
        count = prepared.rows.shape[0]
        for start in range(first, end, step):
            stop = min(end, start + step)
            self._send_rows(prepared.rows[start:stop])
            self.repairs.sent(prepared.index, count, start, stop, time.monotonic(), repair)
            if repair:
                self.repair_datagrams += stop - start
            self._receive_control()

    # --- control from receivers -----------------------------------------------------------------
    def _receive_control(self, limit: int = CONTROL_PER_CALL) -> None:
        """Receivers' messages waiting on both sockets, up to `limit` per socket. A host flooding
        the sender with forged control makes the queue long: each costs a recvfrom and an HMAC
        (about 5 us), so the loop reads many per call, or genuine reports would wait behind forged
        ones for seconds and their receivers be taken for silent."""
        waiting = [fd for fd, _events in self.control_poll.poll(0)]
        for sock in (self.sock, self.reports):
            if sock.fileno() not in waiting:
                continue
            for _attempt in range(limit):
                try:
                    datagram, address = sock.recvfrom(2048)
                except (BlockingIOError, InterruptedError):
                    break
                opened = wire.open_control(self.keys, datagram)
                if opened is None:
                    continue
                kind, _flags, seq, body = opened
                if kind < wire.JOIN:
                    continue   # our own kind of message, sent back at us: not a receiver's
                now = time.monotonic()
                replies, requests = self.members.message(kind, seq, body, address, now, self.next_index,
                                                         data_sent=self.datagrams)
                for reply, reply_body, destination in replies:
                    self._control(reply, reply_body, to=destination)
                for what, index, first, amount in requests:
                    self._request(what, index, first, amount, now)
        if self.members.fresh:
            # a receiver's loss measured: a slow path is answered at once, not at the next
            # period (at the start rate, 100 ms is most of a small image's first pass)
            self.rate = self.rates.measured(self.members.measured(), time.monotonic())

    def _request(self, what: int, index: int, first: int, amount: int, now: float) -> None:
        meta = self.meta
        self.repairs.request(what, index, first, amount, now, self.next_index, self.source.available(),
                             lambda i: wire.fragments_of(meta[i][0]) if i in meta else None)

    # --- the loop --------------------------------------------------------------------------------
    def _adjust_rate(self, now: float) -> None:
        self.rate = self.rates.update(now, self.members.congested())

    def _finished(self, final: Optional[int], elapsed: float) -> bool:
        if final is None or self.next_index < final:
            return False
        return self.members.finished(elapsed)

    def run(self) -> SendResult:
        started_at = time.monotonic()
        sending = False
        workers = [threading.Thread(target=self._prefetch, daemon=True, name=f"fleetcast-prefetch-{number}")
                   for number in range(PREFETCH_WORKERS)]
        for worker in workers:
            worker.start()
        last_announce = last_rate = last_progress = 0.0
        try:
            while True:
                now = time.monotonic()
                elapsed = now - started_at
                final = self.source.final_count()
                if self._prefetch_error is not None:
                    raise self._prefetch_error
                if now - last_announce >= ANNOUNCE_EVERY:
                    self._announce(final)
                    last_announce = now
                    self.members.tick(now, self.next_index)
                self._receive_control()
                if not sending:
                    sending = self.members.ready(elapsed)
                    if not sending:
                        select.select([self.sock, self.reports], [], [], 0.02)
                        continue
                if now - last_rate >= RATE_EVERY:
                    self._adjust_rate(now)
                    last_rate = now
                if self.config.progress and now - last_progress >= 1.0:
                    self.config.progress(self.progress(final))
                    last_progress = now
                if self._finished(final, elapsed):
                    # a DONE (or a report that revives a dropped receiver) may still be queued
                    # behind other datagrams: read everything waiting, then decide again
                    self._receive_control(limit=1 << 20)
                    if self._finished(final, elapsed):
                        break
                if not self._serve_one(final):
                    self._idle(0.005)
            finished = self.members.done_addresses()
            for _repeat in range(3):
                self._control(wire.END, wire.END_BODY.pack(wire.END_COMPLETE))
                for address in finished:
                    self._control(wire.END, wire.END_BODY.pack(wire.END_COMPLETE), to=address)
                time.sleep(0.02)
        except BaseException:
            try:
                self._control(wire.END, wire.END_BODY.pack(wire.END_ABORTED))
            except OSError:
                pass
            raise
        finally:
            self._stop = True
            with self._prefetch_ready:
                self._prefetch_ready.notify_all()
            self.sock.close()
            self.reports.close()
            for worker in workers:
                worker.join(5.0)
            if not any(worker.is_alive() for worker in workers):
                # never while a worker may still write: the descriptor number could be reused
                os.close(self._wake_read)
                os.close(self._wake_write)
        return self._result(time.monotonic() - started_at, final or 0)

    def progress(self, final: Optional[int]) -> dict:
        """Where the session stands, per receiver (the shape the progress action plugin reads)."""
        total = sum(self.meta[i][0] for i in range(final) if i in self.meta) if final is not None else 0
        receivers = {peer.name: {"bytes_done": peer.bytes_done, "state": peer.state}
                     for peer in self.peers.values()}
        active = [p.bytes_done for p in self.peers.values() if p.state in ("active", "done")]
        return {"bytes_done": min(active) if active else 0, "bytes_total": total,
                "message": f"{len(self.peers)} receiver(s), {self.next_index} object(s) sent once",
                "receivers": receivers}

    def _serve_one(self, final: Optional[int]) -> bool:
        """Send the most urgent thing there is; False if there was nothing to send."""
        job = self.repairs.next(time.monotonic())
        if job is not None:
            if job[0] == "meta":
                self._send_meta(job[1])
            elif job[0] == "fragments":
                self._send_fragments(self._object(job[1]), job[2], job[3], repair=True)
            else:                       # a whole object: the carousel
                prepared = self._object(job[1])
                self._send_meta([job[1]])
                self.resends += 1
                self._send_fragments(prepared, 0, prepared.rows.shape[0], repair=True)
            return True
        if final is None or self.next_index < final:
            self._skip_held(final)
            if final is not None and self.next_index >= final:
                return False
            if not self._room_for_next():
                return False
            prepared = self._next_first_pass()
            if prepared is None:
                return False
            self._send_meta([prepared.index])
            self.members.first_pass(prepared.index, self.datagrams, prepared.rows.shape[0])
            self._send_fragments(prepared, 0, prepared.rows.shape[0], repair=False)
            self.next_index = prepared.index + 1
            # receivers learn at once that the object went out whole: what it misses was lost
            # (otherwise they would wait for the next object or announcement)
            self._announce(final)
            return True
        return False

    def _result(self, seconds: float, count: int) -> SendResult:
        entries = [self.meta[i] for i in range(count) if i in self.meta]
        plain = [(length - (gcm.TAG_SIZE if self.cipher else 0), digest) for length, digest in entries]
        digest = self.source.image_id() or wire.transport_digest(plain)
        reports = self.members.reports(digest, time.monotonic() - seconds)
        return SendResult(receivers=reports, objects=count, bytes=self.bytes,
                          datagrams_sent=self.datagrams, repair_datagrams=self.repair_datagrams,
                          whole_object_resends=self.resends, seconds=round(seconds, 3),
                          final_rate=self.rate, flow_holds=self.flow.holds, gso=self.gso, encrypted=self.cipher is not None,
                          digest=digest.hex(), session_id=f"{self.session_id:016x}",
                          mmsg=self.batch is not None and not self.gso, skipped_objects=self.skipped,
                          loss_cuts=self.rates.loss_cuts, loss_cuts_undone=self.rates.undone)
