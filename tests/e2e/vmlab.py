# -*- coding: utf-8 -*-
# Copyright: fleetcast.imaging developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""qemu VMs on tap devices in the lab's switch namespace: the machines of `make e2e`.

Used as a library by e2e.py and as the site's "power command" by the boot_participants role:

    vmlab.py power-on LAB_DIR NAME      # one-time network boot, then the disk after every reboot
    vmlab.py power-off LAB_DIR NAME

A supervisor process per VM (detached) runs qemu with -no-reboot: the first run boots from the
network (iPXE, the NIC's option ROM), every later run (the guest rebooted) from the disk, like a
BMC's one-time PXE boot. Serial consoles are appended to LAB_DIR/NAME.console.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"


def _state(lab_dir):
    with open(os.path.join(lab_dir, "vms.json"), encoding="utf-8") as handle:
        return json.load(handle)


def qemu_argv(vm, pxe):
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-m", str(vm["ram_mb"]), "-smp", "1", "-name", vm["name"],
            "-display", "none", "-monitor", "none", "-no-reboot",
            "-chardev", f"file,id=con,path={vm['console']},append=on", "-serial", "chardev:con",
            "-netdev", f"tap,id=n0,ifname={vm['tap']},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=n0,mac={vm['mac']}" + (",bootindex=1" if pxe else ""),
            "-drive", f"file={vm['disk']},format=raw,if=none,id=d0,cache=unsafe",
            "-device", "virtio-blk-pci,drive=d0,bootindex=2"]
    if not pxe and vm["firmware"] == "bios":
        argv += ["-boot", "strict=on"]     # from its disk only, as after a BMC's one-time PXE boot
    if vm["firmware"] == "uefi":
        argv += ["-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
                 "-drive", f"if=pflash,format=raw,file={vm['vars']}"]
    return argv


def supervise(lab_dir, name, pxe):
    vm = _state(lab_dir)["vms"][name]
    stop = os.path.join(lab_dir, f"{name}.stop")
    runs = 0
    while not os.path.exists(stop):
        if runs and os.path.exists(os.path.join(lab_dir, f"{name}.unbootable")):
            # a clone that fails to boot: its BIOS finds no boot code in the MBR (e2e run 2)
            with open(vm["disk"], "r+b") as disk:
                disk.write(bytes(440))
        with open(vm["console"], "a", encoding="utf-8") as con:
            con.write(f"\n=== vmlab: power on {name} from {'the network' if pxe and runs == 0 else 'its disk'} "
                      f"at {time.strftime('%H:%M:%S')} ===\n")
        proc = subprocess.Popen(qemu_argv(vm, pxe and runs == 0), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=open(vm["console"] + ".qemu", "a"))
        with open(os.path.join(lab_dir, f"{name}.qemu.pid"), "w", encoding="ascii") as handle:
            handle.write(f"{proc.pid}\n")
        proc.wait()
        runs += 1


def power_on(lab_dir, name, pxe=True):
    state = _state(lab_dir)
    stop = os.path.join(lab_dir, f"{name}.stop")
    if os.path.exists(stop):
        os.unlink(stop)
    argv = ["ip", "netns", "exec", state["switch"], sys.executable, os.path.abspath(__file__), "supervise",
            lab_dir, name] + (["--pxe"] if pxe else [])
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    with open(os.path.join(lab_dir, f"{name}.supervisor.pid"), "w", encoding="ascii") as handle:
        handle.write(f"{proc.pid}\n")


def _kill(pid_file):
    try:
        with open(pid_file, encoding="ascii") as handle:
            pid = int(handle.read().strip())
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        pass


def power_off(lab_dir, name):
    with open(os.path.join(lab_dir, f"{name}.stop"), "w", encoding="ascii"):
        pass
    _kill(os.path.join(lab_dir, f"{name}.supervisor.pid"))
    _kill(os.path.join(lab_dir, f"{name}.qemu.pid"))


def main(argv):
    command, lab_dir, name = argv[1], argv[2], argv[3]
    if command == "supervise":
        supervise(lab_dir, name, "--pxe" in argv)
    elif command == "power-on":
        power_on(lab_dir, name, "--disk" not in argv)
    elif command == "power-off":
        power_off(lab_dir, name)
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv)
