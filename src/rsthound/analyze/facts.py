"""What one window of watching gave, as diagnosis reads it: the sightings (resets, ICMP
errors, unanswered connects, each with its process), the failed connects the kernel traced,
and the context that explains them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rsthound.model import (
    Conn,
    FailedConnect,
    FirewallRule,
    Icmp,
    Listener,
    Process,
    Reset,
    ResetKind,
    Route,
)


@dataclass(frozen=True)
class Seen:
    """One reset or unanswered connect the capture classified, with what the trace knew."""

    ts: float
    kind: ResetKind
    server: tuple[str, int]  # the side that was connected to
    client: tuple[str, int]
    sender: str | None  # who sent the reset (None: no reset, the SYNs went unanswered)
    line: str  # as tcpdump prints it, with its kind
    process: Process | None = None  # the local process that called connect()
    reason: str | None = None  # the kernel's reason for the reset
    event: Reset | Conn | Icmp | None = None  # what the capture classified
    connect: FailedConnect | None = None  # the failed connect the trace saw, when tied
    via: str | None = None  # "output": this host's own output path rejected it


@dataclass
class Facts:
    """Everything one window gave; what could not be read is None (and said in `skipped`)."""

    start: float
    end: float
    seen: list[Seen] = field(default_factory=list)
    captured: bool = False  # packets were watched (else only counters and listeners)
    counters: dict[str, int] = field(default_factory=dict)  # increase over the window
    listeners_before: list[Listener] = field(default_factory=list)
    listeners: list[Listener] = field(default_factory=list)  # at the end
    local: dict[str, bool] = field(default_factory=dict)  # address -> this namespace's own
    firewall: list[FirewallRule] | None = None
    paths: dict[str, Route | None] = field(default_factory=dict)
    served: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # port -> history
    port_names: dict[int, str] = field(default_factory=dict)  # port -> what it usually is
    since: dict[str, float | None] = field(default_factory=dict)  # metric -> start of its run
    sysctl: dict[str, int] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    traced: bool = False  # the kernel trace ran: `failed` is every failed connect
    pending: int = 0  # connects still waiting for an answer when the window closed
    failed: list[FailedConnect] = field(default_factory=list)  # this namespace's, traced
    elsewhere: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # port -> in
    # other network namespaces, the listeners on it

    @property
    def seconds(self) -> float:
        return max(self.end - self.start, 1e-3)
