# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Command line of the transport engine alone, for the lab, the tests and the benchmark.

Private to the collection: not a public API. It moves one plain file as opaque objects (object 0:
JSON with the size; then 8-byte offset + bytes), so the engine is exercised without any image.
The session key comes from the ``FLEETCAST_SESSION_KEY`` environment variable, never the argv.
The receiver writes ``OUTPUT.partial`` and renames it to ``OUTPUT`` only once every object has
been verified; on failure the ``.partial`` file stays, marked incomplete by its name.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
from typing import List, Optional, Sequence

from .._errors import FleetcastError
from .._writeback import DiskWriter
from .netio import interface_address, return_large_allocations
from .source import ReaderSource, SpoolSource

OFFSET = struct.Struct(">Q")


def file_source(path: str, object_size: int, sizes: Sequence[int] = ()) -> ReaderSource:
    """Objects of `object_size` bytes, or of `sizes` in turn (cycled until the file is covered):
    real images are chunks of many compressed sizes, and so must tests and benchmarks be."""
    fd = os.open(path, os.O_RDONLY)
    size = os.fstat(fd).st_size
    pattern = [int(value) for value in sizes if int(value) > 0] or [object_size]
    bounds: List[int] = [0]         # object i (from 1) covers bounds[i-1]..bounds[i]
    while bounds[-1] < size:
        bounds.append(min(size, bounds[-1] + pattern[(len(bounds) - 1) % len(pattern)]))
    count = len(bounds)             # object 0 (the description) and one per extent
    first = json.dumps({"size": size, "object_size": object_size}).encode()

    def read(index: int) -> bytearray:
        # one buffer, read into in place: no concatenation copy of the object
        offset = bounds[index - 1]
        length = bounds[index] - offset
        record = bytearray(length + OFFSET.size)
        OFFSET.pack_into(record, length, offset)
        if os.preadv(fd, [memoryview(record)[:length]], offset) != length:
            raise FleetcastError(f"{path} became shorter while it was being sent (object {index}).")
        return record

    return ReaderSource(first, count, read)


def stream_source(stream, object_size: int, sizes: Sequence[int] = ()) -> SpoolSource:
    """Objects from a stream (``--file -``: standard input) as it is written, like a live capture:
    the session's object count is known only at the end of the stream."""
    pattern = [int(value) for value in sizes if int(value) > 0] or [object_size]

    def produce():
        yield json.dumps({"size": -1, "object_size": object_size, "stream": True}).encode()
        offset = 0
        number = 0
        while True:
            data = stream.read(pattern[number % len(pattern)])     # blocks until that much or the end
            if not data:
                return
            yield data + OFFSET.pack(offset)
            offset += len(data)
            number += 1

    return SpoolSource(produce())


