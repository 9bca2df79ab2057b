# A hostile or faulty LAN: forgeries and fuzzing from another lab host (its genuine address, with
# its own or the sender's Ethernet address; or with the sender's Ethernet and IP addresses both: it
# then answers ARP for the sender, and its own forged reports to the sender's address never leave
# it), a receiver data cannot reach, a receiver that stops for a while. Every output is compared byte for byte; nobody good may be reported as failed.
import json
import os
import signal
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lab import ENGINE, GROUP, env, file_digest, finish, make_payload, start_receiver, start_sender, wait_for  # noqa: E402

MiB = 1024 * 1024
HOSTILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hostile.py")
KINDS = ["bits", "fields", "payload", "future", "flood", "lengths", "control"]

pytestmark = pytest.mark.timeout(240)


def _sizes(count, seed):
    import random
    generator = random.Random(seed)
    return [int(3 * 1024 * (4 * MiB / (3 * 1024)) ** generator.random()) for dummy in range(count)]


def _streaming_sender(host, sizes, extra=()):
    """A sender reading its payload from a pipe (``--file -``): the session lasts until the pipe
    is closed, however slowly this shared machine runs the attack."""
    argv = ENGINE + ["send", "--group", GROUP, "--port", "9611", "--file", "-",
                     "--object-sizes", ",".join(map(str, sizes))] + list(extra)
    return host.popen(argv, env=env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
@pytest.mark.parametrize("sender_mac,sender_address", [(False, False), (True, False), (True, True)],
                         ids=["own-mac", "sender-mac", "sender-mac-and-address"])
def test_fuzzed_forged_and_flooded_session_ends_byte_exact_for_everyone(netlab, memory_dir, sender_mac, sender_address):
    sizes = _sizes(60, seed=11)
    payload = memory_dir / "payload"
    expected = make_payload(payload, sum(sizes))
    sender_host = netlab.add_host("srv")
    hosts = [netlab.add_host("r1"), netlab.add_host("r2")]
    evil = netlab.add_host("evil")
    if sender_mac:
        # frames from the sender's Ethernet address on another port: the switch forwards the
        # sender's unicast to the attacker whenever it last heard the attacker
        evil.run(["ip", "link", "set", "eth0", "address", sender_host.mac])
    outputs = [memory_dir / f"out-{h.name}" for h in hosts]
    receivers = [start_receiver(h, out, timeout=60) for h, out in zip(hosts, outputs)]
    sender = _streaming_sender(sender_host, sizes, ["--expected", "r1,r2"])
    attacker = evil.popen(["/usr/bin/python3", HOSTILE, "--group", GROUP, "--port", "9611", "--address", evil.address,
                           "--sender", sender_host.address, "--per-kind", "100000"]
                          + (["--source", sender_host.address] if sender_address else []),
                          env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # the payload goes in a piece at a time while the attack lasts, the last piece once it is over:
    # every forgery reaches receivers of a live session with objects still to come
    with open(payload, "rb") as source:
        while attacker.poll() is None:
            piece = source.read(MiB)
            if piece and len(piece) == MiB:
                sender.stdin.write(piece)
                sender.stdin.flush()
            elif piece:
                source.seek(-len(piece), os.SEEK_CUR)
            time.sleep(0.2)
        rest = source.read()
    code, sent = finish(attacker, timeout=30)
    out, err = sender.communicate(input=rest, timeout=120)
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    assert sender.returncode == 0 and lines, err.decode()[-3000:]
    report = json.loads(lines[-1])
    by_name = {r["name"]: r for r in report["receivers"]}
    assert sorted(by_name) == ["r1", "r2"], report
    for name in ("r1", "r2"):
        assert by_name[name]["state"] == "done" and by_name[name]["digest_matches"], json.dumps(by_name[name])
    forged = 0
    for process, output in zip(receivers, outputs):
        code, result = finish(process)
        assert code == 0, result
        assert file_digest(output) == expected
        assert result["rejected_objects"] == 0, result      # nothing forged reached reassembly
        forged += result["forged_datagrams"]
    assert "error" not in sent, sent
    assert all(sent[kind] >= 100000 for kind in KINDS), sent
    assert forged > 0


def test_receiver_that_data_cannot_reach_fails_with_its_reason_and_the_others_finish(netlab, memory_dir):
    # r3's interface takes 1400-byte frames: it hears the sender's control messages (all shorter)
    # but none of the 1472-byte data datagrams
    payload = memory_dir / "payload"
    expected = make_payload(payload, 48 * MiB)
    sender_host = netlab.add_host("srv")
    hosts = [netlab.add_host(f"r{i + 1}") for i in range(3)]
    hosts[2].narrow_path(1400)
    outputs = [memory_dir / f"out-{h.name}" for h in hosts]
    receivers = [start_receiver(h, out) for h, out in zip(hosts, outputs)]
    sender = start_sender(sender_host, payload, extra=["--expected", "r1,r2,r3", "--rate", "8000000"])
    code, report = finish(sender)
    assert code == 0, report
    by_name = {r["name"]: r for r in report["receivers"]}
    for name in ("r1", "r2"):
        assert by_name[name]["state"] == "done" and by_name[name]["digest_matches"], by_name[name]
    # the sender reports the receiver's own sentence
    assert by_name["r3"]["state"] == "failed", f"{by_name['r3']}"
    assert "do not get through" in by_name["r3"]["reason"], by_name["r3"]
    for process, output in zip(receivers[:2], outputs[:2]):
        code, result = finish(process)
        assert code == 0 and file_digest(output) == expected, result
    code, result = finish(receivers[2])
    assert code == 1, result
    assert "none of the data it sent reached this host" in result["msg"] and "smaller MTU" in result["msg"], result
    assert " (0 of " in result["msg"], result          # not a single object: no GSO batch slipped through
    assert "10.231.7.11" in result["msg"]
    assert not outputs[2].exists()


def test_receiver_dropped_for_silence_is_served_again_when_it_comes_back(netlab, memory_dir):
    payload = memory_dir / "payload"
    expected = make_payload(payload, 64 * MiB)
    sender_host = netlab.add_host("srv")
    hosts = [netlab.add_host("r1"), netlab.add_host("r2")]
    outputs = [memory_dir / f"out-{h.name}" for h in hosts]
    receivers = [start_receiver(h, out) for h, out in zip(hosts, outputs)]
    # 8 MB/s: eight seconds of stream; r2 stops for 2.5 s of it, twice its sender's patience
    sender = start_sender(sender_host, payload, extra=["--expected", "r1,r2", "--rate", "8000000",
                                                       "--receiver-timeout", "1.2"])
    wait_for(lambda: os.path.exists(str(outputs[1]) + ".partial"), 20, "r2 to start writing")
    # the CLI runs under `ip netns exec`, which execs: the Popen pid is the receiver's
    os.kill(receivers[1].pid, signal.SIGSTOP)
    time.sleep(2.5)
    os.kill(receivers[1].pid, signal.SIGCONT)
    code, report = finish(sender)
    assert code == 0, report
    by_name = {r["name"]: r for r in report["receivers"]}
    assert by_name["r2"]["state"] == "done" and by_name["r2"]["digest_matches"], by_name["r2"]
    assert by_name["r2"]["readmitted"] >= 1, by_name["r2"]
    assert by_name["r1"]["state"] == "done" and by_name["r1"]["readmitted"] == 0, by_name["r1"]
    for process, output in zip(receivers, outputs):
        code, result = finish(process)
        assert code == 0 and file_digest(output) == expected, result
