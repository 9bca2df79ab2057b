"""playbooks/summary.yml as deploy.yml ends with it, on hosts that are only inventory names (no
lab): the report is kept and linked, the summary reads well under the stock `default` callback
(one JSON string per line, never one string full of escaped newlines), and a --limit run keeps its
summary for the participants inside the limit."""
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

INVENTORY = """\
all:
  vars:
    ansible_connection: local
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  children:
    imaging_server:
      hosts:
        server:
    imaging_participants:
      hosts:
        p1:
        p2:
        p3:
"""

# What deploy.yml leaves per host: p1 imaged, p2 failed at multicast, p3 imaged.
PLAYBOOK = """\
- name: Stand in for deploy.yml's stages
  hosts: imaging_server:imaging_participants
  gather_facts: false
  tasks:
    - name: The image server's manifest
      ansible.builtin.set_fact:
        imaging_image_manifest: {path: /srv/images/ws.fcimg, image_id: "%(id)s", used_bytes: 4096}
      when: inventory_hostname == 'server'
    - name: An imaged participant
      ansible.builtin.set_fact:
        imaging_result: {ok: true, bytes: 4096, seconds: 1.5, digest: "%(id)s", digest_verified: true,
                         identity_reapplied: true, fsck_clean: true, fsck_checked: 2}
        identity_snapshot_record: {summary: {hostname: "{{ inventory_hostname }}", machine_id: "m-{{ inventory_hostname }}"}}
        imaging_identity_readback: {summary: {hostname: "{{ inventory_hostname }}", machine_id: "m-{{ inventory_hostname }}"}}
      when: inventory_hostname in ['p1', 'p3']
    - name: A participant that failed
      ansible.builtin.set_fact:
        imaging_result: {bytes: "-", seconds: "-"}
        imaging_failure: {stage: multicast, msg: "p2: no session was heard on eth0 within 30 seconds."}
      when: inventory_hostname == 'p2'

- name: Summary
  ansible.builtin.import_playbook: %(summary)s
""" % {"id": "ab" * 32, "summary": os.path.join(ROOT, "playbooks", "summary.yml")}


def _run(tmp_path, *extra):
    (tmp_path / "inventory.yml").write_text(INVENTORY)
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    (tmp_path / "ansible.cfg").write_text("[defaults]\n")
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".build", "collections"),
               ANSIBLE_NOCOLOR="1", LC_ALL="C.UTF-8",
               # The stock callback as a user has it: no repository ansible.cfg, JSON results.
               ANSIBLE_CONFIG=str(tmp_path / "ansible.cfg"), ANSIBLE_STDOUT_CALLBACK="default",
               ANSIBLE_CALLBACK_RESULT_FORMAT="json", ANSIBLE_HOST_KEY_CHECKING="False")
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"),
                           "-i", str(tmp_path / "inventory.yml"), str(tmp_path / "play.yml"),
                           "-e", f"imaging_report_dir={tmp_path / 'reports'}"] + list(extra),
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return proc.stdout


def _printed_lines(stdout):
    """The summary's lines as the default callback prints them: a JSON list under "msg"."""
    match = re.search(r'^ok: \[\w+\] => (\{\n    "msg": \[\n.*?\n\})$', stdout, re.M | re.S)
    assert match, stdout[-3000:]
    return json.loads(match.group(1))["msg"]


@pytest.mark.timeout(120)
def test_summary_lines_and_the_kept_report(tmp_path):
    out = _run(tmp_path)
    lines = _printed_lines(out)
    assert "\\n" not in out, "an escaped newline reached the output"
    assert lines[0].split() == ["host", "result", "bytes", "seconds", "identity", "digest", "fsck"]
    assert lines[1].split() == ["p1", "ok", "4096", "1.5", "yes", "yes", "clean"]
    assert lines[2].split() == ["p2", "FAILED", "-", "-", "no", "no", "-"]
    assert lines[3].split() == ["p3", "ok", "4096", "1.5", "yes", "yes", "clean"]
    assert lines[4] == "p2 failed at multicast: p2: no session was heard on eth0 within 30 seconds."
    assert lines[5] == "3 participant(s): 2 ok, 0 unchanged, 0 planned, 1 failed, 0 skipped"
    page, data = lines[6].split(": ", 1)[1], lines[7].split(": ", 1)[1]
    assert lines[6].startswith("Report: ") and os.path.dirname(page) == str(tmp_path / "reports")
    report = json.loads(open(data, encoding="utf-8").read())
    assert [host["name"] for host in report["hosts"]] == ["p1", "p2", "p3"]
    assert report["run"]["image"]["image_id"] == "ab" * 32 and report["run"]["limit"] is None
    # The run's start is the controller process's; times are ISO 8601 UTC, so they sort.
    assert report["run"]["started"] and report["run"]["started"] <= report["run"]["finished"]
    assert report["hosts"][0]["identity"]["checks"] == {"hostname": True, "machine_id": True}
    assert report["hosts"][1]["stages"]["multicast"] == "failed"
    text = open(page, encoding="utf-8").read()
    assert "- **p2** failed at multicast: p2: no session was heard on eth0 within 30 seconds." in text
    assert os.readlink(tmp_path / "reports" / "latest.json") == os.path.basename(data)


@pytest.mark.timeout(120)
def test_a_limited_run_keeps_its_summary(tmp_path):
    out = _run(tmp_path, "--limit", "p3:imaging_server")
    lines = _printed_lines(out)
    assert [line.split()[0] for line in lines[1:2]] == ["p3"]
    assert lines[2] == "1 participant(s): 1 ok, 0 unchanged, 0 planned, 0 failed, 0 skipped"
    report = json.loads(open(lines[-1].split(": ", 1)[1], encoding="utf-8").read())
    assert report["run"]["limit"] == "p3:imaging_server"
    assert [host["name"] for host in report["hosts"]] == ["p3"]


@pytest.mark.timeout(120)
def test_a_limit_without_the_server_still_has_a_summary(tmp_path):
    out = _run(tmp_path, "--limit", "p1,p2")
    lines = _printed_lines(out)
    assert [line.split()[0] for line in lines[1:3]] == ["p1", "p2"]
    assert textwrap.dedent(lines[3]) == "p2 failed at multicast: p2: no session was heard on eth0 within 30 seconds."
