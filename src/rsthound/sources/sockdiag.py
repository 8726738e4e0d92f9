"""Listening TCP sockets, as `ss -ltnpm` shows them: sock_diag netlink, and /proc/net/tcp
where netlink is not available.

For a listener the kernel reports the accept queue's length (`rqueue`) and its limit, the
backlog (`wqueue`); `sk_drops` (SK_MEMINFO_DROPS) counts the connections it dropped, as
`TcpExt.ListenDrops` does for the whole host.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from rsthound.errors import BadInput, NotSupported
from rsthound.model import join_hostport
from rsthound.sources.processes import Process, describe
from rsthound.sources.procfs import in_netns, netns_path

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
TCP_LISTEN = 10
INET_DIAG_SKMEMINFO = 7
SK_MEMINFO_DROPS = 8
_MSG = struct.Struct("=BBBBHH16s16sIQIIIII")  # inet_diag_msg (ports big-endian: fixed below)


@dataclass
class Listener:
    """One listening socket."""

    addr: str
    port: int
    queue: int  # connections accepted by TCP, waiting for accept()
    backlog: int | None  # the queue's limit (listen()'s backlog, capped by somaxconn)
    drops: int | None  # connections this listener dropped (queue full, and others)
    uid: int
    inode: int
    process: Process | None = None

    @property
    def full(self) -> bool:
        """As the kernel decides (sk_acceptq_is_full): one more than the backlog waits."""
        return self.backlog is not None and self.queue > self.backlog

    @property
    def endpoint(self) -> str:
        return join_hostport(self.addr, self.port)


def listeners(netns: str | None = None) -> tuple[list[Listener], str]:
    """The listeners of this network namespace or of `netns` (a name or a pid), with their
    owners, and where they came from."""
    with ListenerReader(netns) as reader:
        found = reader.read()
    return name_owners(found), reader.source


def name_owners(found: list[Listener]) -> list[Listener]:
    """Each listener's owning process set (None where no process could be seen)."""
    owners = owners_of({x.inode for x in found})
    for x in found:
        x.process = owners.get(x.inode)
    return found


class OwnerCache:
    """Owners for listeners read again and again: each socket's looked up once, since a
    look through every process's open files (/proc/*/fd) is too slow for every second."""

    def __init__(self) -> None:
        self._known: dict[int, Process | None] = {}

    def fill(self, found: list[Listener]) -> list[Listener]:
        alive = {x.inode for x in found}
        new = alive - self._known.keys()
        owners = owners_of(new)
        self._known = {i: p for i, p in self._known.items() if i in alive}
        self._known.update({i: owners.get(i) for i in new})
        for x in found:
            x.process = self._known[x.inode]
        return found


