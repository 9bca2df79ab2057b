"""deploy.yml against the built-in lab, driven through ansible-playbook as a user runs it.

One lab serves the whole module: it is built and the master captured once; deploy.yml runs in check
mode (nothing may change), then for real with the receive path of one participant cut by nftables
half-way through the transfer. That host must be reported failed with its reason, the others must
hold the image with their own identity back, and the lab must be gone afterwards.
"""
import hashlib
import json
import os
import re
import subprocess
import textwrap
import threading

import pytest
import yaml

from ansible_collections.fleetcast.imaging.plugins.module_utils._identity import store
from ansible_collections.fleetcast.imaging.plugins.module_utils._lab import disk_tools, loopdisk, standing
from ansible_collections.fleetcast.imaging.plugins.module_utils._lab.netlab import LabHost

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
PLAYBOOKS = os.path.join(ROOT, "playbooks")
INVENTORY = os.path.join(PLAYBOOKS, "inventory", "lab.yml")
PARTICIPANTS = ("p1", "p2", "p3")
SESSION_KEY = os.urandom(32).hex()
VAULT_PASSWORD = "fleetcast-" + os.urandom(12).hex()
BLANK = "p4"          # a new computer: zeroed disk, no stored record (imaging_lab_blank in the inventory)
CUT_HOST = "p2"


def _playbook(lab, name, *extra, timeout=240):
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "tests", "ansible.cfg"),
               ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".build", "collections"),
               ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", LC_ALL="C.UTF-8")
    argv = [os.path.join(ROOT, ".venv", "bin", "ansible-playbook"), "-i", INVENTORY,
            os.path.join(PLAYBOOKS, name),
            "-e", f"imaging_lab_name={lab['name']}", "-e", f"imaging_lab_directory={lab['directory']}",
            # A distinct port per run, and a rate cap so that the transfer lasts long enough to
            # be cut half-way (the lab's image is small).
            "-e", f"imaging_port={lab['port']}", "-e", "multicast_image_rate_mbit=16",
            # the small stand-in master: this test is about the pipeline, test_realistic_image
            # deploys the Debian one
            "-e", "imaging_lab_master_system=toy",
            "-e", "multicast_image_receiver_timeout=8", "-e", "multicast_image_poll_interval=1",
            "-e", f"imaging_report_dir={lab['reports']}"]
    return subprocess.run(argv + list(extra), capture_output=True, text=True, env=env, timeout=timeout,
                          check=False)


