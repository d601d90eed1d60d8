"""Domain names: text <-> wire form, suffixes, zone membership, reading compressed names.

Inside the server a name is its wire form lowercased (bytes): that is what the query
parser yields and what the compiled zone is keyed by, so no text is made per query.
"""

from __future__ import annotations

from clusterdns.wire.constants import MAX_LABEL, MAX_NAME


class NameError_(ValueError):
    """A name that cannot be put on the wire (empty or long label, over 255 bytes)."""


def to_wire(text: str) -> bytes:
    """'a.b.' or 'a.b' -> wire form, lowercased; '' and '.' are the root."""
    text = text.strip().rstrip(".").lower()
    if not text:
        return b"\x00"
    out = bytearray()
    for label in text.split("."):
        raw = label.encode() if label.isascii() else label.encode("idna")
        if not 0 < len(raw) <= MAX_LABEL:
            raise NameError_(f"bad label in {text!r}")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > MAX_NAME:
        raise NameError_(f"name too long: {text!r}")
    return bytes(out)


def to_text(wire: bytes, dot: bool = True) -> str:
    """Pointer-free wire name -> dotted text (with the trailing dot unless `dot` is False)."""
    labels, i = [], 0
    while i < len(wire) and wire[i]:
        ln = wire[i]
        labels.append(wire[i + 1 : i + 1 + ln].decode("ascii", "backslashreplace"))
        i += ln + 1
    text = ".".join(labels)
    return text + "." if dot else text


def to_presentation(wire: bytes) -> str:
    """A pointer-free wire name as zone files and logs print it: final dot, bytes outside
    printable ASCII (and the dot, quote, backslash, parentheses) as \\DDD (RFC 4343 2.1)."""
    out = [
        ("".join(chr(b) if 0x21 <= b < 0x7F and b not in b'."\\()' else f"\\{b:03d}" for b in lab))
        for lab in labels(wire)
    ]
    return ".".join(out) + "." if out else "."


def labels(wire: bytes) -> list[bytes]:
    """The labels of a pointer-free wire name, root excluded."""
    out, i = [], 0
    while i < len(wire) and wire[i]:
        out.append(wire[i + 1 : i + 1 + wire[i]])
        i += wire[i] + 1
    return out


def suffixes(name: bytes) -> list[bytes]:
    """Every suffix of a wire name on a label boundary, longest first (the root last)."""
    out, i = [], 0
    while i < len(name):
        out.append(name[i:])
        if name[i] == 0:
            break
        i += name[i] + 1
    return out


def in_zone(name: bytes, zone: bytes) -> bool:
    """Whether the wire name equals or lies under the wire zone (both lowercased)."""
    if len(name) == len(zone):
        return name == zone
    if not name.endswith(zone):
        return False
    i, cut = 0, len(name) - len(zone)
    while i < cut:
        i += name[i] + 1
    return i == cut


class Malformed(ValueError):
    """Bytes that are not a DNS message this server can read safely."""


def name_end(data: bytes, i: int) -> int:
    """Offset just past a (possibly compressed) name starting at `i`, bounds-checked."""
    n = len(data)
    for _ in range(128):  # a name has at most 127 labels
        if i >= n:
            raise Malformed("name runs past the message")
        ln = data[i]
        if ln == 0:
            return i + 1
        if ln & 0xC0 == 0xC0:
            if i + 2 > n:
                raise Malformed("truncated pointer")
            return i + 2
        if ln & 0xC0:
            raise Malformed("unknown label type")
        i += ln + 1
    raise Malformed("too many labels")


def read(data: bytes, i: int) -> tuple[str, int]:
    """A possibly compressed name at `i` -> (lowercased dotted text without the final dot,
    offset after it). Pointers must point backwards, so loops cannot happen."""
    parts: list[str] = []
    end = -1
    n = len(data)
    total = 0
    for _ in range(256):
        if i >= n:
            raise Malformed("name runs past the message")
        ln = data[i]
        if ln & 0xC0 == 0xC0:
            if i + 2 > n:
                raise Malformed("truncated pointer")
            if end < 0:
                end = i + 2
            ptr = ((ln & 0x3F) << 8) | data[i + 1]
            if ptr >= i:
                raise Malformed("forward compression pointer")
            i = ptr
            continue
        if ln == 0:
            return ".".join(parts), (end if end >= 0 else i + 1)
        if ln & 0xC0:
            raise Malformed("unknown label type")
        total += ln + 1
        if total >= MAX_NAME:
            raise Malformed("name longer than 255 bytes")
        if i + 1 + ln > n:
            raise Malformed("label runs past the message")
        parts.append(data[i + 1 : i + 1 + ln].decode("ascii", "backslashreplace").lower())
        i += ln + 1
    raise Malformed("too many labels or a pointer loop")
