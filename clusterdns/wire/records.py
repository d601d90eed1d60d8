"""Plain record and answer values passed from the zone logic to the wire layer.

The zone logic builds these, never dnslib objects, so it can be read and tested
without knowing how bytes are laid out; `message.render` turns them into wire form.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# RR types and rcodes we use by name (RFC 1035, 3596, 2782, 6891, 8482)
A, NS, CNAME, SOA, PTR, HINFO, TXT, AAAA, SRV, OPT = 1, 2, 5, 6, 12, 13, 16, 28, 33, 41
IXFR, AXFR, ANY = 251, 252, 255
IN, CH = 1, 3
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16

TYPE_NAMES = {A: "A", NS: "NS", CNAME: "CNAME", SOA: "SOA", PTR: "PTR", HINFO: "HINFO",
              TXT: "TXT", AAAA: "AAAA", SRV: "SRV", OPT: "OPT", IXFR: "IXFR", AXFR: "AXFR", ANY: "ANY"}


@dataclass(frozen=True, slots=True)
class Record:
    """One resource record. `name` is absolute, lowercase, without the trailing dot.

    data by type: A/AAAA an address string; CNAME/PTR/NS a name; TXT a string;
    SRV (priority, weight, port, target); SOA (mname, rname, serial, refresh,
    retry, expire, minimum).
    """

    name: str
    rtype: int
    ttl: int
    data: Any
    rclass: int = 1  # IN; CH only for the server's own identity (id.server)


@dataclass(slots=True)
class Answer:
    """What a zone says about one question, before it is put on the wire."""

    rcode: int = NOERROR
    answer: list[Record] = field(default_factory=list)
    authority: list[Record] = field(default_factory=list)
    additional: list[Record] = field(default_factory=list)
    aa: bool = True
    # may the wire bytes be kept and replayed until one of `deps` changes?
    cacheable: bool = True
    deps: set[tuple[str, ...]] = field(default_factory=set)
    # a CNAME that leaves our zones: a forwarder may chase it and append the records
    chase: str | None = None
