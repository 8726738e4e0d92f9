"""The failed connect is the unit. The kernel trace saw each connect() of the namespace that
never reached ESTABLISHED, and how its socket ended; the packets explain it. `tie` pairs
each failed connect with what the capture saw of it (a reset answering its SYN, an ICMP
error, unanswered SYNs, or a reset no TCP sent, from this host's own output path), and
makes a sighting of its own for one no packet explains (no route, a neighbour that never
answered, a SYN the capture missed). `accounting` says how many failed and how many the
findings explain: never "nothing abnormal" while connects failed.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict, deque
from typing import Any

from rsthound.analyze.facts import Facts, Seen
from rsthound.model import Cause, FailedConnect, Finding, Icmp, ResetKind
from rsthound.textforms import clock

# the causes of a connect that failed (the others are about open connections)
CONNECT_CAUSES = {Cause.NO_LISTENER, Cause.WRONG_ADDRESS, Cause.FIREWALL_REJECT,
                  Cause.FIREWALL_DROP, Cause.UNREACHABLE, Cause.LISTEN_OVERFLOW}
FAILING = (ResetKind.REFUSED, ResetKind.TIMEOUT, ResetKind.REJECTED, ResetKind.UNREACHABLE)
NO_ROUTE = ("ENETUNREACH", "EHOSTUNREACH", "EACCES", "EINVAL")
ICMP_REPEAT = 5.0  # seconds within which ICMP errors about one 4-tuple are one connect


def tie(f: Facts) -> list[Seen]:
    """The window's sightings, each failed connect tied to the one that explains it, plus a
    sighting for each failed connect that no packet explains."""
    if not f.traced:
        return _one_per_connect(f.seen)
    out = list(f.seen)
    # a 4-tuple can come back (a client that reconnects gets the same source port): each
    # connect takes the first sighting of its 4-tuple not taken yet
    direct: dict[tuple, deque[int]] = defaultdict(deque)
    reverse: dict[tuple, deque[int]] = defaultdict(deque)
    for i, s in enumerate(out):
        direct[(s.client, s.server)].append(i)
        if s.kind not in FAILING:  # a reset for a connection the capture never saw open:
            reverse[(s.server, s.client)].append(i)  # which side is which is a guess
    taken: set[int] = set()
    tied: set[tuple] = set()
    extra = []
    for fc in sorted(f.failed, key=lambda x: x.end):
        key = fc.pair
        i = _first(direct[key], taken)
        if i is None:
            i = _first(reverse[key], taken)
        if i is None:
            extra.append(unseen(fc, f))
            continue
        taken.add(i)
        tied.add(key)
        s = out[i]
        if s.kind in FAILING:
            if fc.errno is None and isinstance(s.event, Icmp):
                # the error came while connect() held the socket: the kernel kept it as a
                # soft error, which connect() returned, and no error report was traced
                fc = fc._replace(errno=s.event.errno)
            # the connect's own process (of this namespace) over the one its ports name,
            # which the same ports in another namespace may have taken at the same time
            out[i] = dataclasses.replace(s, connect=fc, process=fc.process or s.process,
                                         via=_via(s, f))
        else:
            # a reset the connect got although its SYN never reached the wire, and no TCP
            # sent it: this host's output path rejected the connect
            out[i] = dataclasses.replace(
                s, kind=ResetKind.REFUSED, server=(fc.dst, fc.dport), client=(fc.src, fc.sport),
                connect=fc, process=fc.process, via="output")
    # an ICMP error left over, about a 4-tuple whose connect took another: the same connect's
    # second error (its SYN was sent again)
    kept = [s for i, s in enumerate(out) if i in taken or not (
        s.kind in (ResetKind.REJECTED, ResetKind.UNREACHABLE) and (s.client, s.server) in tied)]
    return kept + extra


def _first(queue: deque[int], taken: set[int]) -> int | None:
    while queue:
        i = queue.popleft()
        if i not in taken:
            return i
    return None


def _one_per_connect(seen: list[Seen]) -> list[Seen]:
    """One sighting per connect for ICMP errors: a SYN sent again before the first error
    was taken gets a second one (on a fast link the first can come while connect() still
    holds the socket, and only counts as a soft error)."""
    out, last = [], {}
    for s in seen:
        if s.kind in (ResetKind.REJECTED, ResetKind.UNREACHABLE):
            key = (s.client, s.server)
            if key in last and s.ts - last[key] < ICMP_REPEAT:
                continue
            last[key] = s.ts
        out.append(s)
    return out


def _via(s: Seen, f: Facts) -> str | None:
    """An ICMP error this host sent about its own connect (to another address): its own
    output path rejected it."""
    if s.kind is ResetKind.REJECTED and s.sender and (
            s.sender != s.server[0] and f.local.get(s.sender)):
        return "output"
    return None


def unseen(fc: FailedConnect, f: Facts) -> Seen:
    """A failed connect no packet explains, as a sighting of its own: its socket's error
    says which kind of failure it was."""
    line = f"{clock(fc.end, micros=True)} {fc.text()}, no packet of it captured"
    if fc.errno == "ECONNREFUSED":
        kind = ResetKind.REFUSED
    elif fc.errno in (None, "ETIMEDOUT"):
        kind = ResetKind.TIMEOUT
    elif fc.errno in NO_ROUTE:
        kind = ResetKind.UNREACHABLE
    else:
        kind = ResetKind.STRAY  # an error rsthound has no case for: unexplained
    via = "output" if kind is ResetKind.REFUSED and _output_rejects(f, fc.dport) else None
    return Seen(fc.end, kind, (fc.dst, fc.dport), (fc.src, fc.sport), None, line,
                fc.process, None, None, fc, via or ("trace" if kind is not ResetKind.STRAY
                                                    else "unexplained"))


def _output_rejects(f: Facts, port: int) -> bool:
    return any(r.hook == "output" and r.verdict == "reject" and r.matches(port)
               for r in f.firewall or ())


def accounting(f: Facts, findings: list[Finding]) -> dict[str, Any]:
    """{"total": failed connects in the window, "explained": those the findings account
    for, "source": "trace" | "counters"}."""
    explained = sum(x.connects for x in findings
                    if x.cause in CONNECT_CAUSES and x.cause is not Cause.UNEXPLAINED)
    if f.traced:
        return {"total": len(f.failed), "explained": min(explained, len(f.failed)),
                "source": "trace"}
    # Tcp.AttemptFails misses the connects an ICMP error ended: those the capture saw
    icmp = sum(1 for s in f.seen if s.kind in (ResetKind.REJECTED, ResetKind.UNREACHABLE)
               and f.local.get(s.client[0]))
    total = (f.counters.get("Tcp.AttemptFails") or 0) + icmp
    return {"total": max(total, explained), "explained": explained, "source": "counters"}


def connects(seen: list[Seen], f: Facts) -> int:
    """How many of this namespace's failed connects these sightings stand for: the traced
    ones tied to them, or without a trace, those whose client is a local address."""
    if f.traced:
        return sum(1 for s in seen if s.connect is not None)
    return sum(1 for s in seen if s.kind in FAILING and f.local.get(s.client[0]))
