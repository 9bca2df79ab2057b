# The image<->transport bridge through the real modules, run as processes inside the lab's
# namespaces (so that a test can signal the module process itself): cancellation, resume, and the
# one-sentence failures (disk full, a vanished interface, a sender of another wire version).
import json
import os
import signal
import subprocess
import sys
import uuid

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lab import COLLECTIONS, GROUP, ROOT, file_digest, wait_for  # noqa: E402

from ansible_collections.fleetcast.imaging.plugins.module_utils._image.capture import capture_to_file  # noqa: E402
from ansible_collections.fleetcast.imaging.plugins.module_utils._image.format import ImageReader  # noqa: E402
from ansible_collections.fleetcast.imaging.plugins.module_utils._transport import wire  # noqa: E402

MiB = 1024 * 1024
PYTHON = os.path.join(ROOT, ".venv", "bin", "python")
MODULES = os.path.join(ROOT, "plugins", "modules")
pytestmark = pytest.mark.timeout(240)


def run_module(host, module, args, directory, shell=None):
    """Start a module as its own process in `host`'s namespace (AnsibleModule reads its arguments
    from a JSON file); `shell` wraps the command line (it receives it as "$@") in a private mount
    namespace."""
    args_file = os.path.join(str(directory), f"{module}-{uuid.uuid4().hex[:8]}.json")
    with open(args_file, "w", encoding="utf-8") as out:
        json.dump({"ANSIBLE_MODULE_ARGS": args}, out)
    argv = [PYTHON, os.path.join(MODULES, module + ".py"), args_file]
    if shell:
        argv = ["unshare", "-m", "sh", "-c", shell, "sh"] + argv
    return host.popen(argv, env=dict(os.environ, PYTHONPATH=COLLECTIONS), stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE, text=True)


def module_result(process, timeout=120):
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"the module did not end within {timeout} s: {err[-2000:]}") from None
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert lines, f"no result (exit {process.returncode}): {out[-2000:]} {err[-2000:]}"
    assert "Traceback" not in out + err, out + err
    result = json.loads(lines[-1])
    result["_stdout"] = out
    return result


