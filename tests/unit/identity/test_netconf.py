import pytest

from ansible_collections.fleetcast.imaging.plugins.module_utils._errors import IdentityError
from ansible_collections.fleetcast.imaging.plugins.module_utils._identity import netconf

from identity_trees import IFCFG, IFUPDOWN, NETPLAN, NETWORKD, NM, host

A, M = host("hosta", 7), host("master", 9)


def _text(template, spec):
    return template.format(name=spec.name, mac=spec.mac, mac_upper=spec.mac.upper(), ip=spec.ip, ip6=spec.ip6)


def _swap(fmt_name, template):
    """Rewrite M's file with A's values; return (A's text, M's text, rewritten text, A's stanzas)."""
    fmt = netconf.FORMAT_BY_NAME[fmt_name]
    saved_text, target_text = _text(template, A), _text(template, M)
    saved = fmt.parse(saved_text)
    targets = fmt.parse(target_text)
    pairs = netconf.pair_stanzas("/etc/x", targets, [("/etc/x", stanza) for stanza in saved])
    new_text, unmatched = netconf.rewrite(target_text, targets, pairs)
    assert unmatched == []
    return saved_text, target_text, new_text, saved


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
def test_each_format_is_parsed_and_rewritten_keeping_the_rest(fmt_name, template, expected):
    saved_text, target_text, new_text, saved = _swap(fmt_name, template)
    identity = [stanza for stanza in saved if stanza.slots]
    assert len(identity) == 1 and identity[0].values() == expected
    assert "secret:" not in str(identity[0].summary())
    assert new_text == saved_text and target_text != saved_text
    # lines without identity values are untouched, in order
    untouched = [line for line in target_text.splitlines() if M.ip not in line and M.mac not in line.lower()
                 and M.ip6 not in line and "master" not in line]
    assert untouched == [line for line in new_text.splitlines() if line in untouched]


def test_unrelated_settings_survive_when_the_image_changed_them():
    """The restored image's own settings (here a new MTU and DNS) stay; only identity values change."""
    fmt = netconf.FORMAT_BY_NAME["netplan"]
    image = _text(NETPLAN, M).replace("mtu: 9000", "mtu: 1400").replace("10.20.0.53", "10.20.0.54")
    saved = fmt.parse(_text(NETPLAN, A))
    targets = fmt.parse(image)
    new_text, unmatched = netconf.rewrite(image, targets, netconf.pair_stanzas(
        "/etc/netplan/50-lan.yaml", targets, [("/etc/netplan/50-lan.yaml", s) for s in saved]))
    assert "mtu: 1400" in new_text and "10.20.0.54" in new_text and "mtu: 9000" not in new_text
    assert A.ip + "/24" in new_text and M.ip not in new_text and f'"{A.mac}"' in new_text


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


def test_pairing_falls_back_to_mac_then_name():
    target = netconf.Stanza(key="other", name="eth9", mac="aa:bb:cc:dd:ee:ff")
    by_mac = netconf.Stanza(key="x", name="eth0", mac="aa:bb:cc:dd:ee:ff")
    by_name = netconf.Stanza(key="y", name="eth9")
    assert netconf.pair_stanzas("/a", [target], [("/b", by_name), ("/b", by_mac)]) == {0: by_mac}
    assert netconf.pair_stanzas("/a", [target], [("/b", by_name)]) == {0: by_name}


def test_shape_mismatch_reports_unmatched_slots():
    fmt = netconf.FORMAT_BY_NAME["networkd"]
    saved = fmt.parse("[Network]\nAddress=10.0.0.7/24\n")
    target_text = "[Network]\nAddress=10.0.0.9/24\nAddress=10.0.1.9/24\n"
    targets = fmt.parse(target_text)
    new_text, unmatched = netconf.rewrite(target_text, targets, {0: saved[0]})
    assert unmatched == ["network address[1]"]
    assert new_text == "[Network]\nAddress=10.0.0.7/24\nAddress=10.0.1.9/24\n"


def test_invalid_netplan_is_a_clear_error():
    with pytest.raises(IdentityError, match="not valid YAML"):
        netconf.parse_netplan("network: [unclosed\n")


def test_secret_detection():
    assert netconf.networkmanager_secrets(_text(NM, A))
    assert not netconf.networkmanager_secrets(_text(NM, A).replace("password=", "identity="))
    assert netconf.netplan_secrets("network:\n  wifis:\n    w:\n      access-points:\n        x:\n          password: k\n")


def test_renamed_interface_is_found_by_its_hardware_mac():
    """Saved as eth0 (no MAC in the file); on this machine the same NIC is now enp1s0."""
    fmt = netconf.FORMAT_BY_NAME["ifupdown"]
    saved = fmt.parse("iface eth0 inet static\n    address 10.0.0.7/24\n")
    target_text = "iface enp1s0 inet static\n    address 10.0.0.9/24\n"
    targets = fmt.parse(target_text)
    candidates = [("/etc/network/interfaces", stanza) for stanza in saved]
    assert netconf.pair_stanzas("/etc/network/interfaces", targets, candidates) == {}
    pairs = netconf.pair_stanzas("/etc/network/interfaces", targets, candidates,
                                 target_macs={"enp1s0": "52:54:00:00:00:07"},
                                 saved_macs={"eth0": "52:54:00:00:00:07"})
    assert netconf.rewrite(target_text, targets, pairs)[0] == "iface enp1s0 inet static\n    address 10.0.0.7/24\n"
