"""The records every layer shares: what the parsers and sources produce, what analysis
decides, what reports render and sinks keep.

Records only: no I/O, and no text forms beyond a record's own (those are in `textforms`).
What is read back from JSON (watch's history rows) goes through `from_obj`, which takes the
fields it knows and gives the rest their defaults, so an older or newer row never raises.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

from rsthound.textforms import endpoint, printable


class ResetKind(enum.StrEnum):
    """rsthound's reset kinds (DESIGN.md section 4), plus the failures that send no reset."""

    REFUSED = "refused"  # RST answering a SYN
    ABORT = "abort"  # RST on an established connection
    AFTER_CLOSE = "after-close"  # RST after a FIN
    STRAY = "stray"  # RST for a connection never seen opening
    INJECTED = "injected?"  # RST whose TTL/hop limit or IP ID does not fit the sender
    TIMEOUT = "timeout"  # SYN never answered (no reset at all)
    REJECTED = "icmp-rejected"  # an ICMP port unreachable or prohibited answered the SYN
    UNREACHABLE = "icmp-unreachable"  # an ICMP host or net unreachable answered the SYN


@dataclass(frozen=True, slots=True)
class Damage:
    """A part of an input that could not be read; what came before and after it still counts."""

    path: str
    offset: int
    skipped: int  # bytes passed over (to the next readable record, or to the end)
    reason: str

    def describe(self) -> str:
        tail = f" ({self.skipped} bytes skipped)" if self.skipped > 0 else ""
        return f"{self.path}: at byte {self.offset}: {self.reason}{tail}"


class Reset(NamedTuple):
    """One RST segment, with who sent it and what kind it is."""

    ts: float
    src: str
    sport: int
    dst: str
    dport: int
    kind: ResetKind
    sent_by: str  # "orig" or "resp": the side of the connection that sent it
    flags: int
    seq: int
    ack: int
    ttl: int
    iface: str | None
    uid: str
    why: str  # evidence in words, e.g. "answers a SYN; nothing ever answered"


class Conn(NamedTuple):
    """One TCP connection as Zeek's conn.log would have it, plus rsthound's verdict.

    (Named tuples: hundreds of thousands are made per second of capture read.)
    """

    ts: float
    uid: str
    orig_h: str
    orig_p: int
    resp_h: str
    resp_p: int
    duration: float
    orig_bytes: int
    resp_bytes: int
    conn_state: str
    history: str
    orig_pkts: int
    resp_pkts: int
    orig_ip_bytes: int
    resp_ip_bytes: int
    failure: ResetKind | None  # why it failed, when it did
    syn_retrans: int  # SYNs the originator sent again
    resets: int
    iface: str | None
    end: float = 0.0
    icmp: str | None = None  # the ICMP error that ended it: "port unreachable from 10.0.0.2"

    @property
    def service(self) -> str:
        return endpoint(self.resp_h, self.resp_p)


def _from_obj(cls: Any, obj: dict[str, Any] | None) -> Any:
    """A record from a JSON object: unknown keys ignored, missing ones left to defaults."""
    if not isinstance(obj, dict):
        return None
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in obj.items() if k in known})


# -- the host: processes, listeners, rules, routes, port names ------------------------------
@dataclass(frozen=True)
class Process:
    """The local process behind a socket, as /proc describes it."""

    pid: int = 0
    comm: str = ""
    cmdline: str = ""
    user: str | None = None
    unit: str | None = None  # systemd unit, from the cgroup
    container: str | None = None  # container id, from the cgroup
    netns: int | None = None  # the process's network namespace (inode)

    @classmethod
    def from_obj(cls, obj: dict[str, Any] | None) -> Process | None:
        """From `obj()` as JSON or watch's history kept it, of this version or another."""
        return _from_obj(cls, obj)

    def obj(self) -> dict[str, Any]:
        return {"pid": self.pid, "comm": self.comm, "cmdline": self.cmdline, "user": self.user,
                "unit": self.unit, "container": self.container, "netns": self.netns}

    def command(self) -> str:
        """The command line with its program's base name: "python3 /opt/collector.py"."""
        argv = self.cmdline.split() or [self.comm]
        return printable(" ".join([os.path.basename(argv[0]), *argv[1:]]))

    def text(self) -> str:
        """The one text form of a process: the command line (its program's base name, then
        its arguments) tells more than the name (python3, java), so it comes first, cut at
        40 characters.

        >>> Process(4312, "python3", "/usr/bin/python3 /opt/collector.py", "root",
        ...         "collector.service").text()
        'python3 /opt/collector.py (pid 4312, collector.service)'
        """
        where = f", {printable(self.unit)}" if self.unit else (
            f", container {printable(self.container[:12])}" if self.container else "")
        cmd = self.command()
        if len(cmd) > 40:
            cmd = cmd[:39] + "…"
        return f"{cmd} (pid {self.pid}{where})"


