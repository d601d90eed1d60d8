"""Coverage-guided fuzzing of the wire parsers and the answer path (atheris, libFuzzer).

The suite's hypothesis tests (tests/robustness/test_malformed.py,
tests/forward/test_upstream_fuzz.py) draw a few thousand shaped cases per run; this
runs millions of inputs that libFuzzer evolves towards new branches of the parsers,
which random or hand-shaped input rarely reaches. Not collected by pytest (bench/).

Targets, each fed arbitrary bytes and mutations of real messages (the seed corpus):

* query: `wire.question.parse` returns a consistent `Query` or raises one of its typed
  `Malformed` errors, nothing else.
* answer: `wire.scan.scan_response` and `scan.answer_records` return or raise `Malformed`;
  what scan accepts is re-rendered (`scan.render`) into a reply a client parses.
* handler: the compiled zone's hot path (`Handler.fast`) and the general path
  (`Handler.answer`, whose catch-all must never fire) on UDP and TCP: no exception, every reply
  parses (dnspython), is a response with the query's ID, echoes the question and fits UDP;
  where both paths answer, the answers are the same bytes.

    .venv/bin/pip install -e '.[fuzz]'     # or: .venv/bin/pip install atheris
    .venv/bin/python bench/fuzz.py --target all --inputs 1000000 --max-seconds 1800

A crash exits non-zero and leaves the input in `--crash-dir` (`crash-<sha1>`); replay it
with `.venv/bin/python bench/fuzz.py --target T --replay FILE`.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import re
import struct
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rrset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clusterdns.app.cluster import build_cluster
from clusterdns.kube.manifests import load_manifests
from clusterdns.server.handler import Handler
from clusterdns.settings.schema import ServeConfig
from clusterdns.wire.constants import CLASSIC_UDP, EDNS_UDP, HEADER, MAX_LABEL, MAX_NAME
from clusterdns.wire.names import Malformed, read
from clusterdns.wire.question import Query, parse
from clusterdns.wire.scan import answer_records, render, scan_response

MANIFESTS = [ROOT / "config" / "demo-cluster.yaml", ROOT / "tests" / "data" / "cluster.yaml"]
TARGETS = ("query", "answer", "handler")
MAX_LEN = {"query": 1024, "answer": 4096, "handler": 1024}
#: the types whose rdata layout scan_response checks; others are relayed as opaque bytes
CHECKED_TYPES = {1, 2, 5, 6, 12, 13, 15, 16, 28, 33, 39, 41, 99}
EXECUTED = re.compile(r"stat::number_of_executed_units: (\d+)")
TOKENS = [b"\xc0\x0c", b"\xc0\x10", b"\x00\x00\x29\x04\xd0\x00\x00\x80\x00\x00\x00", b"\x00\x01\x00\x01",
          b"\x00\x06\x00\x01", b"\x00\x21\x00\x01", b"\x00\x29", b"\x03svc\x07cluster\x05local\x00",
          b"\x07default", b"\x07in-addr\x04arpa\x00", b"\x3f", b"\x40", b"\xff\xff", b"\x81\x80",
          b"\x01\x00\x00\x01", b"\x00\x00\x00\x3c", b"\x02id\x06server\x00", b"\x00\x10\x00\x03"]


class FuzzFailure(AssertionError):
    """An invariant broken by an input (the parser did not raise, it went wrong)."""


def _check(ok: object, what: str) -> None:
    if not ok:
        raise FuzzFailure(what)


# -- seeds: real messages to mutate ------------------------------------------------------

def _q(name: str, rdtype: str, **kw: object) -> dns.message.Message:
    return dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]


def query_seeds() -> list[bytes]:
    """Real queries: the zone's own names and junk below them, PTR, out of zone, CH, AXFR,
    with and without EDNS (DO, ECS, cookie, a large size, version 1), 0x20 case, an
    opcode other than QUERY, and records after the question with compressed owners."""
    names = [("httpd-svc.default.svc.cluster.local.", "A"), ("HTTPD-svc.Default.SVC.cluster.local.", "AAAA"),
             ("_https._tcp.my-nginx.default.svc.cluster.local.", "SRV"),
             ("busybox-1.busybox-subdomain.default.svc.cluster.local.", "A"),
             ("www.example.com.default.svc.cluster.local.", "A"), ("179.229.99.10.in-addr.arpa.", "PTR"),
             ("big.team.svc.cluster.local.", "A"), ("db.team.svc.cluster.local.", "ANY"),
             ("example.com.", "MX"), ("cluster.local.", "SOA"), ("cluster.local.", "AXFR"), (".", "NS")]
    out: list[bytes] = []
    ecs = dns.edns.ECSOption("10.1.2.0", 24)
    cookie = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"\x01" * 8)
    for name, rdtype in names:
        out.append(_q(name, rdtype).to_wire())
        out.append(_q(name, rdtype, use_edns=0).to_wire())
        out.append(_q(name, rdtype, use_edns=0, payload=4096, want_dnssec=True, options=[ecs, cookie]).to_wire())
    out.append(_q("httpd-svc.default.svc.cluster.local.", "A", use_edns=1).to_wire())  # BADVERS
    ch = _q("id.server.", "TXT", rdclass="CH")
    out.append(ch.to_wire())
    m = _q("httpd-svc.default.svc.cluster.local.", "A", use_edns=0)
    m.set_opcode(dns.opcode.NOTIFY)
    out.append(m.to_wire())
    m = _q("httpd-svc.default.svc.cluster.local.", "A", use_edns=0)  # an answer in a query:
    m.answer.append(dns.rrset.from_text("httpd-svc.default.svc.cluster.local.", 60, "IN", "A", "10.0.0.1"))
    m.additional.append(dns.rrset.from_text("x.default.svc.cluster.local.", 60, "IN", "CNAME",
                                            "httpd-svc.default.svc.cluster.local."))
    out.append(m.to_wire())  # owners and rdata compressed against the question
    return out


def answer_seeds() -> list[bytes]:
    """Real upstream answers (dnspython compresses every name it can): every type scan
    checks, an opaque one, NXDOMAIN with SOA, referral, TC, OPT last."""
    qname = "www.example.test."
    records = [f"{qname} 60 IN CNAME edge.example.net.", "edge.example.net. 60 IN A 192.0.2.1",
               "edge.example.net. 60 IN AAAA 2001:db8::1", "edge.example.net. 60 IN MX 10 mx.example.net.",
               "edge.example.net. 60 IN SRV 1 2 53 mx.example.net.", 'edge.example.net. 60 IN TXT "a" "" "bc"',
               "edge.example.net. 60 IN HINFO cpu os", "edge.example.net. 60 IN PTR p.example.net.",
               "edge.example.net. 60 IN DNAME d.example.org.", "edge.example.net. 60 IN TYPE65280 \\# 3 010203"]
    out: list[bytes] = []
    for edns in (False, 0):
        m = dns.message.make_response(_q(qname, "A", use_edns=edns, want_dnssec=edns == 0))
        for text in records:
            owner, ttl, rdclass, t, rdata = text.split(" ", 4)
            m.answer.append(dns.rrset.from_text(owner, int(ttl), rdclass, t, rdata))
        m.authority.append(dns.rrset.from_text("example.net.", 300, "IN", "NS", "ns1.example.net."))
        m.additional.append(dns.rrset.from_text("ns1.example.net.", 300, "IN", "A", "192.0.2.53"))
        out.append(m.to_wire())
        nx = dns.message.make_response(_q("nope.example.test.", "AAAA", use_edns=edns))
        nx.set_rcode(3)
        nx.authority.append(dns.rrset.from_text("example.test.", 900, "IN", "SOA",
                                                "ns.example.test. host.example.test. 1 7200 900 1209600 60"))
        out.append(nx.to_wire())
        tc = dns.message.make_response(_q(qname, "TXT", use_edns=edns))
        tc.flags |= dns.flags.TC
        out.append(tc.to_wire())
    big = dns.message.make_response(_q("many.example.test.", "A", use_edns=0, payload=4096))
    big.answer.append(dns.rrset.from_text_list("many.example.test.", 30, "IN", "A",
                                               [f"10.0.{i // 250}.{i % 250}" for i in range(60)]))
    out.append(big.to_wire())
    return out


# -- the checks, one input each ----------------------------------------------------------

def check_query(data: bytes) -> None:
    """parse: a typed Malformed, or a Query that agrees with the bytes it came from."""
    try:
        q = parse(data)
    except Malformed:
        return
    _check(HEADER < q.qend <= len(data) and q.qwire == data[HEADER:q.qend], "question extent")
    name = q.name
    _check(name == data[HEADER:q.qend - 4].lower() and name.endswith(b"\x00"), "name bytes")
    _check(len(name) <= MAX_NAME, "name over 255 bytes")
    i = 0
    while name[i]:
        _check(name[i] <= MAX_LABEL, "label over 63 bytes")
        i += name[i] + 1
    _check(i == len(name) - 1, "labels do not end at the root")
    _check(read(data, HEADER)[0] + "." == q.text or q.text == ".", "the pointer reader reads another name")
    _check(q.key == name + q.qwire[-4:] + bytes(((q.do << 1) | q.cd,)), "cache key")
    _check(CLASSIC_UDP <= q.udp_limit() <= EDNS_UDP, "UDP limit")
    _check(q.edns or not (q.do or q.udp_size or q.options), "EDNS fields without an OPT")


def _types(wire: bytes, qend: int) -> set[int]:
    """The record types of a message scan_response accepted (so every offset is safe)."""
    from clusterdns.wire.names import name_end

    an, ns, ar = struct.unpack_from("!HHH", wire, 6)
    i, out = qend, set()
    for _ in range(an + ns + ar):
        i = name_end(wire, i)
        rtype, rdlen = struct.unpack_from("!H", wire, i)[0], struct.unpack_from("!H", wire, i + 8)[0]
        out.add(rtype)
        i += 10 + rdlen
    return out


def _client_query(question: bytes, edns: bool, do: bool) -> Query:
    return Query(0x5A5A, True, False, question, question[:-4].lower(), (question[-4] << 8) | question[-3],
                 (question[-2] << 8) | question[-1], edns, 1232 if edns else 0, do)


def check_answer(data: bytes) -> None:
    """scan_response / answer_records: Malformed or a scan whose render a client reads."""
    try:
        answer_records(data)
    except Malformed:
        pass
    try:
        s = scan_response(data)
    except Malformed:
        return
    wire = s.wire
    _check(HEADER < s.qend <= len(wire) and wire[:s.qend] == data[:s.qend][:10] + wire[10:s.qend],
           "question extent")
    _check(all(s.qend < off and off + 4 <= len(wire) for off in s.ttl_offsets), "TTL offset out of the records")
    _check(len(set(s.ttl_offsets)) == len(s.ttl_offsets), "a TTL offset twice")
    _check(0 <= s.rcode <= 15 and s.ancount == struct.unpack_from("!H", data, 6)[0], "header fields")
    for ttl in (s.min_ttl, s.answer_min_ttl, s.negative_ttl):
        _check(ttl is None or 0 <= ttl < 2**31, "TTL out of range")
    question = data[HEADER:s.qend]
    known = _types(wire, s.qend) <= CHECKED_TYPES
    for edns, do, ttl, limit in ((False, False, None, CLASSIC_UDP), (True, True, 30, None), (True, False, 0, 1232)):
        out = render(wire, s.qend, s.ttl_offsets, ttl, _client_query(question, edns, do), limit)
        _check(out[:2] == b"\x5a\x5a" and out[2] & 0x80, "rendered header")
        _check(limit is None or len(out) <= limit or len(out) == HEADER + len(question) + 11 * edns,
               "rendered over the limit")
        _check(out[4:6] == b"\x00\x01" and out[HEADER:s.qend] == question, "rendered question")
        short = len(out) == HEADER + len(question) + 11 * edns  # the empty TC form
        if known and (ttl == 30 or short):  # a client must read what we relay (other types
            client_parses(out)  # are opaque to us: RFC 3597); the other renders differ in TTLs


_HANDLER: Handler | None = None


def handler() -> Handler:
    """The demo cluster's store, compiled zone and handler, in-process (no sockets)."""
    global _HANDLER
    if _HANDLER is None:
        paths = [str(p) for p in MANIFESTS]
        store, _HANDLER = build_cluster(ServeConfig(manifests=paths))
        store.load(load_manifests(paths)[0])
    return _HANDLER


