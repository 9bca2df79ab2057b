"""The modules run for real through ansible-playbook against local roots."""
import json
import os
import subprocess
import sys

import pytest

from ansible_collections.fleetcast.imaging.plugins.module_utils._identity import api, store

from identity_trees import build_linux_root, build_windows_root, host, snapshot_tree

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BIN = os.path.dirname(sys.executable)
MODULES = ("identity_snapshot", "identity_apply", "identity_conflicts")

PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Snapshot host A, as shown (no secrets unless asked)
      fleetcast.imaging.identity_snapshot:
        inventory_name: hosta
        root: "{{ a_root }}"
      register: shown

    - name: Snapshot host A with its secrets
      fleetcast.imaging.identity_snapshot:
        inventory_name: hosta
        root: "{{ a_root }}"
        public_copy: "{{ out }}/persist/identity.json"
        return_secrets: true
      register: snap
      no_log: true

    - name: Snapshot host A again (the public copy is already there)
      fleetcast.imaging.identity_snapshot:
        inventory_name: hosta
        root: "{{ a_root }}"
        public_copy: "{{ out }}/persist/identity.json"
      register: snap2
      no_log: true

    - name: Apply in check mode with diff
      fleetcast.imaging.identity_apply:
        record: "{{ snap.record }}"
        secrets: "{{ snap.secrets }}"
        root: "{{ m_root }}"
      check_mode: true
      diff: true
      register: check

    - name: Apply
      fleetcast.imaging.identity_apply:
        record: "{{ snap.record }}"
        secrets: "{{ snap.secrets }}"
        root: "{{ m_root }}"
      register: first

    - name: Apply again
      fleetcast.imaging.identity_apply:
        record: "{{ snap.record }}"
        secrets: "{{ snap.secrets }}"
        root: "{{ m_root }}"
      register: again

    - name: Two hosts with one identity
      fleetcast.imaging.identity_conflicts:
        records:
          hosta: "{{ snap.record }}"
          clone: "{{ snap.record }}"
      register: conflict
      ignore_errors: true

    - name: A Linux record is no Windows answer file
      fleetcast.imaging.identity_apply:
        record: "{{ snap.record }}"
        secrets: "{{ snap.secrets }}"
        root: "{{ m2_root }}"
        unattend: "{{ out }}/unattend.xml"
      register: wrong
      ignore_errors: true

    - name: A disk that is not there
      fleetcast.imaging.identity_snapshot:
        inventory_name: hosta
        device: "{{ out }}/no-such-disk"
      register: nodisk
      ignore_errors: true

    - name: A vault-encrypted stored record, without the password
      fleetcast.imaging.identity_apply:
        record_path: "{{ out }}/store/hosta.json"
        root: "{{ m3_root }}"
      register: novault
      ignore_errors: true

    - name: A vault-encrypted stored record, on a host without ansible-core
      fleetcast.imaging.identity_apply:
        record_path: "{{ out }}/store/hosta.json"
        vault_password: correct horse
        root: "{{ m3_root }}"
      register: vaulted
      ignore_errors: true

    - name: A stored record in clear
      fleetcast.imaging.identity_apply:
        record_path: "{{ out }}/clear/hosta.json"
        root: "{{ m3_root }}"
      register: clear

    - name: Keep the results for the test
      ansible.builtin.copy:
        content: "{{ {'snap_summary': snap.summary, 'snap_changed': [snap.changed, snap2.changed], 'check': check, 'first': first, 'again': again,
                      'conflict': conflict, 'wrong': wrong, 'nodisk': nodisk, 'shown_keys': shown.keys() | list,
                      'novault': novault, 'vaulted': vaulted, 'clear': clear} | to_json }}"
        dest: "{{ out }}/results.json"
        mode: "0600"
