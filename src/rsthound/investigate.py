"""One investigation: watch a network namespace for a few seconds with everything rsthound
has (live capture on every interface, the kernel trace, counters, listeners), then gather
what explains what was seen (firewall rules, routes, watch's history) into `Facts` for
`analyze.diagnosis`.

What cannot be read (no privilege, a missing program or kernel feature) is skipped and
said in `Facts.skipped`, with how to get it; the rest goes on.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from rsthound.analyze.diagnosis import SINCE_METRIC, Facts, Finding, Seen, diagnose
from rsthound.analyze.rates import increases
from rsthound.errors import NeedPrivilege, RstHoundError
from rsthound.metrics import BY_NAME
from rsthound.model import Conn, Reset, ResetKind
from rsthound.sources.procfs import in_netns, netns_path
from rsthound.sources.sockdiag import name_owners

SYSCTLS = {"somaxconn": "/proc/sys/net/core/somaxconn",
           "tcp_abort_on_overflow": "/proc/sys/net/ipv4/tcp_abort_on_overflow",
           "tcp_max_syn_backlog": "/proc/sys/net/ipv4/tcp_max_syn_backlog"}
TRACE_LAG = 0.2  # the trace reader's events of the window's last packets are on their way


def collect(duration: float, netns: str | None = None, db: str | None = None,
            trace: bool = True, should_stop: Callable[[], bool] = lambda: False) -> Facts:
    """Watch for `duration` seconds, then read what explains it."""
    from rsthound.sources.procfs import CounterReader
    from rsthound.sources.sockdiag import ListenerReader

    ns_path = netns_path(netns) if netns else None
    skipped: list[dict[str, str]] = []
    counters = listeners = tracer = live = None
    try:
        counters = CounterReader(netns=netns)
    except RstHoundError as e:
        if netns:
            raise  # a namespace that cannot be entered: nothing of it can be read
        skipped.append(_skip("counters", e, "check that /proc is mounted"))
    with contextlib.suppress(RstHoundError, OSError):
        listeners = ListenerReader(netns)
    if trace:
        tracer = _tracer(skipped)
    sights = None
    try:
        live = _capture(ns_path, skipped)
        before = counters.read().values if counters else {}
        listening_before = listeners.read() if listeners else []
        start = time.time()
        facts = Facts(start, start, skipped=skipped, captured=live is not None)
        end_mono = time.monotonic() + duration
        if live is not None:
            sights = Sightings(live)
            for batch in live.batches(lambda: should_stop() or time.monotonic() >= end_mono):
                sights.feed(batch)
            sights.close()  # connects still unanswered with SYNs sent again: timeouts
        else:
            while not should_stop() and time.monotonic() < end_mono:
                time.sleep(min(0.1, max(0.0, end_mono - time.monotonic())))
        facts.end = time.time()
        if tracer is not None:
            time.sleep(TRACE_LAG)
        after = counters.read().values if counters else {}
        facts.counters = {k: n for k, n in increases(before, after).items()
                          if k in BY_NAME}  # rsthound's table
        facts.listeners_before = listening_before
        facts.listeners = listeners.read() if listeners else []
    finally:
        for thing in (live, tracer, counters, listeners):
            if thing is not None:
                with contextlib.suppress(Exception):
                    thing.close()
    if listeners is None:
        skipped.append({"what": "listeners", "why": "sock_diag netlink and /proc/net/tcp "
                        "could not be read", "how": "run on Linux with /proc mounted"})
    name_owners(facts.listeners + facts.listeners_before)
    facts.seen = sights.take(tracer) if sights is not None else []
    _explain(facts, ns_path, netns, db)
    return facts


def _skip(what: str, e: Exception, how: str) -> dict[str, str]:
    return {"what": what, "why": str(e), "how": how}


def _tracer(skipped: list[dict[str, str]]) -> Any:
    from rsthound.sources.tracefs import Tracer

    try:
        return Tracer()
    except NeedPrivilege as e:
        skipped.append(_skip("process names and reset reasons (kernel trace)", e,
                             "run as root: sudo rsthound diagnose"))
    except (RstHoundError, OSError) as e:
        skipped.append(_skip("process names and reset reasons (kernel trace)", e,
                             "mount tracefs: mount -t tracefs tracefs /sys/kernel/tracing"))
    return None


def open_capture(ns_path: str | None) -> Any:
    """Live capture on every interface of the namespace at `ns_path` (else this one)."""
    from rsthound.sources.live import LiveCapture

    return in_netns(ns_path, LiveCapture) if ns_path else LiveCapture()


def _capture(ns_path: str | None, skipped: list[dict[str, str]]) -> Any:
    try:
        return open_capture(ns_path)
    except NeedPrivilege as e:
        skipped.append(_skip("live capture (which service, which client, why)", e,
                             "run as root: sudo rsthound diagnose"))
    except RstHoundError as e:
        skipped.append(_skip("live capture (which service, which client, why)", e,
                             "rsthound capture says more"))
    return None


class Sightings:
    """What a live capture's batches show, as diagnosis reads it: each reset, and each
    connect whose SYNs went unanswered."""

    def __init__(self, live: Any) -> None:
        from rsthound.analyze.session import Analysis

        self._resets: list[Reset] = []
        self._timeouts: list[Conn] = []
        self._analysis = Analysis(on_reset=self._resets.append, on_conn=self._conn,
                                  ifname=live.ifname, summarize=False)

    def _conn(self, c: Conn) -> None:
        if c.failure is ResetKind.TIMEOUT:
            self._timeouts.append(c)

    def feed(self, batch: Any) -> None:
        if len(batch):
            self._analysis.feed(batch)

    def expire(self, now: float) -> None:
        """Connects unanswered for long enough are timeouts now."""
        self._analysis.table.expire_unanswered(now)

    def close(self) -> None:
        """The end of the window: what is still open is ended (timeouts among it)."""
        self._analysis.table.close()

    def take(self, tracer: Any) -> list[Seen]:
        """What was seen since the last take, in time order, with the process and the
        reset reason the trace gives."""
        seen = ([seen_reset(r, tracer) for r in self._resets]
                + [seen_timeout(c, tracer) for c in self._timeouts])
        self._resets.clear()
        self._timeouts.clear()
        return sorted(seen, key=lambda s: s.ts)


def seen_reset(r: Reset, tracer: Any) -> Seen:
    from rsthound.report.text import render_reset

    if r.kind is ResetKind.REFUSED or r.sent_by == "resp":
        server, client = (r.src, r.sport), (r.dst, r.dport)
    else:
        server, client = (r.dst, r.dport), (r.src, r.sport)
    proc = reason = None
    if tracer is not None:
        proc = tracer.process(client[1], server[1])
        reason = tracer.reason(r.src, r.sport, r.dst, r.dport)
    return Seen(r.ts, r.kind, server, client, r.src, render_reset(r), proc, reason)


def seen_timeout(c: Conn, tracer: Any) -> Seen:
    from rsthound.report.text import render_failure

    proc = tracer.process(c.orig_p, c.resp_p) if tracer is not None else None
    return Seen(c.ts, ResetKind.TIMEOUT, (c.resp_h, c.resp_p), (c.orig_h, c.orig_p), None,
                render_failure(c), proc)


def _explain(facts: Facts, ns_path: str | None, netns: str | None, db: str | None) -> None:
    """Firewall rules, routes, local addresses, sysctls, port names and watch's history for
    what was seen."""
    from rsthound.sources.netstate import is_local, read_firewall, read_path
    from rsthound.sources.portnames import port_name

    addrs = {s.server[0] for s in facts.seen} | {s.sender for s in facts.seen if s.sender}
    missing = addrs - facts.local.keys()  # (an always-on capture's facts know most)
    if missing:
        facts.local = {**facts.local, **is_local(missing, ns_path)}
    if facts.firewall is None and any(s.kind in (ResetKind.REFUSED, ResetKind.TIMEOUT)
                                      for s in facts.seen):
        facts.firewall = read_firewall(ns_path)
        if facts.firewall is None:
            facts.skipped.append({"what": "firewall rules", "why": "nft is missing or was "
                                  "refused (it needs CAP_NET_ADMIN)",
                                  "how": "install nftables and run as root"})
    for addr in {s.server[0] for s in facts.seen if s.kind is ResetKind.TIMEOUT}:
        facts.paths[addr] = read_path(addr, ns_path)

    def sysctls() -> dict[str, int]:
        out = {}
        for name, path in SYSCTLS.items():
            with contextlib.suppress(OSError, ValueError), open(path) as f:
                out[name] = int(f.read().split()[0])
        return out

    facts.sysctl = in_netns(ns_path, sysctls) if ns_path else sysctls()
    refused = {s.server[1] for s in facts.seen if s.kind is ResetKind.REFUSED}
    for port in refused:
        facts.port_names[port] = port_name(port).text()
    _history(facts, refused, netns, db)


def _history(facts: Facts, ports: set[int], netns: str | None, db: str | None) -> None:
    from rsthound.sinks.history import History, default_path

    path = db or default_path(netns)
    if not os.path.exists(path):
        if not facts.seen:
            return  # nothing to explain: the missing file does not matter now
        facts.skipped.append({"what": "history (since when, who listened before)",
                              "why": f"no history file at {path}",
                              "how": "run 'rsthound watch' as a service (contrib/"
                                     "rsthound-watch.service) so that it keeps one"})
        return
    try:
        with History(path) as h:
            for port in ports:
                facts.served[port] = h.served(port)
            until = round(facts.end * 1000)
            for metric in set(SINCE_METRIC.values()):
                facts.since[metric] = h.active_since(metric, until)
    except (RstHoundError, OSError) as e:
        facts.skipped.append(_skip("history (since when, who listened before)", e,
                                   "check the file, or pass another with --db"))


class Investigator:
    """`watch`'s investigations: one at a time, on a thread, when an alert fires; what they
    found is picked up by the sampling loop (`finished`), which never waits for them."""

    def __init__(self, netns: str | None, db: str | None, duration: float = 3.0,
                 should_stop: Callable[[], bool] = lambda: False, monitor: Any = None,
                 ) -> None:
        self.netns, self.db, self.duration = netns, db, duration
        self.monitor = monitor  # watch --listen's always-on capture: watched through it
        self.should_stop = should_stop
        self._thread: threading.Thread | None = None
        self._done: list[tuple[Any, Facts | None, list[Finding], str | None]] = []
        self._lock = threading.Lock()

    def start(self, alert: Any) -> bool:
        """Investigate for this alert, unless an investigation is running already."""
        if self._thread is not None and self._thread.is_alive():
            return False
        self._thread = threading.Thread(target=self._run, args=(alert,), daemon=True,
                                        name="rsthound-investigate")
        self._thread.start()
        return True

    def _run(self, alert: Any) -> None:
        try:
            if self.monitor is not None and self.monitor.running:
                facts = self.monitor.window(self.duration, self.should_stop)
                _explain(facts, netns_path(self.netns) if self.netns else None, self.netns,
                         self.db)
            else:
                facts = collect(self.duration, self.netns, self.db,
                                should_stop=self.should_stop)
            result = (alert, facts, diagnose(facts), None)
        except (RstHoundError, OSError) as e:
            result = (alert, None, [], str(e))
        with self._lock:
            self._done.append(result)

    def finished(self, wait: float = 0.0) -> list[tuple[Any, Facts | None, list[Finding],
                                                        str | None]]:
        """(alert, facts, findings, error) of the investigations done since the last call;
        `wait` seconds for one still running (on exit)."""
        if wait and self._thread is not None:
            self._thread.join(wait)
        with self._lock:
            done, self._done = self._done, []
        return done
