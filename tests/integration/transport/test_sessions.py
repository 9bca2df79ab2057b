# Acceptance tests of the transport engine: real processes in network namespaces, real multicast
# through a bridge, real loss from nftables; every output compared byte for byte.
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lab import GROUP, env, file_digest, finish, make_payload, start_receiver, start_sender, wait_for  # noqa: E402

from ansible_collections.fleetcast.imaging.plugins.module_utils._transport import wire  # noqa: E402

MiB = 1024 * 1024

pytestmark = pytest.mark.timeout(240)


def _receivers(netlab, count):
    return [netlab.add_host(f"r{i + 1}") for i in range(count)]


def _lab_session(netlab, tmp_path, size, count, **receiver_options):
    """A payload of `size` bytes, a sender host and `count` receiver processes already started:
    (expected digest, payload path, sender host, receiver hosts, outputs, receiver processes)."""
    payload = tmp_path / "payload"
    expected = make_payload(payload, size)
    sender_host = netlab.add_host("srv")
    hosts = _receivers(netlab, count)
    outputs = [tmp_path / f"out-{h.name}" for h in hosts]
    receivers = [start_receiver(h, out, **receiver_options) for h, out in zip(hosts, outputs)]
    return expected, payload, sender_host, hosts, outputs, receivers


def _outputs_exact(receivers, outputs, expected, timeout=120):
    """Every receiver exited 0 (within `timeout` s) and wrote exactly the payload; returns their reports."""
    results = []
    for process, output in zip(receivers, outputs):
        code, result = finish(process, timeout=timeout)
        assert code == 0, result
        assert file_digest(output) == expected
        results.append(result)
    return results


def _assert_all_done(report, names):
    by_name = {r["name"]: r for r in report["receivers"]}
    for name in names:
        assert by_name[name]["state"] == "done", by_name[name]
        assert by_name[name]["digest_matches"], by_name[name]
        assert by_name[name]["digest"] == report["digest"]


def test_three_receivers_get_512_mib_byte_exact(netlab, memory_dir):
    expected, payload, sender_host, hosts, outputs, receivers = _lab_session(netlab, memory_dir, 512 * MiB, 3)
    sender = start_sender(sender_host, payload, extra=["--expected", "r1,r2,r3", "--max-wait", "20"])
    code, report = finish(sender)
    assert code == 0, report
    assert report["gso"] is True
    _assert_all_done(report, ["r1", "r2", "r3"])
    for process, output in zip(receivers, outputs):
        code, result = finish(process)
        assert code == 0, result
        assert result["digest"] == report["digest"]
        assert result["gro"] is True
        # GRO really coalesces: far fewer receive calls than datagrams
        assert result["datagrams"] >= 512 * MiB // 1448 and result["receive_calls"] * 8 < result["datagrams"], result
        assert result["peak_rss_kib"] <= 100 * 1024, result
        assert file_digest(output) == expected
        os.unlink(output)


def _varied_sizes(count, seed=202):
    """Object sizes as an image's compressed chunks vary: log-uniform from 3 KiB to 4 MiB."""
    generator = random.Random(seed)
    return [int(3 * 1024 * (4 * MiB / (3 * 1024)) ** generator.random()) for dummy in range(count)]


def test_two_hundred_objects_of_varied_sizes_arrive_byte_exact(netlab, memory_dir):
    # A real image is chunks of many compressed sizes; the sender's buffer pool once crashed on
    # them ("pop from empty list" after 90-130 of 202 objects) while equal sizes never did.
    sizes = _varied_sizes(200)
    expected, payload, sender_host, hosts, outputs, receivers = _lab_session(netlab, memory_dir, sum(sizes), 2)
    sender = start_sender(sender_host, payload, extra=[
        "--expected", "r1,r2", "--object-sizes", ",".join(map(str, sizes))])
    code, report = finish(sender)
    assert code == 0, report
    assert report["objects"] == 201, report
    _assert_all_done(report, ["r1", "r2"])
    for result in _outputs_exact(receivers, outputs, expected):
        assert result["objects"] == 201, result


