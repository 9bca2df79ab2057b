# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""`make e2e`: bare metal to an imaged fleet, on qemu VMs (TCG) in a network namespace.

    master (BIOS, static)  p1 (UEFI, static)  p2 (BIOS, DHCP)  p3 (UEFI, static)
        tap ------------------- lab bridge (switch namespace, IGMP snooping + querier) ---- server
                                                                      (namespace: dnsmasq, HTTP, ansible)

Every VM's disk holds its own bootable Debian bookworm with its own identity. The controller runs
`ansible-playbook boot.yml capture.yml deploy.yml` inside the server's namespace: the fleet
network-boots (iPXE) into the imaging environment, the master is captured over multicast, deploy.yml
images the participants, which reboot into their disks and are verified running over SSH. Then this
script logs into every clone itself and checks its identity. Run 2 does it again with p3's
network cut in the middle of the multicast session and a fourth participant, p4, that never
network-boots: p3 must fail with its reason, p4 "not reached", the others verify.

Figures go to LAB_DIR/figures.json; consoles, inventories and logs stay in LAB_DIR. The VMs' disks
and the image are removed at the end, passed or failed (FLEETCAST_E2E_KEEP_DISKS=1 keeps them).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, ".build", "collections"))
sys.path.insert(0, HERE)

from ansible_collections.fleetcast.imaging.plugins.module_utils._boot import build, keys  # noqa: E402
from ansible_collections.fleetcast.imaging.plugins.module_utils._lab import debdisk  # noqa: E402
from ansible_collections.fleetcast.imaging.plugins.module_utils._lab.netlab import NetLab  # noqa: E402
import vmlab  # noqa: E402

CACHE = os.environ.get("FLEETCAST_CACHE", "/var/cache/fleetcast")
LAB_DIR = os.environ.get("FLEETCAST_E2E_DIR", "/var/tmp/fleetcast-e2e")
RAM_MB = int(os.environ.get("FLEETCAST_E2E_RAM", "1536"))
SUBNET = "10.231.9"
APT_OPTIONS = [path for path in ("/etc/apt/apt.conf.d/99artifact-registry",) if os.path.isfile(path)]

# name: (firmware, address in its own system (None: DHCP), reserved boot address, MAC)
MACHINES = {
    "master": ("bios", f"{SUBNET}.20/24", f"{SUBNET}.20", "52:54:00:e2:e0:20"),
    "p1": ("uefi", f"{SUBNET}.21/24", f"{SUBNET}.21", "52:54:00:e2:e0:21"),
    "p2": ("bios", None, f"{SUBNET}.22", "52:54:00:e2:e0:22"),
    "p3": ("uefi", f"{SUBNET}.23/24", f"{SUBNET}.23", "52:54:00:e2:e0:23"),
}
PARTICIPANTS = ["p1", "p2", "p3"]
CUT = "p3"
GHOST = "p4"
UNBOOTABLE = "p2"              # run 2: its clone's MBR loses its boot code before it boots from disk


def log(text):
    print(f"[e2e {time.strftime('%H:%M:%S')}] {text}", flush=True)


def run(argv, check=True, **kwargs):
    return subprocess.run(argv, check=check, **kwargs)


class Figures(dict):
    def save(self):
        with open(os.path.join(LAB_DIR, "figures.json"), "w", encoding="utf-8") as handle:
            json.dump(self, handle, indent=2, sort_keys=True)


