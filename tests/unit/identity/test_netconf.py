import pytest

from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import IdentityError
from ansible_collections.fleetcast.imaging.plugins.module_utils._identity import netconf

from identity_trees import IFCFG, IFUPDOWN, NETPLAN, NETWORKD, NM, host

A, M = host("hosta", 7), host("master", 9)


def _text(template, spec):
    return template.format(name=spec.name, mac=spec.mac, mac_upper=spec.mac.upper(), ip=spec.ip, ip6=spec.ip6)


@pytest.mark.parametrize("fmt_name,template,expected", [
    ("netplan", NETPLAN, {"mac": ["52:54:00:00:00:07"], "address": ["10.20.0.7/24"],
                          "address6": ["fd00::7/64"], "gateway": ["10.20.0.1"]}),
    ("networkmanager", NM, {"mac": ["52:54:00:00:00:07".upper()], "address": ["10.20.0.7/24"],
                            "gateway": ["10.20.0.1"], "secret:802-1x.password": ["s3cret-hosta"]}),
    ("ifupdown", IFUPDOWN, {"address": ["10.20.0.7"], "netmask": ["255.255.255.0"], "gateway": ["10.20.0.1"],
                            "mac": ["52:54:00:00:00:07"]}),
    ("networkd", NETWORKD, {"mac": ["52:54:00:00:00:07"], "address": ["10.20.0.7/24"], "gateway": ["10.20.0.1"]}),
    ("ifcfg", IFCFG, {"mac": ["52:54:00:00:00:07".upper()], "address": ["10.20.0.7"], "netmask": ["24"],
                      "gateway": ["10.20.0.1"]}),
])
def test_each_format_is_parsed_with_value_spans(fmt_name, template, expected):
    fmt = netconf.FORMAT_BY_NAME[fmt_name]
    text = _text(template, A)
    identity = [stanza for stanza in fmt.parse(text) if stanza.slots]
    assert len(identity) == 1
    values = {key: value for key, value in identity[0].values().items() if key != "uuid"}
    assert values == expected
    assert "secret:" not in str(identity[0].summary())
    for slot in identity[0].slots:
        assert text[slot.start:slot.end] == slot.value
    assert netconf.holds_values(fmt, text)


def test_ifupdown_loopback_and_extra_stanzas():
    stanzas = netconf.parse_ifupdown(_text(IFUPDOWN, A) + "\niface lan0 inet6 static\n  address fd00::7/64\n"
                                     "  gateway fd00::1\n")
    assert [s.key for s in stanzas] == ["lo inet", "lan0 inet", "lan0 inet6"]
    assert stanzas[2].values() == {"address6": ["fd00::7/64"], "gateway6": ["fd00::1"]}


def test_netplan_mapping_addresses_and_quoted_values():
    text = ("network:\n  ethernets:\n    eth0:\n      addresses:\n        - '10.0.0.5/24':\n"
            "            label: eth0:0\n      gateway4: \"10.0.0.1\"\n")
    (stanza,) = netconf.parse_netplan(text)
    assert stanza.values() == {"address": ["10.0.0.5/24"], "gateway": ["10.0.0.1"]}
    for slot in stanza.slots:
        assert text[slot.start:slot.end] == slot.value


def test_invalid_netplan_is_a_clear_error():
    with pytest.raises(IdentityError, match="not valid YAML"):
        netconf.parse_netplan("network: [unclosed\n")


def test_secret_detection():
    assert netconf.networkmanager_secrets(_text(NM, A))
    assert not netconf.networkmanager_secrets(_text(NM, A).replace("password=", "identity="))
    assert netconf.netplan_secrets("network:\n  wifis:\n    w:\n      access-points:\n        x:\n          password: k\n")


def test_new_items_are_found_nm_uuid_ifupdown_hooks_link_files_udev_rules():
    nm = netconf.parse_networkmanager("[connection]\nid=x\nuuid=4f1e0c1a-95b3-4c8e-9d43-0c0d0a0b0c0d\n")
    assert nm[0].values() == {"uuid": ["4f1e0c1a-95b3-4c8e-9d43-0c0d0a0b0c0d"]}
    hooks = netconf.parse_ifupdown("iface eth0 inet manual\n  post-up ip addr add 10.0.0.7/24 dev eth0\n"
                                   "  pre-up ip -6 address add fd00::7/64 dev eth0\n"
                                   "  up ip route add default via 10.0.0.1\n  up ip link set eth0 address "
                                   "52:54:00:00:00:07\n")
    assert hooks[0].values() == {"address": ["10.0.0.7/24"], "address6": ["fd00::7/64"],
                                 "gateway": ["10.0.0.1"], "mac": ["52:54:00:00:00:07"]}
    link = netconf.FORMAT_BY_NAME["networkd-link"]
    assert link.parse("[Match]\nMACAddress=52:54:00:00:00:07\n\n[Link]\nName=lan0\n")[0].values() == {
        "mac": ["52:54:00:00:00:07"], "name": ["lan0"]}
    rules = ('SUBSYSTEM=="net", ACTION=="add", DRIVERS=="?*", ATTR{address}=="52:54:00:00:00:07", '
             'ATTR{type}=="1", KERNEL=="eth*", NAME="eth0"\n')
    assert netconf.parse_udev_net(rules)[0].values() == {"mac": ["52:54:00:00:00:07"], "name": ["eth0"]}


def test_value_free_files_and_netplan_without_pyyaml(monkeypatch):
    dhcp = "network:\n  version: 2\n  ethernets:\n    eth0:\n      dhcp4: true\n"
    static = dhcp.replace("dhcp4: true", "addresses: [10.0.0.9/24]")
    netplan = netconf.FORMAT_BY_NAME["netplan"]
    assert not netconf.holds_values(netplan, dhcp) and netconf.holds_values(netplan, static)
    monkeypatch.setattr(netconf, "yaml", None)
    # without a parser, an address- or MAC-shaped token is enough to count the file as holding values
    assert not netconf.holds_values(netplan, dhcp) and netconf.holds_values(netplan, static)
    assert netconf.holds_values(netplan, dhcp.replace("dhcp4: true", "macaddress: 52:54:00:00:00:09"))
    assert netconf.holds_values(netplan, dhcp.replace("dhcp4: true", "addresses: ['fd00::9/64']"))
