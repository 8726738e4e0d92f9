"""Listening TCP sockets, as `ss -ltnpm` shows them: sock_diag netlink, and /proc/net/tcp
where netlink is not available (formats/sockdiag.py reads both), with their owners."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import struct
from collections.abc import Iterable

from rsthound.errors import BadInput, NotSupported
from rsthound.formats.sockdiag import (
    INET_DIAG_SKMEMINFO,
    SOCK_DIAG_BY_FAMILY,
    parse_proc_tcp,
    parse_replies,
)
from rsthound.model import Listener, Process
from rsthound.sources.processes import describe
from rsthound.sources.procfs import in_netns, netns_path

NETLINK_SOCK_DIAG = 4
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
TCP_LISTEN = 10


def listeners(netns: str | None = None, proc_root: str = "/proc"
              ) -> tuple[list[Listener], str]:
    """The listeners of this network namespace or of `netns` (a name or a pid), with their
    owners, and where they came from."""
    with ListenerReader(netns) as reader:
        found = reader.read()
    return name_owners(found, proc_root), reader.source


def name_owners(found: list[Listener], proc_root: str = "/proc") -> list[Listener]:
    """Each listener's owning process set (None where no process could be seen)."""
    owners = owners_of({x.inode for x in found}, proc_root)
    for x in found:
        x.process = owners.get(x.inode)
    return found


class OwnerCache:
    """Owners for listeners read again and again: each socket's looked up once, since a
    look through every process's open files (/proc/*/fd) is too slow for every second."""

    def __init__(self, proc_root: str = "/proc") -> None:
        self._known: dict[int, Process | None] = {}
        self.proc_root = proc_root

    def fill(self, found: list[Listener]) -> list[Listener]:
        alive = {x.inode for x in found}
        new = alive - self._known.keys()
        owners = owners_of(new, self.proc_root)
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


def _proc(net_dir: str) -> list[Listener]:
    """/proc/net/tcp{,6}: addresses, queue length and owner; no backlog, no drops."""
    out = []
    for name in ("tcp", "tcp6"):
        path = f"{net_dir}/{name}"
        try:
            with open(path) as f:
                text = f.read()
        except FileNotFoundError:
            continue
        except OSError as e:
            raise BadInput(f"cannot read it: {e.strerror}", path) from None
        out += parse_proc_tcp(text, ipv6=name == "tcp6")
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
                        found[int(m[1])] = describe(int(pid), comm, proc_root)
    return found
