# dnsmasq configuration from the inventory, checked by dnsmasq itself and by a real DHCP exchange:
# a listed MAC gets its reserved address and the iPXE script, an unlisted MAC gets nothing and a log line.
import os
import subprocess
import time

import pytest

from ansible_collections.fleetcast.imaging.plugins.module_utils._boot import fleet, service
from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import ValidationError


def network(mode="dhcp", hosts=None):
    hosts = hosts if hosts is not None else [
        {"name": "p1", "mac": "52:54:00:00:00:01", "firmware": "uefi", "address": "10.9.0.21"},
        {"name": "p2", "mac": "52-54-00-00-00-02", "firmware": "bios", "address": "10.9.0.22"},
    ]
    return fleet.BootNetwork(interface="eth0", server_address="10.9.0.1", subnet="10.9.0.0/24", mode=mode,
                             hosts=[fleet.BootHost.from_dict(h) for h in hosts])


@pytest.mark.parametrize("mode", ["dhcp", "proxy"])
def test_every_listed_mac_appears_once_and_dnsmasq_accepts_the_file(tmp_path, mode):
    net = network(mode)
    text = fleet.dnsmasq_config(net, str(tmp_path), str(tmp_path / "pid"), str(tmp_path / "leases"))
    for host in net.hosts:
        lines = [line for line in text.splitlines() if host.mac in line]
        assert len(lines) == 1 and lines[0].startswith("dhcp-host=")
        assert (host.address in lines[0]) == (mode == "dhcp")
    assert "dhcp-ignore=tag:!known" in text
    assert ("proxy" in text) == (mode == "proxy")
    conf = tmp_path / "dnsmasq.conf"
    conf.write_text(text)
    done = subprocess.run(["dnsmasq", "--test", f"--conf-file={conf}"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("hosts, words", [
    ([{"name": "a", "mac": "52:54:00:00:00:01", "address": "10.9.0.5"},
      {"name": "b", "mac": "52:54:00:00:00:01", "address": "10.9.0.6"}], "b: its boot MAC 52:54:00:00:00:01 is also the boot MAC of a"),
    ([{"name": "a", "mac": "52:54:00:00:00:01", "address": "10.9.1.5"}], "a: its reserved address 10.9.1.5 is outside"),
    ([{"name": "a", "mac": "52:54:00:00:00:01", "address": "10.9.0.1"}], "a: its reserved address 10.9.0.1 is also the address of the image server"),
    ([{"name": "a", "mac": "52:54:00:00:00:01"}], "a: dnsmasq is the DHCP server"),
    ([{"name": "a", "mac": "not-a-mac", "address": "10.9.0.5"}], "a: its boot MAC 'not-a-mac' is not a MAC"),
    ([{"name": "a", "mac": "52:54:00:00:00:01", "firmware": "coreboot", "address": "10.9.0.5"}], "a: firmware 'coreboot'"),
])
def test_bad_inventories_are_one_sentence_naming_the_host(hosts, words):
    with pytest.raises(ValidationError) as err:
        network("dhcp", hosts)
    assert words in str(err.value)


def test_ipxe_script_loads_kernel_and_initrd_over_http():
    text = fleet.ipxe_script(network(), "vmlinuz", "initrd.img", "console=ttyS0")
    assert text.splitlines()[0] == "#!ipxe"
    assert "kernel http://10.9.0.1:8088/vmlinuz initrd=initrd.img console=ttyS0" in text
    assert "initrd http://10.9.0.1:8088/initrd.img" in text


def test_a_listed_mac_gets_its_address_an_unlisted_one_nothing(tmp_path, netlab):
    server = netlab.add_host("server")
    listed = netlab.add_host("listed")
    stranger = netlab.add_host("stranger")
    subnet = server.address.rsplit(".", 1)[0]
    for host in (listed, stranger):
        host.run(["ip", "addr", "flush", "dev", "eth0"])
    net = fleet.BootNetwork(interface="eth0", server_address=server.address, subnet=f"{subnet}.0/24",
                            hosts=[fleet.BootHost(name="listed", mac=listed.mac, firmware="bios",
                                                  address=f"{subnet}.77")])
    http_root = tmp_path / "http"
    http_root.mkdir()
    # pytest's temporary directories are private to root: dnsmasq stays root to read them.
    spec = service.ServiceSpec(net=net, state_dir=str(tmp_path / "state"), http_root=str(http_root), user="root")
    # The module runs dnsmasq in the server's namespace: here, the engine inside `ip netns exec`.
    code = ("import sys; sys.path.insert(0, %r); from ansible_collections.fleetcast.imaging.plugins."
            "module_utils._boot import service, fleet; import pickle; spec = pickle.loads(bytes.fromhex(sys.argv[1])); "
            "print(service.apply(spec, sys.argv[2])['actions'])") % os.environ.get("FLEETCAST_COLLECTIONS", _collections())
    import pickle
    blob = pickle.dumps(spec).hex()
    started = server.run(["python3", "-c", code, blob, "started"], check=False)
    assert started.returncode == 0, started.stderr
    assert "start dnsmasq" in started.stdout and "start http" in started.stdout
    try:
        again = server.run(["python3", "-c", code, blob, "started"])
        assert again.stdout.strip() == "[]"                # idempotent: nothing to do
        got = listed.run(["busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-t", "3", "-T", "1",
                          "-s", "/bin/true", "-O", "bootfile"], check=False)
        assert f"{subnet}.77" in got.stdout + got.stderr
        refused = stranger.run(["busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-t", "2", "-T", "1",
                                "-s", "/bin/true"], check=False)
        assert refused.returncode != 0
        time.sleep(0.3)
        log = (tmp_path / "state" / "dnsmasq.log").read_text()
        assert f"{stranger.mac} ignored" in log
        assert (http_root / "boot.ipxe").read_text().startswith("#!ipxe")
    finally:
        stopped = server.run(["python3", "-c", code, blob, "stopped"])
    assert "stop dnsmasq" in stopped.stdout and "stop http" in stopped.stdout
    assert service.status(spec) == {"dnsmasq": None, "http": None}


def _collections():
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(here))), ".build", "collections")
