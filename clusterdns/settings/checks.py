"""Value checks of the modes' own options that read other layers (the HTTP endpoints' `${VAR}`
hosts, label selectors); the generic ones are clusterdns/options/checks.py."""

from __future__ import annotations

from clusterdns.net import addr
from clusterdns.options.checks import host_port


def http_address(v: str) -> str | None:
    """HOST:PORT, :PORT, [v6]:PORT, or ${VAR}:PORT: the host read from $VAR at start-up."""
    from clusterdns.obs.bind import ENV_REF  # no HTTP server there

    if v == "":
        return None  # off (node-cache's `--health ""`)
    try:
        host, _ = addr.split(v)
    except addr.AddressError:
        return "an address HOST:PORT, :PORT or ${VAR}:PORT"
    m = ENV_REF.match(host)
    if m:  # checked when it is read (obs/bind.py); here only the shape around it
        v = v.replace(m.group(0), "::" if v.startswith("[") else "0.0.0.0", 1)
    elif "$" in host:
        return "an address HOST:PORT, :PORT or ${VAR}:PORT (a variable as ${POD_IP}, braces and all)"
    r = host_port(v, "an address HOST:PORT, :PORT or ${VAR}:PORT")
    if isinstance(r, str):
        return r
    return None if r[1] >= 0 else "an address HOST:PORT, :PORT or ${VAR}:PORT (the port is needed)"


def label_selector(v: str) -> str | None:
    from clusterdns.kube.selector import SelectorError, parse_selector

    expected = "a label selector such as 'app=web,tier!=test'"
    if not v.strip() or "\n" in v:
        return expected
    try:
        parse_selector(v)
    except SelectorError as exc:
        return f"{expected} ({exc.problem})"
    return None