_PARSED: set[bytes] = set()  # replies (ID aside) dnspython read already: most repeat


def client_parses(msg: bytes) -> None:
    """dnspython, a client's parser, reads `msg` (remembered by all but its ID: parsing
    is most of the cost of a handler input, and FORMERR replies repeat)."""
    key = msg[2:]
    if key in _PARSED:
        return
    try:
        dns.message.from_wire(msg)
    except (dns.exception.DNSException, ValueError, UnicodeError) as exc:
        raise FuzzFailure(f"a message a client cannot parse: {exc!r}") from exc
    if len(_PARSED) > 200_000:
        _PARSED.clear()
    _PARSED.add(key)


def check_reply(data: bytes, reply: object, tcp: bool) -> None:
    """A reply is a parseable response with the query's ID and opcode, the client's own
    question bytes when the query parsed, and within the client's UDP size."""
    _check(isinstance(reply, bytes), f"reply of type {type(reply).__name__}")
    assert isinstance(reply, bytes)
    _check(len(data) >= HEADER and reply[:2] == data[:2], "reply ID")
    _check(reply[2] & 0x80 and reply[2] & 0x78 == data[2] & 0x78, "QR / opcode")
    client_parses(reply)
    try:
        q = parse(data)
    except Malformed:
        return
    if reply[4:6] == b"\x00\x01":
        _check(reply[HEADER:q.qend] == data[HEADER:q.qend], "question not echoed as sent")
    if not tcp:
        _check(len(reply) <= q.udp_limit(), "UDP reply over the client's size")


