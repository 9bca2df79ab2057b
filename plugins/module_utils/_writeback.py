# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Writing outputs in large pieces (an image onto a disk, a received file): direct where the pieces
allow, written behind where not. Private to the collection: not a public API.

``DiskWriter`` is what sinks use. A piece whose memory address, file offset and length are all
multiples of ``ALIGN`` goes through a second descriptor of the same file opened with ``O_DIRECT``:
straight from the caller's buffer to the device, with no copy into the page cache. On this lab's
machines that copy was a receiver's largest cost (0.4-0.6 s of CPU per 512 MiB per receiver while
three received at once, a third of their time, against 0.02 s for the same bytes direct): each page
cache page is fresh memory. Receivers therefore keep their reassembly buffers page-aligned
(``netio.BufferPool``). Any other piece (a file's short tail, a buffer that is not aligned, a file
that refuses ``O_DIRECT``: tmpfs before Linux 6.6, some FUSE filesystems) is written through the page
cache and written behind, as below. The two never write the same page: a direct piece covers whole
aligned pages only, and outputs are written once per range.

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
import mmap
import os
import stat
import threading
from collections import deque
from typing import Deque, Optional, Tuple

WINDOW = 32 * 1024 * 1024
ALIGN = 4096                      # O_DIRECT's alignment for memory, offset and length on any device
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


def buffer_address(view: memoryview) -> Optional[int]:
    """The address of a writable, contiguous buffer's first byte; None for others (a bytes object is
    never page-aligned, so nothing is lost)."""
    if view.readonly or not view.c_contiguous or not view.nbytes:
        return None
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(view))
    except (TypeError, ValueError):
        return None


def pwrite_all(fd: int, data, offset: int) -> None:
    """All of `data` at `offset` (pwrite may write less than asked, for example at a signal)."""
    view = memoryview(data).cast("B")
    while view:
        done = os.pwrite(fd, view, offset)
        if done <= 0:
            raise OSError(errno.EIO, f"write of {len(view)} bytes at offset {offset} wrote nothing")
        view, offset = view[done:], offset + done


class DiskWriter:
    """Pieces written into one open file or device: O_DIRECT where they are aligned, written behind
    where not (see the module's docstring). The caller fsyncs `fd` before it reports the data written:
    fsync covers the file, whichever descriptor wrote it. From any thread; `close()` at the end (the
    caller's own descriptor stays open)."""

    def __init__(self, fd: int, window: int = WINDOW, direct: bool = True):
        self.fd = fd
        self.behind = WriteBehind(fd, window)
        self.direct_fd: Optional[int] = _reopen_direct(fd) if direct else None
        self.direct_bytes = 0             # written direct (the rest went through the page cache)

    def write(self, data, offset: int) -> None:
        view = memoryview(data).cast("B")
        length = len(view)
        direct_fd = self.direct_fd
        if direct_fd is not None and not (offset | length) % ALIGN:
            address = buffer_address(view)
            if address is not None and not address % ALIGN:
                try:
                    pwrite_all(direct_fd, view, offset)
                    self.direct_bytes += length
                    return
                except OSError as err:
                    if err.errno != errno.EINVAL:
                        raise
                    self._stop_direct()   # the file wants another alignment: the page cache then
        pwrite_all(self.fd, view, offset)
        self.behind.wrote(offset, length)

    def _stop_direct(self) -> None:
        direct_fd, self.direct_fd = self.direct_fd, None
        if direct_fd is not None:
            os.close(direct_fd)

    def close(self) -> None:
        self._stop_direct()


def _reopen_direct(fd: int) -> Optional[int]:
    """A second descriptor of the file open on `fd`, for writing with O_DIRECT; None where the
    file (or the platform) refuses it."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return None
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            return None
        return os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | flag | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None


_SCRATCH = threading.local()


def scratch(size: int) -> memoryview:
    """This thread's page-aligned buffer of `size` bytes (anonymous memory, reused by the thread's
    next call: the caller is done with it by then)."""
    buffer = getattr(_SCRATCH, "buffer", None)
    if buffer is None or len(buffer) < size:
        buffer = _SCRATCH.buffer = mmap.mmap(-1, max(ALIGN, -(-size // ALIGN) * ALIGN))
    return memoryview(buffer)[:size]
