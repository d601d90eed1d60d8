"""DNS numbers by name (RFC 1035, 3596, 2782, 6891, 8482): one IntEnum per field.

IntEnums compare and hash as their ints, so a parsed `qtype` of 1 finds `RRType.A`
in a dict and `RRType(1)` prints as a name in logs and test failures.
"""

from __future__ import annotations

from enum import IntEnum


class RRType(IntEnum):
    """Record types this server answers or recognises."""

    A = 1
    NS = 2
    CNAME = 5
    SOA = 6
    PTR = 12
    HINFO = 13
    MX = 15
    TXT = 16
    AAAA = 28
    SRV = 33
    DNAME = 39  # RFC 6672: only checked in upstream answers
    OPT = 41
    SPF = 99  # RFC 7208: only checked in upstream answers
    IXFR = 251
    AXFR = 252
    ANY = 255


class RRClass(IntEnum):
    IN = 1
    CH = 3  # the server's own identity (id.server, RFC 4892)
    ANY = 255


class Rcode(IntEnum):
    NOERROR = 0
    FORMERR = 1
    SERVFAIL = 2
    NXDOMAIN = 3
    NOTIMP = 4
    REFUSED = 5
    BADVERS = 16  # extended: its high bits travel in the OPT record (RFC 6891 6.1.3)


class Opcode(IntEnum):
    QUERY = 0


HEADER = 12
CLASSIC_UDP = 512  # RFC 1035 4.2.1: the most a client without EDNS takes
EDNS_UDP = 1232  # DNS flag day 2020: what we advertise and the most we send over UDP
MAX_TCP = 65535  # a TCP message's length prefix is 16 bits (RFC 1035 4.2.2)
MAX_NAME = 255  # RFC 1035 2.3.4, in wire form including the root label
MAX_LABEL = 63
