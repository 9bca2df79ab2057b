import os
import subprocess

import pytest

from ansible_collections.fleetcast.imaging.plugins.module_utils._lab import loopdisk


def test_loop_disk_is_detached_and_removed(loop_disk, tmp_path):
    disk = loop_disk(32 << 20, "a.img")
    window = disk.window(1 << 20, 4 << 20)
    assert loopdisk.backing_file(disk.device).endswith("a.img")
    with open(window, "rb") as handle:
        assert handle.seek(0, 2) == 4 << 20
    disk.close()
    assert not (tmp_path / "a.img").exists()
    assert "a.img" not in subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True).stdout


def test_netlab_multicast_crosses_the_bridge(netlab):
    sender, receiver = netlab.add_host("s"), netlab.add_host("r")
    script = (
        "import socket,struct,sys\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(('',5999))\n"
        "s.setsockopt(socket.IPPROTO_IP,socket.IP_ADD_MEMBERSHIP,"
        "struct.pack('4s4s',socket.inet_aton('239.1.2.3'),socket.inet_aton(sys.argv[1])))\n"
        "s.settimeout(5);print(s.recv(64).decode())\n")
    proc = receiver.popen(["python3", "-c", script, receiver.address], stdout=subprocess.PIPE, text=True)
    send = ("import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            "for _ in range(20):\n s.sendto(b'hello',('239.1.2.3',5999));time.sleep(0.1)\n")
    sender.run(["python3", "-c", send])
    assert proc.communicate(timeout=10)[0].strip() == "hello"


def test_netlab_cut_drops_everything_and_loss_is_partial(netlab):
    host = netlab.add_host("h")
    host.cut_incoming_udp(port=6000)
    assert "udp dport 6000 drop" in host.run(["nft", "list", "ruleset"]).stdout
    host.clear_rules()
    host.drop_incoming_udp(5)
    assert "numgen random mod 10000 < 500 drop" in host.run(["nft", "list", "ruleset"]).stdout


def test_netlab_that_fails_half_built_leaves_no_namespace(monkeypatch):
    from ansible_collections.fleetcast.imaging.plugins.module_utils._lab import netlab as netlab_module

    real_ip = netlab_module._ip

    def failing_ip(*args, netns=None):
        if "mcast_querier" in args:
            raise subprocess.CalledProcessError(1, ["ip"] + list(args))
        real_ip(*args, netns=netns)

    monkeypatch.setattr(netlab_module, "_ip", failing_ip)
    prefix = "fcfail" + str(os.getpid() % 10000)
    with pytest.raises(subprocess.CalledProcessError):
        netlab_module.NetLab(prefix=prefix)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert prefix not in listed
