"""watch's always-on observation: every reset and failed connect of the namespace, judged
once a second by `diagnose`'s own code and tallied for /metrics and the dashboard; the last
ticks are kept, so that an investigation reads them instead of opening a capture of its own
(and still sees after watch became a user)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from rsthound.analyze.facts import Facts
from rsthound.analyze.rates import increases
from rsthound.errors import RstHoundError
from rsthound.observe.context import Context
from rsthound.observe.observation import TRACE_LAG, Observation, Skip
from rsthound.observe.sightings import Pairing, Sightings
from rsthound.observe.tallies import Tallies
from rsthound.sources.sockdiag import OwnerCache

TICK = 0.5  # seconds of capture judged at once
FIREWALL_EVERY = 30.0  # seconds between reads of the nftables rules


class Monitor:
    def __init__(self, netns: str | None = None, top: int = 20, trace: bool = True,
                 proc_root: str = "/proc", db: str | None = None) -> None:
        self.netns, self.trace, self.proc_root, self.db = netns, trace, proc_root, db
        self.tallies = Tallies(top)
        self.error: str | None = None  # why it does not capture, when it does not
        self.skipped: list[Skip] = []  # parts it runs without (no trace, say)
        self.running = False
        self.traced = False  # its trace runs: `failed_connects` counts every failed connect
        self.failed_connects = 0  # so far, traced, of this namespace (Pairing.ours)
        self.started = threading.Event()  # set once running, or failed
        self.instances: list[str] = []  # its tracefs instance, once open
        self.context: Context | None = None
        self.recent: deque[Facts] = deque(maxlen=30)  # the last ticks' facts
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rsthound-monitor",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wait_started(self, timeout: float = 10.0) -> None:
        self.started.wait(timeout)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def snapshot(self, timeline: bool = False) -> dict[str, Any]:
        with self._lock:
            return self.tallies.snapshot(timeline) | {"running": self.running,
                                                      "error": self.error}

    # -- the thread --------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            obs = Observation(self.netns, command="watch", trace=self.trace,
                              proc_root=self.proc_root,
                              require=("capture", "counters", "listeners"))
        except (RstHoundError, OSError) as e:
            self.error = str(e)
            self.started.set()
            return
        with obs:
            try:
                self._watch(obs)
            except RstHoundError as e:
                self.error = str(e)
            finally:
                self.running = False
                self.started.set()

    def _watch(self, obs: Observation) -> None:
        self.skipped = obs.skipped
        self.instances = list(obs.tracer.instances) if obs.tracer is not None else []
        self.traced = obs.traced
        ctx = self.context = Context(obs.ns_path, self.netns, self.db, proc_root=self.proc_root,
                                     firewall_every=FIREWALL_EVERY)
        ctx.firewall()  # now: rsthound may run as a user later
        sights = Sightings(obs)
        pairing = Pairing()
        owners = OwnerCache(self.proc_root)
        self.running = True
        self.started.set()
        start, before = time.time(), obs.counter_values()
        listening = owners.fill(obs.listening())
        lag = TRACE_LAG if obs.tracer is not None else 0.0  # sightings wait for their names
        for batch in obs.batches(self._stop.is_set):
            sights.feed(batch)
            now = time.time()
            sights.expire(now)
            # counted as soon as they are known to be here (a batch is 0.1 s): alerts do
            # not wait for the tick
            pairing.add(obs.failed_connects())
            self.failed_connects = pairing.ours
            if now - start < TICK:
                continue
            after, now_listening = obs.counter_values(), owners.fill(obs.listening())
            seen = sights.take(time.monotonic() - lag)
            failed = pairing.pair(seen, [], now)
            facts = Facts(start, now, seen, captured=True,
                          listeners_before=listening, listeners=now_listening,
                          counters=increases(before, after), traced=obs.traced,
                          failed=failed)
            ctx.network(facts)
            with self._lock:
                self.recent.append(facts)
                self.tallies.add(facts)
            start, before, listening = now, after, now_listening

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
                       listeners=parts[-1].listeners, traced=parts[-1].traced)
        for f in parts:
            merged.seen += f.seen
            merged.failed += f.failed
            for k, v in f.counters.items():
                merged.counters[k] = merged.counters.get(k, 0) + v
        return merged

