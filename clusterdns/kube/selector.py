"""Kubernetes label selectors, parsed and matched the way the API server does.

With the API source the `labels` option is sent as `labelSelector` and the API server
filters; manifests have no server, so the same selector is applied here. The grammar and
the checks follow k8s.io/apimachinery/pkg/labels (selector.go): requirements joined by
commas (AND), each one of

    key=value  key==value  key!=value      equality (`!=` also matches a missing key)
    key in (a,b)  key notin (a,b)          set-based (`notin` also matches a missing key)
    key  !key                              existence
    key>3  key<3                           integer comparison (the API server takes these too)

Keys are qualified names (`prefix/name`), values label values (63 characters at most,
may be empty). A selector the API server would reject raises SelectorError, so a typo
stops start-up instead of silently selecting nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_NAME = re.compile(r"(?:[A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_PREFIX = re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*")
_INTEGER = re.compile(r"[-+]?[0-9]+")
_WHITESPACE = " \t\r\n"
_SYMBOLS = "=!(),<>"
_OPERATORS = ("==", "!=", "=", "!", "(", ")", ",", "<", ">")  # longest first
_EXPECTED_OP = "one of in, notin, =, ==, !=, >, <"


class SelectorError(ValueError):
    """A selector the API server would refuse; `problem` says what, without the selector."""

    def __init__(self, text: str, problem: str) -> None:
        self.text, self.problem = text, problem
        super().__init__(f"label selector {text!r}: {problem}")


@dataclass(frozen=True, slots=True)
class Requirement:
    """One comma-separated term: `key op values`."""

    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", ">", "<"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        op = self.op
        if op == "exists":
            return self.key in labels
        if op == "!":
            return self.key not in labels
        value = labels.get(self.key)
        if op in ("=", "in"):
            return value is not None and value in self.values
        if op in ("!=", "notin"):
            return value is None or value not in self.values
        number = _int64(value)
        if number is None:
            return False  # the API server: a label that is not an integer never compares
        (bound,) = self.values
        return number > int(bound) if op == ">" else number < int(bound)


@dataclass(frozen=True, slots=True)
class Selector:
    """Every requirement must hold; no requirement at all selects everything."""

    text: str
    requirements: tuple[Requirement, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)


def _int64(value: str | None) -> int | None:
    """Go's strconv.ParseInt(value, 10, 64), which the API server compares with."""
    if value is None or not _INTEGER.fullmatch(value):
        return None
    number = int(value)
    return number if -(2**63) <= number < 2**63 else None


def _tokens(text: str) -> list[str]:
    """Identifiers and operators; whitespace only separates (the apimachinery lexer)."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in _WHITESPACE:
            i += 1
        elif c in _SYMBOLS:
            op = next((o for o in _OPERATORS if text.startswith(o, i)), None)
            if op is None:
                raise SelectorError(text, f"unexpected {c!r}")
            out.append(op)
            i += len(op)
        else:
            j = i
            while j < n and text[j] not in _WHITESPACE and text[j] not in _SYMBOLS:
                j += 1
            out.append(text[i:j])
            i = j
    return out


def _is_word(token: str | None) -> bool:
    return token is not None and token[0] not in _SYMBOLS


def _check_key(text: str, key: str) -> None:
    if key.count("/") > 1:
        raise SelectorError(text, f"key {key!r}: at most one '/' (prefix/name)")
    prefix, slash, name = key.partition("/") if "/" in key else ("", "", key)
    if slash and (not prefix or len(prefix) > 253 or not _PREFIX.fullmatch(prefix)):
        raise SelectorError(
            text,
            f"key {key!r}: the prefix before '/' must be a lowercase DNS subdomain "
            "(a-z 0-9 - ., at most 253 characters)",
        )
    if len(name) > 63 or not _NAME.fullmatch(name):
        raise SelectorError(
            text,
            f"key {key!r}: the name must be 1-63 characters of A-Z a-z 0-9 - _ . "
            "starting and ending with a letter or digit",
        )


def _check_value(text: str, key: str, value: str) -> None:
    if value and (len(value) > 63 or not _NAME.fullmatch(value)):
        raise SelectorError(
            text,
            f"value {value!r} of {key!r}: a label value is at most 63 characters of "
            "A-Z a-z 0-9 - _ . starting and ending with a letter or digit",
        )


def parse_selector(text: str) -> Selector:
    """`text` as a Selector; raises SelectorError (a ValueError) naming what is wrong."""
    toks = _tokens(text)
    pos = 0

    def peek() -> str | None:
        return toks[pos] if pos < len(toks) else None

    def found() -> str:
        tok = peek()
        return "the end" if tok is None else repr(tok)

    reqs: list[Requirement] = []
    while toks:
        tok = peek()
        negated = tok == "!"
        if negated:
            pos += 1
            tok = peek()
        if not _is_word(tok):
            where = "after '!'" if negated else "at the start" if not reqs else "after ','"
            raise SelectorError(text, f"expected a key {where}, found {found()}")
        assert tok is not None
        key = tok
        _check_key(text, key)
        pos += 1
        op = peek()
        if negated:
            reqs.append(Requirement(key, "!"))
        elif op is None or op == ",":
            reqs.append(Requirement(key, "exists"))
        elif op in ("in", "notin"):
            pos += 1
            if peek() != "(":
                raise SelectorError(text, f"expected '(' after {key!r} {op}, found {found()}")
            pos += 1
            values: list[str] = []
            want_value = True
            while True:
                tok = peek()
                if tok == ")":
                    if not values and want_value:
                        raise SelectorError(text, f"{key!r} {op} (): the set of values is empty")
                    if want_value:
                        values.append("")  # `(a,)`: the empty value, as the API server reads it
                    pos += 1
                    break
                if tok == ",":
                    if want_value:
                        values.append("")
                    want_value = True
                elif _is_word(tok) and want_value:
                    assert tok is not None
                    values.append(tok)
                    want_value = False
                else:
                    raise SelectorError(
                        text, f"in the values of {key!r} {op}: expected a value, ',' or ')', found {found()}"
                    )
                pos += 1
            for v in values:
                _check_value(text, key, v)
            reqs.append(Requirement(key, op, frozenset(values)))
        elif op in ("=", "==", "!=", ">", "<"):
            pos += 1
            tok = peek()
            if tok is None or tok == ",":
                value = ""  # `key=`: the label is present and empty
            elif _is_word(tok):
                value = tok
                pos += 1
            else:
                raise SelectorError(text, f"expected a value after {key!r} {op}, found {found()}")
            _check_value(text, key, value)
            if op in (">", "<") and _int64(value) is None:
                raise SelectorError(text, f"{key!r} {op} {value!r}: {op} compares with an integer")
            reqs.append(Requirement(key, "=" if op == "==" else op, frozenset((value,))))
        else:
            raise SelectorError(text, f"after the key {key!r}: expected {_EXPECTED_OP}, found {found()}")
        tok = peek()
        if tok is None:
            break
        if tok != ",":
            raise SelectorError(text, f"expected ',' between requirements, found {found()}")
        pos += 1
        if peek() is None:
            raise SelectorError(text, "expected a requirement after the last ',', found the end")
    return Selector(text, tuple(reqs))