def process_text(obj: dict[str, Any] | None) -> str:
    """A process as JSON and the history carry it, in its one text form."""
    p = Process.from_obj(obj)
    return p.text() if p is not None else "an unknown process"


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
        return endpoint(self.addr, self.port)


def takes(bound: str, addr: str) -> bool:
    """Whether a listener bound to `bound` takes connects to `addr`: the same address, or
    the wildcard of its family (`::` takes IPv4 too, as dual-stack sockets do).

    >>> takes("0.0.0.0", "10.0.0.1"), takes("0.0.0.0", "::1"), takes("::", "10.0.0.1")
    (True, False, True)
    """
    return bound == addr or bound == "::" or (bound == "0.0.0.0" and ":" not in addr)


@dataclass(frozen=True)
class FirewallRule:
    """One nftables rule that ends in reject or drop."""

    family: str
    table: str
    chain: str
    hook: str | None  # "input", or None for a chain other chains jump to
    handle: int
    text: str  # as `nft -a list ruleset` prints it, without "# handle N"
    verdict: str  # "reject" or "drop"
    ports: frozenset[int] | None  # the TCP destination ports it matches; None: any

    @property
    def chain_ref(self) -> str:
        """"inet t in": how `nft delete rule` names the chain."""
        return f"{self.family} {self.table} {self.chain}"

    @property
    def where(self) -> str:
        """"inet t in (hook input)"."""
        return self.chain_ref + (f" (hook {self.hook})" if self.hook else "")

    def matches(self, port: int) -> bool:
        return self.ports is None or port in self.ports

    def describe(self) -> str:
        return f"nft rule in {self.where}: {self.text} (handle {self.handle})"


@dataclass(frozen=True)
class Route:
    """How a namespace would reach an address."""

    kind: str  # "local", "route", "no-route"
    dev: str | None
    via: str | None  # the gateway, or None when on-link
    neighbour: str | None  # the next hop's state: REACHABLE, STALE, FAILED, ... or None

    def describe(self, addr: str) -> str:
        if self.kind == "local":
            return f"{addr} is this host's own address"
        if self.kind == "no-route":
            return f"no route to {addr}"
        hop = f"via {self.via}" if self.via else "on-link"
        state = f", neighbour {self.neighbour}" if self.neighbour else ""
        return f"route to {addr} {hop} dev {self.dev}{state}"

    @property
    def answers_on_link(self) -> bool:
        """The next hop (or the host itself) has answered neighbour discovery lately."""
        return self.kind == "local" or self.neighbour in (
            "REACHABLE", "STALE", "DELAY", "PROBE", "PERMANENT", "NOARP")


@dataclass(frozen=True)
class PortName:
    """What a port usually is: its /etc/services name and the socket units declaring it."""

    port: int
    service: str | None  # /etc/services (tcp)
    units: tuple[str, ...]  # socket units with ListenStream= on this port

    def text(self) -> str:
        parts = [f"'{self.service}' in /etc/services" if self.service
                 else "no name in /etc/services"]
        if self.units:
            parts.append("declared by " + ", ".join(self.units))
        return "; ".join(parts)


# -- watch's samples and diagnose's findings ---------------------------------------------------
@dataclass(frozen=True)
class Tick:
    """One counter sample of watch's loop, with what changed since the previous one: every
    consumer (alerts, history, the web page) reads the same increases."""

    mono: float  # for intervals
    wall: float  # for people
    values: dict[str, int]
    increases: dict[str, int] | None = None  # since the previous tick; None on the first
    seconds: float = 0.0  # monotonic seconds since the previous tick
    since_wall: float | None = None  # the previous tick's wall time


