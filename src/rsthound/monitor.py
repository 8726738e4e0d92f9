"""`watch --listen`'s always-on capture: every reset and failed connect of the namespace,
classified as `diagnose` would (the same `analyze.diagnosis`, once a second over what that
second saw), and tallied by cause and service for /metrics and the dashboard.

Label values are bounded: the first `top` services seen keep their own label, later ones
are counted under service="other", so 10,000 failing ports make at most top + 1 series per
cause.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from rsthound.analyze.diagnosis import Facts, diagnose
from rsthound.analyze.rates import increases
from rsthound.errors import RstHoundError
from rsthound.model import ResetKind, join_hostport
from rsthound.sources.procfs import netns_path

TICK = 1.0
FIREWALL_EVERY = 30.0  # seconds between reads of the nftables rules
KEEP_SERVICES = 200  # services remembered for the dashboard (most failures first)


class Monitor:
    def __init__(self, netns: str | None = None, top: int = 20, trace: bool = True) -> None:
        self.netns = netns
        self.top = top
        self.trace = trace
        self.failed: Counter[tuple[str, str]] = Counter()  # (cause, service label)
        self.resets: Counter[tuple[str, str, str]] = Counter()  # (kind, direction, label)
        self.services: dict[str, dict[str, Any]] = {}  # service -> what the dashboard shows
        self.labelled: set[str] = set()
        self.error: str | None = None  # why it does not capture, when it does not
        self.running = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rsthound-monitor",
                                        daemon=True)
        self.recent: deque[Facts] = deque(maxlen=30)  # the last ticks' facts
        self.instances: list[str] = []  # its tracefs instance, once open
        self._local: dict[str, bool] = {}
        self._firewall: tuple[float, Any] = (-1e9, None)
        self._paths: dict[str, Any] = {}

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def label(self, service: str) -> str:
        """The service's label value: itself for the first `top` services, then "other"."""
        if service in self.labelled:
            return service
        if len(self.labelled) < self.top:
            self.labelled.add(service)
            return service
        return "other"

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"failed": dict(self.failed), "resets": dict(self.resets),
                    "services": sorted(self.services.values(), key=lambda s: -s["count"]),
                    "running": self.running, "error": self.error}

    # -- the thread --------------------------------------------------------------------------
    def _run(self) -> None:
        from rsthound.investigate import Sightings, open_capture
        from rsthound.sources.procfs import CounterReader
        from rsthound.sources.sockdiag import ListenerReader, OwnerCache

        ns_path = netns_path(self.netns) if self.netns else None
        tracer = live = counters = sockets = None
        try:
            live = open_capture(ns_path)
            if self.trace:
                from rsthound.sources.tracefs import Tracer

                with contextlib.suppress(RstHoundError, OSError):
                    tracer = Tracer()
                    self.instances = list(tracer.instances)
            counters = CounterReader(netns=self.netns)
            sockets = ListenerReader(self.netns)
            self._refresh_firewall(ns_path)  # now: rsthound may run as a user later
        except (RstHoundError, OSError) as e:
            self.error = str(e)
            for thing in (live, tracer, counters, sockets):
                if thing is not None:
                    thing.close()
            return
        sights = Sightings(live)
        owners = OwnerCache()
        self.running = True
        start, before = time.time(), counters.read().values
        listening = owners.fill(sockets.read())
        try:
            for batch in live.batches(self._stop.is_set):
                sights.feed(batch)
                now = time.time()
                sights.expire(now)
                if now - start < TICK:
                    continue
                after, now_listening = counters.read().values, owners.fill(sockets.read())
                facts = Facts(start, now, sights.take(tracer), captured=True,
                              listeners_before=listening, listeners=now_listening,
                              counters=increases(before, after))
                self._context(facts, ns_path)
                with self._lock:
                    self.recent.append(facts)
                self._tally(facts)
                start, before, listening = now, after, now_listening
        except RstHoundError as e:
            self.error = str(e)
        finally:
            self.running = False
            for thing in (live, tracer, counters, sockets):
                if thing is not None:
                    with contextlib.suppress(Exception):
                        thing.close()

    def _context(self, facts: Facts, ns_path: str | None) -> None:
        """What diagnosis needs besides packets, cached: the addresses, rules and routes
        change rarely."""
        from rsthound.sources.netstate import is_local, read_path

        addrs = {s.server[0] for s in facts.seen} | {s.sender for s in facts.seen if s.sender}
        new = addrs - self._local.keys()
        if new:
            try:
                self._local.update(is_local(new, ns_path))
            except RstHoundError:  # the namespace cannot be entered any more: say not
                self._local.update(dict.fromkeys(new, False))
        facts.local = self._local
        if facts.seen:
            if time.monotonic() - self._firewall[0] > FIREWALL_EVERY:
                self._refresh_firewall(ns_path)
            facts.firewall = self._firewall[1]
        for s in facts.seen:
            if s.kind is ResetKind.TIMEOUT and s.server[0] not in self._paths:
                self._paths[s.server[0]] = read_path(s.server[0], ns_path)
        facts.paths = self._paths

    def _refresh_firewall(self, ns_path: str | None) -> None:
        """The nftables rules again; the last ones known where nft now refuses (a user)."""
        from rsthound.sources.netstate import read_firewall

        got = read_firewall(ns_path)
        self._firewall = (time.monotonic(), got if got is not None else self._firewall[1])

    def window(self, seconds: float, should_stop: Callable[[], bool]) -> Facts:
        """What the next `seconds` bring, as one investigation's Facts: the always-on
        capture's ticks merged, so an investigation needs no capture or trace of its own."""
        start = time.time()
        while time.time() < start + seconds + TICK and not should_stop():
            with self._lock:
                if self.recent and self.recent[-1].end >= start + seconds:
                    break
            time.sleep(0.1)
        with self._lock:
            parts = [f for f in self.recent if f.end > start]
        if not parts:
            return Facts(start, time.time(), captured=self.running)
        merged = Facts(parts[0].start, parts[-1].end, captured=True,
                       listeners_before=parts[0].listeners_before,
                       listeners=parts[-1].listeners, local=dict(self._local),
                       firewall=parts[-1].firewall, paths=dict(self._paths))
        for f in parts:
            merged.seen += f.seen
            for k, v in f.counters.items():
                merged.counters[k] = merged.counters.get(k, 0) + v
        return merged

    def _tally(self, facts: Facts) -> None:
        findings = diagnose(facts)
        with self._lock:
            for s in facts.seen:
                if s.sender is None:  # a timeout: no reset
                    continue
                direction = "sent" if self._local.get(s.sender) else "received"
                self.resets[(s.kind.value, direction,
                             self.label(join_hostport(*s.server)))] += 1
            for x in findings:
                if x.service is None or not x.abnormal:
                    continue
                self.failed[(x.cause, self.label(x.service))] += x.count
                s = self.services.setdefault(x.service, {"service": x.service, "count": 0})
                s.update(count=s["count"] + x.count, cause=x.cause, last=facts.end,
                         clients=x.clients or s.get("clients", []), fix=x.fix,
                         server=x.server or s.get("server"))
            if len(self.services) > KEEP_SERVICES:
                keep = sorted(self.services.values(), key=lambda s: -s["count"])[:KEEP_SERVICES]
                self.services = {s["service"]: s for s in keep}
