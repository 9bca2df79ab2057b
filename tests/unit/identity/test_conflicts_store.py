import json
import os
import stat

import pytest

from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import IdentityError, ValidationError
from ansible_collections.fleetcast.imaging.plugins.module_utils._identity import api, conflicts, store
from ansible_collections.fleetcast.imaging.plugins.module_utils._identity.record import IdentityRecord

from identity_trees import build_linux_root, fake_sysfs, host


def _record(tmp_path, spec):
    root = str(tmp_path / spec.name)
    os.makedirs(root)
    build_linux_root(root, spec, str(tmp_path))
    return api.snapshot(spec.name, root=root, sysfs=fake_sysfs(str(tmp_path / (spec.name + "-sys")), spec))


def test_conflict_check_names_hosts_and_items(tmp_path):
    alpha, beta, gamma = host("alpha", 11), host("beta", 12), host("gamma", 13)
    records = {spec.name: _record(tmp_path, spec).to_dict() for spec in (alpha, beta, gamma)}
    assert conflicts.find_conflicts(records) == []
    conflicts.check_conflicts(records)

    # gamma was cloned from beta and never got its own identity back
    clone = json.loads(json.dumps(records["beta"]))
    clone["inventory_name"] = "gamma"
    clone["hardware"] = records["gamma"]["hardware"]
    records["gamma"] = clone
    found = [c.to_dict() for c in conflicts.find_conflicts(records)]
    assert {"item": "hostname", "value": "beta", "hosts": ["beta", "gamma"]} in found
    assert {"item": "address", "value": "10.20.0.12", "hosts": ["beta", "gamma"]} in found
    assert {"item": "machine-id", "value": beta.machine_id, "hosts": ["beta", "gamma"]} in found
    assert {"item": "mac", "value": beta.mac, "hosts": ["beta", "gamma"]} in found
    assert all("alpha" not in c["hosts"] for c in found)
    with pytest.raises(ValidationError, match=r"hostname beta is shared by beta, gamma; .*machine-id "):
        conflicts.check_conflicts(records)


def test_conflict_check_rejects_a_non_record(tmp_path):
    with pytest.raises(IdentityError, match="the identity record of web1 is not a fleetcast identity record"):
        conflicts.find_conflicts({"web1": {"hostname": "x"}})


def test_store_round_trip_whole_file_vault_readable_by_ansible_vault(tmp_path):
    from ansible.parsing.vault import VaultLib, VaultSecret

    record = _record(tmp_path, host("delta", 14))
    path = str(tmp_path / "store" / "delta.json")
    store.save_record(path, record, vault_password="correct horse")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    text = open(path).read()
    assert text.startswith("$ANSIBLE_VAULT;1.1;AES256\n") and "delta" not in text
    # what ansible-vault (and the roles' unvault filter) reads: the roles' layout
    clear = json.loads(VaultLib([("default", VaultSecret(b"correct horse"))]).decrypt(text.encode()))
    assert clear["record"]["inventory_name"] == "delta" and clear["record"]["secrets"] == {}
    assert "/etc/ssh/ssh_host_ed25519_key" in clear["secrets"]
    loaded = store.load_record(path, vault_password="correct horse")
    assert loaded.to_dict() == record.to_dict()
    with pytest.raises(IdentityError, match=f"The identity record {path} is vault-encrypted; give the vault password"):
        store.load_record(path)
    with pytest.raises(IdentityError, match=f"Cannot decrypt the identity record {path}: wrong vault password"):
        store.load_record(path, vault_password="wrong")


def test_store_reads_the_older_per_value_vault_format(tmp_path):
    from ansible.parsing.vault import VaultLib, VaultSecret

    record = _record(tmp_path, host("theta", 17))
    vault = VaultLib([("default", VaultSecret(b"pw"))])
    data = record.to_dict()
    data["secrets"] = {key: vault.encrypt(value.encode()).decode() for key, value in data["secrets"].items()}
    path = tmp_path / "theta.json"
    path.write_text(json.dumps(data))
    assert store.load_record(str(path), vault_password="pw").to_dict() == record.to_dict()
    with pytest.raises(IdentityError, match="Secret /etc/.* is vault-encrypted; give the vault password"):
        store.load_record(str(path))


