"""boot.yml refuses to network-boot a participant the image server would not answer: a host
powered on by a hook but with no MAC in the inventory fails "not reached" at once, with the
reason, and is never powered on. No lab is needed: the play stops before any traffic."""
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


@pytest.mark.timeout(120)
def test_a_participant_without_a_mac_is_not_reached_and_never_powered_on(tmp_path):
    powered = tmp_path / "powered-on"
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(f"""\
all:
  vars: {{ansible_connection: local, ansible_python_interpreter: /usr/bin/python3}}
  children:
    imaging_server:
      hosts:
        imgsrv01:
    imaging_participants:
      hosts:
        ws02:
          imaging_boot_power: command
          imaging_boot_power_command: [touch, "{powered}"]
          imaging_boot_address: 127.0.0.1
          imaging_boot_timeout: 5
""")
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "tests", "ansible.cfg"),
               ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".build", "collections"),
               ANSIBLE_NOCOLOR="1", LC_ALL="C.UTF-8")
    run = subprocess.run([os.path.join(ROOT, ".venv", "bin", "ansible-playbook"), "-i", str(inventory),
                          os.path.join(ROOT, "playbooks", "boot.yml"), "--tags", "boot_wait"],
                         capture_output=True, text=True, env=env, timeout=110, check=False)
    out = re.sub(r"\s+", " ", run.stdout)
    assert ("ws02: not reached: no imaging_boot_mac in the inventory, so the image server does not "
            "answer its network boot") in out, run.stdout[-3000:]
    assert not powered.exists()
    assert "Wait for SSH on the reserved address" not in run.stdout
