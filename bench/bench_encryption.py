# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark (not a test): what encryption costs on a real image, in one run.

The lab's cached Debian image (a bookworm root with its kernel, ~145 MB in chunks of very different
compressed sizes; built on first use) is served through the bridge (python3 -m ..._multicast, the
code the modules run) to N receivers in lab namespaces, alternately in clear (GMAC tags only) and
encrypted (AES-256-GCM, the roles' default), ROUNDS times each, so that both see the same machine
load. Receivers write image files on tmpfs (or, with --disks, onto loop devices over files in
/var/tmp: the real write path, fsync included). Reported: median wall time from the sender's start
to the last receiver's completion, and the CPU seconds of sender and receivers (wait4), with the
encrypted/clear ratio of each. Every output is checked (image id, or the disk against the master).

Run as root: .venv/bin/python bench/bench_encryption.py [--receivers 3] [--rounds 3] [--disks]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS = os.path.join(ROOT, ".build", "collections")
sys.path.insert(0, COLLECTIONS)

from ansible_collections.fleetcast.imaging.plugins.module_utils._image.format import ImageReader  # noqa: E402
from ansible_collections.fleetcast.imaging.plugins.module_utils._lab import debian_disk  # noqa: E402
from ansible_collections.fleetcast.imaging.plugins.module_utils._lab.loopdisk import LoopDisk  # noqa: E402
from ansible_collections.fleetcast.imaging.plugins.module_utils._lab.netlab import NetLab  # noqa: E402

BRIDGE = ["/usr/bin/python3", "-m", "ansible_collections.fleetcast.imaging.plugins.module_utils._multicast"]
ENV = dict(os.environ, PYTHONPATH=COLLECTIONS, FLEETCAST_SESSION_KEY="bench-encryption-key")


def wait(process: subprocess.Popen):
    """(exit code, CPU seconds, JSON result) of a child, from wait4 and its one line of output."""
    out = process.stdout.read()
    _pid, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return process.returncode, usage.ru_utime + usage.ru_stime, json.loads(lines[-1]) if lines else {}


def one(lab_hosts, image, outputs, port: int, encrypt: bool, disks: bool):
    sender, receivers = lab_hosts
    where = (lambda out: ["--devices", out]) if disks else (lambda out: ["--dest", out])
    listening = [host.popen(BRIDGE + ["receive", "--port", str(port), "--timeout", "60", "--no-resume"]
                            + where(out), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                 for host, out in zip(receivers, outputs)]
    time.sleep(0.7)                       # receivers listening before the sender starts
    started = time.monotonic()
    serving = sender.popen(BRIDGE + ["send", "--image", image, "--port", str(port), "--min-receivers",
                                     str(len(receivers))] + (["--encrypt"] if encrypt else []),
                           env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    done = [wait(process) for process in listening]
    seconds = time.monotonic() - started
    code, sender_cpu, sent = wait(serving)
    ok = code == 0 and all(result[0] == 0 for result in done) and sent.get("encrypted") == encrypt
    return {"seconds": seconds, "sender_cpu": sender_cpu, "receiver_cpu": max(r[1] for r in done), "ok": ok}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--receivers", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--disks", action="store_true", help="receive onto loop devices instead of tmpfs files")
    args = parser.parse_args()
    cached = debian_disk.ensure_image()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))     # so the lab is torn down
    workdir = tempfile.mkdtemp(prefix="fleetcast-bench-enc-", dir="/var/tmp" if args.disks else "/dev/shm")
    results = {False: [], True: []}
    loops = []
    try:
        with NetLab() as lab:
            sender = lab.add_host("srv")
            receivers = [lab.add_host(f"r{number + 1}") for number in range(args.receivers)]
            if args.disks:
                loops = [LoopDisk.create(os.path.join(workdir, f"{h.name}.disk"), cached.size) for h in receivers]
                outputs = [disk.device for disk in loops]
            else:
                outputs = [os.path.join(workdir, f"{h.name}.fcimg") for h in receivers]
            port = 9500
            for round_number in range(args.rounds):
                for encrypt in (False, True) if round_number % 2 == 0 else (True, False):
                    port += 10
                    result = one((sender, receivers), cached.image, outputs, port, encrypt, args.disks)
                    if not args.disks:
                        for out in outputs:
                            with ImageReader(out) as reader:
                                result["ok"] = result["ok"] and reader.manifest.image_id == cached.image_id
                            os.unlink(out)
                    results[encrypt].append(result)
                    print(f"{'encrypted' if encrypt else 'clear    '}  {result['seconds']:6.2f} s  "
                          f"{cached.stored_bytes / 1e6 / result['seconds']:6.1f} MB/s  sender cpu "
                          f"{result['sender_cpu']:5.2f} s  receiver cpu {result['receiver_cpu']:5.2f} s  "
                          f"{'ok' if result['ok'] else 'FAILED'}", flush=True)
    finally:
        for disk in loops:
            disk.close()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"summary over {args.rounds} round(s), {args.receivers} receiver(s), "
          f"{'loop disks' if args.disks else 'tmpfs files'}, image {cached.stored_bytes / 1e6:.0f} MB in {cached.chunks} chunks:")
    for key in ("seconds", "sender_cpu", "receiver_cpu"):
        clear = statistics.median(r[key] for r in results[False])
        encrypted = statistics.median(r[key] for r in results[True])
        print(f"  {key:13s} clear {clear:6.2f}  encrypted {encrypted:6.2f}  ratio {encrypted / clear:5.2f}")
    return 0 if all(r["ok"] for rs in results.values() for r in rs) else 1


if __name__ == "__main__":
    sys.exit(main())
