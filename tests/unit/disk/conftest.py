# Fake /sys, /proc/self/mountinfo and /proc/swaps trees, so that disk discovery and "all disks"
# selection are tested without ever looking at (or touching) the machine's own disks.
import os
import signal
import subprocess
import time

import pytest


class FakeHost:
    """Builds a fake sysfs tree plus mountinfo and swaps files under one directory."""

    def __init__(self, root):
        self.root = str(root)
        self.sysfs = os.path.join(self.root, "sys")
        self.mountinfo = os.path.join(self.root, "mountinfo")
        self.swaps = os.path.join(self.root, "swaps")
        self.dev = os.path.join(self.root, "dev")
        os.makedirs(os.path.join(self.sysfs, "block"))
        os.makedirs(self.dev)
        self._mounts = []
        self._swaps = []
        self._minor = 0
        self.flush()

    def _write(self, path, text):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")

    def _node(self, base, size_sectors):
        self._minor += 1
        self._write(os.path.join(base, "dev"), f"8:{self._minor}")
        self._write(os.path.join(base, "size"), str(size_sectors))
        os.makedirs(os.path.join(base, "holders"), exist_ok=True)
        os.makedirs(os.path.join(base, "slaves"), exist_ok=True)
        return f"8:{self._minor}"

    def disk(self, name, size_sectors=2 ** 21, removable=False, ro=False, model="Fake Disk", serial="S1",
             backing_file=None, slaves=(), partitions=(), node=None):
        """partitions: [(number, start_sector, size_sectors)]; node: a real device (one the test made)
        that the fake /dev entry links to. Returns {name: major:minor}."""
        base = os.path.join(self.sysfs, "block", name)
        ids = {name: self._node(base, size_sectors)}
        self._write(os.path.join(base, "removable"), "1" if removable else "0")
        self._write(os.path.join(base, "ro"), "1" if ro else "0")
        self._write(os.path.join(base, "queue", "logical_block_size"), "512")
        self._write(os.path.join(base, "queue", "rotational"), "0")
        self._write(os.path.join(base, "device", "model"), model)
        self._write(os.path.join(base, "device", "serial"), serial)
        if backing_file:
            self._write(os.path.join(base, "loop", "backing_file"), backing_file)
        for slave in slaves:
            os.makedirs(os.path.join(base, "slaves", slave))
            os.makedirs(self._holders_dir(slave, name), exist_ok=True)
        sep = "p" if name[-1].isdigit() else ""
        for number, start, size in partitions:
            part = f"{name}{sep}{number}"
            pbase = os.path.join(base, part)
            ids[part] = self._node(pbase, size)
            self._write(os.path.join(pbase, "partition"), str(number))
            self._write(os.path.join(pbase, "start"), str(start))
            open(os.path.join(self.dev, part), "w").close()
        if node:
            os.symlink(node, os.path.join(self.dev, name))
        else:
            open(os.path.join(self.dev, name), "w").close()
        self.ids = getattr(self, "ids", {})
        self.ids.update(ids)
        return ids

    def _holders_dir(self, slave, holder):
        block = os.path.join(self.sysfs, "block")
        for disk in os.listdir(block):
            for cand in (os.path.join(block, disk), os.path.join(block, disk, slave)):
                if os.path.basename(cand) == slave and os.path.isdir(cand) and disk != holder:
                    return os.path.join(cand, "holders", holder)
        raise KeyError(slave)

    def mount(self, name, mountpoint, fstype="ext4"):
        self._mounts.append((self.ids[name], mountpoint, fstype, f"/dev/{name}"))
        self.flush()

    def swap(self, path):
        self._swaps.append(path)
        self.flush()

    def flush(self):
        lines = [f"{20 + i} 1 {mm} / {mp.replace(' ', chr(92) + '040')} rw,relatime - {fs} {src} rw"
                 for i, (mm, mp, fs, src) in enumerate(self._mounts)]
        self._write(self.mountinfo, "\n".join(lines))
        self._write(self.swaps, "Filename\tType\tSize\tUsed\tPriority\n"
                    + "\n".join(f"{p}\tpartition\t1024\t0\t-2" for p in self._swaps))

    @property
    def views(self):
        return {"sysfs": self.sysfs, "mountinfo": self.mountinfo, "swaps": self.swaps, "dev": self.dev}


@pytest.fixture
def fake_host(tmp_path):
    return FakeHost(tmp_path / "host")


@pytest.fixture
def other_namespace():
    """Factory: run(script, ready) -> pid of a shell in a new private mount namespace, once `ready`
    exists (killed afterwards, which unmounts what it mounted). Mounts made there are never copied
    into namespaces other engineers create meanwhile, as mounts in the test's own namespace are."""
    started = []

    def run(script, ready):
        proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script + "; exec sleep 60"])
        started.append(proc)
        deadline = time.monotonic() + 10
        while not os.path.exists(ready):
            assert proc.poll() is None and time.monotonic() < deadline, "the namespace did not come up"
            time.sleep(0.05)
        return proc.pid
    yield run
    for proc in started:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