def test_flow_control_keeps_small_windows_from_dropping_data(netlab, memory_dir):
    # Windows of three 4 MiB objects: without credit flow control the sender outruns them at once
    # (hundreds of thousands of window drops, sent again to everyone); with it, it waits for room.
    expected, payload, sender_host, hosts, outputs, receivers = _lab_session(
        netlab, memory_dir, 192 * MiB, 3, extra=["--window-mib", "13"])
    sender = start_sender(sender_host, payload, extra=["--expected", "r1,r2,r3", "--max-wait", "20"])
    code, report = finish(sender)
    assert code == 0, report
    _assert_all_done(report, ["r1", "r2", "r3"])
    assert report["flow_holds"] > 0, report
    # each hold is charged to the receiver(s) that had no room
    assert sum(r["holds"] for r in report["receivers"]) >= report["flow_holds"], report
    for result in _outputs_exact(receivers, outputs, expected):
        # a receiver starved of CPU for over a second may still drop a little; never a large share
        assert result["window_drops"] * 50 < result["datagrams"], result


def _fallback_session(netlab, tmp_path, size, count, sender_extra=(), environment=None):
    """A session without offload (--no-offload on both sides) that must deliver byte-exact to
    every receiver: (sender report, receiver reports)."""
    expected, payload, sender_host, hosts, outputs, receivers = _lab_session(
        netlab, tmp_path, size, count, extra=["--no-offload"], environment=environment)
    sender = start_sender(sender_host, payload, environment=environment,
                          extra=["--min-receivers", str(count), "--no-offload", "--object-size", str(MiB)]
                          + list(sender_extra))
    code, report = finish(sender)
    assert code == 0, report
    assert report["gso"] is False
    _assert_all_done(report, [host.name for host in hosts])
    results = _outputs_exact(receivers, outputs, expected)
    assert all(result["gro"] is False for result in results), results
    return report, results


def test_fallback_path_without_offload_and_with_encryption(netlab, tmp_path):
    report, results = _fallback_session(netlab, tmp_path, 24 * MiB + 12345, 2, sender_extra=["--encrypt"])
    assert report["encrypted"] is True and report["mmsg"] is True, report
    for result in results:
        assert result["encrypted"] is True and result["mmsg"] is True
        # recvmmsg really batches: far fewer receive calls than datagrams
        assert result["datagrams"] > (24 * MiB) // 1448 and result["receive_calls"] * 4 < result["datagrams"], result


def test_gro_that_coalesces_nothing_gives_way_to_batched_receives(netlab, tmp_path):
    # The switch port cuts GSO packets into single frames and this veth does no GRO: the socket
    # option is there but every call returns one datagram. The receiver notices and batches.
    expected, payload, sender_host, hosts, outputs, receivers = _lab_session(netlab, tmp_path, 48 * MiB, 1)
    netlab.segment_at_port(hosts[0])
    sender = start_sender(sender_host, payload, extra=["--expected", "r1"])
    code, report = finish(sender)
    assert code == 0, report
    assert report["gso"] is True
    _assert_all_done(report, ["r1"])
    (result,) = _outputs_exact(receivers, outputs, expected)
    assert result["gro_dropped"] is True and result["gro"] is False and result["mmsg"] is True, result
    assert result["receive_calls"] * 4 < result["datagrams"], result


def test_fallback_without_batched_system_calls(netlab, tmp_path):
    """FLEETCAST_NO_MMSG=1: the last resort, one system call per datagram on both sides."""
    report, results = _fallback_session(netlab, tmp_path, 3 * MiB + 4321, 1,
                                        environment={"FLEETCAST_NO_MMSG": "1"})
    assert report["mmsg"] is False, report
    for result in results:
        assert result["mmsg"] is False
        assert result["receive_calls"] == result["datagrams"] > (3 * MiB) // 1448, result


