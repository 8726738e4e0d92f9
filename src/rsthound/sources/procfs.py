"""Read the kernel's TCP counters of one network namespace, again and again, cheaply.

The files are opened once and re-read with pread. A /proc/net file shows the network
namespace it was opened in, so for `--netns NAME` a short-lived thread enters the namespace
(setns), opens the files, and exits; the open files keep showing that namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from rsthound.errors import BadInput, NeedPrivilege, NotSupported
from rsthound.formats.procnet import parse_proc_net, parse_snmp6

FILES = ("snmp", "netstat", "snmp6")  # snmp6: where IPv6 is on
CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"
T = TypeVar("T")


@dataclass
class CounterSample:
    """Counter values at one moment: `mono` for rates, `wall` for people."""

    mono: float
    wall: float
    values: dict[str, int]
    problems: list[str] = field(default_factory=list)


class CounterReader:
    """The TCP counters of this host, of a named network namespace, or of a process's.

    `proc_root` other than /proc (a host's /proc mounted in a container, say /host/proc) is
    read as that system's: the counters of its PID 1's network namespace.
    """

    def __init__(self, proc_root: str = "/proc", netns: str | None = None) -> None:
        self.proc_root = proc_root.rstrip("/") or "/"
        self.netns = netns
        self._fds: dict[str, int] = {}
        self._ns_path: str | None = None
        self._ns_id: tuple[int, int] | None = None
        if not os.path.isdir(self.proc_root):
            raise BadInput("no such directory (give the folder where proc is mounted)",
                           self.proc_root)
        if netns is None:
            base = (f"{self.proc_root}/self/net" if self.proc_root == "/proc"
                    else f"{self.proc_root}/1/net")
            self.label = netns_label(None) if self.proc_root == "/proc" else (
                f"{self.proc_root}/1")
            self._open_in(base)
        elif netns.isdigit():
            pid = int(netns)
            self._ns_path = netns_path(netns, self.proc_root)
            self.label = netns_label(netns)
            if not os.path.exists(f"{self.proc_root}/{pid}"):
                raise BadInput(f"no process {pid}, so no network namespace to read")
            self._open_in(f"{self.proc_root}/{pid}/net")
        else:
            self._ns_path = netns_path(netns)
            self.label = netns_label(netns)
            self._enter_and_open(self._ns_path)
        if self._ns_path is not None:
            self._ns_id = self._identity()

    def _open_in(self, base: str) -> None:
        for name in FILES:
            path = f"{base}/{name}"
            try:
                self._fds[name] = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                if name == "snmp":
                    raise BadInput("missing: is proc mounted there? (see --proc-root)",
                                   path) from None
            except PermissionError:
                raise NeedPrivilege(f"{path}: permission denied; run as a user who can "
                                    "read it (root, or the process's owner)") from None

    def _enter_and_open(self, ns_path: str) -> None:
        in_netns(ns_path, lambda: self._open_in("/proc/thread-self/net"))

    def _identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self._ns_path or "")
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    def identity(self) -> str:
        """Which counters these are: the boot and the namespace, as "BOOT_ID/DEV:INODE".

        Equal identities mean the counters went on counting in between; "" when unknown.
        """
        root = self.proc_root
        ns = self._ns_path or (f"{root}/self/ns/net" if root == "/proc" else f"{root}/1/ns/net")
        try:
            with open(f"{root}/sys/kernel/random/boot_id") as f:
                boot = f.read().strip()
            st = os.stat(ns)
        except OSError:
            return ""
        return f"{boot}/{st.st_dev}:{st.st_ino}"

    def read(self) -> CounterSample:
        """One sample. BadInput when the namespace is gone; damaged lines go to problems."""
        if self._ns_path is not None and self._identity() != self._ns_id:
            raise BadInput(f"the network namespace was removed while being read ({self.label})",
                           self._ns_path)
        mono, wall = time.monotonic(), time.time()
        values: dict[str, int] = {}
        problems: list[str] = []
        for name, fd in self._fds.items():
            try:
                text = _pread_all(fd).decode("ascii", "replace")
            except OSError as e:
                raise BadInput(f"cannot read the {name} counters: {e.strerror}",
                               self.label) from None
            parse = parse_snmp6 if name == "snmp6" else parse_proc_net
            values.update(parse(text, f"{self.label}: net/{name}", problems))
        return CounterSample(mono, wall, values, problems)

    def close(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()

    def __enter__(self) -> CounterReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def netns_path(netns: str, proc_root: str = "/proc") -> str:
    """A name from 'ip netns list', a process id, or a path to a namespace file."""
    if netns.isdigit():
        return f"{proc_root}/{netns}/ns/net"
    return netns if "/" in netns else f"{NETNS_DIR}/{netns}"


def other_namespaces(proc_root: str, here: int) -> dict[int, int]:
    """Every network namespace some process is in, but `here` (an inode): inode -> one pid
    in it (the lowest)."""
    found: dict[int, int] = {}
    for name in sorted(os.listdir(proc_root), key=lambda n: (len(n), n)):
        if not name.isdigit():
            continue
        try:
            inode = os.stat(f"{proc_root}/{name}/ns/net").st_ino
        except OSError:
            continue
        if inode != here:
            found.setdefault(inode, int(name))
    return found


def netns_label(netns: str | None) -> str:
    """How a namespace is named in output: "this host", "netns blue", "netns of pid 4312"."""
    if netns is None:
        return "this host"
    return f"netns of pid {netns}" if netns.isdigit() else f"netns {netns}"


def in_netns(ns_path: str, fn: Callable[[], T]) -> T:
    """Run `fn` on a short-lived thread inside the network namespace at `ns_path`.

    What it opens there (files under /proc/thread-self/net, sockets) keeps that namespace.
    """
    try:
        ns_fd = os.open(ns_path, os.O_RDONLY)
    except FileNotFoundError:
        known = sorted(os.listdir(NETNS_DIR)) if os.path.isdir(NETNS_DIR) else []
        hint = f" (known: {', '.join(known)})" if known else " ('ip netns list' shows none)"
        raise BadInput(f"no such network namespace{hint}", ns_path) from None
    except PermissionError:
        raise NeedPrivilege(f"{ns_path}: permission denied; entering a network namespace "
                            "needs root (CAP_SYS_ADMIN)") from None
    result: list[T] = []
    failure: list[BaseException] = []

    def enter() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.setns(ns_fd, CLONE_NEWNET) != 0:
                e = ctypes.get_errno()
                if e == errno.EPERM:
                    raise NeedPrivilege("entering a network namespace needs root "
                                        "(CAP_SYS_ADMIN)")
                raise BadInput(f"not a network namespace ({os.strerror(e)})", ns_path)
            result.append(fn())
        except AttributeError:
            failure.append(NotSupported("this system has no setns(); --netns needs Linux"))
        except BaseException as e:  # handed to the caller's thread
            failure.append(e)

    try:
        t = threading.Thread(target=enter, name="rsthound-netns")
        t.start()
        t.join()
    finally:
        os.close(ns_fd)
    if failure:
        raise failure[0]
    return result[0]


def _pread_all(fd: int) -> bytes:
    chunks = []
    off = 0
    while True:
        chunk = os.pread(fd, 65536, off)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        off += len(chunk)