def check_handler(data: bytes) -> None:
    """Hot path and general path, UDP and TCP: no exception, only good replies."""
    h = handler()
    for tcp in (0, 1):
        fast = h.fast(data, tcp, 0)
        if fast is not None:
            check_reply(data, fast, bool(tcp))
        errors = h.errors
        a = h.answer(data, bool(tcp))
        _check(h.errors == errors, "the handler's catch-all caught an internal error (traceback logged)")
        if a is None:
            _check(len(data) < HEADER or data[2] & 0x80, "a query dropped")
            continue
        check_reply(data, a.reply, bool(tcp))
        if fast is not None:
            _check(fast == a.reply, "hot path and general path answer differently")


CHECKS: dict[str, Callable[[bytes], None]] = {"query": check_query, "answer": check_answer,
                                               "handler": check_handler}
SEEDS: dict[str, Callable[[], list[bytes]]] = {"query": query_seeds, "answer": answer_seeds,
                                               "handler": query_seeds}


# -- running -----------------------------------------------------------------------------

def _instrument() -> None:
    """Coverage feedback from clusterdns only (not dnspython, not the stdlib)."""
    import atheris

    for obj in gc.get_objects():
        if isinstance(obj, types.FunctionType) and (obj.__module__ or "").startswith("clusterdns"):
            try:
                atheris.instrument_func(obj)
            except Exception as exc:  # noqa: BLE001 - a function left uninstrumented is only less guided
                print(f"not instrumented: {obj.__qualname__}: {exc}", file=sys.stderr)


