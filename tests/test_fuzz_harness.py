"""The fuzz harness (bench/fuzz.py) can fail: its checks let the parsers' typed errors
through and stop at anything else, and its seeds are the real messages they claim to be.

The long run itself is not part of the suite (see bench/README.md, "Fuzzing"); these run
the checks once per case, in-process, without atheris.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import dns.message
import pytest

from clusterdns.wire import question as Q
from clusterdns.wire.scan import scan_response

_PATH = Path(__file__).resolve().parent.parent / "bench" / "fuzz.py"
_spec = importlib.util.spec_from_file_location("clusterdns_bench_fuzz", _PATH)
assert _spec is not None and _spec.loader is not None
fuzz = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = fuzz
_spec.loader.exec_module(fuzz)


def test_seeds_are_real_queries_and_answers_that_pass_every_check() -> None:
    queries = fuzz.query_seeds()
    parsed = 0
    for q in queries:
        try:
            Q.parse(q)
            parsed += 1
        except Q.NotImplementedOpcode:
            pass
    assert parsed == len(queries) - 1  # all but the NOTIFY one
    answers = fuzz.answer_seeds()
    assert all(scan_response(a).ancount >= 0 for a in answers)
    for target, seeds in (("query", queries), ("answer", answers), ("handler", queries)):
        for seed in seeds:
            fuzz.CHECKS[target](seed)


def test_query_check_lets_typed_errors_through_and_stops_at_others(monkeypatch: pytest.MonkeyPatch) -> None:
    seed = fuzz.query_seeds()[0]

    def typed(data: bytes) -> Q.Query:
        raise Q.CountsLie("counted records missing")

    monkeypatch.setattr(fuzz, "parse", typed)
    fuzz.check_query(seed)

    def buggy(data: bytes) -> Q.Query:
        return data[len(data) + 5]  # type: ignore[return-value]

    monkeypatch.setattr(fuzz, "parse", buggy)
    with pytest.raises(IndexError):
        fuzz.check_query(seed)


def test_query_check_stops_at_a_query_that_disagrees_with_its_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    seed = fuzz.query_seeds()[0]
    real = Q.parse

    def off_by_one(data: bytes) -> Q.Query:
        q = real(data)
        q.qend += 1
        return q

    monkeypatch.setattr(fuzz, "parse", off_by_one)
    with pytest.raises(fuzz.FuzzFailure, match="question extent"):
        fuzz.check_query(seed)


def test_reply_check_stops_at_a_wrong_id_and_at_bytes_a_client_cannot_parse() -> None:
    q = dns.message.make_query("httpd-svc.default.svc.cluster.local.", "A")
    data = q.to_wire()
    good = dns.message.make_response(q).to_wire()
    fuzz.check_reply(data, good, False)
    with pytest.raises(fuzz.FuzzFailure, match="ID"):
        fuzz.check_reply(data, bytes([good[0] ^ 1]) + good[1:], False)
    with pytest.raises(fuzz.FuzzFailure, match="cannot parse"):
        fuzz.check_reply(data, good[:-1], False)


def test_handler_check_stops_when_the_hot_path_and_the_general_path_differ(monkeypatch: pytest.MonkeyPatch) -> None:
    seed = fuzz.query_seeds()[0]
    h = fuzz.handler()
    fuzz.check_handler(seed)
    real = h.fast

    def other_address(data: bytes, tcp: int, slot: int) -> bytes | None:
        out = real(data, tcp, slot)
        return None if out is None else out[:-1] + bytes([out[-1] ^ 1])  # the A record's last byte

    monkeypatch.setattr(h, "fast", other_address)
    with pytest.raises(fuzz.FuzzFailure, match="differently"):
        fuzz.check_handler(seed)


def test_handler_check_stops_when_the_catch_all_catches_an_internal_error(monkeypatch: pytest.MonkeyPatch) -> None:
    data = dns.message.make_query("nothing-here.default.svc.cluster.local.", "TXT", use_edns=1).to_wire()
    h = fuzz.handler()

    def broken(*args: object) -> None:
        raise KeyError("a bug in the zone")

    monkeypatch.setattr(h, "_reply", broken)
    with pytest.raises(fuzz.FuzzFailure, match="catch-all"):
        fuzz.check_handler(data)
