# Whether an XFS log ends with an unmount record, on synthetic logs that the integration test
# (tests/integration/image/test_unclean.py, real XFS shut down while mounted) cannot make cheaply: a
# log that has wrapped (the head in the middle of a later pass) and a record that wraps the log's end.
import os
import struct

from ansible_collections.fleetcast.imaging.plugins.module_utils._image import usedmap

BLOCK, AGBLOCKS, AGBLKLOG, LOGSTART, LOGBLOCKS = 4096, 1000, 10, 10, 4   # a 32-block log at byte 40960
COUNT = LOGBLOCKS * BLOCK // 512


def superblock():
    sb = bytearray(512)
    sb[:4] = b"XFSB"
    struct.pack_into(">I", sb, 4, BLOCK)
    struct.pack_into(">Q", sb, 48, LOGSTART)
    struct.pack_into(">I", sb, 84, AGBLOCKS)
    struct.pack_into(">I", sb, 96, LOGBLOCKS)
    sb[124] = AGBLKLOG
    return bytes(sb)


def log(passes, record_at, record_blocks, operations, flags):
    """`passes`: (first block, last block, cycle) stamped; one record header at `record_at` (its
    cycle is the stamp found there), then `record_blocks` data blocks whose first one starts with
    an operation header carrying `flags`."""
    data = bytearray(COUNT * 512)
    for first, last, cycle in passes:
        for number in range(first, last + 1):
            struct.pack_into(">I", data, number * 512, cycle)
    cycle = struct.unpack_from(">I", data, record_at * 512)[0]
    struct.pack_into(">IIiiqqIii", data, record_at * 512, usedmap.XLOG_MAGIC, cycle, 2, record_blocks * 512,
                     cycle << 32 | record_at, cycle << 32 | record_at, 0, 0, operations)
    struct.pack_into(">i", data, record_at * 512 + 320, 32768)
    data[(record_at + 1) % COUNT * 512 + 9] = flags
    return bytes(data)


def clean(tmp_path, log_bytes):
    path = tmp_path / "xfs.img"
    path.write_bytes(superblock().ljust(LOGSTART * BLOCK, b"\0") + log_bytes)
    fd = os.open(path, os.O_RDONLY)
    try:
        return usedmap._xfs_log_clean(usedmap._Volume(fd, os.path.getsize(path)), superblock(), BLOCK)
    finally:
        os.close(fd)


def test_a_wrapped_log_ending_with_an_unmount_record_is_clean(tmp_path):
    # pass 2 wrote blocks 0-9, pass 1 is still in 10-31: the head is block 10
    passes = [(0, 9, 2), (10, COUNT - 1, 1)]
    assert clean(tmp_path, log(passes, 8, 1, 1, usedmap.XLOG_UNMOUNT_TRANS)) is True
    # the same place holding a transaction of three operations: the log needs replay
    assert clean(tmp_path, log(passes, 8, 1, 3, 0)) is False
    # an unmount record that is not the last one before the head
    assert clean(tmp_path, log(passes, 6, 1, 1, usedmap.XLOG_UNMOUNT_TRANS)) is False


def test_a_record_wrapping_the_end_of_the_log(tmp_path):
    # a record from block 30 (pass 1) over 31, 0 and 1 (pass 2 stamps after the wrap): head at 2
    passes = [(0, 1, 2), (2, COUNT - 1, 1)]
    assert clean(tmp_path, log(passes, 30, 3, 1, usedmap.XLOG_UNMOUNT_TRANS)) is True
    assert clean(tmp_path, log(passes, 30, 3, 5, 0)) is False


def test_a_log_written_whole_in_one_pass_and_a_zeroed_log(tmp_path):
    # every block in the same pass: the head is at the end (block 0 of the next pass)
    assert clean(tmp_path, log([(0, COUNT - 1, 3)], 30, 1, 1, usedmap.XLOG_UNMOUNT_TRANS)) is True
    assert clean(tmp_path, bytes(COUNT * 512)) is True