class FileSink:
    """Objects of `file_source` back into a file, in whatever order they arrive. An object is its
    bytes, then their offset in the file (a trailer, so that the bytes start where the reassembly
    buffer starts, on a page boundary, and go to the disk direct: ``_writeback.DiskWriter``); the
    file is fsynced before commit()."""

    def __init__(self, output: str):
        self.output = output
        self.partial = output + ".partial"
        self.fd: Optional[int] = None
        self.size: Optional[int] = None
        self.writer: Optional[DiskWriter] = None

    def _open(self) -> int:
        if self.fd is None:
            self.fd = os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            self.writer = DiskWriter(self.fd)
        return self.fd

    def __call__(self, index: int, data: bytes) -> None:
        fd = self._open()
        if index == 0:
            self.size = int(json.loads(bytes(data))["size"])
            if self.size >= 0:           # -1: a stream, whose size nobody knew
                os.ftruncate(fd, self.size)
            return
        view = memoryview(data).cast("B")
        (offset,) = OFFSET.unpack_from(view, len(view) - OFFSET.size)
        self.writer.write(view[:len(view) - OFFSET.size], offset)

    def commit(self) -> None:
        fd = self._open()
        os.fsync(fd)
        self.close()
        os.rename(self.partial, self.output)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _key() -> bytes:
    key = os.environ.get("FLEETCAST_SESSION_KEY", "")
    if not key:
        raise FleetcastError("Set FLEETCAST_SESSION_KEY to the session key.")
    return key.encode()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="fleetcast-transport")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("send", "receive"):
        command = sub.add_parser(name)
        command.add_argument("--group", default="239.255.71.1")
        command.add_argument("--port", type=int, default=9611)
        command.add_argument("--interface", default="eth0")
        command.add_argument("--no-offload", action="store_true")
        command.add_argument("--dscp", type=int, default=0, help="DSCP class of what this end sends (0: unmarked)")
    send = sub.choices["send"]
    send.add_argument("--file", required=True, help="the file to send; - for standard input, sent as it is written")
    send.add_argument("--object-size", type=int, default=4 * 1024 * 1024)
    send.add_argument("--object-sizes", default="",
                      help="comma-separated object sizes used in turn (varied sizes, as an image's chunks)")
    send.add_argument("--expected", default="")
    send.add_argument("--min-receivers", type=int, default=1)
    send.add_argument("--max-wait", type=float, default=30.0)
    send.add_argument("--rate", type=int, default=0, help="cap in bytes per second")
    send.add_argument("--receiver-timeout", type=float, default=5.0)
    send.add_argument("--progress-timeout", type=float, default=30.0)
    send.add_argument("--encrypt", action="store_true")
    receive = sub.choices["receive"]
    receive.add_argument("--output", required=True)
    receive.add_argument("--name", default="")
    receive.add_argument("--timeout", type=float, default=30.0)
    receive.add_argument("--window-mib", type=int, default=48)
    args = parser.parse_args(argv)
    offload = False if args.no_offload else None
    try:
        address = interface_address(args.interface)
        if args.command == "send":
            # each side imports only its own half: the sender's start-up is part of every session
            from .sender import Sender, SenderConfig  # pylint: disable=import-outside-toplevel
            config = SenderConfig(
                group=args.group, port=args.port, address=address, session_key=_key(),
                expected=[e for e in args.expected.split(",") if e], min_receivers=args.min_receivers,
                max_wait=args.max_wait, rate_cap=args.rate, receiver_timeout=args.receiver_timeout,
                progress_timeout=args.progress_timeout,
                encrypt=args.encrypt, offload=offload, dscp=args.dscp)
            sizes = [int(value) for value in args.object_sizes.split(",") if value]
            if args.file == "-":
                source = stream_source(sys.stdin.buffer, args.object_size, sizes)
            else:
                source = file_source(args.file, args.object_size, sizes)
            result = Sender(config, source).run().to_dict()
        else:
            return_large_allocations()
            sink = FileSink(args.output)
            from .receiver import Receiver, ReceiverConfig  # pylint: disable=import-outside-toplevel
            config = ReceiverConfig(group=args.group, port=args.port, address=address,
                                    session_key=_key(), name=args.name or address,
                                    timeout=args.timeout, window_bytes=args.window_mib * 1024 * 1024,
                                    offload=offload, dscp=args.dscp)
            try:
                result = Receiver(config, sink).run().to_dict()
                sink.commit()
            finally:
                sink.close()
        result["peak_rss_kib"] = _peak_rss_kib()
        import resource
        usage = resource.getrusage(resource.RUSAGE_SELF)
        result["cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 3)
        sys.stdout.write(json.dumps(result) + "\n")
        return 0
    except FleetcastError as err:
        sys.stdout.write(json.dumps({"failed": True, "msg": str(err)}) + "\n")
        return 1


def _peak_rss_kib() -> int:
    """This process's own peak RSS (VmHWM). Not ru_maxrss: Linux carries that across fork and exec,
    so a receiver started from a large parent (a test runner) would report the parent's size."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0
