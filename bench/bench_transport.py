# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark (not a test): one payload, one netlab, N receivers; fleetcast's transport (GSO/GRO
and the plain fallback) against udpcast and uftp, at each loss level, in the same run.

Run as root: .venv/bin/python bench/bench_transport.py [--size-mib 1024] [--receivers 1,3] [--loss 0,2]
             [--payload random|debian] [--durable DIR] [--object-sizes LIST] [--encrypt] [--tools LIST]

Sizes, receiver counts and loss levels are comma lists, all measured in one run. Tools: fleetcast,
fleetcast-fallback, udpcast, uftp, and the encrypted pair fleetcast-encrypted and uftp-gcm (each
compared with the other); and disk, no transport at all: N copies of the payload written at once by
dd (O_DIRECT) and synced: with --durable, the floor the disk sets at one receiver and a reference
at several (fleetcast / disk is printed too).
The issue's full matrix in one run:
  bench/bench_transport.py --durable /var/tmp/fcdur --size-mib 512,1024 --receivers 1,3,6 --loss 0,2 \
      --tools fleetcast,udpcast,uftp,fleetcast-encrypted,uftp-gcm,disk

--payload debian sends the lab's cached Debian image (a real root with its kernel, about 145 MB in
chunks of very different compressed sizes; built once, see docs/user-guide.md) instead of random
bytes: the peers send the image file, fleetcast serves it chunk by chunk through the bridge
(python3 -m ..._multicast) into an image file, checked by its image id and every chunk's digest.