def _recap(stdout):
    recap = {}
    for host, counts in re.findall(r"^(\S+)\s+: (ok=.*)$", stdout[stdout.rindex("PLAY RECAP"):], re.M):
        recap[host] = {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", counts)}
    return recap


def _summary(stdout):
    """{host: table row, 'failures': {host: reason line}, 'Report': path, 'Data': path} from the
    last summary printed (a debug list of lines, which the YAML result format may fold)."""
    heads = [m.start() for m in re.finditer(r"^\s*- '?host {9}result", stdout, re.M)]
    assert heads, "no summary printed:\n" + stdout[-3000:]
    start = stdout.rindex("msg:", 0, heads[-1])
    block = []
    for line in stdout[start:].splitlines():
        if block and not line.strip():
            break
        block.append(line)
    lines = yaml.safe_load(textwrap.dedent("\n".join(block)))["msg"]
    rows = {"failures": {}}
    for line in lines[1:]:
        fields = line.split()
        if fields[0] in ("Report:", "Data:"):
            rows[fields[0][:-1]] = fields[1]
        elif fields[0] in PARTICIPANTS + (BLANK,) and fields[1] == "failed":
            rows["failures"][fields[0]] = line
        elif fields[0] in PARTICIPANTS + (BLANK,):
            rows[fields[0]] = line
    return rows


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _root_partition(disk_file):
    """(offset, size) of the partition holding the ext4 root (number 2 on the master's layout)."""
    table = subprocess.run(["sgdisk", "-p", disk_file], capture_output=True, text=True, check=True).stdout
    numbers = [int(line.split()[0]) for line in table.splitlines() if re.match(r"\s+\d+\s", line)]
    for number in numbers:
        offset, size = disk_tools.partition_bounds(disk_file, number)
        probe = subprocess.run(["blkid", "-p", "-O", str(offset), "-s", "TYPE", "-o", "value", disk_file],
                               capture_output=True, text=True, check=False).stdout.strip()
        if probe == "ext4":
            return offset, size
    raise AssertionError(f"no ext4 root on {disk_file}: {table}")


def _read_files(disk_file, inner_paths):
    offset, size = _root_partition(disk_file)
    window = loopdisk.attach(disk_file, offset=offset, sizelimit=size, read_only=True)
    try:
        fsck = subprocess.run(["e2fsck", "-f", "-n", window], capture_output=True, text=True, check=False)
        found = {}
        for inner in inner_paths:
            out = subprocess.run(["debugfs", "-R", f"dump {inner} /dev/stdout", window],
                                 capture_output=True, check=False).stdout
            found[inner] = out
        return found, fsck.returncode
    finally:
        loopdisk.detach(window)


IDENTITY_FILES = ("/etc/hostname", "/etc/machine-id", "/etc/ssh/ssh_host_ed25519_key",
                  "/etc/ssh/ssh_host_ed25519_key.pub", "/etc/ssh/ssh_host_ecdsa_key")
NETPLAN = "/etc/netplan/01-fleetcast-lab.yaml"
IMAGE_FILES = ("/usr/lib/fleetcast-lab/payload.bin", "/etc/fstab")


def _rx_bytes(netns):
    # `ip netns exec` mounts the namespace's own /sys: these are the participant's counters.
    out = subprocess.run(["ip", "netns", "exec", netns, "cat", "/sys/class/net/eth0/statistics/rx_bytes"],
                         capture_output=True, text=True, check=False).stdout
    return int(out) if out.strip().isdigit() else 0


class ReceivePathCutter(threading.Thread):
    """Cuts all incoming UDP of one participant once it has received about half of the image."""

    def __init__(self, netns, image_bytes):
        super().__init__(daemon=True)
        self.netns, self.threshold = netns, image_bytes // 2
        self.stop, self.cut_at = threading.Event(), None

    def run(self):
        base = _rx_bytes(self.netns)
        while not self.stop.wait(0.02):
            if _rx_bytes(self.netns) - base >= self.threshold:
                LabHost(name=CUT_HOST, netns=self.netns, address="").cut_incoming_udp()
                self.cut_at = _rx_bytes(self.netns) - base
                return


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    directory = tmp_path_factory.mktemp("deploylab") / "lab"
    lab = {"name": "fct" + os.urandom(2).hex(), "directory": str(directory),
           "reports": str(tmp_path_factory.mktemp("reports")),
           "port": 20000 + int.from_bytes(os.urandom(2), "big") % 20000}
    try:
        built = _playbook(lab, "lab.yml", "--tags", "lab_build")
        assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-2000:]
        state = json.loads((directory / "state.json").read_text())
        lab["machines"] = state["machines"]
        lab["before"] = {name: _read_files(state["machines"][name]["disk_file"], IDENTITY_FILES)[0]
                         for name in PARTICIPANTS}
        captured = _playbook(lab, "capture.yml")
        assert captured.returncode == 0, captured.stdout[-3000:] + captured.stderr[-2000:]
        lab["image"] = str(directory / "images" / "lab-master.fcimg")
        yield lab
    finally:
        down = _playbook(lab, "lab.yml", "--tags", "lab_teardown")
        standing.destroy(str(directory), lab["name"])   # belt and braces if the play failed
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
        assert lab["name"] + "-" not in listed
        assert str(directory) not in subprocess.run(["losetup", "-a"], capture_output=True, text=True,
                                                    check=False).stdout
        assert not directory.exists()
        assert down.returncode == 0, down.stdout[-2000:]


