# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where a sender's objects come from. Private to the collection: not a public API.

A source hands out opaque byte objects by index (0 = layout, 1..N = chunk records) with random
access, so that any object can be sent again as a repair. A live source may still be growing:
``available()`` says how many objects can be read now and ``final_count()`` stays None until the
producer has finished.
"""

from __future__ import annotations

import os
import tempfile
import threading
from typing import Callable, Iterable, List, Optional, Protocol, Sequence

from .._errors import TransportError


class ObjectSource(Protocol):
    def available(self) -> int:
        ...

    def final_count(self) -> Optional[int]:
        ...

    def read(self, index: int) -> bytes:
        ...

    def image_id(self) -> bytes:
        ...

    def wait(self, timeout: float) -> None:
        ...


class ListSource:
    """Objects already in memory (tests, small sessions)."""

    def __init__(self, objects: Sequence[bytes], image_id: bytes = b""):
        self._objects = list(objects)
        self._image_id = image_id

    def available(self) -> int:
        return len(self._objects)

    def final_count(self) -> Optional[int]:
        return len(self._objects)

    def read(self, index: int) -> bytes:
        return self._objects[index]

    def image_id(self) -> bytes:
        return self._image_id

    def wait(self, timeout: float) -> None:
        return None


class ReaderSource:
    """Random access through a callable, e.g. ``ImageReader.record_bytes``; object 0 given apart."""

    def __init__(self, first: bytes, count: int, read: Callable[[int], bytes], image_id: bytes = b""):
        self._first = first
        self._count = count
        self._read = read
        self._image_id = image_id

    def available(self) -> int:
        return self._count

    def final_count(self) -> Optional[int]:
        return self._count

    def read(self, index: int) -> bytes:
        return self._first if index == 0 else self._read(index)

    def image_id(self) -> bytes:
        return self._image_id

    def wait(self, timeout: float) -> None:
        return None


class SpoolSource:
    """A live producer's objects, spooled to an unlinked temporary file as they are produced, so
    that repairs can be read back while the producer is still running. Memory stays bounded: only
    the offsets stay in memory."""

    def __init__(self, objects: Iterable[bytes], directory: Optional[str] = None,
                 image_id: Callable[[], bytes] = lambda: b""):
        self._fd, path = tempfile.mkstemp(prefix="fleetcast-spool-", dir=directory)
        os.unlink(path)
        self._offsets: List[int] = []
        self._lengths: List[int] = []
        self._end = 0
        self._final: Optional[int] = None
        self._error: Optional[BaseException] = None
        self._image_id = image_id
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._produce, args=(iter(objects),), daemon=True,
                                        name="fleetcast-spool")
        self._thread.start()

    def _produce(self, objects) -> None:
        try:
            for data in objects:
                os.pwrite(self._fd, data, self._end)
                with self._changed:
                    self._offsets.append(self._end)
                    self._lengths.append(len(data))
                    self._end += len(data)
                    self._changed.notify_all()
        except BaseException as err:  # reported to the sender loop, which fails the session
            self._error = err
        with self._changed:
            self._final = len(self._offsets)
            self._changed.notify_all()

    def _check(self) -> None:
        if self._error is not None:
            if isinstance(self._error, Exception):
                raise self._error
            raise TransportError("The live capture feeding this session stopped.")

    def available(self) -> int:
        self._check()
        return len(self._offsets)

    def final_count(self) -> Optional[int]:
        self._check()
        return self._final

    def read(self, index: int) -> bytes:
        return os.pread(self._fd, self._lengths[index], self._offsets[index])

    def image_id(self) -> bytes:
        return self._image_id() if self._final is not None else b""

    def wait(self, timeout: float) -> None:
        with self._changed:
            self._changed.wait(timeout)

    def close(self) -> None:
        os.close(self._fd)