def worker(target: str, inputs: int, seconds: int, corpus: Path, crash_dir: Path, seeds: bool) -> None:
    """One target in this process: libFuzzer exits when done (or on the first crash)."""
    import atheris

    check = CHECKS[target]
    if target == "handler":
        handler()  # load the zone before instrumenting (the load is not what we fuzz)
    corpus.mkdir(parents=True, exist_ok=True)
    crash_dir.mkdir(parents=True, exist_ok=True)
    if seeds:
        for k, seed in enumerate(SEEDS[target]()):
            (corpus / f"seed-{k:03d}").write_bytes(seed)
    dictionary = corpus.parent / f"{target}.dict"
    dictionary.write_text("".join('"' + "".join(f"\\x{b:02x}" for b in t) + '"\n' for t in TOKENS))
    _instrument()

    def one(data: bytes) -> None:
        try:
            check(data)
        except BaseException:  # keep the input even if libFuzzer's own write does not happen
            (crash_dir / f"crash-{hashlib.sha1(data).hexdigest()}").write_bytes(data)
            raise

    argv = [sys.argv[0], str(corpus), f"-runs={inputs}", f"-max_total_time={seconds}",
            f"-max_len={MAX_LEN[target]}", f"-artifact_prefix={crash_dir}/", f"-dict={dictionary}",
            "-timeout=10", "-print_final_stats=1"]
    atheris.Setup(argv, one)
    atheris.Fuzz()


