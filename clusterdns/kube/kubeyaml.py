"""A fast reader for the block YAML that `kubectl get -o yaml` prints; PyYAML stays the referee.

PyYAML's C loader spends about a second of start-up on a 5,000-service cluster building
nodes, marks and constructor state that we throw away. kubectl prints a small part of
YAML: block mappings and sequences, plain and one-line quoted scalars, `{}`/`[]` and
literal block scalars (`|`, `|-`). This module reads that part line by line and returns
exactly what `yaml.load_all(text, Loader=yaml.CSafeLoader)` returns: plain scalars are
typed by PyYAML's own resolver and constructors (`80` is an int, `true` and `on` are True,
`~` is None), and mapping keys the same way.

Anything else in a document (anchors, aliases, tags, flow collections, escapes, folded or
multi-line scalars, complex or quoted keys, odd indentation, errors) raises NotPlain for
that document, which the caller hands to PyYAML as it is. What cannot be split into
documents safely (directives, `...`, BOM, tabs, control characters, unusual line breaks)
raises NotPlain for the whole file, and so PyYAML reads it whole and words its errors
(with file and line) as before.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from yaml.constructor import SafeConstructor
from yaml.nodes import ScalarNode
from yaml.reader import Reader
from yaml.resolver import Resolver


class NotPlain(Exception):
    """Beyond the subset read here: let PyYAML read it."""


_STR = "tag:yaml.org,2002:str"
# the implicit types SafeLoader constructs from plain scalars; other tags (merge `<<`,
# value `=`) go to PyYAML, which rejects or treats them its own way
_TYPED_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("bool", "int", "float", "null", "timestamp")}
# a plain scalar can be typed only if it starts with one of these and matches one of these
_FIRST = frozenset(Resolver.yaml_implicit_resolvers)
_TYPED = re.compile(
    "|".join(sorted({f"(?:{rx.pattern})" for lst in Resolver.yaml_implicit_resolvers.values() for _, rx in lst})), re.X
)
_resolver = Resolver()
_constructor = SafeConstructor()
_typed: dict[str, Any] = {}  # plain scalar -> its typed value (ports, booleans, nulls: a few distinct)

# a plain scalar cannot start with these (`-`, `?`, `:` can when a non-space follows)
_INDICATORS = frozenset("-?:,[]{}#&*!|>'\"%@`")
# ASCII that needs no second look: no tabs, carriage returns or control characters
_PRINTABLE = bytes(range(0x20, 0x7F)) + b"\n"
# lines at column 0 that end a document or need a directive-aware reader
_MARKER = re.compile(r"^(?:---|\.\.\.|%)[^\n]*", re.M)


def plain(value: str) -> Any:
    """A plain scalar as SafeLoader types it."""
    c = value[0]
    if c not in _FIRST:
        return value
    if c.isalpha():
        if len(value) > 5:  # only the words of bool and null (`false`, `null`, ...) start with a letter
            return value
    elif value.count(".") > 1:  # no implicit type has two dots: IPv4 addresses are strings
        return value
    if _TYPED.match(value) is None:
        return value
    try:
        return _typed[value]
    except KeyError:
        pass
    tag = _resolver.resolve(ScalarNode, value, (True, False))
    if tag == _STR:
        out: Any = value
    elif tag in _TYPED_TAGS:
        try:
            out = _constructor.yaml_constructors[tag](_constructor, ScalarNode(tag, value))
        except Exception:  # noqa: BLE001 - e.g. a timestamp with month 13: PyYAML's own error, please
            raise NotPlain from None
    else:
        raise NotPlain
    if len(_typed) < 4096:
        _typed[value] = out
    return out


_NONE = object()
_keys: dict[str, Any] = {}  # mapping key text -> the key (a few hundred distinct in a cluster)


def _key(text: str) -> Any:
    if (
        (text[0] in _INDICATORS and (text[0] not in "-?:" or len(text) == 1 or text[1] == " "))
        or text[-1] == " "
        or " #" in text
        or len(text) > 1000
    ):
        raise NotPlain  # quoted, complex, odd or too long keys: PyYAML's call
    key = plain(text)
    if len(_keys) < 4096:
        _keys[text] = key
    return key


def load_all(text: str, fallback: Callable[[str], Any]) -> list[Any]:
    """Every document in `text`, as CSafeLoader's load_all gives them.

    `fallback(doc)` reads the text of one document this module does not cover (PyYAML);
    raises NotPlain when the file as a whole should go to PyYAML.
    """
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    if text.isascii():
        if text.encode("ascii").translate(None, _PRINTABLE):
            raise NotPlain  # tabs, lone CRs, control characters
    elif (
        "\t" in text
        or "\r" in text
        or Reader.NON_PRINTABLE.search(text) is not None
        or any(c in text for c in "\x85\u2028\u2029\ufeff")
    ):
        raise NotPlain  # the same, NEL/LS/PS line breaks, byte order marks
    if text.startswith(("...", "%")) or "\n..." in text or "\n%" in text:
        raise NotPlain  # document ends and directives
    lines = text.split("\n")
    marks = _markers(lines, text.count("\n---") + text.startswith("---"))
    docs: list[Any] = []
    cache = _Lines({"": None})
    start, explicit, n = 0, False, len(lines)
    for end in marks + [n]:
        try:
            value = _fast(lines[start:end], cache)
        except NotPlain:
            chunk = "\n".join(lines[start:end]) + ("\n" if start < end < n else "")
            _document(chunk, explicit, fallback, docs)
        else:
            if value is not _NOROWS:
                docs.append(value)
            elif explicit:  # `---` then nothing is a null document; no text at all is no document
                docs.append(None)
        start, explicit = end + 1, True
    return docs


def _markers(lines: list[str], expected: int) -> list[int]:
    """Indexes of the `---` lines; `expected` counts the lines starting with `---`.

    list.index finds the bare markers at C speed; anything else starting with `---`
    (trailing spaces, `----`, `--- text`) takes the careful way.
    """
    marks: list[int] = []
    k = -1
    try:
        while True:
            k = lines.index("---", k + 1)
            marks.append(k)
    except ValueError:
        pass
    if len(marks) == expected:
        return marks
    marks = [k for k, line in enumerate(lines) if line[:3] == "---"]
    if any(lines[k].rstrip(" ") != "---" for k in marks):
        raise NotPlain
    return marks


_NOROWS = object()
# kinds of line for _fast: a mapping entry with a value, `key:`, `key: {}`, `key: []`, and
# the same after `- ` (a mapping starting in a sequence item), and `- scalar`
_KV, _K, _KD, _KL, _DS, _DKV, _DK, _DKD, _DKL = range(9)


class _Slow(NotPlain):
    """Beyond _fast: _Block reads the document, and decides."""


def _entry(s: str) -> tuple[Any, int, Any]:
    """`key: value` as _Block.mapping reads it: (key, kind, value)."""
    k = s.find(": ")
    if k > 0:
        rest = s[k + 2 :].lstrip(" ")
    elif s[-1] == ":" and len(s) > 1:
        k, rest = len(s) - 1, ""
    else:
        raise NotPlain
    key = _keys.get(s[:k], _NONE)
    if key is _NONE:
        key = _key(s[:k])
    if rest and rest[0] not in _INDICATORS and ": " not in rest and " #" not in rest and rest[-1] != ":":
        return key, _KV, rest if rest[0] not in _FIRST else plain(rest)
    if not rest or rest[0] == "#":
        return key, _K, None
    if rest == "{}":
        return key, _KD, None
    if rest == "[]":
        return key, _KL, None
    return key, _KV, _scalar(rest)


def _token(line: str) -> tuple[Any, ...] | None:
    """(indent, kind, key, value, column of a mapping after `- `, whether after `- `); None
    for no content."""
    s = line.lstrip(" ")
    if not s or s[0] == "#":
        return None
    ind = len(line) - len(s)
    s = s.rstrip(" ")
    if s[0] == "-" and (len(s) == 1 or s[1] == " "):
        rest = s[1:].lstrip(" ")
        if not rest or rest[0] in "#-{[":
            raise _Slow  # `-` alone, `- - x`, `- {}`: rare, _Block's
        if rest[0] not in "'\"" and (": " in rest or rest[-1] == ":"):
            key, kind, value = _entry(rest)
            return ind, kind + _DKV - _KV, key, value, ind + len(s) - len(rest), True
        if rest[0] not in _INDICATORS and " #" not in rest:  # what _scalar reads as plain
            return ind, _DS, None, rest if rest[0] not in _FIRST else plain(rest), 0, True
        return ind, _DS, None, _scalar(rest), 0, True
    key, kind, value = _entry(s)
    return ind, kind, key, value, 0, False


class _Lines(dict[str, "tuple[Any, ...] | None"]):
    """line -> _token(line), read on first sight."""

    def __missing__(self, line: str) -> tuple[Any, ...] | None:
        tok = _token(line)
        if len(self) < 65536:
            self[line] = tok
        return tok


def _fast(lines: list[str], cache: _Lines) -> Any:
    """One document of the usual shapes, in one pass without recursion; _NOROWS if empty.

    A line's meaning does not depend on where it stands, and most lines of a cluster
    repeat (`- addresses:`, `  protocol: TCP`), so lines are read once into `cache`.
    Whatever _Block would read otherwise or reject raises NotPlain, and _Block decides.
    """
    KV, K, DS, DKV, DK, DKD, KD = _KV, _K, _DS, _DKV, _DK, _DKD, _KD
    NONE = _NONE
    stack: list[tuple[Any, int, bool]] = []
    root: Any = NONE
    cont: Any = None
    cind, islist, pend = -1, False, NONE
    for line in lines:
        tok = cache[line]
        if tok is None:
            continue
        ind, kind, key, value, col, dash = tok
        if pend is not NONE:  # `key:` took the lines below, if any, as its value
            if ind > cind or (ind == cind and dash):
                new: Any = [] if dash else {}
                cont[pend] = new
                stack.append((cont, cind, islist))
                cont, cind, islist = new, ind, dash
            pend = NONE
        elif root is NONE:
            root = cont = [] if dash else {}
            cind, islist = ind, dash
        if ind != cind or islist is not dash:
            while ind < cind or (ind == cind and islist and not dash):
                if not stack:
                    raise _Slow
                cont, cind, islist = stack.pop()
            if ind != cind or islist is not dash:
                raise _Slow
        if kind == KV:
            cont[key] = value
        elif kind == K:
            cont[key] = None
            pend = key
        elif kind == DS:
            cont.append(value)
        elif kind >= DKV:
            new = {key: None if kind == DK else value if kind == DKV else {} if kind == DKD else []}
            cont.append(new)
            stack.append((cont, cind, True))
            cont, cind, islist = new, col, False
            if kind == DK:
                pend = key
        else:
            cont[key] = {} if kind == KD else []
    return _NOROWS if root is NONE else root


def _document(chunk: str, explicit: bool, fallback: Callable[[str], Any], docs: list[Any]) -> None:
    lines = chunk.split("\n")
    rows = [
        (len(line) - len(s), s.rstrip(" "), i)
        for i, line in enumerate(lines)
        if (s := line.lstrip(" ")) and s[0] != "#"
    ]
    if not rows:
        if explicit:  # `---` then nothing is a null document; no text at all is no document
            docs.append(None)
        return
    try:
        docs.append(_Block(lines, rows).document())
    except NotPlain:
        docs.append(fallback(chunk))


class _Block:
    """One document's lines: `rows` are (indent, text, line index) of its content lines."""

    def __init__(self, lines: list[str], rows: list[tuple[int, str, int]]) -> None:
        self.lines, self.rows, self.pos = lines, rows, 0

    def document(self) -> Any:
        value = self.node(self.rows[0][0])
        if self.pos != len(self.rows):
            raise NotPlain
        return value

    def node(self, indent: int) -> Any:
        s = self.rows[self.pos][1]
        if s[0] == "-" and (len(s) == 1 or s[1] == " "):
            return self.sequence(indent)
        return self.mapping(indent)

    def mapping(self, indent: int) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        rows, n, pos = self.rows, len(self.rows), self.pos
        while pos < n:
            ind, s, _ = rows[pos]
            if ind != indent:
                if ind < indent:
                    break
                raise NotPlain  # a continuation line or bad indentation
            k = s.find(": ")
            if k > 0:
                rest = s[k + 2 :].lstrip(" ")
            elif s[-1] == ":" and len(s) > 1:
                k, rest = len(s) - 1, ""
            else:
                raise NotPlain  # a scalar where a key belongs, `- ` after a value, ...
            key = _keys.get(s[:k], _NONE)
            if key is _NONE:
                key = _key(s[:k])
            pos += 1
            if rest and rest[0] not in _INDICATORS and ": " not in rest and " #" not in rest and rest[-1] != ":":
                out[key] = rest if rest[0] not in _FIRST else plain(rest)  # the common case, inlined
                continue
            self.pos = pos
            if not rest or rest[0] == "#":
                out[key] = self.below(indent, True)
            else:
                out[key] = self.scalar(rest, indent)
            pos = self.pos
        self.pos = pos
        return out

    def sequence(self, indent: int) -> list[Any]:
        out: list[Any] = []
        rows, n = self.rows, len(self.rows)
        while self.pos < n:
            ind, s, line = rows[self.pos]
            if ind != indent:
                if ind < indent:
                    break
                raise NotPlain
            if s[0] != "-" or (len(s) > 1 and s[1] != " "):
                break  # the mapping around an indentless sequence goes on
            rest = s[1:].lstrip(" ")
            if not rest or rest[0] == "#":
                self.pos += 1
                out.append(self.below(indent, False))
            elif (rest[0] == "-" and (len(rest) == 1 or rest[1] == " ")) or (
                rest[0] not in "'\"" and (": " in rest or rest[-1] == ":")
            ):
                # `- key: value` or `- - item`: a collection starting on this line
                col = indent + len(s) - len(rest)
                rows[self.pos] = (col, rest, line)
                out.append(self.node(col))
            else:
                self.pos += 1
                out.append(self.scalar(rest, indent))
        return out

    def below(self, indent: int, indentless: bool) -> Any:
        """The value of `key:` or `-` with nothing after it: the lines below, or null."""
        if self.pos < len(self.rows):
            ind, s, _ = self.rows[self.pos]
            if ind > indent:
                return self.node(ind)
            if indentless and ind == indent and s[0] == "-" and (len(s) == 1 or s[1] == " "):
                return self.sequence(indent)
        return None

    def scalar(self, s: str, indent: int) -> Any:
        """A value that starts on its key's (or dash's) line; `s` has no surrounding spaces."""
        if s[0] == "|":
            return self.literal(s, indent)
        return _scalar(s)

    def literal(self, header: str, indent: int) -> str:
        """`|` (clip) or `|-` (strip) and the lines below, PyYAML's way."""
        if header not in ("|", "|-"):
            raise NotPlain  # keep chomping, indentation indicators, comments
        lines = self.lines
        first = self.rows[self.pos - 1][2] + 1
        r, widest = first, 0
        while r < len(lines) and not lines[r].strip(" "):
            widest = max(widest, len(lines[r]))
            r += 1
        body: list[str] = []
        if r < len(lines):
            text_indent = len(lines[r]) - len(lines[r].lstrip(" "))
            if text_indent > indent:
                if widest > text_indent:
                    raise NotPlain  # leading blank lines wider than the text: PyYAML errs
                r, last = first, -1
                while r < len(lines):
                    line = lines[r]
                    if line.strip(" "):
                        if len(line) - len(line.lstrip(" ")) < text_indent:
                            break
                        last = r
                    elif len(line) > text_indent:
                        last = r  # spaces beyond the indentation are text
                    body.append(line[text_indent:])
                    r += 1
                del body[last - first + 1 :]
                while self.pos < len(self.rows) and self.rows[self.pos][2] < r:
                    self.pos += 1
                if body and header == "|" and last < len(lines) - 1:
                    return "\n".join(body) + "\n"  # a line break ends the last line
        return "\n".join(body)


def _scalar(s: str) -> Any:
    """A value on its key's (or dash's) line other than a literal block."""
    c = s[0]
    if c == '"':
        end = s.find('"', 1)
        if end != len(s) - 1 or "\\" in s:
            raise NotPlain  # escapes, several lines, text after the quote
        return s[1:-1]
    if c == "'":
        m = _SINGLE.fullmatch(s)
        if m is None:
            raise NotPlain
        return m.group(1).replace("''", "'")
    if c == "|":
        raise _Slow  # literal blocks span lines: _Block's
    if s == "{}":
        return {}
    if s == "[]":
        return []
    if c in _INDICATORS and (c not in "-?:" or len(s) == 1 or s[1] == " "):
        raise NotPlain  # flow collections, anchors, aliases, tags, folded scalars, ...
    h = s.find(" #")
    if h > 0:
        s = s[:h].rstrip(" ")
    if ": " in s or s[-1] == ":":
        raise NotPlain
    return plain(s)


_SINGLE = re.compile(r"'((?:[^']|'')*)'")