@dataclass(frozen=True)
class Point:
    """One stored row: `n` increases over `covered_ms` watched, in the `span_ms` from `t_ms`
    (an interval, or a minute or an hour that may have been watched only in part)."""

    t_ms: int
    covered_ms: int
    n: int
    span_ms: int = 0

    def __post_init__(self) -> None:
        if self.span_ms < self.covered_ms:
            object.__setattr__(self, "span_ms", self.covered_ms)


class Icmp(NamedTuple):
    """An ICMP or ICMPv6 destination unreachable about a TCP segment, as captured."""

    ts: float
    sender: str  # the target itself, or a router on the way
    src: str  # the quoted segment: the connecting side first
    sport: int
    dst: str
    dport: int
    kind: ResetKind  # REJECTED or UNREACHABLE
    code: str  # "port unreachable", "communication administratively prohibited", ...
    ttl: int
    iface: str | None
    errno: str = ""  # what connect() gets from it: "ECONNREFUSED", "EHOSTUNREACH", ...

    @property
    def service(self) -> str:
        return endpoint(self.dst, self.dport)


class FailedConnect(NamedTuple):
    """A connect() that never reached ESTABLISHED, as the kernel trace saw its socket: the
    ground truth that packets, rules and listeners explain."""

    start: float  # wall time it entered SYN_SENT (or failed, when it never did)
    end: float  # wall time it left SYN_SENT
    src: str
    sport: int
    dst: str
    dport: int
    process: Process | None
    errno: str | None  # "ECONNREFUSED", "ETIMEDOUT", ...; None: the program closed it

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start)

    @property
    def service(self) -> str:
        return endpoint(self.dst, self.dport)

    @property
    def pair(self) -> tuple[tuple[str, int], tuple[str, int]]:
        """(client, server), as a sighting of the same connect has them."""
        return (self.src, self.sport), (self.dst, self.dport)

    def ending(self) -> str:
        """How it ended, in words: "ECONNREFUSED after 0.001 s"."""
        if self.errno is None:
            return f"closed by the program after {self.seconds:.3g} s, unanswered"
        if self.seconds < 0.0005:
            return f"{self.errno} at once"
        return f"{self.errno} after {self.seconds:.3g} s"

    def text(self) -> str:
        """tcpdump's way, for a connect the wire may never have seen."""
        src = f"{endpoint(self.src, self.sport)} " if self.sport else ""
        return f"connect() {src}> {self.service}: {self.ending()}"


class Cause(enum.StrEnum):
    """A finding's cause (DESIGN.md section 4): JSON, Prometheus labels and docs use these
    words, and docs/diagnose.md is held to this list by a test."""

    NO_LISTENER = "no-listener"
    WRONG_ADDRESS = "wrong-address"
    FIREWALL_REJECT = "firewall-reject"
    FIREWALL_DROP = "firewall-drop"
    UNREACHABLE = "unreachable"
    LISTEN_OVERFLOW = "listen-overflow"
    PEER_ABORT = "peer-abort"
    LOCAL_ABORT = "local-abort"
    NORMAL = "normal"
    UNEXPLAINED = "unexplained"


@dataclass
class Finding:
    """One explained failure: what, who, why, since when, the evidence and the fix."""

    service: str | None
    cause: Cause
    count: int
    rate_per_s: float
    what: str  # one line: "6 connects refused"
    why: str  # the explanation in words
    fix: str
    first: float | None = None
    since: float | None = None
    clients: list[dict[str, Any]] = field(default_factory=list)
    server: dict[str, Any] | None = None
    listener: dict[str, Any] | None = None
    last_listener: dict[str, Any] | None = None
    usually: str | None = None
    reason: str | None = None
    evidence: list[str] = field(default_factory=list)
    errno: str | None = None  # what the failed connects' sockets got (the most common)
    connects: int = 0  # this namespace's failed connects it accounts for
    elsewhere: list[dict[str, Any]] = field(default_factory=list)  # listeners, other netns

    @property
    def abnormal(self) -> bool:
        return self.cause != Cause.NORMAL
