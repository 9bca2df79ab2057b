# Write-behind of received outputs: the bytes land as written, at most a window waits in flight,
# and a descriptor that cannot be written behind (a pipe) is left alone.
import os

import pytest

from ansible_collections.fleetcast.imaging.plugins.module_utils._writeback import WriteBehind


def test_pieces_land_and_the_window_bounds_what_waits(tmp_path):
    path = tmp_path / "out.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        behind = WriteBehind(fd, window=64 * 1024)
        pieces = [(index * 40000, os.urandom(40000)) for index in range(12)]
        for offset, data in reversed(pieces):        # any order, as objects complete
            behind.wrote(offset, os.pwrite(fd, data, offset))
            assert behind.pending_bytes <= 64 * 1024 + 40000
        assert behind.enabled
        assert len(behind.pending) <= 2
        os.fsync(fd)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"".join(data for _offset, data in pieces)


def test_a_pipe_is_not_written_behind():
    read_end, write_end = os.pipe()
    try:
        behind = WriteBehind(write_end, window=1)
        os.write(write_end, b"x" * 10)
        behind.wrote(0, 10)
        behind.wrote(10, 10)
        assert not behind.enabled
    finally:
        os.close(read_end)
        os.close(write_end)


def _aligned(size, fill):
    from ansible_collections.fleetcast.imaging.plugins.module_utils._transport.netio import page_aligned
    rows = page_aligned(size // 4096, 4096)
    rows[:] = fill
    return memoryview(rows).cast("B")


def test_aligned_pieces_go_direct_and_the_rest_through_the_page_cache(tmp_path):
    from ansible_collections.fleetcast.imaging.plugins.module_utils._writeback import DiskWriter
    path = tmp_path / "out.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    tail = os.urandom(5000)                          # a file's short last piece
    odd = bytes(range(256)) * 32                     # aligned length and offset, but a bytes object
    try:
        writer = DiskWriter(fd)
        if writer.direct_fd is None:
            pytest.skip(f"{tmp_path} refuses O_DIRECT (tmpfs before Linux 6.6?)")
        writer.write(tail, 3 * 65536)
        writer.write(_aligned(65536, 7), 65536)
        writer.write(odd, 2 * 65536)
        writer.write(_aligned(65536, 9), 0)
        writer.write(_aligned(8192, 3)[1:4097], 3 * 65536 + 8192)   # aligned length, memory not
        assert writer.direct_bytes == 2 * 65536
        os.fsync(fd)
        writer.close()
    finally:
        os.close(fd)
    assert path.read_bytes() == (b"\x09" * 65536 + b"\x07" * 65536 + odd + b"\0" * (65536 - len(odd))
                                 + tail + b"\0" * (8192 - len(tail)) + b"\x03" * 4096)


def test_a_file_that_refuses_direct_writes_gets_them_through_the_page_cache(tmp_path, monkeypatch):
    import errno

    from ansible_collections.fleetcast.imaging.plugins.module_utils import _writeback
    path = tmp_path / "out.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    real = _writeback.pwrite_all

    def refusing(target, data, offset):
        if target == writer.direct_fd:
            raise OSError(errno.EINVAL, "Invalid argument")
        real(target, data, offset)

    monkeypatch.setattr(_writeback, "pwrite_all", refusing)
    try:
        writer = _writeback.DiskWriter(fd)
        writer.write(_aligned(8192, 5), 0)
        assert writer.direct_fd is None and writer.direct_bytes == 0
        writer.write(_aligned(4096, 6), 8192)
        writer.close()
    finally:
        os.close(fd)
    assert path.read_bytes() == b"\x05" * 8192 + b"\x06" * 4096


def test_a_pipe_gets_no_direct_descriptor():
    from ansible_collections.fleetcast.imaging.plugins.module_utils._writeback import DiskWriter
    read_end, write_end = os.pipe()
    try:
        writer = DiskWriter(write_end)
        assert writer.direct_fd is None
        writer.close()
    finally:
        os.close(read_end)
        os.close(write_end)
