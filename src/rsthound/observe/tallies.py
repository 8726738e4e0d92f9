"""The always-on capture's counts for /metrics and the dashboard: failed connections by
cause and service (as `diagnose` judges them, each second), resets by kind, direction and
service.

Label values are bounded: the first `top` services seen keep their own label, later ones
are counted under service="other", so 10,000 failing ports make at most top + 1 series per
cause.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

from rsthound.analyze.diagnosis import Facts, diagnose
from rsthound.textforms import endpoint

KEEP_SERVICES = 200  # services remembered for the dashboard (most failures first)
KEEP_TICKS = 600  # the dashboard's charts: 10 minutes of ticks


class Tallies:
    def __init__(self, top: int = 20) -> None:
        self.top = top
        self.failed: Counter[tuple[str, str]] = Counter()  # (cause, service label)
        self.resets: Counter[tuple[str, str, str]] = Counter()  # (kind, direction, label)
        self.services: dict[str, dict[str, Any]] = {}  # service -> what the dashboard shows
        self.labelled: set[str] = set()
        # per tick: (end, seconds, [(cause, service label, failures)]), for the charts
        self.timeline: deque[tuple[float, float, list[tuple[str, str, int]]]] = deque(
            maxlen=KEEP_TICKS)

    def label(self, service: str) -> str:
        """The service's label value: itself for the first `top` services, then "other"."""
        if service in self.labelled:
            return service
        if len(self.labelled) < self.top:
            self.labelled.add(service)
            return service
        return "other"

    def add(self, facts: Facts) -> None:
        """One tick's facts (their addresses, rules and routes known)."""
        findings = diagnose(facts)
        tick: Counter[tuple[str, str]] = Counter()
        for s in facts.seen:
            if s.sender is None:  # a timeout: no reset
                continue
            direction = "sent" if facts.local.get(s.sender) else "received"
            self.resets[(s.kind.value, direction, self.label(endpoint(*s.server)))] += 1
        for x in findings:
            if not x.abnormal:
                continue
            service = x.service or "unknown"  # counted by the kernel, seen by nobody
            self.failed[(str(x.cause), self.label(service))] += x.count
            tick[(str(x.cause), self.label(service))] += x.count
            s = self.services.setdefault(service, {"service": service, "count": 0})
            s.update(count=s["count"] + x.count, cause=x.cause, last=facts.end,
                     clients=x.clients or s.get("clients", []), fix=x.fix,
                     server=x.server or s.get("server"))
        self.timeline.append((facts.end, facts.seconds,
                              [(c, s, n) for (c, s), n in tick.items()]))
        if len(self.services) > KEEP_SERVICES:
            keep = sorted(self.services.values(), key=lambda s: -s["count"])[:KEEP_SERVICES]
            self.services = {s["service"]: s for s in keep}

    def snapshot(self, timeline: bool = False) -> dict[str, Any]:
        """The counts (for /metrics), and with `timeline` the ticks the dashboard draws."""
        out: dict[str, Any] = {
            "failed": dict(self.failed), "resets": dict(self.resets),
            "services": sorted(self.services.values(), key=lambda s: -s["count"])}
        if timeline:
            out["timeline"] = [[end, secs, list(map(list, items))]
                               for end, secs, items in self.timeline]
        return out