Command lines used (all on eth0 of lab namespaces, MTU 1500, same group/port scheme):
  udpcast:  udp-receiver --interface eth0 --nokbd --portbase P --mcast-rdv-address R --file OUT
            udp-sender --interface eth0 --nokbd --portbase P --mcast-rdv-address R --full-duplex
                       --min-receivers N --file IN
            (full duplex: the sender does not wait for silence on the wire, as on a switched LAN)
  uftp:     uftpd -d -I eth0 -M 239.255.61.1 -p P -B 104857600 -D DIR
            uftp -I eth0 -M 239.255.61.1 -P 239.255.61.2 -p P -B 104857600 -Y none -R -1 -H ids NAME
            (full speed, no encryption; uftp's own NAK passes repair loss)
            with --encrypt: -Y aes256-gcm -h sha256 instead of -Y none (AES-256-GCM, its key
            exchanged with a generated RSA key)
  fleetcast: python3 -m ..._transport receive --group G --port P --output OUT
             python3 -m ..._transport send --group G --port P --file IN --min-receivers N
             (plus --no-offload on both sides for the fallback path; with --encrypt, --encrypt on
             the sender: AES-256-GCM, as the roles default to; udpcast has no encryption)
Before each measurement, tmpfs is filled with as much as that run will hold and emptied, so that no
tool pays for the virtual machine faulting that memory in.
With --durable DIR the outputs go to DIR (a directory on a real disk, not tmpfs) and every tool's
time runs until its data is durable: after the last receiver exits, ``syncfs`` on DIR (fleetcast's
receivers fsync before they report done, udpcast and uftp do not; the sync is timed for all, so
the comparison is to durable bytes for everyone). --object-sizes gives fleetcast varied object
sizes (as an image's compressed chunks), e.g. 3072,4194304,65536,1048576.
Times are wall-clock from the sender's start to the last receiver's completion; receiver CPU
(user+system) and peak RSS come from wait4() on each receiver process (the largest of the
receivers), the sender's CPU and peak RSS likewise. Every output is checked against the payload's
SHA-256; a run that does not deliver it exactly is reported as failed. Each receiver count runs
every tool at every loss level; the summary gives fleetcast's time over udpcast's and over uftp's
for each. The exit status is 1 only when a fleetcast run failed (a peer's failure is marked in the
summary, and its ratio is not a measurement).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS = os.path.join(ROOT, ".build", "collections")
sys.path.insert(0, COLLECTIONS)

from ansible_collections.fleetcast.imaging.plugins.module_utils._lab.netlab import NetLab  # noqa: E402

ENGINE = ["/usr/bin/python3", "-m", "ansible_collections.fleetcast.imaging.plugins.module_utils._transport"]
ENV = dict(os.environ, PYTHONPATH=COLLECTIONS, FLEETCAST_SESSION_KEY="bench-session-key")
BRIDGE = ["/usr/bin/python3", "-m", "ansible_collections.fleetcast.imaging.plugins.module_utils._multicast"]


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        for block in iter(lambda: source.read(8 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def syncfs(directory: str) -> None:
    """syncfs(2) on the filesystem holding `directory` (only its dirty pages, not the machine's)."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        if ctypes.CDLL(None, use_errno=True).syncfs(descriptor) != 0:
            os.sync()
    finally:
        os.close(descriptor)


def warm_memory(directory: str, mib: int) -> None:
    """Write and delete as much as the next run will hold in tmpfs, right before it. On this virtual
    machine memory the guest touches for the first time, or again after the host reclaimed it (the
    guest reports free pages; kdamond runs), is slow to fault in: 3 writers filling 1 GiB of tmpfs
    each took 3.0 s one time and 0.8 s the next. Without this, whichever tool runs first after a
    pause pays for it (one run: a 3-receiver session at 4.1 s of receiver CPU instead of 2.0 s)."""
    path = os.path.join(directory, "warm")
    block = bytes(1 << 20)
    with open(path, "wb") as out:
        for _mib in range(mib):
            out.write(block)
    os.unlink(path)


def wait_usage(process: subprocess.Popen, deadline: float):
    """(exit code, cpu seconds, peak RSS MiB) of one process, killing it at the deadline."""
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return process.returncode, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024
        if time.monotonic() > deadline:
            process.kill()
        time.sleep(0.02)


class Run:
    def __init__(self, lab, sender, receivers, payload, workdir, port, durable=False, object_sizes="", encrypt=False):
        self.lab, self.sender, self.receivers = lab, sender, receivers
        self.payload, self.workdir, self.port = payload, workdir, port
        self.durable, self.object_sizes, self.encrypt = durable, object_sizes, encrypt

    def outputs(self, tool):
        directory = os.path.join(self.workdir, tool)
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory)
        return directory

    def measure(self, start_receivers, start_sender, outputs, timeout, wait_sender=False, stop_receivers=None):
        receivers = start_receivers()
        if receivers:
            time.sleep(0.7)                    # receivers listening before the sender starts
        started = time.monotonic()
        sender = start_sender()
        deadline = started + timeout
        usages = [(0, 0.0, 0.0)]
        if wait_sender:
            sender_usage = wait_usage(sender, deadline)
            elapsed = time.monotonic() - started
            stop_receivers(receivers)
            usages = [wait_usage(p, deadline + 5) for p in receivers] or usages
        else:
            usages = [wait_usage(p, deadline) for p in receivers]
            elapsed = time.monotonic() - started
            sender_usage = wait_usage(sender, deadline + 10)
        if self.durable:
            # to durable bytes: what is still in the page cache goes to the disk now, timed
            sync_started = time.monotonic()
            syncfs(self.workdir)
            elapsed += time.monotonic() - sync_started
        exact = all(os.path.exists(o) and self.exact(o) for o in outputs)
        return {"seconds": elapsed, "ok": exact and sender_usage[0] == 0, "sender_cpu": sender_usage[1],
                "sender_rss": sender_usage[2], "cpu": max(u[1] for u in usages), "rss": max(u[2] for u in usages)}

    image_id = ""        # --payload debian: outputs are image files, checked by image id and chunk digests

    def exact(self, output: str) -> bool:
        if self.image_id and os.path.relpath(output, self.workdir).startswith("fleetcast"):
            from ansible_collections.fleetcast.imaging.plugins.module_utils._image.format import ImageReader
            with ImageReader(output) as reader:
                reader.verify()
                return reader.manifest.image_id == self.image_id
        return sha256(output) == self.payload_digest

    def fleetcast(self, offload: bool, timeout: float, encrypted: bool = False):
        tool = ("fleetcast" if offload else "fleetcast-fallback") + ("-encrypted" if encrypted else "")
        directory = self.outputs(tool)
        extra = [] if offload else ["--no-offload"]
        outputs = [os.path.join(directory, h.name) for h in self.receivers]
        common = ["--group", "239.255.61.9", "--port", str(self.port)] + extra
        encrypt = ["--encrypt"] if self.encrypt or encrypted else []
        if self.image_id:
            return self.measure(
                lambda: [h.popen(BRIDGE + ["receive", "--dest", out, "--timeout", "60", "--no-resume"] + common,
                                 env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                         for h, out in zip(self.receivers, outputs)],
                lambda: self.sender.popen(BRIDGE + ["send", "--image", self.payload, "--min-receivers",
                                                    str(len(self.receivers))] + common + encrypt, env=ENV,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
                outputs, timeout)
        return self.measure(
            lambda: [h.popen(ENGINE + ["receive", "--output", out, "--timeout", "60"] + common, env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                     for h, out in zip(self.receivers, outputs)],
            lambda: self.sender.popen(ENGINE + ["send", "--file", self.payload, "--min-receivers",
                                                str(len(self.receivers))] + common + encrypt
                                      + (["--object-sizes", self.object_sizes] if self.object_sizes else []), env=ENV,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
            outputs, timeout)

    def udpcast(self, timeout: float):
        directory = self.outputs("udpcast")
        outputs = [os.path.join(directory, h.name) for h in self.receivers]
        # the rendezvous on a multicast address: udpcast's default broadcast one has no route in the lab
        base = ["--interface", "eth0", "--nokbd", "--portbase", str(self.port), "--mcast-rdv-address", "239.255.61.5"]
        return self.measure(
            lambda: [h.popen(["udp-receiver"] + base + ["--file", out], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
                     for h, out in zip(self.receivers, outputs)],
            lambda: self.sender.popen(["udp-sender"] + base + ["--full-duplex", "--min-receivers",
                                                               str(len(self.receivers)), "--file", self.payload],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      stdin=subprocess.DEVNULL),
            outputs, timeout)

    def disk(self, timeout: float):
        """The disk's own time for this cell: each receiver's copy of the payload written by `dd`
        (O_DIRECT, 4 MiB blocks, all copies at once) and synced, no network. With --durable and one
        receiver no transport delivers durable bytes faster; with several, a reference only (this
        disk serves concurrent writers unevenly, and a transport has beaten N `dd` at once)."""
        directory = self.outputs("disk")
        outputs = [os.path.join(directory, h.name) for h in self.receivers]
        return self.measure(
            lambda: [],
            lambda: subprocess.Popen(["sh", "-c", " & ".join(
                f"dd if={self.payload} of={out} bs=4M oflag=direct status=none" for out in outputs) + "; wait"]),
            outputs, timeout, wait_sender=True, stop_receivers=lambda processes: None)

    def uftp(self, timeout: float, gcm: bool = False):
        directory = self.outputs("uftp-gcm" if gcm else "uftp")
        dirs = [os.path.join(directory, h.name) for h in self.receivers]
        for d in dirs:
            os.makedirs(d)
        outputs = [os.path.join(d, os.path.basename(self.payload)) for d in dirs]
        ids = ",".join(f"0x{i + 1:08x}" for i in range(len(self.receivers)))
        common = ["-I", "eth0", "-M", "239.255.61.1", "-p", str(self.port), "-B", "104857600"]

        def stop(processes):
            for p in processes:
                p.terminate()
        return self.measure(
            lambda: [h.popen(["uftpd", "-d", "-U", f"0x{i + 1:08x}", "-D", d] + common,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                     for i, (h, d) in enumerate(zip(self.receivers, dirs))],
            lambda: self.sender.popen(["uftp", "-P", "239.255.61.2", "-R", "-1", "-H", ids]
                                      + (["-Y", "aes256-gcm", "-h", "sha256"] if self.encrypt or gcm else ["-Y", "none"])
                                      + common + [os.path.basename(self.payload)], cwd=os.path.dirname(self.payload),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
            outputs, timeout, wait_sender=True, stop_receivers=stop)


def _make_payload(args, payload: str, size: float):
    """(image id or "", size in MiB) of the payload file written for this size."""
    image_id = ""
    if args.payload == "debian":
        from ansible_collections.fleetcast.imaging.plugins.module_utils._lab import debian_disk
        cached = debian_disk.ensure_image()
        shutil.copyfile(cached.image, payload)
        image_id, size = cached.image_id, os.path.getsize(payload) / (1 << 20)
    else:
        with open(payload, "wb") as out:
            for _mib in range(int(size)):
                out.write(os.urandom(1 << 20))
    if args.durable:
        # the payload on the disk before any run: else the first run's closing sync writes it too
        syncfs(os.path.dirname(payload))
    return image_id, size


def _measure(args, run, hosts, tools, counts, size, workdir, results) -> None:
    """Every (receivers, loss, tool) of one payload size, printed as it goes."""
    for count in counts:
        run.receivers = hosts[:count]
        for loss in [float(x) for x in args.loss.split(",")]:
            for host in hosts:
                host.clear_rules()
                if loss:
                    host.drop_incoming_udp(loss)
            for tool in tools:
                if not args.durable:
                    warm_memory(workdir, int((count + 1) * size))
                run.port += 10
                if tool.startswith("fleetcast"):
                    result = run.fleetcast(not tool.startswith("fleetcast-fallback"), args.timeout,
                                           encrypted=tool.endswith("-encrypted"))
                elif tool == "uftp-gcm":
                    result = run.uftp(args.timeout, gcm=True)
                else:
                    result = getattr(run, tool)(args.timeout)
                results[(size, count, loss, tool)] = result
                print(f"{size:g} MiB  N={count} loss {loss:g}%  {tool:19s} {result['seconds']:7.2f} s  "
                      f"{size / result['seconds']:7.1f} MiB/s  sender cpu {result['sender_cpu']:6.2f} s, rss {result['sender_rss']:6.1f} MiB  "
                      f"receiver cpu {result['cpu']:6.2f} s  peak rss {result['rss']:6.1f} MiB  "
                      f"{'ok' if result['ok'] else 'FAILED'}", flush=True)
                shutil.rmtree(os.path.join(workdir, tool), ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--size-mib", default="1024", help="payload sizes in MiB, each measured in turn (512,1024)")
    parser.add_argument("--receivers", default="1,3", help="receiver counts, each measured in turn")
    parser.add_argument("--loss", default="0,2", help="percent of incoming UDP dropped at each receiver")
    parser.add_argument("--tools", default="fleetcast,fleetcast-fallback,udpcast,uftp")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--payload", choices=["random", "debian"], default="random",
                        help="random bytes of --size-mib, or the lab's cached Debian image")
    parser.add_argument("--durable", default="", help="outputs in this directory (a real disk), timed until synced")
    parser.add_argument("--object-sizes", default="", help="fleetcast's object sizes in turn (varied, as an image's chunks)")
    parser.add_argument("--encrypt", action="store_true",
                        help="fleetcast with AES-256-GCM (--encrypt), uftp with -Y aes256-gcm; udpcast cannot encrypt")
    args = parser.parse_args()
    # tmpfs: the benchmark measures the transports, not this machine's disk writeback (unless --durable)
    base = args.durable or ("/dev/shm" if os.path.isdir("/dev/shm") else None)
    workdir = tempfile.mkdtemp(prefix="fleetcast-bench-", dir=base)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))     # so the lab is torn down
    payload = os.path.join(workdir, "payload.bin")
    tools = args.tools.split(",")
    counts = [int(x) for x in args.receivers.split(",")]
    sizes = [float(x) for x in args.size_mib.split(",")]
    results = {}
    try:
        with NetLab() as lab:
            sender = lab.add_host("srv")
            hosts = [lab.add_host(f"r{i + 1}") for i in range(max(counts))]
            for number, wanted in enumerate(sizes):
                image_id, size = _make_payload(args, payload, wanted)
                run = Run(lab, sender, hosts, payload, workdir, 9400 + 1000 * number, bool(args.durable),
                          args.object_sizes, args.encrypt)
                run.payload_digest = sha256(payload)
                run.image_id = image_id
                _measure(args, run, hosts, tools, counts, size, workdir, results)
            print("summary: fleetcast time / peer time (a failed peer run is marked)")
            for (size, count, loss, tool), result in results.items():
                if not tool.startswith("fleetcast"):
                    continue
                peers = (("uftp-gcm",) if tool.endswith("-encrypted") else ("udpcast", "uftp")) + ("disk",)
                for peer in peers:
                    base = results.get((size, count, loss, peer))
                    if base:
                        note = "" if base["ok"] else f" ({peer} FAILED)"
                        print(f"{size:g} MiB  N={count} loss {loss:g}%  {tool} / {peer} = "
                              f"{result['seconds'] / base['seconds']:.3f}{note}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    # a peer's failed run is marked in the summary; only fleetcast's own failures fail the benchmark
    return 0 if all(r["ok"] for (_s, _c, _l, tool), r in results.items() if tool.startswith("fleetcast")) else 1


if __name__ == "__main__":
    sys.exit(main())