def one_sentence(message):
    body = message.rstrip(".")
    return message.endswith(".") and ". " not in body and "\n" not in message


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """An image whose chunks compress to very different sizes (random, text-like, zeros)."""
    directory = tmp_path_factory.mktemp("bridge-image")
    raw = directory / "master.raw"
    with open(raw, "wb") as out:
        for number in range(24):
            kind = number % 3
            if kind == 0:
                out.write(os.urandom(MiB))
            elif kind == 1:
                out.write((b"fleetcast %d " % number) * (MiB // 16) + os.urandom(MiB // 2))
            else:
                out.seek(MiB, os.SEEK_CUR)
        out.truncate(24 * MiB)
    path = directory / "master.fcimg"
    manifest = capture_to_file([str(raw)], str(path), chunk_size=MiB)
    return raw, path, manifest


def _sender(host, image_path, port, key, directory, **extra):
    args = dict(image=str(image_path), interface="eth0", group=GROUP, port=port, session_key=key,
                max_wait=20, receiver_timeout=4)
    args.update(extra)
    return run_module(host, "multicast_send", args, directory)


def _receiver(host, port, key, directory, shell=None, **extra):
    args = dict(interface="eth0", group=GROUP, port=port, session_key=key, name=host.name, timeout=20)
    args.update(extra)
    return run_module(host, "multicast_receive", args, directory, shell)


def _size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def test_sigterm_to_the_sender_makes_receivers_stop_at_once(netlab, tmp_path, image):
    raw, path, manifest = image
    server, r1, r2 = netlab.add_host("server"), netlab.add_host("r1"), netlab.add_host("r2")
    outputs = [tmp_path / "r1.fcimg", tmp_path / "r2.fcimg"]
    receivers = [_receiver(host, 9721, "k-abort", tmp_path, dest=str(out), timeout=60)
                 for host, out in zip((r1, r2), outputs)]
    sender = _sender(server, path, 9721, "k-abort", tmp_path, expected=["r1", "r2"], rate_mbit=16)
    wait_for(lambda: all(_size(str(out) + ".partial") > 2 * MiB for out in outputs), 60, "both receivers under way")
    sender.send_signal(signal.SIGTERM)
    sent = module_result(sender, timeout=20)
    assert sent.get("failed") and "was cancelled (SIGTERM)" in sent["msg"], sent
    assert "told that the sender aborted" in sent["msg"] and one_sentence(sent["msg"]), sent["msg"]
    for host, process, out in zip((r1, r2), receivers, outputs):
        # their timeout is 60 s: ending within 10 s means they heard the abort, and say so
        received = module_result(process, timeout=10)
        assert received.get("failed"), received
        assert received["msg"].startswith(f"{host.name}: Sender {server.address} aborted the session"), received["msg"]
        assert "the output is incomplete" in received["msg"] and one_sentence(received["msg"]), received["msg"]
        assert not out.exists()
        assert os.path.exists(str(out) + ".partial")     # kept for a resume


@pytest.mark.parametrize("output", ["file", "disk"])
def test_an_interrupted_receive_resumes_from_what_it_verified(netlab, loop_disk, tmp_path, image, output):
    raw, path, manifest = image
    server, r1 = netlab.add_host("server"), netlab.add_host("r1")
    if output == "file":
        dest = tmp_path / "copy.fcimg"
        where = dict(dest=str(dest))

        def progress():
            return _size(str(dest) + ".partial")
    else:
        disk = loop_disk(24 * MiB, "r1.disk")
        where = dict(devices=[disk.device], resume_dir=str(tmp_path / "journal"))
        journal = tmp_path / "journal" / (os.path.basename(disk.device) + ".journal")

        def progress():
            return _size(str(journal))
    # First session: slow, and the receiver is killed (no clean-up at all) half-way.
    receiver = _receiver(r1, 9722, "k-first", tmp_path, **where)
    sender = _sender(server, path, 9722, "k-first", tmp_path, expected=["r1"], rate_mbit=24)
    half = manifest.stored_bytes // 2 if output == "file" else 6 * 150      # journal lines are ~150 bytes
    wait_for(lambda: progress() > half, 60, "the first receive to get half-way")
    receiver.send_signal(signal.SIGKILL)
    receiver.communicate()
    sender.send_signal(signal.SIGTERM)
    module_result(sender, timeout=20)
    # Second session, another key: the receiver keeps what verifies and takes only the rest.
    receiver = _receiver(r1, 9723, "k-second", tmp_path, **where)
    sent = module_result(_sender(server, path, 9723, "k-second", tmp_path, expected=["r1"]))
    received = module_result(receiver)
    assert not sent.get("failed") and not received.get("failed"), (sent, received)
    # the rate's cuts for a slow path ahead of a receiver, and whose loss made them
    assert sent["rate_cuts_for_loss"] >= 0 and all("loss_cuts" in r for r in sent["receivers"]), sent
    assert received["digest"] == manifest.image_id
    assert 0 < received["resumed_chunks"] < manifest.chunk_count, received
    assert received["resumed_chunks"] + received["chunks"] == manifest.chunk_count, received
    if output == "file":
        # the image file keeps a prefix of the chunks: the sender skips them, its only receiver has them
        assert 0 < sent["skipped_chunks"] <= received["resumed_chunks"], sent
        with ImageReader(str(dest)) as reader:
            reader.verify()
            assert reader.manifest.image_id == manifest.image_id
        assert not os.path.exists(str(dest) + ".partial") and not os.path.exists(str(dest) + ".partial.journal")
    else:
        assert file_digest(disk.path) == file_digest(raw)
        assert not journal.exists()


def test_a_full_disk_is_one_sentence_and_leaves_no_partial(netlab, tmp_path, image):
    raw, path, manifest = image
    server, r1 = netlab.add_host("server"), netlab.add_host("r1")
    small = tmp_path / "small"
    small.mkdir()
    dest = small / "copy.fcimg"
    # a 4 MiB tmpfs that only this receiver's private mount namespace sees; listed after the module
    shell = f'mount -t tmpfs -o size=4m fleetcast-test {small} && "$@"; echo "left: $(ls -A {small})"'
    receiver = _receiver(r1, 9724, "k-full", tmp_path, shell=shell, dest=str(dest))
    sender = _sender(server, path, 9724, "k-full", tmp_path, expected=["r1"])
    received = module_result(receiver)
    module_result(sender)
    assert received.get("failed"), received
    assert received["msg"].startswith(f"r1 ran out of space writing {dest}.partial after "), received["msg"]
    assert "the partial image was removed" in received["msg"] and one_sentence(received["msg"]), received["msg"]
    assert "left: \n" in received["_stdout"] or received["_stdout"].rstrip().endswith("left:"), received["_stdout"]


def test_a_vanished_interface_is_one_sentence(netlab, tmp_path, image):
    raw, path, manifest = image
    server, r1 = netlab.add_host("server"), netlab.add_host("r1")
    missing = module_result(_receiver(r1, 9725, "k-if", tmp_path, dest=str(tmp_path / "x"), interface="lab9"))
    assert missing.get("failed") and missing["msg"].startswith("r1: Interface lab9 has no IPv4 address"), missing
    assert one_sentence(missing["msg"]), missing["msg"]
    receiver = _receiver(r1, 9725, "k-if", tmp_path, dest=str(tmp_path / "copy"), timeout=3)
    sender = _sender(server, path, 9725, "k-if", tmp_path, expected=["r1"], rate_mbit=16)
    wait_for(lambda: _size(str(tmp_path / "copy.partial")) > MiB, 60, "the receive to be under way")
    server.run(["ip", "link", "del", "eth0"])
    sent = module_result(sender, timeout=30)
    assert sent.get("failed") and "interface eth0 vanished during the multicast session" in sent["msg"], sent
    assert one_sentence(sent["msg"]), sent["msg"]
    received = module_result(receiver, timeout=30)
    assert received.get("failed") and received["msg"].startswith("r1: Sender"), received
    assert one_sentence(received["msg"]), received["msg"]


OLD_SENDER = r"""
import socket, sys, time
from ansible_collections.fleetcast.imaging.plugins.module_utils._transport import wire
keys = wire.SessionKeys.derive(b"k-old", 7)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(sys.argv[1]))
for seq in range(1, 40):
    announce = bytearray(wire.pack_control(keys, wire.ANNOUNCE, seq, bytes(wire.ANNOUNCE_BODY.size)))
    announce[1] = wire.VERSION + 1          # a sender of a later release
    sock.sendto(bytes(announce), (sys.argv[2], 9726))
    time.sleep(0.1)
"""


def test_a_sender_of_another_wire_version_is_named(netlab, tmp_path):
    old, r1 = netlab.add_host("old"), netlab.add_host("r1")
    receiver = _receiver(r1, 9726, "k-old", tmp_path, dest=str(tmp_path / "copy"), timeout=2)
    sender = old.popen([PYTHON, "-c", OLD_SENDER, old.address, GROUP], env=dict(os.environ, PYTHONPATH=COLLECTIONS),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    received = module_result(receiver)
    sender.kill()
    sender.communicate()
    assert received.get("failed"), received
    assert received["msg"].startswith("r1: No multicast session of this version"), received["msg"]
    assert f"speaks wire version {wire.VERSION + 1}, this receiver {wire.VERSION}" in received["msg"]
    assert one_sentence(received["msg"]), received["msg"]
    assert not os.path.exists(str(tmp_path / "copy.partial"))
