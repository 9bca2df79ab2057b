# known_hosts and key checks against ssh-keygen itself; UEFI entry planning against efibootmgr's
# output and a real FAT file system; running-clone verification, general properties included.
import itertools
import os
import subprocess

import pytest

from ansible_collections.fleetcast.imaging.plugins.module_utils._boot import efi, keys, verify
from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import ValidationError


def keypair(tmp_path, name, key_type="ed25519"):
    path = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", key_type, "-N", "", "-f", str(path)], check=True)
    return path


@pytest.mark.parametrize("key_type", ["ed25519", "ecdsa", "rsa"])
def test_fingerprint_is_the_one_ssh_keygen_prints(tmp_path, key_type):
    path = keypair(tmp_path, "k", key_type)
    shown = subprocess.run(["ssh-keygen", "-lf", f"{path}.pub"], check=True, capture_output=True, text=True)
    assert keys.fingerprint((tmp_path / "k.pub").read_text()) == shown.stdout.split()[1]


def test_known_hosts_is_found_by_ssh_keygen_for_each_address(tmp_path):
    a, b = keypair(tmp_path, "a"), keypair(tmp_path, "b")
    text = keys.known_hosts({"10.0.0.5": [(tmp_path / "a.pub").read_text()],
                             "10.0.0.6": [(tmp_path / "b.pub").read_text()]})
    (tmp_path / "known_hosts").write_text(text)
    for address, key in (("10.0.0.5", a), ("10.0.0.6", b)):
        found = subprocess.run(["ssh-keygen", "-F", address, "-f", str(tmp_path / "known_hosts")],
                               capture_output=True, text=True, check=True).stdout
        assert (tmp_path / f"{key.name}.pub").read_text().split()[1] in found
    assert subprocess.run(["ssh-keygen", "-F", "10.0.0.7", "-f", str(tmp_path / "known_hosts")],
                          capture_output=True, check=False).returncode != 0


def test_a_private_key_is_refused_as_authorized_key(tmp_path):
    path = keypair(tmp_path, "ctl")
    with pytest.raises(ValidationError, match="holds a PRIVATE key"):
        keys.check_authorized_keys(path.read_text())
    with pytest.raises(ValidationError, match="holds no public key"):
        keys.check_authorized_keys("# nothing\n")
    assert keys.check_authorized_keys((tmp_path / "ctl.pub").read_text()) == [(tmp_path / "ctl.pub").read_text().strip()]


def test_private_keys_in_tree_finds_key_blocks_not_binaries_naming_the_marker(tmp_path):
    tree = tmp_path / "tree"
    (tree / "etc/ssh").mkdir(parents=True)
    (tree / "usr/bin").mkdir(parents=True)
    key = keypair(tmp_path, "k")
    (tree / "etc/ssh/hidden").write_bytes(b"junk\n" + key.read_bytes())
    (tree / "usr/bin/tool").write_bytes(b"\0\x7fELF-----BEGIN OPENSSH PRIVATE KEY-----\0format")
    assert keys.private_keys_in_tree(str(tree)) == ["etc/ssh/hidden"]


GPT = {"label": "gpt", "partitions": [
    {"number": 1, "type_guid": "21686148-6E69-6F6E-744E-656564454649"},
    {"number": 2, "type_guid": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "part_uuid": "AAAA0000-1111-2222-3333-444455556666"},
    {"number": 3, "type_guid": "0FC63DAF-8483-4772-8E79-3D69D8477DE4"}]}
EFIBOOTMGR = """BootCurrent: 0001
BootOrder: 0001,0000
Boot0000* UiApp	FvVol(7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1)/FvFile(462caa21-7614-4503-836e-8ab6f4662331)
Boot0001* UEFI PXEv4 (MAC:525400000001)	PciRoot(0x0)/Pci(0x3,0x0)/MAC(525400000001,1)/IPv4(0.0.0.0,0,DHCP,0.0.0.0,0.0.0.0,0.0.0.0)
"""


def test_entry_is_planned_for_the_best_loader_on_the_esp():
    plan = efi.plan_entry("/dev/vda", GPT, ["EFI/BOOT/BOOTX64.EFI", "EFI/debian/grubx64.efi"], EFIBOOTMGR)
    assert plan.needed and plan.partition == 2 and plan.loader == "\\EFI\\debian\\grubx64.efi"
    assert plan.argv == ["efibootmgr", "--create", "--disk", "/dev/vda", "--part", "2", "--label",
                         "fleetcast clone", "--loader", "\\EFI\\debian\\grubx64.efi"]


def test_an_equal_entry_is_kept_so_a_second_run_changes_nothing():
    existing = EFIBOOTMGR + ("Boot0004* fleetcast clone\tHD(2,GPT,aaaa0000-1111-2222-3333-444455556666,0x1000,0x10000)"
                             "/File(\\EFI\\debian\\grubx64.efi)\n")
    plan = efi.plan_entry("/dev/vda", GPT, ["EFI/debian/grubx64.efi"], existing)
    assert not plan.needed and plan.existing == "Boot0004" and plan.argv == []
    other_disk = existing.replace("aaaa0000", "bbbb0000")
    assert efi.plan_entry("/dev/vda", GPT, ["EFI/debian/grubx64.efi"], other_disk).needed


