"""Refusals in deploy.yml's participant preflight read as sentences (no lab: one loop disk made here)."""
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

PLAY = """\
- hosts: ws01
  gather_facts: false
  tasks:
    - ansible.builtin.include_tasks: {tasks}
"""

INVENTORY = """\
all:
  vars: {{ansible_connection: local, ansible_python_interpreter: /usr/bin/python3}}
  children:
    imaging_server:
      hosts:
        srv01:
          imaging_image_manifest: {{disks: [{{index: 0, size: 1099511627776}}]}}
    imaging_participants:
      hosts:
        ws01: {{imaging_devices: ['{device}']}}
"""


@pytest.mark.timeout(120)
def test_a_too_small_disk_is_named_in_one_sentence(tmp_path, loop_disk):
    disk = loop_disk(8 << 20)
    (tmp_path / "inventory.yml").write_text(INVENTORY.format(device=disk.device))
    (tmp_path / "play.yml").write_text(PLAY.format(tasks=os.path.join(ROOT, "playbooks", "tasks",
                                                                      "preflight_participant.yml")))
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "tests", "ansible.cfg"),
               ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".build", "collections"),
               ANSIBLE_NOCOLOR="1", LC_ALL="C.UTF-8")
    run = subprocess.run([os.path.join(ROOT, ".venv", "bin", "ansible-playbook"), "-i",
                          str(tmp_path / "inventory.yml"), str(tmp_path / "play.yml")],
                         capture_output=True, text=True, env=env, timeout=120, check=False)
    out = re.sub(r"\s+", " ", run.stdout)
    assert run.returncode != 0
    assert (f"ws01: {disk.device} holds {8 << 20} bytes but image disk 0 needs 1099511627776, and a multicast session "
            "does not shrink partitions: give it a disk at least that large, or restore the image file with "
            "fleetcast.imaging.image_restore and shrink_last_partition." in out), out[-2000:]
    assert "[; '" not in out
