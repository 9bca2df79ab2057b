"""deploy.yml's identity check (playbooks/tasks/verify_identity.yml) reads the identity back from
the disk: it passes when the disk holds the saved identity and fails, naming host and disk, when
it does not (the summary's "identity yes" must mean the disk holds it)."""
import os
import re
import subprocess
import uuid

import pytest

from ansible_collections.fleetcast.imaging.plugins.module_utils._lab import standing
from ansible_collections.fleetcast.imaging.plugins.module_utils._lab.machine import LabMachine

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

PLAYBOOK = """\
- hosts: vh
  gather_facts: false
  tasks:
    - name: Take the saved record from the disk itself
      fleetcast.imaging.identity_snapshot:
        inventory_name: vh
        device: "{{{{ imaging_devices[0] }}}}"
      register: saved
      no_log: true
    - name: Keep it as identity_snapshot would
      ansible.builtin.set_fact:
        identity_snapshot_record: "{{{{ saved.record | combine({{'summary': {{'hostname': '{hostname}'}}}}, recursive=True) }}}}"
      no_log: true
    - name: Verify
      ansible.builtin.include_tasks: {tasks}
"""


def _verify(tmp_path, device, saved_hostname):
    (tmp_path / "inventory.yml").write_text(
        "all:\n  hosts:\n    vh: {ansible_connection: local, ansible_python_interpreter: /usr/bin/python3}\n")
    playbook = tmp_path / "verify.yml"
    playbook.write_text(PLAYBOOK.format(hostname=saved_hostname,
                                        tasks=os.path.join(ROOT, "playbooks", "tasks", "verify_identity.yml")))
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "tests", "ansible.cfg"),
               ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".build", "collections"),
               ANSIBLE_NOCOLOR="1", LC_ALL="C.UTF-8")
    run = subprocess.run([os.path.join(ROOT, ".venv", "bin", "ansible-playbook"), "-i",
                          str(tmp_path / "inventory.yml"), str(playbook), "-e", f'{{"imaging_devices": ["{device}"]}}'],
                         capture_output=True, text=True, env=env, timeout=120, check=False)
    return run, re.sub(r"\s+", " ", run.stdout)


@pytest.mark.timeout(120)
def test_identity_check_reads_the_disk(loop_disk, tmp_path):
    disk = loop_disk(192 << 20, "disk.img")
    machine = LabMachine(name="vh", role="participant", netns="", address="10.231.9.13",
                         mac="02:00:00:00:09:13", hostname="vh-old", machine_id=uuid.uuid4().hex)
    standing.write_dirty_participant(disk.path, machine, "10.231.9")

    good, out = _verify(tmp_path, disk.device, "vh-old")
    assert good.returncode == 0, good.stdout[-3000:]
    assert (f"vh: {disk.device} holds its own identity: hostname vh-old, machine-id {machine.machine_id}, "
            "2 SSH host key(s) as saved.") in out

    other, out = _verify(tmp_path, disk.device, "vh-new")
    assert other.returncode != 0
    assert re.search(rf"vh: after re-applying, {re.escape(disk.device)} holds \{{[^}}]*\"hostname\": \"vh-old\"[^}}]*\}} "
                     r"instead of \{[^}]*\"hostname\": \"vh-new\"", out), other.stdout[-3000:]