def test_no_esp_or_no_loader_is_one_sentence_naming_the_disk():
    with pytest.raises(ValidationError, match="/dev/sda has no EFI system partition"):
        efi.plan_entry("/dev/sda", {"label": "msdos", "partitions": [{"number": 1, "mbr_type": 0x83}]}, [], "")
    with pytest.raises(ValidationError, match="/dev/sda: the EFI system partition holds none of"):
        efi.plan_entry("/dev/sda", GPT, ["EFI/other/x.efi"], "")


def test_esp_files_reads_a_real_fat_file_system(tmp_path):
    esp = tmp_path / "esp.img"
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    subprocess.run(["mkfs.vfat", "-C", str(esp), "8192"], check=True, capture_output=True)
    (tmp_path / "grubx64.efi").write_bytes(b"MZ")
    subprocess.run(["mmd", "-i", str(esp), "::/EFI", "::/EFI/debian"], check=True, env=env)
    subprocess.run(["mcopy", "-i", str(esp), str(tmp_path / "grubx64.efi"), "::/EFI/debian/grubx64.efi"],
                   check=True, env=env)
    files = efi.esp_files(str(esp))
    assert efi.choose_loader(files, "esp") == "\\EFI\\debian\\grubx64.efi"


RECORDS = {
    "master": {"hostname": "master", "machine_id": "0" * 32, "addresses": ["10.0.0.10"], "ssh_fingerprints": ["SHA256:" + "M" * 43]},
    "p1": {"hostname": "p1", "machine_id": "1" * 32, "addresses": ["10.0.0.21"], "ssh_fingerprints": ["SHA256:" + "A" * 43]},
    "p2": {"hostname": "p2", "machine_id": "2" * 32, "addresses": [], "ssh_fingerprints": ["SHA256:" + "B" * 43]},
}


def probe_output(summary, extra=()):
    lines = [f"hostname={summary['hostname']}", f"machine_id={summary['machine_id']}"]
    lines += [f"address={a}" for a in list(summary["addresses"]) + list(extra)]
    lines += [f"fingerprint={f}" for f in summary["ssh_fingerprints"]]
    return "\n".join(lines) + "\n"


def test_probe_runs_in_sh_and_parses(tmp_path):
    done = subprocess.run(["sh", "-c", verify.PROBE], capture_output=True, text=True, check=False)
    found = verify.parse_probe(done.stdout)
    assert found["hostname"] == subprocess.run(["hostname"], capture_output=True, text=True, check=True).stdout.strip()
    assert found["machine_id"] and len(found["machine_id"]) == 32


def test_a_clone_that_is_itself_passes():
    observed = verify.parse_probe(probe_output(RECORDS["p2"], extra=["10.0.0.22"]))
    assert verify.compare("p2", RECORDS["p2"], observed, RECORDS["master"], ["10.0.0.22"]) == []


@pytest.mark.parametrize("field", ["hostname", "machine_id", "addresses", "ssh_fingerprints"])
def test_any_value_of_the_master_is_named(field):
    # General property: whichever identity value the clone still has from the master, it is caught.
    clone = dict(RECORDS["p1"], **{field: RECORDS["master"][field]})
    problems = verify.compare("p1", RECORDS["p1"], verify.parse_probe(probe_output(clone)), RECORDS["master"])
    assert problems and "master's" in problems[-1]
    assert verify.sentence("p1", problems).startswith("p1: the running clone is not itself: ")


def test_no_two_clones_answer_with_the_same_identity():
    observed = {name: verify.parse_probe(probe_output(RECORDS[name])) for name in ("p1", "p2")}
    assert verify.duplicates(observed) == {}
    for field in ("hostname", "machine_id", "ssh_fingerprints"):
        twin = dict(observed, p2=dict(observed["p2"], **{field: observed["p1"][field]}))
        found = verify.duplicates(twin)
        assert set(found) == {"p1", "p2"}
        assert any("is also answered by p2" in text for text in found["p1"])


def test_every_combination_of_wrong_fields_is_reported_field_by_field():
    fields = ["hostname", "machine_id", "addresses", "ssh_fingerprints"]
    other = {"hostname": "x", "machine_id": "9" * 32, "addresses": ["10.0.0.99"], "ssh_fingerprints": ["SHA256:" + "Z" * 43]}
    for count in range(len(fields) + 1):
        for wrong in itertools.combinations(fields, count):
            clone = dict(RECORDS["p1"], **{f: other[f] for f in wrong})
            problems = verify.compare("p1", RECORDS["p1"], verify.parse_probe(probe_output(clone)))
            assert len(problems) == len(wrong)