@pytest.mark.parametrize("loss", [5, 20])
def test_loss_is_repaired(netlab, tmp_path, loss):
    payload = tmp_path / "payload"
    expected = make_payload(payload, 32 * MiB)
    sender_host = netlab.add_host("srv")
    hosts = _receivers(netlab, 3)
    for host in hosts:
        host.drop_incoming_udp(loss)
    outputs = [tmp_path / f"out-{h.name}" for h in hosts]
    receivers = [start_receiver(h, out) for h, out in zip(hosts, outputs)]
    sender = start_sender(sender_host, payload, extra=["--expected", "r1,r2,r3", "--object-size", str(MiB)])
    code, report = finish(sender)
    assert code == 0, report
    _assert_all_done(report, ["r1", "r2", "r3"])
    assert report["repair_datagrams"] > 0
    for result in _outputs_exact(receivers, outputs, expected):
        assert result["fragment_requests"] + result["object_requests"] > 0


def test_receiver_cut_off_by_igmp_snooping_joins_again_and_completes(netlab, tmp_path):
    # The lab switch snoops IGMP. Forgetting r1's membership mid-stream (as when its report was
    # lost) stops the group reaching it until it reports again; the next query is minutes away.
    expected, payload, sender_host, hosts, outputs, receivers = _lab_session(netlab, tmp_path, 64 * MiB, 2)
    wait_for(lambda: netlab.memberships(GROUP) == ["r1", "r2"], 10, "the switch to learn both memberships")
    time.sleep(max(0.0, netlab.started + 1.5 - time.monotonic()))   # past the switch's flooding start
    # 20 MB/s: the stream lasts over three seconds, so the cut lands mid-stream
    sender = start_sender(sender_host, payload, extra=["--expected", "r1,r2", "--rate", "20000000"])
    wait_for(lambda: os.path.exists(str(outputs[0]) + ".partial"), 20, "r1 to start writing")
    # A receiver that heard nothing yet renews its membership, and the kernel repeats each report
    # up to 1 s later (IGMPv3's unsolicited report interval): cut only once such a repeat is past,
    # or it puts r1 back at once. The stream still has over two seconds to go.
    time.sleep(1.1)
    assert netlab.forget_membership(hosts[0], GROUP)
    assert "r1" not in netlab.memberships(GROUP)
    code, report = finish(sender, timeout=60)
    assert code == 0, report
    _assert_all_done(report, ["r1", "r2"])
    results = _outputs_exact(receivers, outputs, expected)
    assert results[0]["rejoins"] >= 1, results[0]


def test_killed_receiver_is_dropped_and_the_others_finish(netlab, tmp_path):
    expected, payload, sender_host, hosts, outputs, receivers = _lab_session(netlab, tmp_path, 96 * MiB, 3)
    started = time.monotonic()
    # 40 MB/s: the stream lasts over two seconds, so the kill lands mid-stream.
    # (8 s of patience: on a loaded two-core machine the 2.5 s stream can take over 5 s)
    sender = start_sender(sender_host, payload, extra=["--expected", "r1,r2,r3", "--rate", "40000000",
                                                       "--receiver-timeout", "8"])
    wait_for(lambda: os.path.exists(str(outputs[1]) + ".partial"), 20, "r2 to start writing")
    receivers[1].send_signal(signal.SIGKILL)
    killed_at = time.monotonic() - started
    code, report = finish(sender)
    assert code == 0, report
    by_name = {r["name"]: r for r in report["receivers"]}
    assert by_name["r2"]["state"] == "dropped"
    assert "no message for" in by_name["r2"]["reason"]
    # the sender's clock starts a little after ours: this bound is conservative
    assert by_name["r2"]["finished_at"] - killed_at <= 13
    _assert_all_done(report, ["r1", "r3"])
    # nobody waited for the dead one: the others were done before it was even declared dead
    assert max(by_name[n]["finished_at"] for n in ("r1", "r3")) < by_name["r2"]["finished_at"]
    _outputs_exact([receivers[0], receivers[2]], [outputs[0], outputs[2]], expected)
    assert not outputs[1].exists()