def run(target: str, args: argparse.Namespace, corpus_root: Path) -> tuple[int, int, int]:
    """A worker process for `target`: (exit code, inputs run, seconds)."""
    cmd = [sys.executable, __file__, "--worker", target, "--inputs", str(args.inputs),
           "--max-seconds", str(args.max_seconds), "--crash-dir", str(args.crash_dir),
           "--corpus", str(corpus_root / target)] + ([] if args.seeds else ["--no-seeds"])
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, errors="replace")
    runs = 0
    assert proc.stderr is not None
    for line in proc.stderr:
        quiet = line.startswith(('"', "WARNING: Failed to find function")) or (
            line.startswith("#") and "pulse" not in line and "DONE" not in line)
        if args.verbose or not quiet:
            sys.stderr.write(line)
        m = EXECUTED.search(line)
        if m:
            runs = int(m.group(1))
    rc = proc.wait()
    return rc, runs, round(time.monotonic() - started)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", choices=(*TARGETS, "all"), default="all")
    ap.add_argument("--inputs", type=int, default=1_000_000, help="inputs per target (libFuzzer -runs)")
    ap.add_argument("--max-seconds", type=int, default=3600, help="time bound per target")
    ap.add_argument("--corpus", type=Path, help="corpus directory (default: a fresh temporary one)")
    ap.add_argument("--crash-dir", type=Path, default=ROOT / "bench" / "results" / "fuzz-crashes")
    ap.add_argument("--no-seeds", dest="seeds", action="store_false", help="arbitrary bytes only")
    ap.add_argument("--replay", type=Path, help="run one saved input through --target's check")
    ap.add_argument("--verbose", action="store_true", help="print libFuzzer's progress lines too")
    ap.add_argument("--worker", choices=TARGETS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker, args.inputs, args.max_seconds, args.corpus, args.crash_dir, args.seeds)
        return 0
    if args.replay:
        if args.target == "all":
            ap.error("--replay needs one --target")
        CHECKS[args.target](args.replay.read_bytes())
        print("no failure")
        return 0
    targets = TARGETS if args.target == "all" else (args.target,)
    failed = False
    with tempfile.TemporaryDirectory(prefix="clusterdns-fuzz-") as tmp:
        root = args.corpus or Path(tmp)
        results = []
        for target in targets:
            rc, runs, secs = run(target, args, root)
            results.append((target, rc, runs, secs))
            failed |= rc != 0
    for target, rc, runs, secs in results:
        state = "ok, 0 crashes" if rc == 0 else f"FAILED (exit {rc}), input in {args.crash_dir}"
        print(f"{target}: {runs:,} inputs in {secs} s: {state}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
