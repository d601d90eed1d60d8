"""The one HOST:PORT grammar (net/addr.py) and the places that read addresses through it."""

from __future__ import annotations

import pytest

from clusterdns.forward.upstream import UpstreamSpec, parse_hostport
from clusterdns.net.addr import AddressError, host_port, is_ip, split
from clusterdns.obs.health import parse_address
from clusterdns.server.listeners import parse_listen

GOOD = [
    # (text, default port, host, port)
    ("10.0.0.1:5353", 53, "10.0.0.1", 5353),
    ("10.0.0.1", 53, "10.0.0.1", 53),
    (":9153", 0, "", 9153),
    ("[::1]:5300", 53, "::1", 5300),
    ("[::1]", 53, "::1", 53),
    ("::1", 53, "::1", 53),  # more than one colon and no brackets: all host
    ("fe80::1%eth0", 53, "fe80::1%eth0", 53),
    ("[fe80::1%eth0]:53", 0, "fe80::1%eth0", 53),
]

BAD = [
    ("[::1", "missing ']'"),
    ("[::1]53", "expected ':PORT' after ']'"),
    ("10.0.0.1:http", "is not a number"),
    ("10.0.0.1:70000", "out of range"),
    ("10.0.0.1:", "is not a number"),
]


@pytest.mark.parametrize("text,default,host,port", GOOD)
def test_good_addresses_split_into_host_and_port(text: str, default: int, host: str, port: int) -> None:
    assert host_port(text, default) == (host, port)


@pytest.mark.parametrize("text,problem", BAD)
def test_bad_addresses_say_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(AddressError, match=problem) as exc:
        host_port(text, 53)
    assert repr(text) in str(exc.value)


def test_split_keeps_the_port_text_and_says_when_there_is_none() -> None:
    assert split("${POD_IP}:9153") == ("${POD_IP}", "9153")
    assert split("[${POD_IP}]") == ("${POD_IP}", None)


def test_ip_literals_only() -> None:
    assert is_ip("10.0.0.1") and is_ip("::1") and is_ip("fe80::1%eth0")
    assert not is_ip("localhost") and not is_ip("dns.google") and not is_ip("")


def test_every_reader_uses_the_same_grammar() -> None:
    """Listen addresses, upstreams and HTTP endpoints agree on every shape, each adding only
    what its place needs (a default host, a scheme prefix, a default port)."""
    assert parse_listen("[::1]:5300") == ("::1", 5300)
    assert parse_listen(":5353") == ("0.0.0.0", 5353)  # every IPv4 address
    assert parse_hostport("tcp://[::1]:5300") == UpstreamSpec("::1", 5300, True)
    assert parse_address("[::1]:8080", 80) == ("::1", 8080)
    for reader in (lambda t: parse_listen(t), lambda t: parse_hostport(t), lambda t: parse_address(t, 80)):
        with pytest.raises(ValueError, match="missing"):
            reader("[::1")
