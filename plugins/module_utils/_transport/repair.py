# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The sender's repair scheduler: the fourth piece of the transport's sans-I/O core. Private to
the collection: not a public API.

Receivers ask (NORM-style NACKs, RFC 5740) for META entries, runs of missing fragments and whole
objects (the carousel that lets a late, dropped or restarted receiver finish). ``RepairScheduler``
turns those requests and the clock into what to send next, most urgent first: META entries, then
fragments, then whole objects in index order. A fragment that went out (or is queued) within the
hold-off is not queued again, so a repair goes to the group once however many receivers lost it;
a whole object likewise. No socket, no clock of its own: unit tests drive it with a fake time.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from typing import Callable, Deque, Dict, List, Optional, Set, Tuple, Union

from . import wire
from .netio import np

HOLDOFF = 0.06                 # a fragment is not sent again within this many seconds
OBJECT_HOLDOFF = 0.25          # nor a whole object
CLOCKS = 1024                  # objects whose per-fragment send times are remembered
OBJECTS_PER_REQUEST = 64
META_PER_REQUEST = 256

# what to send: ("meta", [indexes]) | ("fragments", index, first, end) | ("object", index)
Job = Union[Tuple[str, List[int]], Tuple[str, int, int, int], Tuple[str, int]]


class RepairScheduler:
    def __init__(self) -> None:
        # when each fragment last went out (inf: queued, not yet sent), for the hold-off
        self.clocks: "OrderedDict[int, np.ndarray]" = OrderedDict()
        self.fragments: Deque[Tuple[int, int, int]] = deque()
        self.objects: List[int] = []
        self.objects_queued: Set[int] = set()
        self.object_sent: Dict[int, float] = {}
        self.meta: Set[int] = set()

    def _clock(self, index: int, count: int) -> "np.ndarray":
        clock = self.clocks.get(index)
        if clock is None:
            clock = self.clocks[index] = np.zeros(count, dtype=np.float64)
            while len(self.clocks) > CLOCKS:
                self.clocks.popitem(last=False)
        else:
            self.clocks.move_to_end(index)
        return clock

    # --- inputs ------------------------------------------------------------------------------------
    def request(self, what: int, index: int, first: int, amount: int, now: float, sent: int,
                available: int, fragments: Callable[[int], Optional[int]]) -> None:
        """One request of a receiver's STATUS. `sent`: objects sent once; `available`: objects the
        source has; `fragments(i)`: object i's fragment count, None while its META is unknown."""
        if what == wire.REQ_FRAGMENTS:
            count = fragments(index) if index < sent else None
            if count is None:
                return
            clock = self._clock(index, count)
            end = min(first + amount, count)
            if first >= end:
                return
            due = np.flatnonzero(now - clock[first:end] > HOLDOFF) + first
            if not len(due):
                return
            clock[due] = np.inf          # queued: NACKs for it are suppressed until it went out
            breaks = np.flatnonzero(np.diff(due) != 1) + 1
            for run in np.split(due, breaks):
                self.fragments.append((index, int(run[0]), int(run[-1]) + 1))
        elif what == wire.REQ_OBJECTS:
            for wanted in range(index, min(index + min(amount, OBJECTS_PER_REQUEST), sent, available)):
                if wanted in self.objects_queued or now - self.object_sent.get(wanted, -OBJECT_HOLDOFF) < OBJECT_HOLDOFF:
                    continue
                self.objects_queued.add(wanted)
                heapq.heappush(self.objects, wanted)
        elif what == wire.REQ_META:
            # also the object going out right now (its META may have been lost)
            for wanted in range(index, index + min(amount, META_PER_REQUEST)):
                if fragments(wanted) is not None:
                    self.meta.add(wanted)

    def sent(self, index: int, count: int, start: int, stop: int, now: float, repair: bool) -> None:
        """Fragments start..stop-1 of object `index` (`count` fragments) went out. A first-pass
        fragment is repairable at once (receivers ask as soon as it is lost); a repair only after
        the hold-off."""
        self._clock(index, count)[start:stop] = now - (0.0 if repair else HOLDOFF)

    # --- output ------------------------------------------------------------------------------------
    def next(self, now: float) -> Optional[Job]:
        """The most urgent repair, or None."""
        if self.meta:
            indexes = sorted(self.meta)
            self.meta.clear()
            return ("meta", indexes)
        if self.fragments:
            return ("fragments",) + self.fragments.popleft()
        if self.objects:
            index = heapq.heappop(self.objects)
            self.objects_queued.discard(index)
            self.object_sent[index] = now
            return ("object", index)
        return None
