# Found by `make e2e` (a live capture on a slow TCG guest): a size whose last buffer was taken
# leaves an empty list in the pool, and the next miss over the room bound popped from it.
import numpy as np

from ansible_collections.fleetcast.imaging.plugins.module_utils._transport import netio


def test_a_miss_after_a_size_was_emptied_lets_go_of_the_rest_without_error():
    pool = netio.BufferPool(8)
    pool.give(np.empty((2, 8), dtype=np.uint8))
    pool.give(np.empty((3, 8), dtype=np.uint8))
    assert pool.take(2, room=1 << 20).shape == (2, 8)     # size 2 is now an empty list in the pool
    rows = pool.take(4, room=0)                            # used to raise IndexError (pop from empty list)
    assert rows.shape == (4, 8) and pool.bytes == 0 and pool.free == {}
