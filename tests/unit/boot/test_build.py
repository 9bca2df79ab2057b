# The environment builder on a small fake Debian root (mmdebstrap itself runs in `make e2e`):
# what goes into the initramfs, what never does, and when it is rebuilt.
import os
import subprocess
import tarfile

import pytest
import yaml

from ansible_collections.fleetcast.imaging.plugins.module_utils._boot import build, verify

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def fake_root(path, extra=None):
    """A tarball shaped like mmdebstrap's: a kernel, systemd, openssh's postinst host key."""
    files = {"boot/vmlinuz-6.1.0-99-cloud-amd64": b"KERNEL", "boot/initrd.img-6.1.0-99-cloud-amd64": b"DEBIAN-INITRD",
             "lib/systemd/systemd": b"#!systemd", "etc/ssh/ssh_host_rsa_key": b"stale postinst key",
             "etc/ssh/ssh_host_rsa_key.pub": b"ssh-rsa AAAA stale", "etc/ssh/sshd_config": b"# sshd\n",
             "usr/bin/ssh-keygen": b"\0ELF-----BEGIN OPENSSH PRIVATE KEY-----\0"}
    files.update(extra or {})
    with tarfile.open(path, "w") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo("./" + name)
            info.size = len(data)
            tar.addfile(info, __import__("io").BytesIO(data))


def spec_for(tmp_path, authorized, extra=None):
    spec = build.ensure_spec({"authorized_keys": authorized, "host_keys_dir": str(tmp_path / "hostkeys"),
                              "output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"),
                              "apt_sources": str(tmp_path / "none.sources")})
    root = build.root_tarball(spec.root, spec.cache_dir, check_mode=True)
    os.makedirs(os.path.dirname(root["path"]), exist_ok=True)
    fake_root(root["path"], extra)
    return spec


def initrd_members(path, tmp_path):
    raw = tmp_path / "initrd.cpio"
    subprocess.run(["zstd", "-q", "-d", "-f", "-o", str(raw), path], check=True)
    listing = subprocess.run(["busybox", "cpio", "-t", "-F", str(raw)], capture_output=True, text=True, check=True)
    unpack = tmp_path / "unpacked"
    unpack.mkdir(exist_ok=True)
    subprocess.run(["busybox", "cpio", "-i", "-d", "-F", str(raw)], cwd=unpack, capture_output=True, check=True)
    return set(listing.stdout.split()), unpack


@pytest.fixture
def controller(tmp_path):
    key = tmp_path / "ctl"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def test_environment_holds_the_public_key_and_its_own_host_key_only(tmp_path, controller):
    spec = spec_for(tmp_path, (tmp_path / "ctl.pub").read_text())
    planned = build.plan(spec)
    assert any("pack kernel and initramfs" in action for action in planned["actions"])
    assert not os.path.exists(spec.output_dir)                       # check mode wrote nothing
    result = build.build(spec)
    assert result["changed"] and not result["cached"]
    members, unpacked = initrd_members(os.path.join(spec.output_dir, "initrd.img"), tmp_path)
    assert "init" in members and os.readlink(unpacked / "init") == "/lib/systemd/systemd"
    assert (unpacked / "root/.ssh/authorized_keys").read_text().strip() == (tmp_path / "ctl.pub").read_text().strip()
    assert (unpacked / "etc/ssh/ssh_host_ed25519_key").read_bytes() == (tmp_path / "hostkeys/ssh_host_ed25519_key").read_bytes()
    assert "etc/ssh/ssh_host_rsa_key" not in members                # openssh's own keys are gone
    assert not any(name.startswith("boot/vmlinuz") for name in members)
    controller_private = controller.read_bytes()
    for dirpath, dummy, filenames in os.walk(unpacked):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                with open(path, "rb") as handle:
                    assert controller_private.strip() not in handle.read()
    assert open(os.path.join(spec.output_dir, "vmlinuz"), "rb").read() == b"KERNEL"
    assert "224.0.0.0/4" in (unpacked / "etc/systemd/network/50-imaging-dhcp.network").read_text()


def test_rebuild_is_cached_until_an_input_changes(tmp_path, controller):
    spec = spec_for(tmp_path, (tmp_path / "ctl.pub").read_text())
    first = build.build(spec)
    again = build.build(spec)
    assert not again["changed"] and again["cached"] and again["key"] == first["key"]
    assert build.plan(spec)["actions"] == []
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    spec.authorized_keys = (tmp_path / "other.pub").read_text()
    changed = build.build(spec)
    assert changed["changed"] and changed["key"] != first["key"]


def test_a_private_key_in_the_root_stops_the_build(tmp_path, controller):
    spec = spec_for(tmp_path, (tmp_path / "ctl.pub").read_text(), {"root/id_ed25519": controller.read_bytes()})
    with pytest.raises(build.BuildError, match="root/id_ed25519"):
        build.build(spec)
    assert not os.path.exists(os.path.join(spec.output_dir, "initrd.img"))


def test_the_role_probes_with_the_engine_s_probe_line():
    with open(os.path.join(ROOT, "roles/boot_verify/vars/main.yml"), encoding="utf-8") as handle:
        assert yaml.safe_load(handle)["boot_verify_probe"].strip() == verify.PROBE