# The first test's time also holds the module fixture (build the lab, capture the master): on a
# loaded machine that alone took 150 s, and a timeout there kills the lab's teardown half-way.
@pytest.mark.timeout(450)
def test_check_mode_changes_nothing_and_says_what_it_would_do(lab):
    disks = [lab["machines"][name]["disk_file"] for name in PARTICIPANTS + (BLANK,)]
    before = {path: _sha256(path) for path in disks}
    run = _playbook(lab, "deploy.yml", "--check", "--diff", "-vvvv")
    assert run.returncode == 0, run.stdout[-4000:]
    assert {path: _sha256(path) for path in disks} == before
    # -vvvv --diff of a whole deploy shows no SSH host private key (not even p4's, made in this run)
    assert "PRIVATE KEY" not in run.stdout + run.stderr
    for name in PARTICIPANTS:
        device = lab["machines"][name]["disk_device"]
        assert f"{name}: {device} would lose gpt partition table, 3 partition(s)" in run.stdout
        assert re.search(rf"{name}: would receive image [0-9a-f]{{16}} \(\d+ bytes in \d+ chunks\) "
                         rf"from server over .* onto {device}", run.stdout.replace("\n    ", " ")), run.stdout
    rows = _summary(run.stdout)
    for name in PARTICIPANTS:
        # Nothing was written, so nothing is claimed: planned, no identity, no digest, no fsck.
        assert re.match(rf"{name}\s+planned\s+[1-9]\d*\s+0\s+no\s+no\s+-$", rows[name]), rows
    assert not os.path.exists(os.path.join(lab["directory"], "identity", "p1.json"))
    # The run's report is kept and linked from the summary; it holds every host's plan.
    assert "Check mode: nothing was written; the table shows the plan." in run.stdout
    page, data = rows["Report"], rows["Data"]
    assert page.endswith(".md") and os.path.isfile(page)
    report = json.loads(open(data, encoding="utf-8").read())
    assert report["run"]["check_mode"] is True and os.path.dirname(page) == lab["reports"]
    assert [host["outcome"] for host in report["hosts"]] == ["planned"] * len(PARTICIPANTS + (BLANK,))


@pytest.mark.timeout(150)
def test_a_limited_run_keeps_its_summary(lab):
    # The guide's re-run for one host: --limit with the server kept in. The summary and the
    # report cover the participants inside the limit only.
    run = _playbook(lab, "deploy.yml", "--check", "--limit", "p3:imaging_server")
    assert run.returncode == 0, run.stdout[-4000:]
    rows = _summary(run.stdout)
    assert set(rows) == {"p3", "failures", "Report", "Data"} and not rows["failures"], rows
    assert re.match(r"p3\s+planned\s", rows["p3"]), rows
    report = json.loads(open(rows["Data"], encoding="utf-8").read())
    assert report["run"]["limit"] == "p3:imaging_server"
    assert [host["name"] for host in report["hosts"]] == ["p3"]


