"""Datagrams in batches: Linux recvmmsg(2)/sendmmsg(2) through ctypes.

Why: on the UDP hot path the per-datagram cost of the event loop's transport (one
recvmsg and one sendmsg system call, an address tuple built and parsed, a Python call
per datagram) is most of the time a cached answer takes. One recvmmsg fills up to
`BATCH` slots, the answers are copied into a send area and one sendmmsg sends them all,
each to the address its query came from (the kernel's sockaddr is reused as is, never
turned into a tuple). Measured with dnsperf against an answer-from-a-dict server on one
core (bench/README.md, "UDP I/O"): uvloop's DatagramProtocol 243k QPS, a non-blocking
recvfrom/sendto loop 247k, recvmmsg/sendmmsg 320-336k.

`BatchIO` exposes the slots as memoryviews so the caller reads lengths and writes answer
lengths with one index each. `available()` says whether the calls exist (Linux with
glibc or musl); elsewhere `server/udp.py` uses `PlainIO`, the same interface over
`recvfrom`/`sendto`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import sys
from collections.abc import Iterable
from typing import Any

BATCH = 64  # datagrams per system call; a wake-up under load finds tens waiting
RECV_SIZE = 4096  # largest query read over UDP; longer ones arrive truncated (MSG_TRUNC)
SEND_SIZE = 4096  # answers longer than this go out one by one with sendto()
NAME_SIZE = 32  # room for a sockaddr_in6 (28 bytes)
MSG_DONTWAIT = 0x40
MSG_TRUNC = 0x20


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


_libc: Any = None  # not tried yet; then False (not available) or the CDLL


def _load() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux") and not os.environ.get("CLUSTERDNS_NO_MMSG"):
            try:
                lib = ctypes.CDLL(None, use_errno=True)
                recv, send = lib.recvmmsg, lib.sendmmsg
            except (OSError, AttributeError):
                return None
            recv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
            recv.restype = ctypes.c_int
            send.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
            send.restype = ctypes.c_int
            _libc = lib
    return _libc or None


def available() -> bool:
    """recvmmsg/sendmmsg can be used (Linux; CLUSTERDNS_NO_MMSG=1 turns them off)."""
    return _load() is not None


def sockaddr_to_tuple(raw: bytes) -> tuple:
    """A kernel sockaddr_in / sockaddr_in6 as the address tuple `socket` uses."""
    family = int.from_bytes(raw[0:2], sys.byteorder)
    port = int.from_bytes(raw[2:4], "big")
    if family == socket.AF_INET6:
        return (
            socket.inet_ntop(socket.AF_INET6, raw[8:24]),
            port,
            int.from_bytes(raw[4:8], "big"),
            int.from_bytes(raw[24:28], sys.byteorder),
        )
    return (socket.inet_ntop(socket.AF_INET, raw[4:8]), port)


class BatchIO:
    """Fixed receive and send slots for one socket, filled and drained by one call each.

    Slot i of a receive holds datagram i: `rbuf[i * RECV_SIZE:][:lens[LEN_AT[i]]]`, its
    source in `names[i * NAME_SIZE:]`. To answer it, copy the answer into send slot j
    (`sbuf[j * SEND_SIZE:]`), set `slens[2 * j + 1]` to its length and
    `snames[NAME_AT[j]]` to `name_addrs[i]`, the address of receive slot i's source; then
    `send(count)`. The index tables spare the hot loop its arithmetic.
    """

    LEN_AT = tuple(i * (ctypes.sizeof(_Mmsghdr) // 4) + _Mmsghdr.msg_len.offset // 4 for i in range(BATCH))
    FLAGS_AT = tuple(i * (ctypes.sizeof(_Mmsghdr) // 4) + _Msghdr.msg_flags.offset // 4 for i in range(BATCH))
    NAME_AT = tuple(i * (ctypes.sizeof(_Mmsghdr) // 8) + _Msghdr.msg_name.offset // 8 for i in range(BATCH))

    def __init__(self, sock: socket.socket) -> None:
        lib = _load()
        if lib is None:
            raise OSError("recvmmsg/sendmmsg are not available")
        self._recvmmsg, self._sendmmsg = lib.recvmmsg, lib.sendmmsg
        self.fd = sock.fileno()
        namelen = 28 if sock.family == socket.AF_INET6 else 16
        self._rbuf = ctypes.create_string_buffer(BATCH * RECV_SIZE)
        self._sbuf = ctypes.create_string_buffer(BATCH * SEND_SIZE)
        self._names = ctypes.create_string_buffer(BATCH * NAME_SIZE)
        self._onames = ctypes.create_string_buffer(BATCH * NAME_SIZE)  # send_each's addresses
        self._riov = (_Iovec * BATCH)()
        self._siov = (_Iovec * BATCH)()
        self._rmsgs = (_Mmsghdr * BATCH)()
        self._smsgs = (_Mmsghdr * BATCH)()
        rbase, sbase = ctypes.addressof(self._rbuf), ctypes.addressof(self._sbuf)
        self._nbase = ctypes.addressof(self._names)
        for i in range(BATCH):
            self._riov[i].iov_base, self._riov[i].iov_len = rbase + i * RECV_SIZE, RECV_SIZE
            self._siov[i].iov_base = sbase + i * SEND_SIZE
            for msgs, iov in ((self._rmsgs, self._riov), (self._smsgs, self._siov)):
                h = msgs[i].msg_hdr
                h.msg_name = self._nbase + i * NAME_SIZE
                h.msg_namelen = namelen  # recvmmsg writes the same length back: set once
                h.msg_iov = ctypes.addressof(iov) + i * ctypes.sizeof(_Iovec)
                h.msg_iovlen = 1
        self._raddr, self._saddr = ctypes.addressof(self._rmsgs), ctypes.addressof(self._smsgs)
        self.name_addrs = tuple(self._nbase + i * NAME_SIZE for i in range(BATCH))
        self.rbuf = memoryview(self._rbuf).cast("B")
        self.sbuf = memoryview(self._sbuf).cast("B")
        self.names = memoryview(self._names).cast("B")
        self._onames_mv = memoryview(self._onames).cast("B")
        self._oname_addrs = tuple(ctypes.addressof(self._onames) + i * NAME_SIZE for i in range(BATCH))
        self.lens = memoryview(self._rmsgs).cast("B").cast("I")  # msg_len, msg_flags: LEN_AT, FLAGS_AT
        self.slens = memoryview(self._siov).cast("B").cast("Q")  # iov_len of send slot j: [2 * j + 1]
        self.snames = memoryview(self._smsgs).cast("B").cast("Q")  # msg_name of send slot j: NAME_AT

    def name(self, i: int) -> tuple:
        """Receive slot i's source as an address tuple (slow path, query log)."""
        return sockaddr_to_tuple(bytes(self.names[i * NAME_SIZE : (i + 1) * NAME_SIZE]))

    def source(self, i: int) -> bytes:
        """Receive slot i's source, kept as the kernel's sockaddr for `send_each` (cheaper
        than a tuple; `address()` makes one when a log line needs it)."""
        return bytes(self.names[i * NAME_SIZE : (i + 1) * NAME_SIZE])

    @staticmethod
    def address(source: bytes) -> tuple:
        return sockaddr_to_tuple(source)

    def send_each(self, items: list[tuple[bytes, bytes]]) -> None:
        """Send (answer, source) pairs, BATCH per call: answers that were not ready in
        their receive batch (forwarded) still leave together. Answers must fit SEND_SIZE."""
        self._send_all(items, addressed=True)

    def send_connected(self, datas: Iterable[bytes]) -> None:
        """Send datagrams on a connected socket (send slots without addresses), BATCH per
        call. Each must fit SEND_SIZE."""
        self._send_all(((data, b"") for data in datas), addressed=False)

    def _send_all(self, items: Iterable[tuple[bytes, bytes]], addressed: bool) -> None:
        sbuf, slens, snames, name_at = self.sbuf, self.slens, self.snames, self.NAME_AT
        onames, oaddrs = self._onames_mv, self._oname_addrs
        j = 0
        for data, source in items:
            size = len(data)
            so = j * SEND_SIZE
            sbuf[so : so + size] = data
            slens[2 * j + 1] = size
            if addressed:
                oo = j * NAME_SIZE
                onames[oo : oo + NAME_SIZE] = source
                snames[name_at[j]] = oaddrs[j]
            j += 1
            if j == BATCH:
                self.send(j)
                j = 0
        if j:
            self.send(j)

    def truncated(self, i: int) -> bool:
        """Datagram i was longer than RECV_SIZE (only its start was read)."""
        return bool(self.lens[self.FLAGS_AT[i]] & MSG_TRUNC)

    def recv(self) -> int:
        """Datagrams now in the receive slots (0 when none are waiting)."""
        n = self._recvmmsg(self.fd, self._raddr, BATCH, MSG_DONTWAIT, None)
        if n < 0:
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EINTR):
                return 0
            raise OSError(err, os.strerror(err))
        return n

    def send(self, count: int) -> int:
        """Send slots 0..count-1; a slot the kernel refuses (e.g. an unroutable address)
        is skipped, never retried. Returns how many went out."""
        sent = done = 0
        while done < count:
            n = self._sendmmsg(self.fd, self._saddr + done * ctypes.sizeof(_Mmsghdr), count - done, 0)
            if n <= 0:
                err = ctypes.get_errno()
                if n < 0 and err == errno.EINTR:
                    continue
                done += 1  # the slot at `done` failed: drop that one answer, go on
                continue
            sent += n
            done += n
        return sent


