# disk_info and disk_wipe run for real through `ansible localhost -m`, on loop disks made here.
import json
import os
import subprocess
import sys

from disk_helpers import blkid, sh

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
MiB = 1 << 20


def ansible(module, args, *flags):
    env = dict(os.environ, LC_ALL="C.UTF-8", ANSIBLE_CONFIG=os.path.join(ROOT, "tests", "ansible.cfg"),
               ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".build", "collections"),
               ANSIBLE_STDOUT_CALLBACK="minimal", ANSIBLE_CALLBACK_RESULT_FORMAT="json",
               ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0")
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible"), "localhost", "-m",
                           f"fleetcast.imaging.{module}", "-a", json.dumps(args), *flags],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=False)
    # minimal prints "localhost | SUCCESS => {...}" and, with --diff, the diff text before it
    head, dummy, body = proc.stdout.partition("localhost | ")
    status, dummy, payload = body.partition(" => ")
    result = json.loads(payload)
    result["failed"] = status.startswith("FAILED")
    return result, head


def _dirty(loop_disk):
    disk = loop_disk(32 * MiB)
    sh("sgdisk", "-n1:2048:+8M", "-c1:data", "-n2:0:+8M", disk.device)
    sh("mkfs.ext4", "-q", "-L", "keep", disk.window(2048 * 512, 8 * MiB))
    return disk


def test_disk_info_reports_partitions_filesystems_and_selection(loop_disk):
    disk = _dirty(loop_disk)
    result, dummy = ansible("disk_info", {"devices": [disk.device, "/dev/vda"]})
    assert result["changed"] is False and not result["failed"]
    mine = next(entry for entry in result["disks"] if entry["path"] == disk.device)
    assert (mine["label"], mine["is_loop"], mine["backing_file"]) == ("gpt", True, disk.path)
    assert [(p["number"], p["name"], p["fs"], p["fs_label"]) for p in mine["partitions"]] == [
        (1, "data", "ext4", "keep"), (2, "", None, None)]
    assert result["selected"] == [disk.device]
    assert result["refused"]["/dev/vda"].startswith("/dev/vda is the boot medium of this host")


def test_disk_wipe_check_mode_diff_then_wipe_then_idempotent(loop_disk):
    disk = _dirty(loop_disk)
    with open(disk.path, "rb") as handle:
        before = handle.read()
    checked, diff = ansible("disk_wipe", {"devices": [disk.device]}, "--check", "--diff")
    with open(disk.path, "rb") as handle:
        assert handle.read() == before
    assert checked["changed"] is True
    assert {sig["type"] for sig in checked["wiped"][0]["signatures"]} >= {"gpt", "PMBR", "ext4"}
    assert "-signature ext4 on partition 1" in diff and "-partition table: gpt" in diff

    wiped, dummy = ansible("disk_wipe", {"devices": [disk.device]})
    assert wiped["changed"] is True and wiped["wiped"][0]["label"] == "gpt"
    assert blkid(disk.device) == {} and blkid(disk.device, 2048 * 512, 8 * MiB) == {}

    again, dummy = ansible("disk_wipe", {"devices": [disk.device]})
    assert again["changed"] is False and again["wiped"][0]["changed"] is False


def test_disk_wipe_refuses_mounted_disk_and_touches_no_other(loop_disk, tmp_path):
    mounted, other = _dirty(loop_disk), _dirty(loop_disk)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    sh("mount", "-o", "ro", mounted.window(2048 * 512, 8 * MiB), mountpoint)
    try:
        result, dummy = ansible("disk_wipe", {"devices": [other.device, mounted.device], "force": True})
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)
    assert result["failed"] is True
    assert result["msg"] == f"{mounted.device} is in use: mounted at {mountpoint}. Nothing was wiped."
    assert blkid(other.device)["PTTYPE"] == "gpt"


def test_disk_wipe_argument_rules():
    result, dummy = ansible("disk_wipe", {"devices": ["/dev/null"], "all_fixed_disks": True})
    assert result["failed"] is True and "mutually exclusive" in result["msg"]
    result, dummy = ansible("disk_wipe", {"force": True})
    assert result["failed"] is True and "one of the following is required" in result["msg"]


def test_disk_wipe_secure_erase_reports_the_method_then_erases(loop_disk):
    disk = _dirty(loop_disk)
    with open(disk.device, "r+b") as handle:
        handle.seek(20 * MiB)
        handle.write(b"SECRET" * 1000)
    with open(disk.path, "rb") as handle:
        before = handle.read()
    checked, diff = ansible("disk_wipe", {"devices": [disk.device], "secure_erase": "auto"}, "--check", "--diff")
    with open(disk.path, "rb") as handle:
        assert handle.read() == before
    assert checked["wiped"][0]["secure_erase"]["method"] == "discard"  # loop devices discard
    assert "-all data: secure erase by discard" in diff
    erased, dummy = ansible("disk_wipe", {"devices": [disk.device], "secure_erase": "auto"})
    report = erased["wiped"][0]["secure_erase"]
    assert erased["changed"] and report["method"] == "discard" and report["bytes"] == 32 * MiB
    assert isinstance(report["seconds"], float)
    with open(disk.path, "rb") as handle:
        assert handle.read() == bytes(32 * MiB)
