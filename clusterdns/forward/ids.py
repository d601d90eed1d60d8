"""Query IDs for upstream queries, from the OS's CSPRNG (RFC 5452 4.3: unpredictable IDs)."""

from __future__ import annotations

import os
from array import array


class QueryIds:
    """IDs drawn 1024 at a time (one syscall per 1024 queries), for the UDP and TCP pools."""

    __slots__ = ("_buf", "_i")

    def __init__(self) -> None:
        self._buf = array("H")
        self._i = 0

    def next(self) -> int:
        if self._i >= len(self._buf):
            self._buf = array("H", os.urandom(2048))
            self._i = 0
        qid = self._buf[self._i]
        self._i += 1
        return qid
