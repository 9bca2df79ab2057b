# Small helpers shared by the disk tests: run a tool with a C locale and return its output.
import os
import subprocess


def sh(*argv, check=True):
    env = dict(os.environ, LC_ALL="C")
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} failed: {proc.stderr}")
    return proc.stdout


def blkid(path, offset=None, size=None):
    argv = ["blkid", "-p", "-o", "export"] + (["-O", offset, "-S", size] if offset is not None else []) + [path]
    out = sh(*argv, check=False)
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def sfdisk_dump(path):
    """`sfdisk -d` without the lines naming the device, so two disks compare equal."""
    lines = []
    for line in sh("sfdisk", "-d", path).splitlines():
        if line.startswith("device:"):
            continue
        lines.append(line.replace(path, "DISK"))
    return lines


def write_layout(path, layout, grow_last=False, shrink_last=False):
    """table.write_layout under a claim taken and released here (what restore does)."""
    from ansible_collections.fleetcast.imaging.plugins.module_utils._disk import safety, table
    with safety.claim([path]) as claims:
        return table.write_layout(claims[0], layout, grow_last, shrink_last)


def wipe_path(path):
    """wipe.wipe under a claim taken and released here."""
    from ansible_collections.fleetcast.imaging.plugins.module_utils._disk import safety, wipe
    with safety.claim([path]) as claims:
        return wipe.wipe(claims[0])