@pytest.mark.timeout(360)
def test_deploy_with_one_receive_path_cut_half_way(lab):
    cut_netns = lab["machines"][CUT_HOST]["netns"]
    cutter = ReceivePathCutter(cut_netns, os.path.getsize(lab["image"]))
    cutter.start()
    try:
        # As verbose as a user debugging it would run it, with a vault password for the store and a
        # known session key, so that test_no_secret_in_verbose_output can look for both.
        secrets = os.path.join(os.path.dirname(lab["directory"]), "secrets.json")   # -vvvv prints the command line
        with open(secrets, "w", encoding="utf-8") as handle:
            json.dump({"multicast_image_session_key": SESSION_KEY, "imaging_identity_vault_password": VAULT_PASSWORD},
                      handle)
        lab["secrets"] = secrets
        run = _playbook(lab, "deploy.yml", "-vvvv", "--diff", "-e", "@" + secrets)
    finally:
        cutter.stop.set()
        cutter.join()
    out = run.stdout
    lab["verbose_output"] = run.stdout + run.stderr
    assert cutter.cut_at is not None, "the transfer never reached half-way on " + CUT_HOST + out[-3000:]
    assert run.returncode != 0, "a failed host must fail the run"

    recap = _recap(out)
    assert recap[CUT_HOST]["failed"] == 1
    for name in ("p1", "p3", BLANK):
        assert recap[name]["failed"] == 0 and recap[name]["unreachable"] == 0, out[-4000:]

    rows = _summary(out)
    print("\n".join(str(value) for value in rows.values()))
    assert re.match(rf"{CUT_HOST}\s+FAILED\s", rows[CUT_HOST]), rows
    assert re.match(rf"{CUT_HOST} failed at multicast: \S+", rows["failures"][CUT_HOST]), rows
    for name in ("p1", "p3", BLANK):
        assert re.match(rf"{name}\s+ok\s+[1-9]\d*\s+[\d.]+\s+yes\s+yes\s+clean$", rows[name]), rows
    assert re.search(rf"{CUT_HOST} failed at multicast: .+", out)
    # Progress lines were shown while the transfer ran.
    assert re.search(r"^server: \d+:\d\d ", out, re.M)

    master_files, master_fsck = _read_files(lab["machines"]["master"]["disk_file"], IMAGE_FILES)
    assert master_fsck == 0
    for name in ("p1", "p3"):
        disk = lab["machines"][name]["disk_file"]
        image_files, fsck_code = _read_files(disk, IMAGE_FILES)
        assert fsck_code == 0, f"{name}: fsck reports problems"
        assert image_files == master_files and len(master_files["/usr/lib/fleetcast-lab/payload.bin"]) > 1 << 20
        identity, dummy = _read_files(disk, IDENTITY_FILES + (NETPLAN,))
        netplan = identity.pop(NETPLAN).decode()
        assert identity == lab["before"][name], f"{name} did not get its own identity back"
        # The network configuration is the image's file with this host's values put back in.
        assert lab["machines"][name]["address"] in netplan and lab["machines"][name]["mac"] in netplan
        assert lab["machines"]["master"]["address"] not in netplan
        assert identity["/etc/hostname"] == f"{name}-old\n".encode()
        assert identity["/etc/machine-id"].strip().decode() == lab["machines"][name]["machine_id"]
    flat = re.sub(r"\s+", " ", out)
    for name in ("p1", "p3"):
        # deploy read the identity back from the disk itself and said so.
        assert (f"{name}: {lab['machines'][name]['disk_device']} holds its own identity: hostname {name}-old, "
                f"machine-id {lab['machines'][name]['machine_id']}, 2 SSH host key(s) as saved.") in flat
    assert f"{CUT_HOST}: {lab['machines'][CUT_HOST]['disk_device']} holds its own identity" not in flat
    # The cut host's disk is not claimed to be anything: it must not hold its identity re-applied.
    assert "yes" not in rows[CUT_HOST].split("FAILED", 1)[0]
    # The kept report says the same, with the reason and the stages, and the digests of the others.
    report = {host["name"]: host for host in json.loads(open(rows["Data"], encoding="utf-8").read())["hosts"]}
    assert report[CUT_HOST]["outcome"] == "failed" and report[CUT_HOST]["failed_stage"] == "multicast"
    assert report[CUT_HOST]["reason"] and report[CUT_HOST]["stages"]["identity re-apply"] == "not run"
    for name in ("p1", "p3"):
        assert report[name]["outcome"] == "ok" and report[name]["digest_verified"]
        assert re.fullmatch(r"[0-9a-f]{64}", report[name]["digest"])
        assert report[name]["identity"]["checks"] == {"hostname": True, "machine_id": True, "ssh_fingerprints": True}
    _check_blank_participant(lab, out)


def _check_blank_participant(lab, out):
    """The new computer ends with the identity its inventory gives, fresh keys, no value of the master."""
    machine, master = lab["machines"][BLANK], lab["machines"]["master"]
    assert f"{BLANK}: using the identity the inventory gives, because the disk holds no system" in re.sub(r"\s+", " ", out)
    own_netplan = "/etc/netplan/50-fleetcast.yaml"
    found, fsck_code = _read_files(machine["disk_file"], IDENTITY_FILES + (NETPLAN, own_netplan, "/etc/hosts"))
    assert fsck_code == 0
    master_found, dummy = _read_files(master["disk_file"], IDENTITY_FILES)
    assert found["/etc/hostname"] == b"p4-new\n"
    machine_id = found["/etc/machine-id"].strip().decode()
    assert re.fullmatch(r"[0-9a-f]{32}", machine_id) and machine_id != master["machine_id"]
    for key in ("/etc/ssh/ssh_host_ed25519_key", "/etc/ssh/ssh_host_ed25519_key.pub", "/etc/ssh/ssh_host_ecdsa_key"):
        assert found[key] and found[key] != master_found[key], key
    netplan = found[own_netplan].decode()
    assert f"{machine['address']}/24" in netplan and machine["mac"] in netplan
    assert found[NETPLAN] == b"", "the master's network file must be gone"
    everything = b"".join(found.values())
    for value in (master["address"], master["mac"], master["hostname"], master["hostname"].split(".")[0],
                  master["machine_id"]):
        assert value.encode() not in everything, value
    with open(os.path.join(lab["directory"], "identity", f"{BLANK}.json"), encoding="utf-8") as handle:
        text = handle.read()
    if text.startswith("$ANSIBLE_VAULT"):  # the run keeps its store vault-encrypted (VAULT_PASSWORD)
        text = store._decrypt(text, VAULT_PASSWORD, "p4's stored record")
    record = json.loads(text)
    assert record["record"]["summary"]["machine_id"] == machine_id
    assert record["record"]["assigned"]["hostname"] == "p4-new"