def test_store_plain_and_public_copy(tmp_path):
    record = _record(tmp_path, host("eps", 15))
    path = str(tmp_path / "eps.json")
    store.save_record(path, record)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert store.load_record(path).to_dict() == record.to_dict()
    public = str(tmp_path / "persist" / "identity.json")
    assert store.save_public_copy(public, record, check_mode=True)[0] and not os.path.exists(public)
    assert store.save_public_copy(public, record)[:2] == (True, "")
    assert not store.save_public_copy(public, record)[0]
    text = open(public).read()
    assert "PRIVATE KEY" not in text and "s3cret" not in text and '"hostname": "eps"' in text
    assert IdentityRecord.from_dict(json.loads(text)).summary == record.summary


def test_store_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(IdentityError, match=f"The identity record {bad} is not valid JSON"):
        store.load_record(str(bad))
    bad.write_text(json.dumps({"format": "fleetcast.identity", "version": 99}))
    with pytest.raises(IdentityError, match="has identity record version 99"):
        store.load_record(str(bad))
    with pytest.raises(IdentityError, match="Cannot read the identity record .*missing.json"):
        store.load_record(str(tmp_path / "missing.json"))


def test_store_reads_the_roles_record_and_secrets_layout(tmp_path):
    record = _record(tmp_path, host("zeta", 16))
    path = tmp_path / "zeta.json"
    path.write_text(json.dumps({"record": record.public_dict(), "secrets": record.secrets}))
    assert store.load_record(str(path)).to_dict() == record.to_dict()


def test_conflicts_normalise_addresses_and_compare_host_keys(tmp_path):
    base = _record(tmp_path, host("iota", 21)).to_dict()
    other = _record(tmp_path, host("kappa", 22)).to_dict()
    base["summary"]["addresses"] = ["fd00:0:0::21", "127.0.0.1", "fe80::1"]
    other["summary"]["addresses"] = ["FD00::21", "::1", "fe80::1"]
    other["summary"]["ssh_fingerprints"] = list(base["summary"]["ssh_fingerprints"][:1])
    found = [c.to_dict() for c in conflicts.find_conflicts({"iota": base, "kappa": other})]
    assert {"item": "address", "value": "fd00::21", "hosts": ["iota", "kappa"]} in found
    assert {"item": "ssh-host-key", "value": base["summary"]["ssh_fingerprints"][0],
            "hosts": ["iota", "kappa"]} in found
    assert not any(c["item"] == "address" and c["value"] in ("127.0.0.1", "::1", "fe80::1") for c in found)


def test_assigned_identity_is_fresh_and_checked_for_conflicts(tmp_path):
    sysfs = fake_sysfs(str(tmp_path / "sys"), host("nu", 23))
    spec = {"hostname": "nu", "interfaces": [{"mac": "52:54:00:00:00:17", "addresses": ["10.20.0.12/24"]}]}
    first, second = api.assign("nu", spec, sysfs=sysfs), api.assign("nu", spec, sysfs=sysfs)
    assert first.summary["machine_id"] != second.summary["machine_id"]
    assert set(first.summary["ssh_fingerprints"]).isdisjoint(second.summary["ssh_fingerprints"])
    assert "PRIVATE KEY" not in json.dumps(first.public_dict())
    beta = _record(tmp_path, host("beta", 12)).to_dict()   # holds 10.20.0.12
    found = [c.to_dict() for c in conflicts.find_conflicts({"nu": first.public_dict(), "beta": beta})]
    assert found == [{"item": "address", "value": "10.20.0.12", "hosts": ["beta", "nu"]}]
