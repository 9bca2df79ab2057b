# Loss ahead of a receiver's kernel is congestion: one receiver's ingress is rate-limited by
# nftables (a slow link or NIC: what it drops, no UDP counter of that host counts), no rate cap is
# set, and the sender must adapt to that path instead of sending most of the image again as repairs.
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lab import file_digest, finish, make_payload, start_receiver, start_sender  # noqa: E402

MiB = 1024 * 1024
PATH_RATE = 8 * 1000 ** 2          # bytes per second the slow receiver's path lets through

pytestmark = pytest.mark.timeout(180)


def test_a_rate_limited_path_sets_the_rate_and_repairs_stay_bounded(netlab, memory_dir):
    payload = memory_dir / "payload"
    size = 48 * MiB
    expected = make_payload(payload, size)
    sender_host = netlab.add_host("srv")
    fast, slow = netlab.add_host("r1"), netlab.add_host("r2")
    slow.limit_incoming_udp(PATH_RATE)
    outputs = [memory_dir / "out-r1", memory_dir / "out-r2"]
    receivers = [start_receiver(host, output, timeout=60) for host, output in zip((fast, slow), outputs)]
    sender = start_sender(sender_host, payload, extra=["--expected", "r1,r2", "--object-size", str(MiB)])
    code, report = finish(sender, timeout=150)
    assert code == 0, report
    print(f"\nsent {report['bytes'] / size:.2f}x the payload in {report['seconds']} s, "
          f"{report['repair_datagrams']} repair datagrams, {report['loss_cuts']} cuts for loss")
    for name in ("r1", "r2"):
        state = {r["name"]: r for r in report["receivers"]}[name]
        assert state["state"] == "done" and state["digest_matches"], state
    for process, output in zip(receivers, outputs):
        code, result = finish(process)
        assert code == 0, result
        assert file_digest(output) == expected
    # Adapting to the path: everything went out well under twice (before: 13-14 times over, the
    # rate never cut); what is sent beyond the payload is mostly the start of the first pass, at
    # the start rate, before the slow receiver's first loss window closes. Its loss set the
    # rate; the other's never did.
    assert report["bytes"] < 2 * size, report
    by_name = {r["name"]: r for r in report["receivers"]}
    assert by_name["r2"]["loss_cuts"] > 0 and by_name["r1"]["loss_cuts"] == 0, report
    assert report["loss_cuts"] >= by_name["r2"]["loss_cuts"], report
