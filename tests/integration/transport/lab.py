# Helpers for transport sessions in the netlab: the engine's CLI runs as separate processes inside
# the lab's namespaces, with Debian's python3 as on real targets.
import hashlib
import json
import os
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
COLLECTIONS = os.path.join(ROOT, ".build", "collections")
ENGINE = ["/usr/bin/python3", "-m", "ansible_collections.fleetcast.imaging.plugins.module_utils._transport"]
GROUP = "239.255.71.9"


def env(key="lab-session-key", **extra):
    value = dict(os.environ, PYTHONPATH=COLLECTIONS, FLEETCAST_SESSION_KEY=key)
    value.update(extra)
    return value


def start_receiver(host, output, key="lab-session-key", port=9611, timeout=20, extra=(), environment=None):
    argv = ENGINE + ["receive", "--group", GROUP, "--port", str(port), "--output", str(output),
                     "--timeout", str(timeout), "--name", host.name] + list(extra)
    return host.popen(argv, env=env(key, **(environment or {})), stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE, text=True)


def start_sender(host, payload, key="lab-session-key", port=9611, extra=(), environment=None):
    argv = ENGINE + ["send", "--group", GROUP, "--port", str(port), "--file", str(payload)] + list(extra)
    return host.popen(argv, env=env(key, **(environment or {})), stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE, text=True)


def finish(process, timeout=120):
    """(exit code, JSON report) of a CLI process; stderr shown if it did not print a report."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"process did not finish in {timeout} s: {err[-2000:]}")
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert lines, f"no report (exit {process.returncode}): {err[-3000:]}"
    return process.returncode, json.loads(lines[-1])


def make_payload(path, size, seed=b"fleetcast"):
    """Incompressible, reproducible bytes (a SHA-256 counter stream; fast enough for 512 MiB)."""
    block = 1024 * 1024
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        state = hashlib.sha256(seed).digest()
        for counter in range(0, size, block):
            # os.urandom would do as well; this keeps a failing run reproducible.
            chunk = hashlib.shake_256(state + counter.to_bytes(8, "big")).digest(min(block, size - counter))
            out.write(chunk)
            digest.update(chunk)
    return digest.hexdigest()


def file_digest(path):
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while True:
            block = source.read(4 * 1024 * 1024)
            if not block:
                return digest.hexdigest()
            digest.update(block)


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
