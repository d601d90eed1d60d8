"""Logging: lifecycle and errors as text or JSON lines, bursts of repeated errors
collapsed, and the optional query log in CoreDNS's common format.

* `setup()` configures the `clusterdns` logger tree once, and again on reload (level,
  format and consolidation window can change without a restart).
* `Consolidator` is CoreDNS's `errors { consolidate }`: the first of identical warnings
  or errors (same logger, level and message) is written at once; repeats within the
  window are counted and written as one line with the count when the window ends, so
  an upstream outage cannot write a line per query.
* `QueryLog` writes one line per answered query to the `clusterdns.query` logger, in
  CoreDNS's `log` plugin common format (people grep for it, tools parse it), optionally
  one query in N. `parse_common()` reads such a line back.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from clusterdns.wire.names import Malformed, to_presentation
from clusterdns.wire.question import parse

LOGGER = "clusterdns"
QUERY_LOGGER = "clusterdns.query"

TEXT_FORMAT = "%(asctime)s [%(levelname)s] %(name)s: %(message)s"


def _utc(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    """`2026-11-21T10:00:00.000Z [INFO] clusterdns: message` (UTC, like CoreDNS's [LEVEL])."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return _utc(record.created)


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the record's `fields`, and exc."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for k, v in fields.items():
                out.setdefault(k, v)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


# --------------------------------------------------------------------------- consolidation


@dataclass
class _Burst:
    first: float
    count: int = 0  # suppressed so far
    last: logging.LogRecord | None = None


class Consolidator(logging.Filter):
    """Collapse repeated warnings/errors: first one through, the rest counted per window.

    The key is (logger, level, message): exact repeats collapse, while distinct problems
    (two broken objects, two failing upstreams) each get their line. The summary is written when the next
    record of that kind arrives after the window, or by `flush()` (the app calls it every
    window and at exit), as `N more like this within Ws: <last message>`.
    """

    def __init__(
        self,
        window: float,
        emit: Callable[[logging.LogRecord], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.window = window
        self.clock = clock
        self.emit = emit  # where summaries go (the handler's emit); set by setup()
        self._bursts: dict[tuple[str, int, str], _Burst] = {}
        self._lock = threading.Lock()  # records may come from asyncio.to_thread workers
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or self.window <= 0 or getattr(record, "summary", False):
            return True
        key = (record.name, record.levelno, record.getMessage())
        now = self.clock()
        with self._lock:
            burst = self._bursts.get(key)
            if burst is not None and now - burst.first < self.window:
                burst.count += 1
                burst.last = record
                self.suppressed += 1
                return False
            self._bursts[key] = _Burst(now)
        if burst is not None and burst.count:
            self._summarise(burst, now)
        return True

    def flush(self) -> None:
        """Write the summaries of bursts whose window has ended (all of them at exit)."""
        now = self.clock()
        with self._lock:
            done = [(k, b) for k, b in self._bursts.items() if now - b.first >= self.window]
            for k, _ in done:
                del self._bursts[k]
        for _, b in done:
            if b.count:
                self._summarise(b, now)

    def flush_all(self) -> None:
        with self._lock:
            bursts, self._bursts = list(self._bursts.values()), {}
        now = self.clock()
        for b in bursts:
            if b.count:
                self._summarise(b, now)

    def _summarise(self, burst: _Burst, now: float) -> None:
        last = burst.last
        if last is None or self.emit is None:
            return
        summary = logging.LogRecord(
            last.name,
            last.levelno,
            last.pathname,
            last.lineno,
            "%d more like this within %gs: %s",
            (burst.count, self.window, last.getMessage()),
            None,
        )
        summary.summary = True
        summary.fields = {"repeated": burst.count, "window": self.window}
        self.emit(summary)


# --------------------------------------------------------------------------- setup


_handler: logging.Handler | None = None
_consolidator: Consolidator | None = None


def setup(
    level: str = "info", fmt: str = "text", consolidate: float = 10.0, stream: TextIO | None = None
) -> Consolidator:
    """Configure the `clusterdns` loggers; calling it again (reload) replaces the handler.

    Returns the consolidator so the app can `flush()` it periodically and at exit.
    """
    global _handler, _consolidator
    root = logging.getLogger(LOGGER)
    if _handler is not None:
        if _consolidator is not None:
            _consolidator.flush_all()  # counts of the old handler's bursts are not lost
        root.removeHandler(_handler)
        _handler.close()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    consolidator = Consolidator(consolidate)
    consolidator.emit = lambda r: _emit_unfiltered(handler, r)
    handler.addFilter(consolidator)
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False  # one line per record, whatever the host application configured
    _handler, _consolidator = handler, consolidator
    return consolidator


def flush(final: bool = False) -> None:
    """Write the summaries of finished bursts (all of them when `final`): the app calls it
    every few seconds and at exit."""
    if _consolidator is not None:
        if final:
            _consolidator.flush_all()
        else:
            _consolidator.flush()


def reset() -> None:
    """Undo `setup()` (tests, embedding): records propagate to the root logger again."""
    global _handler, _consolidator
    root = logging.getLogger(LOGGER)
    if _handler is not None:
        root.removeHandler(_handler)
        _handler.close()
        _handler, _consolidator = None, None
    root.propagate = True
    root.setLevel(logging.NOTSET)


def _emit_unfiltered(handler: logging.Handler, record: logging.LogRecord) -> None:
    """Write a summary record through the handler without its filters (it is one already)."""
    handler.acquire()
    try:
        handler.emit(record)
    finally:
        handler.release()


# --------------------------------------------------------------------------- query log


_FLAG_BITS = (
    ("qr", 0x8000),
    ("aa", 0x0400),
    ("tc", 0x0200),
    ("rd", 0x0100),
    ("ra", 0x0080),
    ("ad", 0x0020),
    ("cd", 0x0010),
)
_TYPES = {
    1: "A",
    2: "NS",
    5: "CNAME",
    6: "SOA",
    12: "PTR",
    13: "HINFO",
    15: "MX",
    16: "TXT",
    28: "AAAA",
    33: "SRV",
    35: "NAPTR",
    41: "OPT",
    43: "DS",
    46: "RRSIG",
    47: "NSEC",
    48: "DNSKEY",
    50: "NSEC3",
    64: "SVCB",
    65: "HTTPS",
    99: "SPF",
    251: "IXFR",
    252: "AXFR",
    255: "ANY",
    257: "CAA",
}
_CLASSES = {1: "IN", 3: "CH", 4: "HS", 254: "NONE", 255: "ANY"}
_RCODES = {
    0: "NOERROR",
    1: "FORMERR",
    2: "SERVFAIL",
    3: "NXDOMAIN",
    4: "NOTIMP",
    5: "REFUSED",
    6: "YXDOMAIN",
    7: "YXRRSET",
    8: "NXRRSET",
    9: "NOTAUTH",
    10: "NOTZONE",
    16: "BADVERS",
}


@dataclass(slots=True)
class QueryEntry:
    """The fields of one common-format line (CoreDNS `log` plugin names)."""

    remote: str
    port: int
    id: int
    type: str
    qclass: str
    name: str
    proto: str
    size: int
    do: bool
    bufsize: int
    rcode: str
    rflags: str
    rsize: int
    duration: float

    def line(self) -> str:
        remote = f"[{self.remote}]" if ":" in self.remote else self.remote
        return (
            f'{remote}:{self.port} - {self.id} "{self.type} {self.qclass} {self.name} {self.proto} '
            f'{self.size} {str(self.do).lower()} {self.bufsize}" {self.rcode} {self.rflags} '
            f"{self.rsize} {_seconds(self.duration)}"
        )

    def fields(self) -> dict[str, Any]:
        return {
            "remote": self.remote,
            "port": self.port,
            "id": self.id,
            "type": self.type,
            "class": self.qclass,
            "name": self.name,
            "proto": self.proto,
            "size": self.size,
            "do": self.do,
            "bufsize": self.bufsize,
            "rcode": self.rcode,
            "rflags": self.rflags,
            "rsize": self.rsize,
            "duration": self.duration,
        }


def _seconds(d: float) -> str:
    """Go's `FormatFloat(d, 'f', -1, 64) + "s"` closely enough: no exponent, no padding."""
    text = f"{d:.9f}".rstrip("0")
    return (text + "0" if text.endswith(".") else text) + "s"


COMMON = re.compile(
    r"(?P<remote>\[[0-9a-fA-F:.%]+\]|[0-9.]+):(?P<port>\d+) - (?P<id>\d+) "
    r'"(?P<type>\S+) (?P<class>\S+) (?P<name>\S+) (?P<proto>udp|tcp) (?P<size>\d+) '
    r'(?P<do>true|false) (?P<bufsize>\d+)" (?P<rcode>\S+) (?P<rflags>\S*) (?P<rsize>\d+) '
    r"(?P<duration>\d+(?:\.\d+)?)s"
)


def parse_common(line: str) -> dict[str, Any] | None:
    """The fields of a common-format query line anywhere in `line`, typed; None if absent."""
    m = COMMON.search(line)
    if m is None:
        return None
    d: dict[str, Any] = m.groupdict()
    d["remote"] = d["remote"].strip("[]")
    for k in ("port", "id", "size", "bufsize", "rsize"):
        d[k] = int(d[k])
    d["do"] = d["do"] == "true"
    d["duration"] = float(d["duration"])
    return d


def entry(query: bytes, reply: bytes, addr: tuple, proto: str, duration: float) -> QueryEntry | None:
    """The query-log fields of one exchange, read with the one query parser; None when the
    query cannot be read (it got FORMERR or nothing, as in CoreDNS, before any plugin)."""
    if len(reply) < 4:
        return None
    try:
        q = parse(query)
    except Malformed:
        return None
    bufsize = 65535 if proto == "tcp" else (q.udp_size if q.edns else 512)  # RFC 1035: 512 without EDNS
    flags = int.from_bytes(reply[2:4], "big")
    rflags = ",".join(n for n, bit in _FLAG_BITS if flags & bit)
    rcode = flags & 0x0F
    return QueryEntry(
        remote=str(addr[0]),
        port=int(addr[1]),
        id=q.id,
        type=_TYPES.get(q.qtype, f"TYPE{q.qtype}"),
        qclass=_CLASSES.get(q.qclass, f"CLASS{q.qclass}"),
        name=to_presentation(q.name),
        proto=proto,
        size=len(query),
        do=q.do,
        bufsize=bufsize,
        rcode=_RCODES.get(rcode, f"RCODE{rcode}"),
        rflags=rflags,
        rsize=len(reply),
        duration=duration,
    )


class QueryLog:
    """Writes sampled common-format lines to `clusterdns.query` (INFO).

    `sample` = N logs one query in N (a counter, so exactly 1/N and cheap). The listeners
    call `wanted()` first, so an unlogged query costs one increment.
    """

    def __init__(self, sample: int = 1, logger: logging.Logger | None = None) -> None:
        self.sample = max(1, sample)
        self.logger = logger or logging.getLogger(QUERY_LOGGER)
        self._n = 0
        self.written = 0

    def wanted(self) -> bool:
        self._n += 1
        return self._n % self.sample == 0

    def write(self, query: bytes, reply: bytes, addr: tuple, proto: str, duration: float) -> None:
        e = entry(query, reply, addr, proto, duration)
        if e is None:
            return
        self.written += 1
        self.logger.info("%s", e.line(), extra={"fields": e.fields()})