def _private_key_lines(pem, tmp_dir):
    """The base64 body lines of an OpenSSH private key that are not also part of its public key
    (the file embeds the public key, and the public key file may be shown; any other line appearing
    would be a leak)."""
    path = os.path.join(tmp_dir, "key")
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as handle:
        handle.write(pem)
    public = subprocess.run(["ssh-keygen", "-y", "-f", path], capture_output=True, text=True, check=True).stdout
    os.unlink(path)
    return [line for line in pem.decode().splitlines()
            if line and not line.startswith("-----") and len(line) > 40 and line not in public]


@pytest.mark.timeout(30)
def test_no_secret_in_verbose_output(lab):
    out = lab.get("verbose_output")
    if out is None:
        pytest.skip("the deploy run did not happen")
    assert SESSION_KEY not in out, "the multicast session key is printed"
    assert VAULT_PASSWORD not in out, "the identity store's vault password is printed"


@pytest.mark.timeout(30)
def test_no_identity_secret_in_verbose_output(lab, tmp_path):
    """The SSH host private keys the deploy carried (snapshot, store, re-apply) never show. The lab
    has no Wi-Fi psk or keytab; those are covered by the identity modules' own tests."""
    out = lab.get("verbose_output")
    if out is None:
        pytest.skip("the deploy run did not happen")
    for name in PARTICIPANTS:
        for key in ("/etc/ssh/ssh_host_ed25519_key", "/etc/ssh/ssh_host_ecdsa_key"):
            lines = _private_key_lines(lab["before"][name][key], str(tmp_path))
            assert lines, f"{name}'s {key} was not read"
            for line in lines:
                assert line not in out, f"a line of {name}'s {key} is printed"


def _disk_hashes(lab):
    return {name: _sha256(lab["machines"][name]["disk_file"]) for name in PARTICIPANTS}


@pytest.mark.timeout(300)
def test_rerun_deploys_only_the_failed_host(lab):
    """The hosts the first run deployed are unchanged (not one byte written); the cut one is deployed."""
    if "secrets" not in lab:
        pytest.skip("the first deploy did not run")
    LabHost(name=CUT_HOST, netns=lab["machines"][CUT_HOST]["netns"], address="").clear_rules()  # mend the cut
    before = _disk_hashes(lab)
    # No rate cap this time (the first run's cap only made the cut land half-way).
    run = _playbook(lab, "deploy.yml", "-e", "@" + lab["secrets"], "-e", "multicast_image_rate_mbit=0")
    assert run.returncode == 0, run.stdout[-4000:]
    rows = _summary(run.stdout)
    for name in ("p1", "p3"):
        assert re.match(rf"{name}\s+unchanged\s+.*still hold image [0-9a-f]{{16}} with its identity, as deployed$",
                        rows[name]), rows
        assert _disk_hashes(lab)[name] == before[name], f"{name}'s disk was written"
    assert re.match(rf"{CUT_HOST}\s+ok\s+[1-9]\d*\s+[\d.]+\s+yes\s+yes\s+clean$", rows[CUT_HOST]), rows
    lab["redeployed"] = True


@pytest.mark.timeout(240)
def test_second_run_changes_no_byte_and_reports_every_host_unchanged(lab):
    if not lab.get("redeployed"):
        pytest.skip("the re-run did not complete")
    before = _disk_hashes(lab)
    run = _playbook(lab, "deploy.yml", "-e", "@" + lab["secrets"])
    assert run.returncode == 0, run.stdout[-4000:]
    assert _disk_hashes(lab) == before
    rows = _summary(run.stdout)
    for name in PARTICIPANTS:
        assert re.match(rf"{name}\s+unchanged\s+", rows[name]), rows
    # Nothing was wiped or sent: the wipe and transfer stages ran for no host.
    assert "Wipe the listed disks" not in run.stdout and "One session, every participant receiving" not in run.stdout
