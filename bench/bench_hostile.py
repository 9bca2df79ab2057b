# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark (not a test): the transport on a hostile or faulty LAN, against itself on a clean one.

Run as root: .venv/bin/python bench/bench_hostile.py [--size-mib 256] [--receivers 2] [--rounds 2]

Each round, in one lab, alternating:
  clean     N receivers, nothing else on the LAN
  flood     the same, while another host floods the group at 10 % of the clean session's rate with
            datagrams behind the live session's prefix and live headers with forged payloads
            (tests/integration/transport/hostile.py, kinds "flood" and "payload", paced); target: at
            most 2x the clean time
  flood-1st the flood only for the first half of the clean time: the session should be back at full
            speed within 1 s of the flood stopping, i.e. take about clean x (1 + (s - 1) / 2) where
            s is the flood's slowdown; the excess over that is printed
  mtu       one more receiver whose interface takes 1400-byte frames (it hears control, no data;
            ``LabHost.narrow_path``): the others' completion against clean (target: at most 1.2x),
            and how long that receiver took to fail with its reason (target: 10 s)
Times: from the sender's start to the last good receiver's DONE (the sender's report). Outputs are in
tmpfs and compared byte for byte. After the rounds, the median of each figure: on a shared machine
one round is noise-bound (the clean time alone varies by a third from round to round).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS = os.path.join(ROOT, ".build", "collections")
sys.path.insert(0, COLLECTIONS)

from ansible_collections.fleetcast.imaging.plugins.module_utils._lab.netlab import NetLab  # noqa: E402

ENGINE = ["/usr/bin/python3", "-m", "ansible_collections.fleetcast.imaging.plugins.module_utils._transport"]
HOSTILE = os.path.join(ROOT, "tests", "integration", "transport", "hostile.py")
ENV = dict(os.environ, PYTHONPATH=COLLECTIONS, FLEETCAST_SESSION_KEY="bench-session-key")
GROUP = "239.255.62.9"


def report_of(process, timeout=300):
    out, dummy = process.communicate(timeout=timeout)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return process.returncode, (json.loads(lines[-1]) if lines else {})


def session(lab, sender, hosts, payload, workdir, port, attack=None, broken=None):
    """(seconds to the last good receiver's DONE, sender report, receiver reports)."""
    outputs = [os.path.join(workdir, f"out-{h.name}") for h in hosts]
    everyone = hosts + ([broken] if broken else [])
    receivers = [h.popen(ENGINE + ["receive", "--group", GROUP, "--port", str(port), "--output",
                                   os.path.join(workdir, f"out-{h.name}"), "--name", h.name, "--timeout", "60"],
                         env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                 for h in everyone]
    time.sleep(0.7)
    names = ",".join(h.name for h in everyone)
    started = time.monotonic()
    sending = sender.popen(ENGINE + ["send", "--group", GROUP, "--port", str(port), "--file", payload,
                                     "--expected", names], env=ENV, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
    attacker = None
    if attack:
        host, rate, seconds = attack
        attacker = host.popen(["/usr/bin/python3", HOSTILE, "--group", GROUP, "--port", str(port),
                               "--address", host.address, "--sender", sender.address, "--kinds", "flood,payload",
                               "--per-kind", str(10 ** 9), "--rate", str(rate), "--seconds", str(seconds)],
                              env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    code, report = report_of(sending)
    wall = time.monotonic() - started
    if attacker:
        attacker.kill()
        attacker.wait()
    results = [report_of(p) for p in receivers]
    expected = sha256(payload)
    by_name = {r["name"]: r for r in report.get("receivers", [])}
    good = all(by_name.get(h.name, {}).get("state") == "done" and sha256(o) == expected
               for h, o in zip(hosts, outputs))
    finish = max((by_name[h.name]["finished_at"] or wall) for h in hosts) if good else wall
    for output in outputs:
        if os.path.exists(output):
            os.unlink(output)
    return {"seconds": finish, "ok": good and code == 0, "report": report, "results": results,
            "broken": by_name.get(broken.name) if broken else None}


def sha256(path):
    import hashlib
    digest = hashlib.sha256()
    if not os.path.exists(path):
        return ""
    with open(path, "rb") as source:
        for block in iter(lambda: source.read(8 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--receivers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="fleetcast-hostile-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    payload = os.path.join(workdir, "payload.bin")
    with open(payload, "wb") as out:
        for dummy in range(args.size_mib):
            out.write(os.urandom(1 << 20))
    ok = True
    try:
        with NetLab() as lab:
            sender = lab.add_host("srv")
            hosts = [lab.add_host(f"r{i + 1}") for i in range(args.receivers)]
            evil = lab.add_host("evil")
            narrow = lab.add_host("narrow")
            narrow.narrow_path(1400)
            port = 9500
            figures = {"flood": [], "excess": [], "mtu": [], "mtu_failed_after": []}
            for number in range(args.rounds):
                port += 10
                clean = session(lab, sender, hosts, payload, workdir, port)
                rate = int(args.size_mib * 1024 * 1024 / clean["seconds"])
                port += 10
                flood = session(lab, sender, hosts, payload, workdir, port, attack=(evil, rate // 10, 600))
                port += 10
                first = session(lab, sender, hosts, payload, workdir, port,
                                attack=(evil, rate // 10, clean["seconds"] / 2))
                port += 10
                mtu = session(lab, sender, hosts, payload, workdir, port, broken=narrow)
                slowdown = flood["seconds"] / clean["seconds"]
                estimate = clean["seconds"] * (1 + (slowdown - 1) / 2)
                broken = mtu["broken"] or {}
                mtu_slowdown = mtu["seconds"] / clean["seconds"]
                failed_after = (broken.get("finished_at") or 0) - (broken.get("joined_at") or 0)
                print(f"round {number + 1}: clean {clean['seconds']:.2f} s ({rate / 1e6:.0f} MB/s); "
                      f"flood at 10 % {flood['seconds']:.2f} s = {slowdown:.2f}x; "
                      f"flood for the first half {first['seconds']:.2f} s (estimate with instant recovery "
                      f"{estimate:.2f} s, excess {first['seconds'] - estimate:+.2f} s); "
                      f"one receiver behind a 1400 MTU: others {mtu['seconds']:.2f} s = "
                      f"{mtu_slowdown:.2f}x, it {broken.get('state')} after {failed_after:.1f} s: "
                      f"{broken.get('reason', '')[:90]}", flush=True)
                figures["flood"].append(slowdown)
                figures["excess"].append(first["seconds"] - estimate)
                figures["mtu"].append(mtu_slowdown)
                figures["mtu_failed_after"].append(failed_after)
                for name, run in (("clean", clean), ("flood", flood), ("flood-1st", first), ("mtu", mtu)):
                    if not run["ok"]:
                        ok = False
                        print(f"  {name}: FAILED {json.dumps(run['report'])[:600]}", flush=True)
            median = {name: statistics.median(values) for name, values in figures.items()}
            print(f"median of {args.rounds} round(s): flood at 10 % {median['flood']:.2f}x (target 2x); "
                  f"recovery excess {median['excess']:+.2f} s (target 1 s); behind a 1400 MTU the others "
                  f"{median['mtu']:.2f}x (target 1.2x), it failed after {median['mtu_failed_after']:.1f} s "
                  f"(target 10 s)", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
