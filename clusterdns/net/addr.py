"""The one HOST:PORT grammar of every address the server takes.

Listen addresses, upstream servers and the HTTP endpoints are all written the same way:
`HOST:PORT`, `:PORT` (every address), `[v6]:PORT`, `HOST` or `[v6]` (the default port),
and a bare IPv6 literal such as `::1` (more than one colon: the whole text is the host).
`split` says how the text divides; `host_port` also reads the port; the callers add what
their place needs (a default host, a `tcp://` prefix, an IP-literal check).
"""

from __future__ import annotations

import ipaddress


class AddressError(ValueError):
    """Text that is not HOST:PORT; the message quotes it and says what is wrong."""


def split(text: str) -> tuple[str, str | None]:
    """(host, port text or None when no port is written); brackets removed from IPv6."""
    if text.startswith("["):
        host, close, rest = text[1:].partition("]")
        if not close:
            raise AddressError(f"bad address {text!r}: missing ']'")
        if rest and not rest.startswith(":"):
            raise AddressError(f"bad address {text!r}: expected ':PORT' after ']'")
        return host, rest[1:] if rest else None
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, port
    return text, None


def port_number(text: str, port: str) -> int:
    """The port of `text`, 0..65535."""
    if not port.isdigit():
        raise AddressError(f"bad address {text!r}: port {port!r} is not a number")
    number = int(port)
    if number > 65535:
        raise AddressError(f"bad address {text!r}: port {number} out of range 0..65535")
    return number


def host_port(text: str, default_port: int) -> tuple[str, int]:
    """(host, port); the host is '' for `:PORT` (every address: the caller picks which)."""
    host, port = split(text)
    return host, default_port if port is None else port_number(text, port)


def is_ip(host: str) -> bool:
    """An IPv4 or IPv6 literal (a `%zone` suffix allowed); names are never resolved."""
    try:
        ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    return True