def test_late_receiver_joins_and_completes(netlab, tmp_path):
    payload = tmp_path / "payload"
    expected = make_payload(payload, 64 * MiB)
    sender_host = netlab.add_host("srv")
    hosts = _receivers(netlab, 3)
    outputs = [tmp_path / f"out-{h.name}" for h in hosts]
    receivers = [start_receiver(h, out) for h, out in zip(hosts[:2], outputs[:2])]
    # 20 MB/s: over three seconds of stream, so r3 joins well before the others could finish
    sender = start_sender(sender_host, payload, extra=["--min-receivers", "2", "--rate", "20000000"])
    wait_for(lambda: os.path.exists(str(outputs[0]) + ".partial"), 20, "r1 to start writing")
    time.sleep(0.3)
    receivers.append(start_receiver(hosts[2], outputs[2]))
    code, report = finish(sender)
    assert code == 0, report
    _assert_all_done(report, ["r1", "r2", "r3"])
    late = {r["name"]: r for r in report["receivers"]}["r3"]
    assert late["joined_at"] > min(r["joined_at"] for r in report["receivers"])
    results = _outputs_exact(receivers, outputs, expected)
    assert results[2]["object_requests"] > 0     # it fetched whole objects sent before it joined


OLD_SENDER = """
import socket, sys, time
from ansible_collections.fleetcast.imaging.plugins.module_utils._transport import wire
keys = wire.SessionKeys.derive(b"lab-session-key", 7)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(sys.argv[1]))
for seq in range(1, 60):
    announce = bytearray(wire.pack_control(keys, wire.ANNOUNCE, seq, bytes(wire.ANNOUNCE_BODY.size)))
    announce[1] = wire.VERSION - 1          # what a sender of the previous release sends
    sock.sendto(bytes(announce), (sys.argv[2], 9611))
    time.sleep(0.1)
"""


