"""One observation of a network namespace, live: the capture on every interface, the
kernel trace, the counters and the listeners, opened together and closed together (one
`contextlib.ExitStack`), with one policy for what cannot be opened.

`capture`, `diagnose` and `watch` (its always-on capture and its investigations) all watch
through this class; nothing else opens a capture or a tracer.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from rsthound.errors import NeedPrivilege, RstHoundError
from rsthound.formats.records import RecordBatch
from rsthound.model import Conn, FailedConnect, Icmp, Listener, Process, Reset, ResetKind
from rsthound.sources.live import DEFAULT_SNAPLEN, LiveCapture
from rsthound.sources.procfs import CounterReader, in_netns, netns_label, netns_path
from rsthound.sources.sockdiag import ListenerReader
from rsthound.sources.tracefs import Tracer

TRACE = "process names and reset reasons (kernel trace)"
TOGETHER = 0.5  # seconds: how far the capture's and the trace's clocks may disagree
# seconds after a packet was classified by which the trace has read its connect's events
# (the trace is read every 50 ms): a sighting named sooner may miss its process
TRACE_LAG = 0.3
CAPTURE = "live capture (which service, which client, why)"


@dataclass(frozen=True)
class Skip:
    """A part of the observation that could not be opened: what, why, and how to get it."""

    what: str
    why: str
    how: str

    def obj(self) -> dict[str, str]:
        return {"what": self.what, "why": self.why, "how": self.how}

    def text(self) -> str:
        return f"{self.what}: {self.why}; {self.how}"


def _how(e: Exception, command: str) -> str:
    if isinstance(e, NeedPrivilege):
        return f"run as root: sudo rsthound {command}"
    return ""


class Observation:
    """What a namespace shows while it is watched. Each part is None when it is not wanted
    or could not be opened; what could not be opened is in `skipped`, said once.

    `require` names the parts without which the command makes no sense ("capture",
    "counters", "listeners"): those raise instead of being skipped.
    """

    def __init__(self, netns: str | None = None, *, command: str = "diagnose",
                 capture: bool = True, trace: bool = True, counters: bool = True,
                 listeners: bool = True, require: tuple[str, ...] = (),
                 proc_root: str = "/proc", iface: str = "any", expression: str | None = None,
                 snaplen: int = DEFAULT_SNAPLEN, write: str | None = None) -> None:
        self.netns = netns
        self.label = netns_label(netns)
        self.ns_path = observed_ns(netns, proc_root)
        try:  # which namespace it is: the trace sees every one, this is to tell them apart
            self.ns_inode: int | None = os.stat(self.ns_path or "/proc/self/ns/net").st_ino
        except OSError:
            self.ns_inode = None
        self.proc_root = proc_root
        self.command = command
        self.skipped: list[Skip] = []
        self.live: LiveCapture | None = None
        self.tracer: Tracer | None = None
        self.counters: CounterReader | None = None
        self.listeners: ListenerReader | None = None
        self._stack = contextlib.ExitStack()
        try:
            if counters:
                self.counters = self._open(
                    "counters", lambda: CounterReader(proc_root, netns),
                    "check that /proc is mounted", fatal=bool(netns) or "counters" in require)
            if listeners:
                self.listeners = self._open(
                    "listeners", lambda: ListenerReader(self.ns_path),
                    "run on Linux with /proc mounted", fatal="listeners" in require)
            if capture:
                def open_live() -> LiveCapture:
                    def make() -> LiveCapture:
                        return LiveCapture(iface, expression, snaplen, write=write,
                                           ns_path=self.ns_path)
                    return in_netns(self.ns_path, make) if self.ns_path else make()

                self.live = self._open(CAPTURE, open_live, "rsthound capture says more",
                                       fatal="capture" in require)
            if trace:
                # mounting tracefs is the one thing root may still need to do by hand
                self.tracer = self._open(
                    TRACE, lambda: Tracer(proc_root=proc_root),
                    "mount tracefs: mount -t tracefs tracefs /sys/kernel/tracing")
        except BaseException:
            self._stack.close()
            raise

    def _open(self, what: str, make: Callable[[], Any], how: str, fatal: bool = False) -> Any:
        try:
            thing = make()
        except (RstHoundError, OSError) as e:
            if fatal:
                raise
            self.skipped.append(Skip(what, str(e), _how(e, self.command) or how))
            return None
        self._stack.callback(thing.close)
        return thing

    # -- reading -------------------------------------------------------------------------------
    def batches(self, should_stop: Callable[[], bool]) -> Iterator[RecordBatch]:
        """The capture's batches until `should_stop()`; without a capture, none."""
        if self.live is not None:
            yield from self.live.batches(should_stop)

    def ifname(self, ifindex: int) -> str | None:
        return self.live.ifname(ifindex) if self.live is not None else None

    def counter_values(self) -> dict[str, int]:
        """The counters now ({} without them)."""
        return self.counters.read().values if self.counters is not None else {}

    def listening(self) -> list[Listener]:
        """The listeners now, owners not yet named ([] without them)."""
        return self.listeners.read() if self.listeners is not None else []

    def name(self, event: Reset | Conn | Icmp) -> tuple[Process | None, str | None]:
        """The process that connected, and the kernel's reason for a reset it sent: the one
        way a connection is tied to its process (by its ports, as the trace saw them at
        connect())."""
        t = self.tracer
        if t is None:
            return None, None
        if isinstance(event, Conn):
            return self._process(event.orig_p, event.resp_p, event.ts), None
        if isinstance(event, Icmp):
            return self._process(event.sport, event.dport, event.ts), None
        client, server = client_server(event)
        proc = (self._process(client[1], server[1], event.ts)
                or self._process(server[1], client[1], event.ts))
        return proc, t.reason(event.src, event.sport, event.dst, event.dport)

    def _process(self, local_port: int, remote_port: int, at: float) -> Process | None:
        """The process of this namespace that connected from `local_port` to `remote_port`:
        the last one known to be here; else one whose namespace could not be read (it was
        gone), if it connected at the moment `at` of the packets."""
        assert self.tracer is not None
        seen = self.tracer.connects(local_port, remote_port)
        for _start, _last, proc in reversed(seen):
            if proc.netns is not None and proc.netns == self.ns_inode:
                return proc
        if self.ns_inode is None:  # (no namespace to tell by)
            return seen[-1][2] if seen else None
        for start, last, proc in reversed(seen):
            if proc.netns is None and start - TOGETHER <= at <= last + TOGETHER:
                return proc
        return None

    def failed_connects(self) -> list[FailedConnect]:
        """The connects of this namespace that failed (left SYN_SENT for CLOSE, or found no
        route), not taken yet; [] without the trace."""
        if self.tracer is None:
            return []
        return [x for x in self.tracer.failed() if x.process is None
                or x.process.netns is None or self.ns_inode is None
                or x.process.netns == self.ns_inode]

    @property
    def traced(self) -> bool:
        return self.tracer is not None

    @property
    def behind(self) -> bool:
        """The trace came faster than it was read: some events name no process."""
        return self.tracer is not None and self.tracer.behind

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> Observation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def observed_ns(netns: str | None, proc_root: str = "/proc") -> str | None:
    """The namespace file to watch: `netns`'s; with another system's /proc (a host's, in a
    container), its PID 1's; else None, this one.

    >>> observed_ns(None), observed_ns("blue"), observed_ns(None, "/host/proc/")
    (None, '/run/netns/blue', '/host/proc/1/ns/net')
    """
    if netns:
        return netns_path(netns, proc_root)
    root = proc_root.rstrip("/") or "/"
    return None if root == "/proc" else f"{root}/1/ns/net"


def client_server(r: Reset) -> tuple[tuple[str, int], tuple[str, int]]:
    """(client, server) of a reset's connection: a refusal and a reset by the responder
    come from the server."""
    if r.kind is ResetKind.REFUSED or r.sent_by == "resp":
        return (r.dst, r.dport), (r.src, r.sport)
    return (r.src, r.sport), (r.dst, r.dport)
