# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reassembly and loss repair on the receiving side: the second piece of the transport's sans-I/O
core. Private to the collection: not a public API.

``Reassembly`` is the receiver's data state and nothing else: which objects it has, holds, misses
and has asked for; the window of objects being reassembled (memory bounded by ``window_bytes``);
the sender's position from its announcements; the repair requests that follow. Its inputs are
data datagrams (a GRO buffer or ``recvmmsg`` batch as rows, or one datagram), the authenticated
ANNOUNCE and META contents, verification results and the clock (every call takes ``now``); its
outputs are complete objects (handed to ``deliver``) and the requests of the next STATUS. It opens
no socket and reads no clock, so unit tests feed it datagrams laid out by the sender's own code
and a fake time. The receiver (``receiver.py``) is the driver: sockets, GRO/mmsg, control
messages, the verify and write threads.

Nothing unauthenticated moves its state: every data datagram's tag (``dmac``) is checked, after
cheap bounds, before any field of it is used.
"""

from __future__ import annotations

import struct
import threading
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from . import wire
from .dmac import DatagramMac
from .netio import NUMPY_IMPORT_ERROR, BufferPool, np

NACK_AFTER = 0.015            # an object silent this long with holes gets its holes asked for
NACK_RETRY = 0.05
STATUS_DATAGRAMS = 4          # at most this many STATUS datagrams' worth of requests per round
OBJECT_REQUEST_HOLDOFF = 0.3
WINDOW_UPDATE = 8 * 1024 * 1024   # room last reported below this: report freed room at once
MAX_FRAGMENTS = (64 * 1024 * 1024) // wire.PAYLOAD + 1     # refuse objects over 64 MiB
AHEAD = 4096                  # objects past the announced count a datagram may name (a live source grows)
STALE_PARTIAL = 2.0           # an object with holes that heard nothing this long yields its room

# the data header as numpy fields: rows of a GRO buffer viewed through it need no copies
HEADER_ROW = None if NUMPY_IMPORT_ERROR else np.dtype({
    "names": ["prefix", "session", "object", "fragment", "count"],
    "formats": [">u4", ">u8", ">u4", ">u4", ">u4"],
    "offsets": [0, 4, 12, 16, 20], "itemsize": wire.DATAGRAM})

# the data header as (type/version/flags, session id, object, fragment, count) in one unpack
FALLBACK_HEADER = struct.Struct(">IQIII")

# the data header as six native 32-bit words; word 4 is the fragment number, whose big-endian
# bytes for every possible fragment are precomputed as native words
HEADER_WORDS = wire.DATA_HEADER.size // 4     # the fields, not the tag (it differs per row)
FRAGMENT_WORD = 4

FRAGMENT_WORDS = None if NUMPY_IMPORT_ERROR else np.arange(MAX_FRAGMENTS + 1, dtype=">u4").view(np.uint32)

# object states
MISSING, PENDING, DELIVERED = 0, 1, 2


class Partial:
    """One object being reassembled: its payload rows and which of them arrived."""

    __slots__ = ("rows", "got", "remaining", "count", "last_seen", "complete", "newest", "asked")

    def __init__(self, rows: "np.ndarray", now: float, newest: bool):
        count = rows.shape[0]
        self.rows = rows
        self.got = np.zeros(count, dtype=bool)
        self.remaining = count
        self.count = count
        self.last_seen = now
        self.complete = False
        self.newest = newest             # started as the newest object: sent in the first pass
        self.asked = False               # its holes were asked for at least once


# deliver(index, partial, wire length, digest): a complete object, to verify against its META tag
Deliver = Callable[[int, Partial, int, bytes], None]


class Reassembly:
    def __init__(self, session_id: int, datagram_key: bytes, window_bytes: int, deliver: Deliver,
                 layout_first: bool = False) -> None:
        self.session_id = session_id
        self.prefix_head = struct.unpack(">I", struct.pack(">BBH", wire.DATA, wire.VERSION, 0))[0]
        self.dmac = DatagramMac(datagram_key, wire.DATAGRAM)
        self.window_bytes = window_bytes
        self.deliver = deliver
        self.layout_first = layout_first     # accept other objects only once object 0 was delivered
        self.pool = BufferPool(wire.PAYLOAD)
        self.final_count: Optional[int] = None
        self.known = 0                     # objects the sender announced
        self.sent_through = 0              # objects it sent once (its first-pass position)
        self.state = bytearray()           # per object: MISSING, PENDING (being verified/written), DELIVERED
        self.meta: Dict[int, Tuple[int, bytes]] = {}
        self.window: Dict[int, Partial] = {}
        self.inflight = 0                  # bytes held by the window and the verify/write stages
        self.inflight_lock = threading.Lock()
        self.requested: Dict[int, float] = {}
        self.request_backoff: Dict[int, float] = {}   # objects asked for whole that never came: hold-off
        self.recent: Tuple[int, int, Optional[Partial]] = (-1, 0, None)   # the object last filled
        self.lowest_missing = 0
        self.frontier = 0                  # one past the highest object started (the sender's credit base)
        self.delivered = 0                 # objects the sink took (counted by the writer thread)
        self.delivered_bytes = 0
        self.status_due = False            # report at once (lost fragments, or room the sender waits for)
        self.reported_free = window_bytes
        self.last_data = 0.0               # when the last authentic data datagram came
        self.sent_through_at_data = 0      # the sender's first-pass position then
        self.data_seen = False             # any authentic data datagram at all
        self.authentic = 0                 # authentic data datagrams taken (reported: the sender's sign of life)
        self.probe_next = 0.0              # until then: when the next whole object may be asked for
        self.singles = 0                   # authentic data datagrams that arrived one per call
        self.coalesced = 0                 # buffers that held several authentic datagrams
        self.forged = 0                    # data datagrams of this session whose tag was wrong
        self.evicted = 0                   # objects with holes that yielded their room, fetched again later
        self.fragment_requests = 0
        self.object_requests = 0
        self.window_drops = 0

    # --- inputs from control messages -------------------------------------------------------------
    def announce(self, known: int, sent_through: int, final: bool) -> None:
        """An authenticated ANNOUNCE: objects known, objects sent once, whether that count is final."""
        self.known = max(self.known, known)
        self.sent_through = max(self.sent_through, min(sent_through, known))
        if self._holes_lost(self.frontier - 1):
            self.status_due = True       # sent whole, still with holes: they were lost
        self._grow(self.known)
        if final:
            self.final_count = known

    def meta_entries(self, first: int, entries: Sequence[Tuple[int, bytes]]) -> None:
        """Authenticated META entries (wire length, tag) of objects first, first + 1, ..."""
        for index, entry in enumerate(entries, first):
            if index not in self.meta:
                self.meta[index] = entry
            partial = self.window.get(index)
            if partial is not None and partial.complete:
                self._complete(index, partial)

    # --- inputs from the verify and write stages (other threads) ----------------------------------
    def delivered_object(self, nbytes: int) -> None:
        self.delivered_bytes += nbytes
        self.delivered += 1

    def skip(self, indexes: Sequence[int]) -> None:
        """Objects this receiver already has, verified (a resumed output): never asked for, never
        reassembled, counted as delivered."""
        for index in sorted(set(indexes)):
            self._grow(index + 1)
            if self.state[index] == MISSING:
                self.state[index] = DELIVERED
                self.delivered += 1

    def rejected(self, index: int) -> None:
        """Object `index` failed its tag: missing again, asked for again."""
        self.state[index] = MISSING
        self.requested.pop(index, None)
        self.lowest_missing = min(self.lowest_missing, index)

    def lacking(self) -> bool:
        """Whether an object the sender has sent once is still missing here."""
        while self.lowest_missing < len(self.state) and self.state[self.lowest_missing] != MISSING:
            self.lowest_missing += 1
        return self.lowest_missing < self.sent_through

    def room(self) -> int:
        with self.inflight_lock:
            return self.window_bytes - self.inflight

    # --- outputs: the next STATUS ----------------------------------------------------------------
    def requests(self, now: float) -> Tuple[List[bytes], int]:
        """(packed requests, window bytes to offer the sender) for the next STATUS round."""
        requests: List[bytes] = []
        # several STATUS datagrams per round if need be: scattered single losses make many runs
        budget = wire.REQUESTS_PER_STATUS * STATUS_DATAGRAMS
        for index, partial in list(self.window.items()):
            if len(requests) >= budget:
                break
            if partial.complete:
                requests.append(wire.REQUEST.pack(wire.REQ_META, index, 0, 1))
                continue
            if partial.newest and not partial.asked:
                if not self._holes_lost(index):
                    continue             # a first-pass object still on its way
            elif now - partial.last_seen < NACK_AFTER:
                continue
            partial.asked = True
            missing = np.flatnonzero(~partial.got)
            breaks = np.flatnonzero(np.diff(missing) != 1) + 1
            for run in np.split(missing, breaks)[:budget - len(requests)]:
                requests.append(wire.REQUEST.pack(wire.REQ_FRAGMENTS, index, int(run[0]), len(run)))
                self.fragment_requests += len(run)
            partial.last_seen = now + NACK_RETRY    # ask again only if the repair does not come
        # Whole objects the sender has passed that we never started: as many as the window holds.
        room = self.room()
        average = 4 * 1024 * 1024
        if self.meta:
            average = max(wire.PAYLOAD, sum(entry[0] for entry in list(self.meta.values())[-16:]) // min(16, len(self.meta)))
        allowance = max(0, room // average - len(self.window))
        if not self.data_seen:
            # data may not reach us at all: one object at a time, asked for later and later
            allowance = min(allowance, 1) if now >= self.probe_next else 0
        while self.lowest_missing < len(self.state) and self.state[self.lowest_missing] != MISSING:
            self.lowest_missing += 1
        index = self.lowest_missing
        limit = min(self.sent_through, len(self.state))
        if self.layout_first and not self.delivered:
            limit = min(limit, 1)
        run_start, run_length = -1, 0
        while index < limit and allowance > 0 and len(requests) < budget:
            holdoff = self.request_backoff.get(index, OBJECT_REQUEST_HOLDOFF)
            wanted = (self.state[index] == MISSING and index not in self.window
                      and now - self.requested.get(index, 0.0) > holdoff)
            if wanted:
                self.requested[index] = now
                # asked again and again, never a datagram of it: ask less and less often
                self.request_backoff[index] = min(4.0, holdoff * 2)
                if not self.data_seen:
                    self.probe_next = now + self.request_backoff[index]
                allowance -= 1
                self.object_requests += 1
                if run_start >= 0 and run_start + run_length == index:
                    run_length += 1
                else:
                    if run_start >= 0:
                        requests.append(wire.REQUEST.pack(wire.REQ_OBJECTS, run_start, 0, run_length))
                    run_start, run_length = index, 1
            index += 1
        if run_start >= 0:
            requests.append(wire.REQUEST.pack(wire.REQ_OBJECTS, run_start, 0, run_length))
        # no room while the sink prepares the disks for the layout: anything else would be dropped
        credit = 0 if self.layout_first and not self.delivered else room
        return requests, credit

    # --- inputs: data ----------------------------------------------------------------------------
    def rows(self, rows: np.ndarray, now: float) -> None:
        """Datagrams of one GRO buffer (or one batch), as rows: check, split by object, one copy per
        object."""
        size = rows.shape[0]
        head, session_id, index, first, count = FALLBACK_HEADER.unpack_from(rows[0])
        if (head == self.prefix_head and session_id == self.session_id
                and first + size <= count <= MAX_FRAGMENTS and index < self.known + AHEAD):
            # The usual buffer: consecutive fragments of one object. Checked exactly, in one
            # comparison of every row's 24-byte header (as six native words) against the headers
            # those fragments must have: about 7 us, where field-by-field checks cost 25-30 us.
            words = rows.view(np.uint32)[:, :HEADER_WORDS]
            expected = np.repeat(words[:1], size, axis=0)
            expected[:, FRAGMENT_WORD] = FRAGMENT_WORDS[first:first + size]
            if (words == expected).all():
                # and every row's own tag: nothing forged moves any state past this line
                valid = self.dmac.check_run(rows, index, first)
                if valid.all():
                    if size > 1:
                        self.coalesced += 1
                    self._object_rows(index, count, first, size, rows, now)
                    return
                self.forged += size - int(np.count_nonzero(valid))
                rows = rows[valid]
                if not len(rows):
                    return
        heads = rows.view(HEADER_ROW)[:, 0]       # strided views of the header fields, no copies
        keep = ((heads["prefix"] == self.prefix_head) & (heads["session"] == self.session_id)
                & (heads["fragment"] < heads["count"]) & (heads["count"] <= MAX_FRAGMENTS)
                & (heads["object"] < self.known + AHEAD))     # cheap bounds before the tag check
        if not keep.all():
            rows = rows[keep]
            if not len(rows):
                return
            heads = rows.view(HEADER_ROW)[:, 0]
        valid = self.dmac.check(rows, heads["object"], heads["fragment"])
        if not valid.all():
            self.forged += len(valid) - int(np.count_nonzero(valid))
            rows = rows[valid]
            if not len(rows):
                return
            heads = rows.view(HEADER_ROW)[:, 0]
        if len(rows) > 1:
            self.coalesced += 1
        objects = heads["object"]
        starts = np.flatnonzero(np.diff(objects)) + 1
        bounds = [0] + starts.tolist() + [len(objects)]
        for begin, end in zip(bounds[:-1], bounds[1:]):
            fragments, counts = heads["fragment"][begin:end], heads["count"][begin:end]
            count = int(counts[0])
            first, size = int(fragments[0]), end - begin
            if (counts == count).all() and first + size <= count and (
                    size == 1 or (np.diff(fragments) == 1).all()):
                self._object_rows(int(objects[begin]), count, first, size, rows[begin:end], now)
            else:
                self._object_rows(int(objects[begin]), count, first, size, rows[begin:end], now,
                                  fragments=fragments, counts=counts)

    def one(self, row, payload, now: float) -> None:
        """One datagram (`row`: it as a 1 x DATAGRAM array) without GRO: as little Python per
        datagram as can be (it is the fallback path's cost); consecutive datagrams of one object
        skip the window lookup."""
        head, session_id, index, fragment, count = FALLBACK_HEADER.unpack_from(row[0])
        if (head != self.prefix_head or session_id != self.session_id or fragment >= count
                or count > MAX_FRAGMENTS or index >= self.known + AHEAD):
            return
        if not self.dmac.check_run(row, index, fragment)[0]:
            self.forged += 1
            return
        self.singles += 1
        self.authentic += 1
        self.last_data, self.sent_through_at_data, self.data_seen = now, self.sent_through, True
        recent_index, recent_count, partial = self.recent
        if index != recent_index or count != recent_count or partial is None or partial.complete:
            partial = self._partial(index, count, now)
            self.recent = (index, count, partial)
            if partial is None:
                if index < len(self.state) and self.state[index] == MISSING:
                    self.window_drops += 1
                return
        if fragment >= count:
            return
        partial.rows[fragment] = payload
        partial.last_seen = now
        if not partial.got[fragment]:
            partial.got[fragment] = True
            partial.remaining -= 1
            if partial.remaining == 0:
                self._complete(index, partial)

    def _object_rows(self, index: int, count: int, first: int, size: int, rows, now: float,
                     fragments=None, counts=None) -> None:
        """Rows of one object: fragments first .. first+size-1, or (not consecutive) `fragments`."""
        self.last_data, self.sent_through_at_data, self.data_seen = now, self.sent_through, True
        self.authentic += size if fragments is None else len(fragments)
        partial = self._partial(index, count, now)
        if partial is None:
            if index < len(self.state) and self.state[index] == MISSING:
                self.window_drops += size
            return
        if fragments is None:
            # one strided copy
            seen = partial.got[first:first + size]
            fresh = size - int(np.count_nonzero(seen))
            partial.rows[first:first + size] = rows[:, wire.DATA_HEADER_SIZE:]
            seen[:] = True
        else:
            good = (fragments < count) & (counts == count)
            fragments, rows = fragments[good], rows[good]
            fresh = int(np.count_nonzero(~partial.got[fragments]))
            partial.rows[fragments] = rows[:, wire.DATA_HEADER_SIZE:]
            partial.got[fragments] = True
        partial.last_seen = now
        partial.remaining -= fresh
        if partial.remaining <= 0:
            partial.remaining = partial.count - int(np.count_nonzero(partial.got))
            if partial.remaining == 0:
                self._complete(index, partial)

    def _partial(self, index: int, count: int, now: float) -> Optional[Partial]:
        if index >= len(self.state):
            if self.final_count is not None or index >= self.known + AHEAD:
                return None
            self._grow(index + 1)
        if self.state[index] != MISSING:
            return None
        if self.layout_first and index and not self.delivered:
            return None                  # the sink needs the layout first; this comes again
        partial = self.window.get(index)
        if partial is not None:
            return partial if partial.count == count else None
        meta = self.meta.get(index)
        if count > MAX_FRAGMENTS or (meta is not None and wire.fragments_of(meta[0]) != count):
            return None
        size = count * wire.PAYLOAD
        with self.inflight_lock:
            short = self.inflight + size > self.window_bytes
        if short and not self._evict_stale(now):
            return None
        with self.inflight_lock:
            if self.inflight + size > self.window_bytes:
                return None
            self.inflight += size
            room = self.window_bytes - self.inflight
        self.request_backoff.pop(index, None)
        newest = index >= self.frontier
        partial = Partial(self.pool.take(count, room), now, newest)
        self.window[index] = partial
        if newest:
            previous = self.frontier - 1
            self.frontier = index + 1
            if self._holes_lost(previous):
                self.status_due = True   # a later object started: its holes were lost
        return partial

    def _complete(self, index: int, partial: Partial) -> None:
        partial.complete = True
        meta = self.meta.get(index)
        if meta is None:
            return                       # asked for in the next status
        wire_length, digest = meta
        del self.window[index]
        if wire.fragments_of(wire_length) != partial.count:
            # forged fragments claimed another size: start this object over
            self.release(partial.rows)
            return
        self.state[index] = PENDING
        self.deliver(index, partial, wire_length, digest)

    def _evict_stale(self, now: float) -> bool:
        """Let go of the object with holes that has heard nothing for longest, if that is over
        STALE_PARTIAL: its repairs are not coming (the sender dropped us for a while, or moved on)
        and its room is wanted. It is asked for again later, whole. True if one was let go."""
        stale = [(partial.last_seen, index) for index, partial in self.window.items()
                 if not partial.complete and now - partial.last_seen > STALE_PARTIAL]
        if not stale:
            return False
        index = min(stale)[1]
        partial = self.window.pop(index)
        partial.complete = True              # `recent` may still point at it
        self.requested.pop(index, None)
        self.evicted += 1
        self.release(partial.rows)
        return True

    def _holes_lost(self, index: int) -> bool:
        """Whether first-pass object `index`, whose holes were not asked for yet, is known to have
        lost them: the first pass sends objects whole and in order, so that is once a later object
        started or the sender announced it sent this one whole. Until then it may still be on its
        way (a sender short of CPU can pause mid-object for tens of milliseconds); afterwards it is
        asked for at once, not after NACK_AFTER of silence (at 2 % loss every object has holes,
        and under flow control the window waits for each repair)."""
        partial = self.window.get(index)
        return (partial is not None and partial.newest and not partial.complete and not partial.asked
                and (index + 1 < self.frontier or index < self.sent_through))

    def release(self, rows: "np.ndarray") -> None:
        """Rows of an object done with (written, rejected or let go) back to the pool. Any thread."""
        with self.inflight_lock:
            self.inflight -= rows.nbytes
        self.pool.give(rows)
        if self.reported_free < WINDOW_UPDATE:
            # the sender may be waiting for room it does not know about yet: tell it now, not at
            # the next status slot (up to 37 ms away)
            self.status_due = True

    def _grow(self, count: int) -> None:
        if count > len(self.state):
            self.state.extend(bytes(count - len(self.state)))