def test_receiver_names_a_sender_of_another_version(netlab, tmp_path):
    old = netlab.add_host("old")
    host = netlab.add_host("r1")
    output = tmp_path / "out"
    receiver = start_receiver(host, output, timeout=2)
    sender = old.popen(["/usr/bin/python3", "-c", OLD_SENDER, old.address, GROUP], env=env(),
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    code, result = finish(receiver)
    sender.kill()
    sender.communicate()
    assert code == 1 and result["failed"], result
    assert f"speaks wire version {wire.VERSION - 1}, this receiver {wire.VERSION}" in result["msg"], result
    assert not output.exists()


def test_wrong_key_receiver_writes_nothing(netlab, tmp_path):
    payload = tmp_path / "payload"
    expected = make_payload(payload, 8 * MiB)
    sender_host = netlab.add_host("srv")
    good_host, bad_host = _receivers(netlab, 2)
    good_out, bad_out = tmp_path / "good", tmp_path / "bad"
    good = start_receiver(good_host, good_out)
    bad = start_receiver(bad_host, bad_out, key="not-the-session-key", timeout=4)
    sender = start_sender(sender_host, payload, extra=["--min-receivers", "1", "--max-wait", "5"])
    code, report = finish(sender)
    assert code == 0, report
    assert [r["name"] for r in report["receivers"]] == ["r1"]
    code, result = finish(good)
    assert code == 0 and file_digest(good_out) == expected
    code, result = finish(bad)
    assert code == 1
    assert "different session key" in result["msg"] and "239.255.71.9:9611" in result["msg"]
    assert not bad_out.exists() and not os.path.exists(str(bad_out) + ".partial")


def test_two_sessions_on_one_group_and_port_each_reach_only_their_own(netlab, memory_dir):
    # two labs imaged at once on a shared LAN with the same (default) group and port: each
    # session's data is foreign traffic to the other's receivers, and must stay just that
    sessions = {}
    for tag in ("a", "b"):
        payload = memory_dir / f"payload-{tag}"
        expected = make_payload(payload, 64 * MiB, seed=tag.encode())
        sender_host = netlab.add_host(f"{tag}s")
        hosts = [netlab.add_host(f"{tag}{number}") for number in (1, 2)]
        outputs = [memory_dir / f"out-{h.name}" for h in hosts]
        receivers = [start_receiver(h, out, key=f"key-{tag}", timeout=60) for h, out in zip(hosts, outputs)]
        sessions[tag] = (payload, expected, sender_host, hosts, outputs, receivers)
    senders = {tag: start_sender(sender_host, payload, key=f"key-{tag}",
                                 extra=["--expected", ",".join(h.name for h in hosts), "--max-wait", "20"])
               for tag, (payload, _e, sender_host, hosts, _o, _r) in sessions.items()}
    for tag, (_p, expected, _s, hosts, outputs, receivers) in sessions.items():
        code, report = finish(senders[tag])
        assert code == 0, report
        assert sorted(r["name"] for r in report["receivers"]) == [h.name for h in hosts], report
        _assert_all_done(report, [h.name for h in hosts])
        for result in _outputs_exact(receivers, outputs, expected):
            assert result["digest"] == report["digest"] and result["rejected_objects"] == 0, result


def test_sender_death_leaves_receivers_failed_and_incomplete(netlab, tmp_path):
    payload = tmp_path / "payload"
    make_payload(payload, 64 * MiB)
    sender_host = netlab.add_host("srv")
    hosts = _receivers(netlab, 2)
    outputs = [tmp_path / f"out-{h.name}" for h in hosts]
    receivers = [start_receiver(h, out, timeout=3) for h, out in zip(hosts, outputs)]
    sender = start_sender(sender_host, payload, extra=["--min-receivers", "2", "--rate", "20000000"])
    wait_for(lambda: all(os.path.exists(str(o) + ".partial") for o in outputs), 20, "receivers to start")
    sender.send_signal(signal.SIGKILL)
    sender.communicate()
    for process, output in zip(receivers, outputs):
        code, result = finish(process, timeout=30)
        assert code == 1
        assert "went silent" in result["msg"] and "the output is incomplete" in result["msg"]
        assert "10.231.7.11" in result["msg"]      # names the sender
        assert not output.exists()
        assert os.path.exists(str(output) + ".partial")


def test_forged_and_replayed_datagrams_change_no_byte(netlab, tmp_path):
    from lab import GROUP, env
    attacker_script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "attacker.py")
    old_payload, payload = tmp_path / "old", tmp_path / "new"
    make_payload(old_payload, 4 * MiB, seed=b"old session")
    expected = make_payload(payload, 16 * MiB, seed=b"new session")
    sender_host = netlab.add_host("srv")
    hosts = _receivers(netlab, 2)
    attacker = netlab.add_host("evil")
    recorded = tmp_path / "recorded"

    def attack(mode, seconds):
        return attacker.popen(["/usr/bin/python3", attacker_script, mode, "--group", GROUP, "--port", "9611",
                               "--address", attacker.address, "--file", str(recorded), "--seconds", str(seconds)],
                              env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    # an earlier session with the same key, recorded by the attacker
    recorder = attack("record", 4)
    # the snooping switch forwards the group to the recorder only once it has its membership
    wait_for(lambda: "evil" in netlab.memberships(GROUP), 10, "the switch to learn the recorder's membership")
    first = [start_receiver(h, tmp_path / f"first-{h.name}") for h in hosts]
    code = finish(start_sender(sender_host, old_payload, extra=["--min-receivers", "2", "--rate", "20000000"]))[0]
    assert code == 0
    for process in first:
        assert finish(process)[0] == 0
    code, recorded_count = finish(recorder)
    assert recorded_count["recorded"] > 100

    # the live session, under replay and forgery
    injector = attack("inject", 5)
    time.sleep(0.3)
    outputs = [tmp_path / f"out-{h.name}" for h in hosts]
    receivers = [start_receiver(h, out) for h, out in zip(hosts, outputs)]
    code, report = finish(start_sender(sender_host, payload, extra=[
        "--expected", "r1,r2", "--rate", "10000000", "--object-size", str(MiB)]))
    assert code == 0, report
    _assert_all_done(report, ["r1", "r2"])
    assert sorted(r["name"] for r in report["receivers"]) == ["r1", "r2"]
    results = _outputs_exact(receivers, outputs, expected)
    code, sent = finish(injector)
    assert sent["replayed_old"] > 0 and sent["forged_data"] > 0 and sent["forged_control"] > 0
    assert sent["replayed_current"] > 0
    # forged data datagrams were seen and dropped on their own tag, before reassembly: no object
    # had to be rejected and fetched again
    assert sum(r["forged_datagrams"] for r in results) > 0, results
    assert sum(r["rejected_objects"] for r in results) == 0, results


def _count_udp_by_dscp(host, port):
    """nft counters in `host`'s namespace: incoming UDP to `port` (and port + 1) marked CS1, and not."""
    host.nft("table inet fleetcast_dscp {\n"
             " chain input { type filter hook input priority -10; policy accept;\n"
             f"  udp dport {{ {port}, {port + 1} }} ip dscp cs1 counter\n"
             f"  udp dport {{ {port}, {port + 1} }} ip dscp != cs1 counter\n"
             " }\n}\n")


def _dscp_counts(host):
    listed = host.run(["nft", "list", "table", "inet", "fleetcast_dscp"]).stdout
    marked, unmarked = [int(n) for n in re.findall(r"counter packets (\d+)", listed)]
    return marked, unmarked


def test_dscp_marks_every_datagram_of_the_session_both_ways(netlab, tmp_path):
    # A network engineer's QoS policy sees the class on the wire: the sender's data and control
    # at the receiver, the receiver's reports at the sender; nothing of the session goes unmarked.
    expected, payload, sender_host, hosts, outputs, receivers = _lab_session(
        netlab, tmp_path, 8 * MiB, 1, extra=["--dscp", "8"])
    for host in (sender_host, hosts[0]):
        _count_udp_by_dscp(host, 9611)
    sender = start_sender(sender_host, payload, extra=["--expected", "r1", "--dscp", "8"])
    code, report = finish(sender)
    assert code == 0, report
    _outputs_exact(receivers, outputs, expected)
    at_receiver, at_sender = _dscp_counts(hosts[0]), _dscp_counts(sender_host)
    # (the input hook counts a GRO buffer of up to 44 datagrams once)
    assert at_receiver[0] >= 8 * MiB // (44 * wire.DATAGRAM) and at_receiver[1] == 0, at_receiver
    assert at_sender[0] > 0 and at_sender[1] == 0, at_sender


def test_a_receiver_whose_done_ack_is_lost_learns_the_end_and_exits_at_once(netlab, tmp_path):
    # Every DONE_ACK to this receiver is lost (nftables drops its 44-byte datagrams: UDP length
    # 52). It has closed its group socket, so the END the sender sends the group does not reach it
    # either; the sender also sends END to every finished receiver's own address.
    expected, payload, sender_host, hosts, outputs, receivers = _lab_session(netlab, tmp_path, 4 * MiB, 1, timeout=40)
    hosts[0].filter_incoming("udp length 52 drop")
    sender = start_sender(sender_host, payload, extra=["--expected", "r1"])
    code, report = finish(sender)
    assert code == 0, report
    _assert_all_done(report, ["r1"])
    # without END on its own address it would send DONE until its 40 s timeout ran out
    _outputs_exact(receivers, outputs, expected, timeout=10)