def disks(figures, ctl_pub):
    """Cached bootable disks, one per machine, copied fresh into the lab."""
    started = time.monotonic()
    spec = build.RootSpec(packages=list(debdisk.DISK_PACKAGES), apt_options=APT_OPTIONS,
                          sources="/etc/apt/sources.list.d/debian.sources")
    root = build.root_tarball(spec, os.path.join(CACHE, "boot"))
    figures["disk_root_seconds"] = root["seconds"]
    figures["disk_root_cached"] = root["cached"]
    identities = {}
    for name, (firmware, address, dummy, mac) in MACHINES.items():
        host = debdisk.DiskHost(hostname=f"e2e-{name}", mac=mac, address=address, marker=f"dirty disk of {name}")
        made = debdisk.cached_disk(root["path"], os.path.join(CACHE, "boot", "disks"), host, ctl_pub,
                                   os.path.join(LAB_DIR, f"{name}.raw"))
        with open(os.path.join(CACHE, "boot", "disks", f"{host.hostname}-{made['key']}.raw.json"), encoding="utf-8") as handle:
            identities[name] = dict(json.load(handle), cached=made["cached"])
        if firmware == "uefi":
            shutil.copyfile(vmlab.OVMF_VARS, os.path.join(LAB_DIR, f"{name}.vars"))
    figures["disks_seconds"] = round(time.monotonic() - started, 1)
    return identities


def read_disk_file(name, rel):
    """A file of the root file system on the raw disk of `name` (debugfs on a loop window)."""
    path = os.path.join(LAB_DIR, f"{name}.raw")
    loop = run(["losetup", "--find", "--show", "--read-only", "--offset", str(debdisk.ROOT_START * debdisk.SECTOR),
                path], capture_output=True, text=True).stdout.strip()
    try:
        return run(["debugfs", "-R", f"cat {rel}", loop], capture_output=True, text=True).stdout.strip()
    finally:
        run(["losetup", "--detach", loop], check=False)


