"""``source_key``: what the per-address limits count as one source."""

from __future__ import annotations

from xmppd.peeraddress import source_key


def test_ipv4_is_itself_and_ipv6_is_its_64() -> None:
    assert source_key("192.0.2.7") == "192.0.2.7"
    assert source_key("2001:db8:1:2:aaaa:bbbb:cccc:dddd") == "2001:db8:1:2::/64"
    assert source_key("2001:db8:1:2::1") == source_key("2001:db8:1:2:ffff::9")
    assert source_key("2001:db8:1:3::1") != source_key("2001:db8:1:2::1")
    assert source_key("::1") == "::/64"


def test_mapped_and_odd_peers() -> None:
    assert source_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert source_key("") == ""
    assert source_key("/run/xmppd.sock") == "/run/xmppd.sock"