class PlainIO:
    """`BatchIO`'s interface over recvfrom_into/sendto, one datagram per call: for systems
    without recvmmsg (and CLUSTERDNS_NO_MMSG=1). Slower, same behaviour."""

    LEN_AT = FLAGS_AT = NAME_AT = tuple(range(BATCH))

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.rbuf = memoryview(bytearray(BATCH * RECV_SIZE))
        self.sbuf = memoryview(bytearray(BATCH * SEND_SIZE))
        self.lens = [0] * BATCH  # no MSG_TRUNC here: recvfrom_into reads at most RECV_SIZE
        self.slens = [0] * (2 * BATCH)
        self.snames = [0] * BATCH
        self._addrs: list[tuple] = [()] * BATCH
        self.name_addrs = tuple(range(BATCH))

    def name(self, i: int) -> tuple:
        return self._addrs[i]

    def source(self, i: int) -> tuple:
        return self._addrs[i]

    @staticmethod
    def address(source: tuple) -> tuple:
        return source

    def send_each(self, items: list[tuple[bytes, tuple]]) -> None:
        for reply, addr in items:
            try:
                self.sock.sendto(reply, addr)
            except OSError:
                pass  # one unroutable address costs its own answer only

    def truncated(self, i: int) -> bool:
        return self.lens[i] >= RECV_SIZE

    def recv(self) -> int:
        n = 0
        recvfrom_into = self.sock.recvfrom_into
        while n < BATCH:
            try:
                size, addr = recvfrom_into(self.rbuf[n * RECV_SIZE : (n + 1) * RECV_SIZE])
            except (BlockingIOError, InterruptedError):
                break
            self.lens[n], self._addrs[n] = size, addr
            n += 1
        return n

    def send(self, count: int) -> int:
        sent = 0
        for j in range(count):
            off = j * SEND_SIZE
            try:
                self.sock.sendto(self.sbuf[off : off + self.slens[2 * j + 1]], self._addrs[self.snames[j]])
                sent += 1
            except OSError:
                pass  # one unroutable address costs its own answer only
        return sent


def for_socket(sock: socket.socket) -> BatchIO | PlainIO:
    return BatchIO(sock) if available() else PlainIO(sock)


def grow_receive_buffer(sock: socket.socket, size: int) -> None:
    """Ask for a receive buffer of `size` bytes, room for a burst: the default (~208 KB)
    holds about 50 datagrams of 4 KB. Past net.core.rmem_max only with CAP_NET_ADMIN
    (SO_RCVBUFFORCE); else the kernel caps SO_RCVBUF there."""
    for opt in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
        if opt is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, size)
            return
        except OSError:
            continue
