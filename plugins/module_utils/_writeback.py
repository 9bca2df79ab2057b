# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Write-behind for outputs written in large pieces (an image onto a disk, a received file).
Private to the collection: not a public API.

Left to the page cache, a receiver's output is all dirty memory until its final ``fsync``: the disk
idles while the network runs, then the whole image is written while the host waits, and every page
of it is fresh memory (on a virtual machine that hands freed memory back to its host, each first
touch is a fault on the host: 512 MiB written into a file on this lab's disk took 1.5-3.6 s that
way, against 0.4 s when the same memory was reused). ``WriteBehind`` starts the writeback of each
piece as soon as it is written (``sync_file_range(WRITE)``, which does not wait) and keeps at most
``window`` bytes of them in flight: the oldest pieces beyond that are waited for and dropped from the
page cache (``POSIX_FADV_DONTNEED``), so their memory is reused for the next ones. The disk then
writes while the data arrives, and the final ``fsync`` has little left to do.

``sync_file_range`` makes nothing durable by itself (no metadata, no disk cache flush): callers still
``fsync`` before they report the data written. A write error it reports is raised (as ``OSError``)
because the later ``fsync`` of the same descriptor would no longer see it. Where the call does not
exist or the file does not support it (a pipe, some FUSE filesystems), this is a no-op.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections import deque
from typing import Deque, Tuple

WINDOW = 32 * 1024 * 1024
_WAIT_BEFORE, _WRITE, _WAIT_AFTER = 1, 2, 4
_UNSUPPORTED = (errno.EINVAL, errno.ESPIPE, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF)


def _sync_file_range():
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call


_SYNC_FILE_RANGE = _sync_file_range()


class WriteBehind:
    """Write-behind of one descriptor; `wrote()` after each piece written to it, from any thread."""

    def __init__(self, fd: int, window: int = WINDOW):
        self.fd = fd
        self.window = window
        self.pending: Deque[Tuple[int, int]] = deque()
        self.pending_bytes = 0
        self.lock = threading.Lock()
        self.enabled = _SYNC_FILE_RANGE is not None and window > 0

    def _range(self, offset: int, length: int, flags: int) -> bool:
        if _SYNC_FILE_RANGE(self.fd, offset, length, flags) == 0:
            return True
        code = ctypes.get_errno()
        if code in _UNSUPPORTED:
            self.enabled = False
            return False
        if code == errno.EINTR:
            return self._range(offset, length, flags)
        raise OSError(code, os.strerror(code))

    def wrote(self, offset: int, length: int) -> None:
        """`length` bytes at `offset` were just written: start writing them to the disk, and wait
        for (then drop from the page cache) the oldest pieces beyond the window."""
        if not self.enabled or length <= 0:
            return
        if not self._range(offset, length, _WRITE):
            return
        done = []
        with self.lock:
            self.pending.append((offset, length))
            self.pending_bytes += length
            while self.pending_bytes > self.window and len(self.pending) > 1:
                piece = self.pending.popleft()
                self.pending_bytes -= piece[1]
                done.append(piece)
        for start, size in done:
            if not self._range(start, size, _WAIT_BEFORE | _WRITE | _WAIT_AFTER):
                return
            try:
                os.posix_fadvise(self.fd, start, size, os.POSIX_FADV_DONTNEED)
            except OSError:
                pass                      # only the reuse of the memory is lost
