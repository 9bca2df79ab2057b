# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Serving the imaging environment: dnsmasq (DHCP or proxy-DHCP, TFTP) and an HTTP server.

Private to the collection. Two managers: ``process`` (plain processes with pid files, the lab and
quick tests) and ``systemd`` (unit files on a real image server). The configuration is written
first and compared with what runs, so an unchanged service is left alone (idempotent) and a
changed one is restarted. A pid file is trusted only if the process it names runs the command
line we started: no unrelated process is ever signalled.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from .._errors import FleetcastError
from . import fleet

IPXE_DIRS = ("/usr/lib/ipxe", "/usr/share/ipxe")


class ServiceError(FleetcastError):
    """dnsmasq or the HTTP server could not be started or stopped."""


@dataclass
class ServiceSpec:
    net: fleet.BootNetwork
    state_dir: str                # configuration, pid files, leases, logs
    http_root: str                # the environment's output_dir
    kernel: str = "vmlinuz"
    initrd: str = "initrd.img"
    cmdline: str = ""
    manager: str = "process"      # or "systemd"
    systemd_dir: str = "/etc/systemd/system"
    user: Optional[str] = None    # dnsmasq's user after start; it must read the TFTP directory

    def path(self, name: str) -> str:
        return os.path.join(self.state_dir, name)


def _files(spec: ServiceSpec) -> Dict[str, str]:
    """{path: content} of every file the service needs."""
    tftp = spec.path("tftp")
    files = {
        spec.path("dnsmasq.conf"): fleet.dnsmasq_config(spec.net, tftp, spec.path("dnsmasq.pid"),
                                                        spec.path("dnsmasq.leases"), spec.path("dnsmasq.log"),
                                                        spec.user),
        os.path.join(spec.http_root, "boot.ipxe"): fleet.ipxe_script(spec.net, spec.kernel, spec.initrd, spec.cmdline),
    }
    if spec.manager == "systemd":
        for name, text in fleet.systemd_units(spec.path("dnsmasq.conf"), spec.http_root, spec.net.server_address,
                                              spec.net.http_port).items():
            files[os.path.join(spec.systemd_dir, name)] = text
    return files


def ipxe_binaries() -> Dict[str, Optional[str]]:
    """Where Debian's ipxe package put the binaries for firmware that is not iPXE yet."""
    found: Dict[str, Optional[str]] = {}
    for name in (fleet.IPXE_BIOS, fleet.IPXE_UEFI):
        found[name] = next((os.path.join(d, name) for d in IPXE_DIRS if os.path.isfile(os.path.join(d, name))), None)
    return found


def _read(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError:
        return None


def _pid_running(pid_file: str, marker: str) -> Optional[int]:
    """The pid in ``pid_file`` if that process runs and its command line holds ``marker``."""
    text = _read(pid_file)
    if not text or not text.strip().isdigit():
        return None
    pid = int(text.strip())
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            cmdline = handle.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return None
    return pid if marker in cmdline else None


def _stop_pid(pid: int, what: str) -> None:
    os.kill(pid, signal.SIGTERM)
    for dummy in range(50):
        if not os.path.exists(f"/proc/{pid}"):
            return
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
                if handle.read().split(") ", 1)[1].startswith("Z"):
                    return
        except OSError:
            return
        time.sleep(0.1)
    raise ServiceError(f"The {what} (pid {pid}) did not stop within 5 seconds of SIGTERM.")


def status(spec: ServiceSpec) -> Dict[str, Any]:
    conf = spec.path("dnsmasq.conf")
    return {"dnsmasq": _pid_running(spec.path("dnsmasq.pid"), conf),
            "http": _pid_running(spec.path("http.pid"), spec.http_root)}


def plan(spec: ServiceSpec, state: str) -> Dict[str, Any]:
    files = _files(spec)
    stale = sorted(path for path, text in files.items() if _read(path) != text)
    running = status(spec) if spec.manager == "process" else {}
    actions: List[str] = []
    if state == "started":
        actions += [f"write {path}" for path in stale]
        if spec.manager == "process":
            for name in ("dnsmasq", "http"):
                if not running.get(name):
                    actions.append(f"start {name}")
                elif stale:
                    actions.append(f"restart {name}")
        elif stale:
            actions.append("systemctl daemon-reload; restart fleetcast-dnsmasq and fleetcast-http")
    elif state == "stopped":
        actions += [f"stop {name} (pid {pid})" for name, pid in running.items() if pid]
    missing = [name for name, path in ipxe_binaries().items() if not path]
    return {"actions": actions, "changed": bool(actions), "running": running, "files": sorted(files),
            "ipxe_missing": missing}


def apply(spec: ServiceSpec, state: str) -> Dict[str, Any]:
    result = plan(spec, state)
    if not result["changed"]:
        return result
    if state == "stopped":
        for name, pid in result["running"].items():
            if pid:
                _stop_pid(pid, name)
        return result
    os.makedirs(spec.path("tftp"), mode=0o755, exist_ok=True)
    for name, path in ipxe_binaries().items():
        if path:
            shutil.copyfile(path, os.path.join(spec.path("tftp"), name))
    for path, text in _files(spec).items():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(path + ".tmp", path)
    if spec.manager == "systemd":
        for argv in (["systemctl", "daemon-reload"],
                     ["systemctl", "enable", "--now", "fleetcast-dnsmasq.service", "fleetcast-http.service"],
                     ["systemctl", "restart", "fleetcast-dnsmasq.service", "fleetcast-http.service"]):
            proc = subprocess.run(argv, check=False, capture_output=True, text=True)
            if proc.returncode:
                raise ServiceError(f"{' '.join(argv)} failed: {proc.stderr.strip()[-300:]}")
        return result
    for name, pid in result["running"].items():
        if pid:
            _stop_pid(pid, name)
    conf = spec.path("dnsmasq.conf")
    proc = subprocess.run(["dnsmasq", f"--conf-file={conf}"], check=False, capture_output=True, text=True)
    if proc.returncode:
        raise ServiceError(f"dnsmasq did not start on {spec.net.interface}: "
                           f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:] or ['no message']}")
    with open(spec.path("http.log"), "ab") as log:
        http = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", spec.net.server_address,
                                 "--directory", spec.http_root, str(spec.net.http_port)],
                                stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    with open(spec.path("http.pid"), "w", encoding="ascii") as handle:
        handle.write(f"{http.pid}\n")
    time.sleep(0.5)
    if http.poll() is not None:
        raise ServiceError(f"The HTTP server did not start on {spec.net.server_address}:{spec.net.http_port} "
                           f"(see {spec.path('http.log')}).")
    for dummy in range(20):
        if _pid_running(spec.path("dnsmasq.pid"), conf):
            break
        time.sleep(0.1)
    else:
        raise ServiceError(f"dnsmasq exited at once on {spec.net.interface} (see {spec.path('dnsmasq.log')}).")
    return result
