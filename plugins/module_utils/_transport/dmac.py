# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The per-datagram MAC of data datagrams. Private to the collection: not a public API.

Every data datagram carries an 8-byte tag over its header fields and its payload, so that no
header field (object, fragment, fragment count, session) and no payload byte a third host forged
ever reaches reassembly: forged datagrams are dropped before they allocate anything, count as
loss or congestion, or poison an object (which the object's GMAC would then reject, again and
again, under a sustained forgery). The object GMAC stays the integrity check; this tag is the
availability filter in front of it.

Construction (Wegman-Carter, as UMAC): the NH hash of UMAC (RFC 4418, section 5.2: words added to
key words mod 2^32, pairs multiplied into 64-bit products, summed mod 2^64; 2^-32 almost
delta-universal) over the datagram's 368 little-endian 32-bit words, the two tag words left out,
plus a 64-bit one-time pad per (object, fragment) from SHAKE-256 keyed by the session. An object's
fragment is only ever sent with the same bytes (a repair repeats it exactly), so a pad never masks
two different messages. Forging one datagram succeeds with probability at most 2^-32 per try.

Why NH and not a per-datagram HMAC or Poly1305: a library call per datagram costs 2-5 us of
Python, 1.5-4 s per GiB. NH is a handful of numpy operations over a whole GRO buffer or object
(rows x words), about 2 GB/s on this machine (15-40 us per 44-datagram buffer).
"""

from __future__ import annotations

import hashlib
import struct
import threading
from collections import OrderedDict
from typing import Tuple

from .netio import np

TAG_SIZE = 8
TAG_OFFSET = 24                  # bytes 24..31 of a data datagram
TAG_COLUMN = TAG_OFFSET // 8     # the tag as column 3 of the rows viewed as 64-bit words
TAG_WORD = TAG_OFFSET // 4       # first of the two 32-bit words NH leaves out
BLOCK = 256                      # pads are made for this many fragments at a time
PAD_BLOCKS = 512                 # blocks of pads kept (4 MiB objects have 12 blocks)
SCRATCH_ROWS = 352               # rows hashed per pass: 8 GRO buffers (1.5 MB of work arrays per thread)


class DatagramMac:
    """Tags of the data datagrams of one session (rows of DATAGRAM bytes, headers included)."""

    def __init__(self, key: bytes, datagram: int) -> None:
        words = datagram // 4
        material = hashlib.shake_256(b"fleetcast datagram nh key" + key).digest(words * 4)
        self.key = np.frombuffer(material, dtype="<u4").copy()
        self.pad_key = hashlib.sha256(b"fleetcast datagram pad key" + key).digest()
        self.pads: "OrderedDict[Tuple[int, int], np.ndarray]" = OrderedDict()
        self.lock = threading.Lock()     # the sender signs in its prefetch worker and its loop
        self.local = threading.local()

    def _hash(self, rows: "np.ndarray") -> "np.ndarray":
        """NH of each row (a C-contiguous (n x DATAGRAM) uint8 array), its tag words left out."""
        count = rows.shape[0]
        if count > SCRATCH_ROWS:
            return np.concatenate([self._hash(rows[start:start + SCRATCH_ROWS])
                                   for start in range(0, count, SCRATCH_ROWS)])
        words, even, odd = self._scratch(count)
        np.add(rows.view("<u4"), self.key, out=words)          # sums mod 2^32, as NH
        # each half widened on its own, contiguous: a third faster than widening all the words and
        # multiplying strided halves (18 against 28 us per 44-row buffer)
        even[...] = words[:, 0::2]
        even[:, TAG_WORD // 2] = 0       # its pair's product is then 0: the tag is not hashed
        odd[...] = words[:, 1::2]
        return np.einsum("ij,ij->i", even, odd)   # products and sum mod 2^64

    def _scratch(self, count: int):
        """This thread's work arrays, `count` rows of them: temporaries of a few hundred KB made
        afresh per call were handed back to the kernel by malloc and faulted in again each time
        (twice a receiver's CPU with runs of 330 datagrams)."""
        scratch = getattr(self.local, "scratch", None)
        if scratch is None:
            words = self.key.shape[0]
            scratch = self.local.scratch = (np.empty((SCRATCH_ROWS, words), dtype=np.uint32),
                                            np.empty((SCRATCH_ROWS, words // 2), dtype=np.uint64),
                                            np.empty((SCRATCH_ROWS, words // 2), dtype=np.uint64))
        return tuple(array[:count] for array in scratch)

    def _block(self, index: int, block: int) -> "np.ndarray":
        key = (index, block)
        with self.lock:
            pads = self.pads.get(key)
            if pads is not None:
                self.pads.move_to_end(key)
                return pads
        stream = hashlib.shake_256(self.pad_key + struct.pack(">QQ", index, block)).digest(BLOCK * 8)
        pads = np.frombuffer(stream, dtype="<u8")
        with self.lock:
            self.pads[key] = pads
            if len(self.pads) > PAD_BLOCKS:
                self.pads.popitem(last=False)
        return pads

    def _run_pads(self, index: int, first: int, size: int) -> "np.ndarray":
        low, high = first // BLOCK, (first + size - 1) // BLOCK
        if low == high:
            start = first - low * BLOCK
            return self._block(index, low)[start:start + size]
        joined = np.concatenate([self._block(index, block) for block in range(low, high + 1)])
        start = first - low * BLOCK
        return joined[start:start + size]

    def sign(self, rows: "np.ndarray", index: int) -> None:
        """Write the tags of an object's rows (fragments 0..n-1) in place."""
        for start in range(0, rows.shape[0], BLOCK):
            part = rows[start:start + BLOCK]
            part.view("<u8")[:, TAG_COLUMN] = self._hash(part) + self._run_pads(index, start, part.shape[0])

    def check_run(self, rows: "np.ndarray", index: int, first: int) -> "np.ndarray":
        """Which rows, fragments first.. of object `index` as their headers say, carry a valid tag."""
        return self._hash(rows) + self._run_pads(index, first, rows.shape[0]) == rows.view("<u8")[:, TAG_COLUMN]

    def check(self, rows: "np.ndarray", objects: "np.ndarray", fragments: "np.ndarray") -> "np.ndarray":
        """Which rows carry a valid tag, each for the object and fragment its header names."""
        pads = np.empty(rows.shape[0], dtype=np.uint64)
        blocks = objects.astype(np.uint64) << np.uint64(32) | (fragments // BLOCK).astype(np.uint64)
        for value in np.unique(blocks).tolist():
            chosen = blocks == value
            pads[chosen] = self._block(value >> 32, value & 0xFFFFFFFF)[fragments[chosen] % BLOCK]
        return self._hash(rows) + pads == rows.view("<u8")[:, TAG_COLUMN]
