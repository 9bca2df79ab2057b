"""The progress action plugin: a long module runs in the background, its progress file is shown
per poll, its own result comes back; on timeout the job's processes really end."""
import os
import re
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

# A module of the test's own (next to the playbook) that behaves like a transfer: writes progress,
# takes a while, and returns a result; or, told to hang, records its pid and sleeps.
SLOW_MODULE = '''#!/usr/bin/python3
DOCUMENTATION = """
module: slow_transfer
short_description: test stand-in for a transfer
options:
  steps: {type: int, description: [how many progress steps]}
  hang: {type: bool, description: [sleep instead]}
  pid_file: {type: path, description: [where to write the pid]}
  progress_file: {type: path, description: [where to write progress]}
  wait_for: {type: path, description: [after the first step, wait until this file exists]}
"""
import json, os, time
from ansible.module_utils.basic import AnsibleModule
m = AnsibleModule(argument_spec=dict(steps=dict(type="int", default=3), hang=dict(type="bool", default=False),
                  pid_file=dict(type="path"), progress_file=dict(type="path"), wait_for=dict(type="path")))
if m.params["hang"]:
    with open(m.params["pid_file"], "w") as f:
        f.write(str(os.getpid()))
    time.sleep(120)
for step in range(1, m.params["steps"] + 1):
    tmp = m.params["progress_file"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"bytes_done": step * 1048576, "bytes_total": m.params["steps"] * 1048576,
                   "receivers": {"p1": {"state": "receiving", "bytes_done": step * 1048576},
                                 "p2": {"state": "joined", "bytes_done": 0}}}, f)
    os.replace(tmp, m.params["progress_file"])
    if step == 1 and m.params["wait_for"]:
        for _ in range(600):
            if os.path.exists(m.params["wait_for"]):
                break
            time.sleep(0.1)
    time.sleep(0.2)
m.exit_json(changed=True, bytes_sent=m.params["steps"] * 1048576)
'''


def _playbook(tmp_path, tasks):
    (tmp_path / "library").mkdir(exist_ok=True)
    (tmp_path / "library" / "slow_transfer.py").write_text(SLOW_MODULE)
    (tmp_path / "play.yml").write_text(textwrap.dedent("""\
        - hosts: localhost
          connection: local
          gather_facts: false
          tasks:
        """) + textwrap.indent(textwrap.dedent(tasks), "    "))
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "tests", "ansible.cfg"),
               ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".build", "collections"),
               ANSIBLE_NOCOLOR="1", LC_ALL="C.UTF-8")
    return subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", "localhost,",
                           str(tmp_path / "play.yml")], capture_output=True, text=True, env=env,
                          timeout=120, cwd=tmp_path, check=False)


def _popen_playbook(tmp_path, tasks):
    (tmp_path / "library").mkdir(exist_ok=True)
    (tmp_path / "library" / "slow_transfer.py").write_text(SLOW_MODULE)
    (tmp_path / "play.yml").write_text(textwrap.dedent("""\
        - hosts: localhost
          connection: local
          gather_facts: false
          tasks:
        """) + textwrap.indent(textwrap.dedent(tasks), "    "))
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "tests", "ansible.cfg"),
               ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".build", "collections"),
               ANSIBLE_NOCOLOR="1", LC_ALL="C.UTF-8")
    return subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", "localhost,",
                             str(tmp_path / "play.yml")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=tmp_path)


@pytest.mark.timeout(120)
def test_progress_lines_then_the_module_result(tmp_path):
    # The module holds after its first step until the test has seen that step shown: no race.
    flag = tmp_path / "seen"
    proc = _popen_playbook(tmp_path, f"""\
        - name: Transfer
          fleetcast.imaging.progress:
            module: slow_transfer
            module_args: {{steps: 4, wait_for: {flag}}}
            progress_option: progress_file
            poll_interval: 0.5
          register: transfer
        - name: Show
          ansible.builtin.debug:
            msg: "sent={{{{ transfer.bytes_sent }}}} changed={{{{ transfer.changed }}}} total={{{{ transfer.progress_last.bytes_total }}}}"
        """)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if re.match(r"^localhost: \d+:\d\d slowest 1\.0 MiB of 4\.0 MiB \(25%\), [\d.]+ MiB/s "
                    r"\| p1 receiving 25%, p2 joined 0%$", line):
            flag.touch()
    stderr = proc.stderr.read()
    assert proc.wait() == 0, "".join(seen) + stderr
    assert flag.exists(), "the first step was never shown: " + "".join(seen)
    assert "sent=4194304 changed=True total=4194304" in "".join(seen)


@pytest.mark.timeout(120)
def test_timeout_cancels_the_job_and_says_so(tmp_path):
    pid_file = tmp_path / "pid"
    proc = _playbook(tmp_path, f"""\
        - name: Transfer that hangs
          fleetcast.imaging.progress:
            module: slow_transfer
            module_args: {{hang: true, pid_file: {pid_file}}}
            timeout: 3
            poll_interval: 0.5
        """)
    assert proc.returncode != 0
    assert "slow_transfer on localhost did not finish within 3 seconds and was cancelled." in proc.stdout
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{pid}"), "the hanging module is still running"


@pytest.mark.timeout(120)
def test_a_module_without_the_progress_option_runs_with_elapsed_time_only(tmp_path):
    # The command ends only once the test has seen a progress line: no race with the polls.
    flag = tmp_path / "seen"
    (tmp_path / "library").mkdir()
    (tmp_path / "play.yml").write_text(textwrap.dedent(f"""\
        - hosts: localhost
          connection: local
          gather_facts: false
          tasks:
            - name: Plain command
              fleetcast.imaging.progress:
                module: ansible.builtin.command
                module_args:
                  argv: [sh, -c, "for i in $(seq 600); do [ -e {flag} ] && break; sleep 0.1; done; echo finished"]
                progress_option: progress_file
                poll_interval: 0.5
              register: plain
            - name: Show
              ansible.builtin.debug:
                msg: "out={{{{ plain.stdout }}}} rc={{{{ plain.rc }}}}"
        """))
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "tests", "ansible.cfg"),
               ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".build", "collections"),
               ANSIBLE_NOCOLOR="1", LC_ALL="C.UTF-8")
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", "localhost,",
                             str(tmp_path / "play.yml")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=tmp_path)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if re.match(r"^localhost: \d+:\d\d running$", line):
            flag.touch()
    stderr = proc.stderr.read()
    assert proc.wait() == 0, "".join(seen) + stderr
    assert flag.exists(), "no progress line was shown: " + "".join(seen)
    assert "ansible.builtin.command has no option progress_file" in stderr
    assert "out=finished rc=0" in "".join(seen)
