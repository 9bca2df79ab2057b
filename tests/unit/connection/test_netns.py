"""The netns connection plugin: tasks really run inside the named namespace, and a missing
namespace is an unreachable host with a clear message."""
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
ANSIBLE_PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")


def _run_playbook(tmp_path, inventory, playbook):
    (tmp_path / "inventory.yml").write_text(inventory)
    (tmp_path / "play.yml").write_text(playbook)
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "tests", "ansible.cfg"),
               ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".build", "collections"),
               ANSIBLE_NOCOLOR="1", LC_ALL="C.UTF-8")
    return subprocess.run([ANSIBLE_PLAYBOOK, "-i", str(tmp_path / "inventory.yml"),
                           str(tmp_path / "play.yml")], capture_output=True, text=True, env=env,
                          timeout=120, check=False)


@pytest.mark.timeout(150)
def test_tasks_run_inside_the_namespace_and_missing_one_is_unreachable(netlab, tmp_path):
    host, other = netlab.add_host("h1"), netlab.add_host("h2")
    marker = tmp_path / "marker.txt"
    inventory = textwrap.dedent(f"""\
        all:
          vars:
            ansible_connection: fleetcast.imaging.netns
            ansible_netns_prefix: "{netlab.prefix}-"
          hosts:
            inside:
              ansible_netns_name: {host.netns}
            h2:
            nowhere:
              ansible_netns_name: {netlab.prefix}-absent
        """)
    results = tmp_path / "results.json"
    playbook = textwrap.dedent(f"""\
        - hosts: inside:nowhere
          gather_facts: false
          tasks:
            - name: A compound shell line runs wholly in the namespace
              ansible.builtin.raw: ip -o -4 addr show dev eth0 && ip -o link show dev eth0
              register: raw_out
            - name: A Python module (copied file, then executed) runs there too
              ansible.builtin.command: ip -o -4 addr show
              register: module_out
            - name: Files are shared with the controller
              ansible.builtin.copy:
                dest: {marker}
                content: "written from {{{{ inventory_hostname }}}}\\n"
                mode: "0600"
            - name: An async job runs and is polled inside the namespace
              ansible.builtin.command: cat /sys/class/net/eth0/address
              async: 30
              poll: 1
              register: async_out
            - name: Delegated to a host named by prefix, the task runs in that host's namespace
              ansible.builtin.command: cat /sys/class/net/eth0/address
              delegate_to: h2
              register: delegated_out
            - name: Hand the results to the test
              ansible.builtin.copy:
                dest: {results}
                content: "{{{{ dict(raw=raw_out.stdout, module=module_out.stdout, mac=async_out.stdout,
                                    delegated=delegated_out.stdout) | to_json }}}}"
                mode: "0600"
              delegate_to: localhost
              connection: local
        """)
    proc = _run_playbook(tmp_path, inventory, playbook)
    recap = proc.stdout[proc.stdout.index("PLAY RECAP"):]
    assert re.search(r"inside\s+: ok=6 .*failed=0", recap), proc.stdout
    assert re.search(r"nowhere\s+: ok=0 .*unreachable=1", recap), proc.stdout
    assert f"The network namespace {netlab.prefix}-absent does not exist on the controller" in proc.stdout

    seen = json.loads(results.read_text())
    assert f"inet {host.address}/24" in seen["raw"]
    assert "link/ether " + host.mac in seen["raw"]
    # Only the namespace's own interfaces are visible, not the controller's.
    assert [line.split()[1] for line in seen["module"].splitlines()] == ["lo", "eth0"]
    assert host.address in seen["module"]
    assert seen["mac"] == host.mac
    assert seen["delegated"] == other.mac
    assert marker.read_text() == "written from inside\n"
    assert marker.stat().st_mode & 0o777 == 0o600