class ListenerReader:
    """Reads one namespace's listeners again and again through one netlink socket (opened in
    that namespace), or /proc/net/tcp where netlink is not available."""

    def __init__(self, netns: str | None = None) -> None:
        self._sock: socket.socket | None = None

        def open_here() -> None:
            try:
                self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW,
                                           NETLINK_SOCK_DIAG)
            except OSError as e:  # no netlink here (some sandboxes): the text files say less
                if netns is not None:
                    raise NotSupported(f"no sock_diag netlink here ({e.strerror}); --netns "
                                       "needs it") from None

        if netns is None:
            open_here()
        else:
            in_netns(netns_path(netns), open_here)
        self.source = "sock_diag" if self._sock is not None else "/proc/net/tcp"

    def read(self) -> list[Listener]:
        """The listeners now, sorted by port, without their owners (see owners_of)."""
        if self._sock is not None:
            found = []
            for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), 1):
                req = struct.pack("=BBBBI", family, socket.IPPROTO_TCP,
                                  1 << (INET_DIAG_SKMEMINFO - 1), 0, 1 << TCP_LISTEN)
                req += bytes(48)  # inet_diag_sockid: any
                self._sock.send(struct.pack("=IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY,
                                            NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + req)
                found += _replies(self._sock, family)
        else:
            found = _proc("/proc/self/net")
        found.sort(key=lambda x: (x.port, x.addr))
        return found

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> ListenerReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _replies(s: socket.socket, family: int) -> Iterable[Listener]:
    while True:
        found: list[Listener] = []
        if parse_replies(s.recv(1 << 16), family, found):
            yield from found
            return
        yield from found


def parse_replies(data: bytes, family: int, found: list[Listener]) -> bool:
    """One recv() of sock_diag netlink messages: its listeners appended to `found`; True
    when the dump is done. A message too short for what it claims ends the dump."""
    off = 0
    while off + 16 <= len(data):
        length, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, off)
        if length < 16 or off + length > len(data):
            return True
        if kind == NLMSG_DONE:
            return True
        if kind == NLMSG_ERROR:
            err = -struct.unpack_from("=i", data, off + 16)[0] if length >= 20 else 0
            raise OSError(err, os.strerror(err))
        if kind == SOCK_DIAG_BY_FAMILY and length - 16 >= _MSG.size:
            found.append(_listener(data[off + 16: off + length], family))
        off += (length + 3) & ~3
    return False


def _listener(msg: bytes, family: int) -> Listener:
    (_fam, _state, _timer, _retrans, sport, _dport, src, _dst, _if, _cookie, _expires,
     rqueue, wqueue, uid, inode) = _MSG.unpack_from(msg)
    raw = src[:4] if family == socket.AF_INET else src
    drops = None
    off = (_MSG.size + 3) & ~3
    while off + 4 <= len(msg):  # rtattrs
        alen, atype = struct.unpack_from("=HH", msg, off)
        if alen < 4:
            break
        if atype == INET_DIAG_SKMEMINFO and alen >= 4 + 4 * (SK_MEMINFO_DROPS + 1):
            drops = struct.unpack_from("=I", msg, off + 4 + 4 * SK_MEMINFO_DROPS)[0]
        off += (alen + 3) & ~3
    return Listener(str(ipaddress.ip_address(raw)), socket.ntohs(sport), rqueue, wqueue,
                    drops, uid, inode)


def _proc(net_dir: str) -> list[Listener]:
    """/proc/net/tcp{,6}: addresses, queue length and owner; no backlog, no drops."""
    out = []
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        path = f"{net_dir}/{name}"
        try:
            with open(path) as f:
                lines = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        except OSError as e:
            raise BadInput(f"cannot read it: {e.strerror}", path) from None
        for line in lines:
            cols = line.split()
            if len(cols) < 10 or cols[3] != "0A":
                continue
            addr, port = cols[1].split(":")
            raw = bytes.fromhex(addr)
            # the kernel prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            queue = int(cols[4].split(":")[1], 16)
            out.append(Listener(str(ipaddress.ip_address(raw if family == socket.AF_INET6
                                                         else raw[:4])),
                                int(port, 16), queue, None, None, int(cols[7]), int(cols[9])))
    return out


def owners_of(inodes: set[int], proc_root: str = "/proc") -> dict[int, Process]:
    """Which process holds each socket inode (the first found, as `ss -p` shows)."""
    found: dict[int, Process] = {}
    if not inodes:
        return found
    for pid in os.listdir(proc_root):
        if not pid.isdigit():
            continue
        fd_dir = f"{proc_root}/{pid}/fd"
        with contextlib.suppress(OSError):
            for fd in os.listdir(fd_dir):
                with contextlib.suppress(OSError):
                    m = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(f"{fd_dir}/{fd}"))
                    if m and int(m[1]) in inodes and int(m[1]) not in found:
                        comm = ""
                        with contextlib.suppress(OSError), open(f"{proc_root}/{pid}/comm") as f:
                            comm = f.read().strip()
                        found[int(m[1])] = describe(int(pid), comm)
    return found