"""


def _env():
    return dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".build", "collections"),
                ANSIBLE_CONFIG=os.path.join(ROOT, "tests", "ansible.cfg"), LC_ALL="C.UTF-8")


def _run_playbook(tmp_path, text, **paths):
    """Run a playbook with ``out`` and ``paths`` as extra variables; (its output, its results.json)."""
    playbook = tmp_path / "play.yml"
    playbook.write_text(text)
    extra = " ".join(f"{name}={value}" for name, value in dict(paths, out=tmp_path).items())
    proc = subprocess.run([os.path.join(BIN, "ansible-playbook"), "-i", "localhost,", "-c", "local",
                           "-e", extra, str(playbook), "-vvvv", "--diff"],
                          capture_output=True, text=True, env=_env(), check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, json.loads((tmp_path / "results.json").read_text())


def test_modules_snapshot_apply_conflicts_through_ansible(tmp_path):
    a_root, m_root = tmp_path / "a", tmp_path / "m"
    a_root.mkdir()
    m_root.mkdir()
    build_linux_root(str(a_root), host("hosta", 7), str(tmp_path))
    build_linux_root(str(m_root), host("master", 9), str(tmp_path), extra_key=True)
    m2_root = tmp_path / "m2"
    m2_root.mkdir()
    build_linux_root(str(m2_root), host("master", 9), str(tmp_path))
    m2_before = snapshot_tree(str(m2_root))
    m3_root = tmp_path / "m3"
    m3_root.mkdir()
    build_linux_root(str(m3_root), host("master", 9), str(tmp_path), extra_key=True)
    saved = api.snapshot("hosta", root=str(a_root))
    store.save_record(str(tmp_path / "store" / "hosta.json"), saved, vault_password="correct horse")
    store.save_record(str(tmp_path / "clear" / "hosta.json"), saved)
    # the master's own secrets, which the host does not have: removed, and never shown in the diff
    (m_root / "etc/krb5.keytab").write_bytes(b"\x05\x02MASTER-KEYTAB-BYTES")
    (m_root / "etc/NetworkManager/system-connections/wifi.nmconnection").write_text(
        "[connection]\nid=wifi\ntype=wifi\n\n[wifi-security]\nkey-mgmt=wpa-psk\npsk=MASTER-WIFI-PSK\n")
    output, results = _run_playbook(tmp_path, PLAYBOOK, a_root=a_root, m_root=m_root, m2_root=m2_root,
                                    m3_root=m3_root)
    # -vvvv --diff: no private key, psk, password, keytab or vault password anywhere in the output
    for needle in ("PRIVATE KEY", "s3cret", "MASTER-WIFI-PSK", "MASTER-KEYTAB", "correct horse"):
        assert needle not in output, needle
    assert "<secret, " in output                      # the diff says a secret changed, not what it holds
    assert "secrets" not in results["shown_keys"]
    assert results["snap_summary"]["hostname"] == "hosta" and results["snap_changed"] == [True, False]
    assert results["check"]["changed"] and any(d["after_header"] == "/etc/hostname" for d in results["check"]["diff"])
    assert results["first"]["changed"] and results["again"]["changed"] is False
    assert snapshot_tree(str(m_root)) == snapshot_tree(str(a_root))
    assert "hostname hosta is shared by clone, hosta" in results["conflict"]["msg"]
    assert {"item": "machine-id", "value": "07" * 16, "hosts": ["clone", "hosta"]} in results["conflict"]["conflicts"]
    assert results["wrong"]["msg"] == "unattend applies to Windows records only; the record of hosta is for linux."
    assert snapshot_tree(str(m2_root)) == m2_before  # refused before anything was written
    assert results["novault"]["msg"] == (f"The identity record {tmp_path}/store/hosta.json is vault-encrypted; "
                                         "give the vault password.")
    assert results["vaulted"]["msg"] == (f"Decrypting or encrypting the identity record {tmp_path}/store/hosta.json "
                                         "needs ansible-core's vault library, which this host lacks; handle the "
                                         "vault-encrypted store on the controller.")
    assert results["clear"]["changed"] and snapshot_tree(str(m3_root)) == snapshot_tree(str(a_root))
    assert results["nodisk"]["msg"] == f"The device {tmp_path}/no-such-disk does not exist."
    public = json.loads((tmp_path / "persist" / "identity.json").read_text())
    assert public["secrets"] == {} and public["summary"]["hostname"] == "hosta"
    assert os.stat(tmp_path / "persist" / "identity.json").st_mode & 0o777 == 0o644


WINDOWS_PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Snapshot Windows host A from its hives
      fleetcast.imaging.identity_snapshot:
        inventory_name: hosta
        root: "{{ a_root }}"
      register: snap

    - name: Apply with an answer file, in check mode
      fleetcast.imaging.identity_apply:
        record: "{{ snap.record }}"
        root: "{{ m_root }}"
        unattend: "{{ out }}/unattend.xml"
      check_mode: true
      register: check

    - name: Apply with an answer file
      fleetcast.imaging.identity_apply:
        record: "{{ snap.record }}"
        root: "{{ m_root }}"
        unattend: "{{ out }}/unattend.xml"
      register: first

    - name: Apply again
      fleetcast.imaging.identity_apply:
        record: "{{ snap.record }}"
        root: "{{ m_root }}"
        unattend: "{{ out }}/unattend.xml"
      register: again

    - name: Keep the results for the test
      ansible.builtin.copy:
        content: "{{ {'snap': snap.summary, 'check': check, 'first': first, 'again': again} | to_json }}"
        dest: "{{ out }}/results.json"
        mode: "0600"
"""


def test_windows_apply_reports_every_item_and_the_answer_file(tmp_path):
    spec, master = host("hosta", 7), host("master", 9)
    build_windows_root(str(tmp_path / "a"), spec, "S-1-5-21-1-2-7")
    build_windows_root(str(tmp_path / "m"), master, "S-1-5-21-1-2-9")
    hives = tmp_path / "m" / "Windows" / "System32" / "config"
    before = (hives / "SYSTEM").read_bytes()
    dummy_output, results = _run_playbook(tmp_path, WINDOWS_PLAYBOOK, a_root=tmp_path / "a", m_root=tmp_path / "m")
    answer = {"path": f"{tmp_path}/unattend.xml", "item": "unattend", "action": "write", "mode": "0600",
              "secret": False}
    assert answer in results["check"]["changes"] and answer in results["first"]["changes"]
    planned = {change["path"] for change in results["check"]["changes"]}
    assert "SYSTEM:ControlSet002\\Control\\ComputerName\\ComputerName\\ComputerName" in planned
    assert planned == {change["path"] for change in results["first"]["changes"]}
    assert any("sysprep" in note for note in results["first"]["notes"])
    assert results["again"]["changed"] is False and results["again"]["changes"] == []
    assert "<ComputerName>HOSTA</ComputerName>" in (tmp_path / "unattend.xml").read_text()
    assert os.stat(tmp_path / "unattend.xml").st_mode & 0o777 == 0o600
    after = (hives / "SYSTEM").read_bytes()
    assert after != before and "master".encode("utf-16-le") not in after


@pytest.mark.parametrize("module", MODULES)
def test_ansible_doc_renders(module):
    proc = subprocess.run([os.path.join(BIN, "ansible-doc"), "--json", f"fleetcast.imaging.{module}"],
                          capture_output=True, text=True, env=_env(), check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)[f"fleetcast.imaging.{module}"]
    assert doc["doc"]["options"] and doc["examples"].strip() and doc["return"]
