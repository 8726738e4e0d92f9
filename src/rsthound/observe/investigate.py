"""One investigation: watch a network namespace for a few seconds through an Observation
(capture on every interface, kernel trace, counters, listeners), then gather what explains
what was seen (observe/context.py) into `Facts` for `analyze.diagnosis`.

What cannot be read (no privilege, a missing program or kernel feature) is skipped and
said in `Facts.skipped`, with how to get it; the rest goes on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from rsthound.analyze.diagnosis import Facts, diagnose
from rsthound.analyze.rates import increases
from rsthound.errors import RstHoundError
from rsthound.metrics import BY_NAME
from rsthound.model import Finding
from rsthound.observe.context import Context
from rsthound.observe.observation import TRACE_LAG, Observation
from rsthound.observe.sightings import Sightings, ours
from rsthound.sources.sockdiag import name_owners


def collect(duration: float, netns: str | None = None, db: str | None = None,
            trace: bool = True, should_stop: Callable[[], bool] = lambda: False,
            proc_root: str = "/proc") -> Facts:
    """Watch for `duration` seconds, then read what explains it."""
    with Observation(netns, command="diagnose", trace=trace, proc_root=proc_root) as obs:
        before = obs.counter_values()
        listening_before = obs.listening()
        start = time.time()
        facts = Facts(start, start, captured=obs.live is not None)
        end_mono = time.monotonic() + duration
        sights = Sightings(obs)
        if obs.live is not None:
            for batch in obs.batches(lambda: should_stop() or time.monotonic() >= end_mono):
                sights.feed(batch)
            sights.close()  # connects still unanswered with SYNs sent again: timeouts
            facts.pending = sights.analysis.table.pending
        else:
            while not should_stop() and time.monotonic() < end_mono:
                time.sleep(min(0.1, max(0.0, end_mono - time.monotonic())))
        facts.end = time.time()
        if obs.tracer is not None:
            time.sleep(TRACE_LAG)
        facts.counters = {k: n for k, n in increases(before, obs.counter_values()).items()
                          if k in BY_NAME}  # rsthound's table
        facts.listeners_before = listening_before
        facts.listeners = obs.listening()
        facts.seen = sorted(sights.take(), key=lambda s: s.ts)
        facts.traced = obs.traced
        facts.failed = ours([x for x in obs.failed_connects() if x.end >= start], facts.seen)
    facts.skipped = [s.obj() for s in obs.skipped]
    name_owners(facts.listeners + facts.listeners_before, proc_root)
    Context(obs.ns_path, netns, db, proc_root=proc_root).explain(facts)
    return facts


class Investigator:
    """`watch`'s investigations: one at a time, on a thread, when an alert fires; what they
    found is picked up by the sampling loop (`finished`), which never waits for them.

    With an always-on capture (`monitor`) an investigation reads its ticks: nothing is
    opened, which still works after watch became a user."""

    def __init__(self, netns: str | None, db: str | None, duration: float = 3.0,
                 should_stop: Callable[[], bool] = lambda: False, monitor: Any = None,
                 proc_root: str = "/proc") -> None:
        self.netns, self.db, self.duration, self.proc_root = netns, db, duration, proc_root
        self.monitor = monitor
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
            monitor = self.monitor
            if monitor is not None and monitor.running and monitor.context is not None:
                facts = monitor.window(self.duration, self.should_stop)
                facts.skipped += [s.obj() for s in monitor.skipped]
                monitor.context.explain(facts)
            else:
                facts = collect(self.duration, self.netns, self.db,
                                should_stop=self.should_stop, proc_root=self.proc_root)
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
