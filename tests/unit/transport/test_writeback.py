# Write-behind of received outputs: the bytes land as written, at most a window waits in flight,
# and a descriptor that cannot be written behind (a pipe) is left alone.
import os

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
