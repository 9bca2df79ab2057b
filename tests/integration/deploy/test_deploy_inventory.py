"""deploy.yml and capture.yml refuse an inventory they cannot serve with one sentence naming the
host, before any disk is read: no image server or master, an image server left out by --limit, no
image named. No lab is needed: nothing past the first check runs."""
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _deploy(tmp_path, inventory, *extra, playbook="deploy.yml"):
    path = tmp_path / "inventory.yml"
    path.write_text(inventory)
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "tests", "ansible.cfg"),
               ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".build", "collections"),
               ANSIBLE_NOCOLOR="1", LC_ALL="C.UTF-8")
    run = subprocess.run([os.path.join(ROOT, ".venv", "bin", "ansible-playbook"), "-i", str(path),
                          os.path.join(ROOT, "playbooks", playbook), *extra],
                         capture_output=True, text=True, env=env, timeout=120, check=False)
    # The summary's reason, unfolded.
    return run, re.sub(r"\s+", " ", run.stdout)


def _assert_refused(run, out, *sentences):
    """The play failed, and the summary says each sentence."""
    assert run.returncode != 0
    for sentence in sentences:
        assert sentence in out, run.stdout[-3000:]


def _assert_refused_before_disks(run, out, *sentences):
    """Refused, and before any participant's disk was read."""
    _assert_refused(run, out, *sentences)
    assert "Read the participant's listed disks" not in run.stdout


PARTICIPANT = """\
all:
  vars: {ansible_connection: local, ansible_python_interpreter: /usr/bin/python3}
  children:
    imaging_participants:
      hosts:
        ws01: {imaging_devices: [/nonexistent/fleetcast-test-disk]}
"""


@pytest.mark.timeout(120)
def test_an_inventory_without_an_image_server_is_refused(tmp_path):
    run, out = _deploy(tmp_path, PARTICIPANT)
    _assert_refused_before_disks(run, out, "ws01 failed at preflight: ws01: the inventory must name exactly one "
                                 "image server in the group imaging_server, and it names 0.")


@pytest.mark.timeout(120)
def test_an_image_server_left_out_by_limit_is_named(tmp_path):
    run, out = _deploy(tmp_path, PARTICIPANT + "    imaging_server:\n      hosts:\n        imgsrv01:\n",
                       "--limit", "ws01")
    _assert_refused_before_disks(run, out, "ws01 failed at preflight: ws01: the image server imgsrv01 did not run "
                                 "its preflight (it is unreachable, or left out by --limit: keep it in the limit).")


@pytest.mark.timeout(120)
def test_an_image_server_without_an_image_name_says_what_to_set(tmp_path):
    run, out = _deploy(tmp_path, PARTICIPANT + "    imaging_server:\n      hosts:\n        imgsrv01:\n")
    _assert_refused_before_disks(
        run, out,
        "imgsrv01 failed at preflight: imgsrv01: set imaging_image_name (the image file's name, without "
        "directory or .fcimg) and imaging_image_dir (the directory of images on this server).",
        "ws01 failed at preflight: The image server imgsrv01 failed its preflight: imgsrv01: set "
        "imaging_image_name")


@pytest.mark.timeout(120)
def test_capture_without_a_master_or_an_image_name_is_refused(tmp_path):
    run, out = _deploy(tmp_path, "all:\n  vars: {ansible_connection: local}\n  children:\n"
                       "    imaging_server:\n      hosts:\n        imgsrv01:\n", playbook="capture.yml")
    _assert_refused(run, out, "imgsrv01 failed at capture: imgsrv01: the inventory must name exactly one master "
                    "workstation in the group imaging_master, and it names 0.")
    run, out = _deploy(tmp_path, "all:\n  vars: {ansible_connection: local}\n  children:\n"
                       "    imaging_master:\n      hosts:\n        m1:\n"
                       "    imaging_server:\n      hosts:\n        imgsrv01:\n", playbook="capture.yml")
    _assert_refused(run, out, "imgsrv01 failed at capture: imgsrv01: set imaging_image_name (the name of the image "
                    "file, without directory or .fcimg) and imaging_image_dir (the directory of images on this server).")


FAILED_AT_BOOT = """\
all:
  vars: {ansible_connection: local, ansible_python_interpreter: /usr/bin/python3}
  children:
    imaging_server:
      hosts:
        imgsrv01:
    imaging_participants:
      hosts:
        ws01:
          imaging_failure: {stage: boot, msg: "ws01: not reached: no SSH answer"}
        ws02:
"""


@pytest.mark.timeout(120)
def test_capture_s_report_leaves_participants_to_deploy_s(tmp_path):
    # `boot.yml capture.yml deploy.yml`: ansible-playbook runs no later playbook once a host failed
    # in an earlier one, so capture.yml's report must not fail a participant boot.yml did not
    # reach (deploy.yml's report does, after the others were deployed).
    run, out = _deploy(tmp_path, FAILED_AT_BOOT, "-e", "imaging_report_capture_only=true", playbook="report.yml")
    assert run.returncode == 0, run.stdout[-3000:]
    run, out = _deploy(tmp_path, FAILED_AT_BOOT, playbook="report.yml")
    _assert_refused(run, out, "ws01 failed at boot: ws01: not reached: no SSH answer")
    assert "ws02 failed" not in out