def inventory(lab, server, ctl_key, run_dir, power=True, ghost=False, receiver_timeout=900, unbootable=None):
    known = os.path.join(LAB_DIR, "boot_known_hosts")
    hosts = {}
    for name, (firmware, address, boot_address, mac) in MACHINES.items():
        hosts[name] = {"imaging_boot_mac": mac, "imaging_boot_firmware": firmware,
                       "imaging_boot_address": boot_address, "ansible_host": boot_address,
                       "imaging_boot_power_command": [sys.executable, os.path.join(HERE, "vmlab.py"),
                                                      "power-on", LAB_DIR, name]}
    if unbootable:
        # it will not come up: no need to wait the default ten minutes for it (the play's next
        # task waits for the slowest host; the others answer 40-80 s after their reboot)
        hosts[unbootable]["imaging_boot_verify_timeout"] = 60
    if ghost:
        # A participant that never network-boots (switched off, PXE disabled): "not reached".
        hosts[GHOST] = {"imaging_boot_mac": "52:54:00:e2:e0:24", "imaging_boot_firmware": "bios",
                        "imaging_boot_address": f"{SUBNET}.24", "ansible_host": f"{SUBNET}.24",
                        "imaging_boot_power_command": ["true"], "imaging_boot_timeout": 120}
    inv = {"all": {
        "vars": {
            "ansible_user": "root", "ansible_python_interpreter": "/usr/bin/python3",
            "ansible_ssh_private_key_file": ctl_key,
            "ansible_ssh_common_args": f"-o UserKnownHostsFile={known} -o StrictHostKeyChecking=yes -o ConnectTimeout=10",
            "imaging_interface": "eth0", "imaging_group": "239.255.42.9", "imaging_port": 9009,
            "imaging_image_name": "e2e-master", "imaging_image_dir": os.path.join(LAB_DIR, "images"),
            "imaging_identity_store": os.path.join(run_dir, "identity"),
            "imaging_devices": ["/dev/vda"],
            # The environment and its host key persist beside the cache: a later run reuses them.
            "imaging_boot_dir": os.path.join(CACHE, "boot", "e2e-environment"),
            "imaging_boot_state_dir": os.path.join(LAB_DIR, "boot-state"),
            "imaging_boot_cache_dir": os.path.join(CACHE, "boot"),
            "imaging_boot_host_keys_dir": os.path.join(CACHE, "boot", "e2e-hostkeys"),
            "imaging_boot_known_hosts": known,
            "imaging_boot_authorized_key_file": ctl_key + ".pub",
            "imaging_boot_server_address": server.address,
            "imaging_boot_subnet": f"{SUBNET}.0/24",
            "imaging_boot_mode": "dhcp",
            "imaging_boot_iso": True,
            "imaging_boot_power": "command" if power else "none",
            "imaging_boot_timeout": 900,
            "imaging_boot_verify": True,
            "imaging_boot_verify_known_hosts_dir": os.path.join(run_dir, "clones"),
            "boot_environment_apt_options": APT_OPTIONS,
            # TCG guests are slow: the master's live capture takes minutes to start sending, and
            # the receivers must not give up before.
            "multicast_image_max_wait": 900,
            "multicast_image_receiver_timeout": receiver_timeout,
            "multicast_image_drop_after": 20,
            # A TCG guest takes 2-3 MB/s of datagrams (its virtual NIC's queue drops the rest,
            # which its kernel never sees): the sender would otherwise send faster than they take.
            "multicast_image_rate_mbit": int(os.environ.get("FLEETCAST_E2E_RATE_MBIT", "24")),
            "multicast_image_poll_interval": 5,
        },
        "children": {
            "imaging_server": {"hosts": {"server": {"ansible_connection": "local", "ansible_host": server.address}}},
            "imaging_master": {"hosts": {"master": hosts["master"]}},
            "imaging_participants": {"hosts": {name: hosts[name] for name in PARTICIPANTS + ([GHOST] if ghost else [])}},
        }}}
    os.makedirs(os.path.join(run_dir, "clones"), exist_ok=True)
    path = os.path.join(run_dir, "inventory.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(inv, handle, indent=2)
    return path


def playbook(server, inv, playbooks, log_path, extra=()):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".build", "collections"),
               ANSIBLE_CONFIG=os.path.join(ROOT, "tests", "ansible.cfg"), ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_HOST_KEY_CHECKING="True", ANSIBLE_TIMEOUT="30")
    argv = server.argv([os.path.join(ROOT, ".venv", "bin", "ansible-playbook"), "-i", inv]
                       + [os.path.join(ROOT, "playbooks", name) for name in playbooks] + list(extra))
    with open(log_path, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
        lines = []
        try:
            for line in proc.stdout:
                out.write(line)
                out.flush()
                lines.append(line)
                if line.startswith(("PLAY [", "TASK [")) or "fatal:" in line or re.match(r"^\s*(p\d|master)\s", line):
                    sys.stdout.write("    " + line)
            proc.wait()
        finally:
            if proc.poll() is None:      # interrupted: the playbook must not go on powering VMs
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
    return proc.returncode, "".join(lines)


def summary_rows(output):
    """Each participant's row of the run: from the run's JSON report (its path is in the summary),
    else from the printed summary."""
    match = re.search(r"Data: (\S+\.json)", output)
    if match and os.path.isfile(match.group(1)):
        with open(match.group(1), encoding="utf-8") as handle:
            report = json.load(handle)
        rows = {}
        for host in report.get("hosts", []):
            identity = host.get("identity") or {}
            reason = host.get("reason") or ""
            rows[host["name"]] = {
                "result": "FAILED" if host.get("outcome") == "failed" else host.get("outcome"),
                "bytes": host.get("bytes"), "seconds": host.get("seconds"),
                "identity": "verified" if identity.get("verified") else "no",
                "rest": (f"at {host['failed_stage']}: {reason}" if host.get("failed_stage") else reason)}
        return rows
    return printed_summary_rows(output)


def printed_summary_rows(output):
    rows = {}
    for line in output.splitlines():
        line = line.strip().strip('",').replace("\\n", "\n")
        for part in line.split("\n"):
            # a row as the stock callback prints the summary's list: "- p1  ok  ..."
            match = re.match(r"^(p\d+)\s+(ok|FAILED|skipped|planned)\s+(\S+)\s+(\S+)\s+(\S+)(.*)$",
                             part.strip().lstrip("- ").strip("'"))
            if match:
                rows[match.group(1)] = {"result": match.group(2), "bytes": match.group(3), "seconds": match.group(4),
                                        "identity": match.group(5), "rest": match.group(6).strip()}
    return rows


def ssh_probe(server, address, ctl_key, known_hosts):
    """Run the verification probe on the running clone, from the server's namespace."""
    from ansible_collections.fleetcast.imaging.plugins.module_utils._boot import verify
    done = subprocess.run(server.argv(["ssh", "-i", ctl_key, "-o", f"UserKnownHostsFile={known_hosts}", "-o",
                                       "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
                                       f"root@{address}", verify.PROBE]),
                          capture_output=True, text=True, check=False)
    return done.returncode, verify.parse_probe(done.stdout), done.stderr.strip()


def check_clones(server, names, ctl_key, originals, master, failures):
    """Log into each running clone (from the server's namespace) and check its identity ourselves."""
    seen = {}
    for name in names:
        firmware, address, boot_address, mac = MACHINES[name]
        own = originals[name]
        known = os.path.join(LAB_DIR, f"{name}.clone_known_hosts")
        with open(known, "w", encoding="utf-8") as handle:
            handle.write(keys.known_hosts({boot_address: [own["host_key"]]}))
        rc, observed, err = ssh_probe(server, boot_address, ctl_key, known)
        if rc != 0:
            failures.append(f"{name}: cannot log into the running clone at {boot_address} with its own host key: {err}")
            continue
        seen[name] = observed
        expect = {"hostname": own["hostname"], "machine_id": own["machine_id"]}
        for key, value in expect.items():
            if observed.get(key) != value:
                failures.append(f"{name}: the running clone has {key} {observed.get(key)!r}, not its own {value!r}")
        if boot_address not in observed.get("addresses", []):
            failures.append(f"{name}: the running clone does not have its address {boot_address}")
        for key in ("hostname", "machine_id"):
            if observed.get(key) == master[key]:
                failures.append(f"{name}: the running clone answers with the master's {key} {master[key]}")
        if master["fingerprint"] in observed.get("ssh_fingerprints", []):
            failures.append(f"{name}: the running clone has the master's SSH host key")
        if MACHINES["master"][2] in observed.get("addresses", []):
            failures.append(f"{name}: the running clone has the master's address")
        marker = read_marker_over_ssh(server, boot_address, ctl_key, known)
        if marker != "dirty disk of master":
            failures.append(f"{name}: the running clone's system is not the master's image (marker {marker!r})")
    values = {}
    for name, observed in seen.items():
        for key in ("hostname", "machine_id"):
            values.setdefault((key, observed.get(key)), []).append(name)
    for (key, value), owners in values.items():
        if len(owners) > 1:
            failures.append(f"{', '.join(owners)} answer with the same {key} {value}")
    return seen


def read_marker_over_ssh(server, address, ctl_key, known):
    done = subprocess.run(server.argv(["ssh", "-i", ctl_key, "-o", f"UserKnownHostsFile={known}", "-o",
                                       "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", f"root@{address}",
                                       "cat /etc/fleetcast-e2e-marker"]),
                          capture_output=True, text=True, check=False)
    return done.stdout.strip()


class Cutter(threading.Thread):
    """Cut the session at `tap` (the VM's switch port) once the multicast session has sent it `after` bytes."""

    def __init__(self, switch, tap, after):
        super().__init__(daemon=True)
        self.switch, self.tap, self.after = switch, tap, after
        self.cut_at = None
        self.stop = False

    def tx_bytes(self):
        out = run(["ip", "-n", self.switch, "-s", "-j", "link", "show", self.tap], capture_output=True, text=True,
                  check=False).stdout
        try:
            return json.loads(out)[0]["stats64"]["tx"]["bytes"]
        except (ValueError, IndexError, KeyError):
            return 0

    def run(self):
        base = None
        while not self.stop:
            now = self.tx_bytes()
            if base is None or now < base:
                base = now
            # The boot (initrd over HTTP) happened before we started watching; from here on only the
            # multicast session sends this much to one port.
            if now - base > self.after:
                # Every UDP datagram to and from the port is dropped by the switch: the multicast
                # session (data, repairs, reports) is cut, the SSH connection of Ansible stays, so
                # the participant is reported by its own receiver. (A cut of everything makes the
                # host UNREACHABLE in Ansible's recap instead.)
                rules = ("table bridge fleetcast_e2e_cut {\n chain forward {\n"
                         "  type filter hook forward priority 0; policy accept;\n"
                         f"  oifname \"{self.tap}\" meta l4proto udp drop\n"
                         f"  iifname \"{self.tap}\" meta l4proto udp drop\n }}\n}}\n")
                done = run(["ip", "netns", "exec", self.switch, "nft", "-f", "-"], input=rules, text=True,
                           capture_output=True, check=False)
                if done.returncode:
                    log(f"could not cut {self.tap}: {done.stderr.strip()}")
                    return
                self.cut_at = time.time()
                log(f"cut {self.tap}: the participant's multicast session is gone ({(now - base) >> 20} MiB had reached it)")
                return
            time.sleep(1)


def main():
    # stopped (Ctrl-C, SIGTERM, a CI timeout): the finally clauses switch the VMs off and take
    # the lab down
    signal.signal(signal.SIGTERM, lambda *dummy: sys.exit(143))
    figures = Figures()
    if os.path.isdir(LAB_DIR):
        shutil.rmtree(LAB_DIR)
    os.makedirs(os.path.join(LAB_DIR, "images"))
    # The lab's controller key lives beside the cached disks (it is in their authorized_keys), so
    # that a later run finds them cached.
    ctl_key = os.path.join(CACHE, "boot", "e2e-controller_key")
    if not os.path.isfile(ctl_key):
        os.makedirs(os.path.dirname(ctl_key), exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fleetcast-e2e-controller", "-f", ctl_key])
    with open(ctl_key + ".pub", encoding="ascii") as handle:
        ctl_pub = handle.read()
    t0 = time.monotonic()
    log("bootable Debian disks (cached under %s)" % os.path.join(CACHE, "boot"))
    disks(figures, ctl_pub)
    # The lab's image server lives in a namespace without Internet access: the Debian root of the
    # imaging environment (mmdebstrap) is made here first; the role then finds it in the cache.
    started = time.monotonic()
    env_root = build.root_tarball(build.RootSpec(apt_options=APT_OPTIONS), os.path.join(CACHE, "boot"))
    figures["env_root_seconds"] = round(time.monotonic() - started, 1)
    figures["env_root_cached"] = env_root["cached"]
    originals = {name: {"hostname": read_disk_file(name, "/etc/hostname"),
                        "machine_id": read_disk_file(name, "/etc/machine-id"),
                        "host_key": read_disk_file(name, "/etc/ssh/ssh_host_ed25519_key.pub")}
                 for name in MACHINES}
    master = dict(originals["master"], fingerprint=keys.fingerprint(originals["master"]["host_key"]))
    figures.save()
    lab = NetLab(subnet=SUBNET)
    failures = []
    try:
        server = lab.add_host("server")
        vms = {}
        for index, (name, (firmware, dummy, dummy2, mac)) in enumerate(MACHINES.items()):
            tap = f"tap{index}"
            run(["ip", "-n", lab.switch, "tuntap", "add", "dev", tap, "mode", "tap"])
            run(["ip", "-n", lab.switch, "link", "set", tap, "master", "br0", "up"])
            vms[name] = {"name": name, "mac": mac, "firmware": firmware, "tap": tap, "ram_mb": RAM_MB,
                         "disk": os.path.join(LAB_DIR, f"{name}.raw"), "vars": os.path.join(LAB_DIR, f"{name}.vars"),
                         "console": os.path.join(LAB_DIR, f"{name}.console")}
        with open(os.path.join(LAB_DIR, "vms.json"), "w", encoding="utf-8") as handle:
            json.dump({"switch": lab.switch, "vms": vms}, handle, indent=2)

        # Run 1: the whole path.
        run1 = os.path.join(LAB_DIR, "run1")
        os.makedirs(run1)
        inv = inventory(lab, server, ctl_key, run1)
        log("run 1: boot.yml capture.yml deploy.yml (the fleet network-boots; log: run1/ansible.log)")
        started = time.monotonic()
        threading.Thread(target=power_off_idle_vms, args=(os.path.join(run1, "ansible.log"),),
                         daemon=True).start()
        code, output = playbook(server, inv, ["boot.yml", "capture.yml", "deploy.yml"],
                                os.path.join(run1, "ansible.log"))
        figures["run1_seconds"] = round(time.monotonic() - started, 1)
        collect_figures(figures, output, "run1")
        rows = summary_rows(output)
        figures["run1_summary"] = rows
        figures.save()
        if code != 0:
            failures.append(f"run 1: ansible-playbook exited {code} (see {run1}/ansible.log)")
        for name in PARTICIPANTS:
            if rows.get(name, {}).get("result") != "ok" or rows[name].get("identity") != "verified":
                failures.append(f"run 1: {name} is not 'ok, verified' in the summary: {rows.get(name)}")
        log("run 1: logging into every running clone to check its identity")
        check_clones(server, PARTICIPANTS, ctl_key, originals, master, failures)
        if failures:
            raise SystemExit("\n".join(["E2E FAILED (run 1):"] + failures))

        # Run 2: dirty disks again, everything powered off; p3's network is cut mid-session.
        for name in MACHINES:
            vmlab.power_off(LAB_DIR, name)
        time.sleep(2)
        disks(figures, ctl_pub)
        run2 = os.path.join(LAB_DIR, "run2")
        os.makedirs(run2)
        # Run 2 sends the image file (no capture to wait for): a receiver whose network is cut
        # gives up after a minute of silence (the others wait for it at the play's next task).
        inv = inventory(lab, server, ctl_key, run2, ghost=True, receiver_timeout=60, unbootable=UNBOOTABLE)
        with open(os.path.join(LAB_DIR, f"{UNBOOTABLE}.unbootable"), "w", encoding="ascii"):
            pass
        cutter = Cutter(lab.switch, vms[CUT]["tap"], after=40 << 20)
        watch = threading.Thread(target=start_cutter_when_multicast, args=(os.path.join(run2, "ansible.log"), cutter),
                                 daemon=True)
        watch.start()
        threading.Thread(target=power_off_idle_vms, args=(os.path.join(run2, "ansible.log"), False), daemon=True).start()
        log(f"run 2: the same, with {CUT}'s network cut in the middle of the multicast session")
        started = time.monotonic()
        code, output = playbook(server, inv, ["boot.yml", "capture.yml", "deploy.yml"],
                                os.path.join(run2, "ansible.log"), ["--limit", "server:imaging_participants"])
        figures["run2_seconds"] = round(time.monotonic() - started, 1)
        cutter.stop = True
        rows = summary_rows(output)
        figures["run2_summary"] = rows
        figures.save()
        if code == 0:
            failures.append("run 2: ansible-playbook exited 0 although a participant failed")
        if cutter.cut_at is None:
            failures.append(f"run 2: {CUT}'s network was never cut (no multicast traffic seen)")
        bad = rows.get(CUT, {})
        if bad.get("result") != "FAILED" or not bad.get("rest"):
            failures.append(f"run 2: {CUT} is not FAILED with a reason in the summary: {bad}")
        else:
            log(f"run 2: {CUT}: {bad['rest']}")
        ghost = rows.get(GHOST, {})
        if ghost.get("result") != "FAILED" or "not reached" not in ghost.get("rest", ""):
            failures.append(f"run 2: {GHOST} (never powered on) is not FAILED 'not reached': {ghost}")
        else:
            log(f"run 2: {GHOST}: {ghost['rest']}")
        broken = rows.get(UNBOOTABLE, {})
        if broken.get("result") != "FAILED" or "did not boot" not in broken.get("rest", ""):
            failures.append(f"run 2: {UNBOOTABLE} (its clone cannot boot) is not FAILED 'did not boot': {broken}")
        else:
            log(f"run 2: {UNBOOTABLE}: {broken['rest']}")
        others = [name for name in PARTICIPANTS if name not in (CUT, UNBOOTABLE)]
        for name in others:
            if rows.get(name, {}).get("result") != "ok" or rows[name].get("identity") != "verified":
                failures.append(f"run 2: {name} is not 'ok, verified' in the summary: {rows.get(name)}")
        check_clones(server, others, ctl_key, originals, master, failures)
        figures["total_seconds"] = round(time.monotonic() - t0, 1)
        figures.save()
        if failures:
            raise SystemExit("\n".join(["E2E FAILED (run 2):"] + failures))
        log(f"E2E PASSED in {figures['total_seconds']} s; figures in {LAB_DIR}/figures.json")
        print(json.dumps(figures, indent=2, sort_keys=True))
    finally:
        for name in MACHINES:
            vmlab.power_off(LAB_DIR, name)
        stop_service(server if lab.hosts else None)
        time.sleep(1)
        lab.close()
        remove_bulk()


def remove_bulk():
    """The VMs' disks and the captured image are nearly all of a run's 1.7 GB: removed at the end,
    passed or failed (the machine's own disk is not ours to fill); consoles, logs and figures stay.
    FLEETCAST_E2E_KEEP_DISKS=1 keeps them, to look into a failed clone."""
    bulk = [os.path.join(LAB_DIR, name) for name in sorted(os.listdir(LAB_DIR)) if name.endswith(".raw")]
    bulk.append(os.path.join(LAB_DIR, "images"))
    if os.environ.get("FLEETCAST_E2E_KEEP_DISKS") == "1":
        log(f"kept the VM disks and the image in {LAB_DIR} (FLEETCAST_E2E_KEEP_DISKS=1)")
        return
    for path in bulk:
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.exists(path):
            os.unlink(path)
    log(f"removed the VM disks and the image from {LAB_DIR} (FLEETCAST_E2E_KEEP_DISKS=1 keeps them)")


def power_off_idle_vms(log_path, master=True):
    """Give CPU time back to the participants at work: a VM that was not reached is switched off
    once the boot play is over, the master once its capture is done."""
    stopped = set()
    while True:
        try:
            with open(log_path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError:
            text = ""
        for name in re.findall(r"(\w+): not reached: ", text):
            if name not in stopped and name in MACHINES:
                vmlab.power_off(LAB_DIR, name)
                stopped.add(name)
        if "PLAY [Preflight on the image server]" in text:
            if master:
                vmlab.power_off(LAB_DIR, "master")
            return
        time.sleep(2)


def start_cutter_when_multicast(log_path, cutter):
    """Start watching p3's port once deploy.yml reaches its multicast play."""
    while not cutter.stop:
        try:
            with open(log_path, encoding="utf-8") as handle:
                if "PLAY [Multicast the image from the server to every participant at once]" in handle.read():
                    cutter.start()
                    return
        except OSError:
            pass
        time.sleep(1)


def stop_service(server):
    state = os.path.join(LAB_DIR, "boot-state")
    for name in ("dnsmasq.pid", "http.pid"):
        try:
            with open(os.path.join(state, name), encoding="ascii") as handle:
                pid = int(handle.read().strip())
            os.kill(pid, 15)
        except (OSError, ValueError):
            pass


def collect_figures(figures, output, prefix):
    for pattern, key in ((r"built in ([0-9.]+) s", "env_build_seconds"), (r"environment \S+ (from the cache)", "env_cached")):
        match = re.search(pattern, output)
        if match:
            figures[f"{prefix}_{key}"] = match.group(1)
    for pattern, key in ((r"(\w+): in the imaging environment ([0-9.]+) s after power-on", "pxe_to_ssh_seconds"),
                         (r"(\w+): the clone answered SSH ([0-9.]+) s after it went down", "reboot_to_ssh_seconds")):
        figures[f"{prefix}_{key}"] = {m.group(1): float(m.group(2)) for m in re.finditer(pattern, output)}
    match = re.search(r"sizes (\{[^}]*\})", output)
    if match:
        try:
            figures[f"{prefix}_env_sizes"] = json.loads(match.group(1).replace("\\\"", "\""))
        except ValueError:
            pass


if __name__ == "__main__":
    main()
