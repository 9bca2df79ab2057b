# End to end through the real modules: ansible runs multicast_send and multicast_receive inside the
# lab's namespaces, from an image file to an image file and onto a loop disk.
import json
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lab import COLLECTIONS, GROUP, ROOT, file_digest  # noqa: E402

from ansible_collections.fleetcast.imaging.plugins.module_utils._image.capture import capture_to_file  # noqa: E402
from ansible_collections.fleetcast.imaging.plugins.module_utils._image.format import ImageReader  # noqa: E402

MiB = 1024 * 1024
KEY = "5f0c2a9e41b7d3c6"
pytestmark = pytest.mark.timeout(240)


def _ansible(host, module, args, check=False):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_CONFIG=os.path.join(ROOT, "tests", "ansible.cfg"),
               ANSIBLE_STDOUT_CALLBACK="minimal", ANSIBLE_CALLBACK_RESULT_FORMAT="json")
    argv = [os.path.join(ROOT, ".venv", "bin", "ansible"), "localhost", "-o", "-m", f"fleetcast.imaging.{module}",
            "-a", json.dumps(args)] + (["--check"] if check else [])
    return host.popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def _result(process, timeout=180):
    out, err = process.communicate(timeout=timeout)
    try:
        line = next(line for line in out.splitlines() if line.startswith("localhost | "))
        result = json.loads(line.split(" => ", 1)[1])
        result.setdefault("failed", line.startswith("localhost | FAILED"))
        return result
    except (ValueError, StopIteration, IndexError):
        raise AssertionError(f"no JSON result: {out[-2000:]} {err[-2000:]}") from None


@pytest.fixture
def master(tmp_path):
    raw = tmp_path / "master.raw"
    with open(raw, "wb") as out:
        out.write(os.urandom(9 * MiB))
        out.seek(24 * MiB)
        out.write(os.urandom(5 * MiB + 777))
        out.truncate(40 * MiB)
    image = tmp_path / "master.fcimg"
    manifest = capture_to_file([str(raw)], str(image))
    return raw, image, manifest.image_id


def test_image_file_to_image_file_and_to_loop_disk(netlab, loop_disk, tmp_path, master):
    raw, image, image_id = master
    server, pc1, pc2 = netlab.add_host("server"), netlab.add_host("pc1"), netlab.add_host("pc2")
    disk = loop_disk(40 * MiB, "pc2-disk.img")
    common = {"interface": "eth0", "group": GROUP, "port": 9700, "session_key": KEY, "timeout": 30}
    copy = tmp_path / "copy.fcimg"
    to_file = _ansible(pc1, "multicast_receive", dict(common, dest=str(copy), name="pc1"))
    to_disk = _ansible(pc2, "multicast_receive", dict(common, devices=[disk.device], name="pc2"))
    progress = tmp_path / "progress.json"
    sent = _result(_ansible(server, "multicast_send", dict(
        {k: v for k, v in common.items() if k != "timeout"}, image=str(image), expected=["pc1", "pc2"],
        max_wait=30, progress_file=str(progress))))
    assert not sent.get("failed"), sent
    assert sent["image_id"] == image_id and sent["changed"] is True
    states = {r["name"]: (r["state"], r["digest"], r["digest_matches"]) for r in sent["receivers"]}
    assert states == {"pc1": ("done", image_id, True), "pc2": ("done", image_id, True)}
    assert set(json.loads(progress.read_text())["receivers"]) == {"pc1", "pc2"}
    for process in (to_file, to_disk):
        received = _result(process)
        assert not received.get("failed"), received
        assert received["digest"] == image_id and received["changed"] is True
        assert received["chunks"] == 10
    with ImageReader(str(copy)) as reader:
        assert reader.manifest.image_id == image_id
        reader.verify()
    assert oct(os.stat(copy).st_mode & 0o777) == "0o600"
    assert not os.path.exists(str(copy) + ".partial")
    assert file_digest(disk.path) == file_digest(raw)


def test_check_mode_plans_and_sends_nothing(netlab, tmp_path, master):
    _raw, image, image_id = master
    server, pc1 = netlab.add_host("server"), netlab.add_host("pc1")
    plan = _result(_ansible(server, "multicast_send", {"image": str(image), "session_key": KEY}, check=True))
    assert plan["changed"] is False and plan["plan"]["image_id"] == image_id and plan["plan"]["chunks"] == 10
    dest = tmp_path / "never.fcimg"
    plan = _result(_ansible(pc1, "multicast_receive", {"dest": str(dest), "session_key": KEY}, check=True))
    assert plan["plan"]["dest"] == str(dest) and plan["plan"]["address"] == pc1.address
    assert not dest.exists()
    refused = _result(_ansible(pc1, "multicast_receive", {"devices": ["/nonexistent-disk"], "session_key": KEY},
                               check=True))
    assert refused["failed"] and "/nonexistent-disk" in refused["msg"]
    assert KEY not in json.dumps(refused)
    for module, args in (("multicast_send", {"image": str(image)}), ("multicast_receive", {"dest": str(dest)})):
        wrong = _result(_ansible(pc1, module, dict(args, session_key=KEY, dscp=64), check=True))
        assert wrong["failed"] and wrong["msg"].endswith(": dscp 64 is not a DSCP class (0 to 63; 8 is CS1, lower effort).")


def test_sender_without_receivers_fails_clearly(netlab, master):
    image = master[1]
    server = netlab.add_host("server")
    result = _result(_ansible(server, "multicast_send", {"image": str(image), "session_key": KEY, "port": 9701,
                                                         "expected": ["pc9"], "max_wait": 2}))
    assert result["failed"]
    assert result["msg"] == "Only 0 of the required 1 receivers joined the session on 239.255.42.1:9701 within 2 s."


def test_live_master_captured_while_sent(netlab, tmp_path, master):
    raw, _image, image_id = master
    server, pc1 = netlab.add_host("master"), netlab.add_host("pc1")
    copy = tmp_path / "live-copy.fcimg"
    common = {"group": GROUP, "port": 9702, "session_key": KEY}
    receiving = _ansible(pc1, "multicast_receive", dict(common, dest=str(copy), name="pc1", timeout=30))
    sent = _result(_ansible(server, "multicast_send", dict(common, source_devices=[str(raw)], expected=["pc1"],
                                                           spool_dir=str(tmp_path), encrypt=True)))
    assert not sent.get("failed"), sent
    assert sent["image_id"] == image_id and sent["encrypted"] is True
    assert [(r["name"], r["state"], r["digest_matches"]) for r in sent["receivers"]] == [("pc1", "done", True)]
    received = _result(receiving)
    assert received["digest"] == image_id
    with ImageReader(str(copy)) as reader:
        reader.verify()
        assert reader.manifest.image_id == image_id
    assert [name for name in os.listdir(tmp_path) if name.startswith("fleetcast-spool")] == []
