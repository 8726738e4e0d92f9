"""Alert rules over counter samples: static levels, a baseline of the host's own normal,
hysteresis, and which case the counters show.

Each sample after the first adds one interval of increases. A rule looks at its metric's rate
over the last `window` intervals (as Prometheus's `rate(x[window])` would). It fires when
that rate has stayed at or above a level for `for_samples` samples in a row, and it clears
when the rate has stayed below `clear_ratio` x its warn level for `clear_samples` samples.
The first sample only sets the starting values, so rsthound's own start-up never alerts.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from rsthound.model import Tick

LEVELS = ("warn", "error", "critical")


@dataclass(frozen=True)
class Rule:
    """Static levels on one counter's rate (per second)."""

    name: str
    metric: str
    title: str  # what the metric counts, for people: "failed TCP connections"
    warn: float | None = None
    error: float | None = None
    critical: float | None = None
    any_increase: bool = False  # any increase at all is at least warn
    for_samples: int = 2
    window: int = 3
    clear_samples: int = 3
    clear_ratio: float = 0.5
    untraced_only: bool = False  # dropped where the kernel trace counts failed connects

    def thresholds(self) -> list[tuple[str, float]]:
        out = [(lv, t) for lv, t in zip(LEVELS, (self.warn, self.error, self.critical),
                                        strict=True) if t is not None]
        if self.any_increase and (not out or out[0][0] != "warn"):
            out.insert(0, ("warn", 0.0))
        return out

    def level_for(self, rate: float) -> str | None:
        got = None
        for level, t in self.thresholds():
            if rate >= t and (rate > 0 or t > 0):
                got = level
        return got


@dataclass(frozen=True)
class Baseline:
    """"Unusual here": far above the trailing average of this host's own rate."""

    name: str
    metric: str
    title: str
    factor: float = 10.0  # at least this many times the baseline ...
    min_rate: float = 0.2  # ... and at least this rate
    half_life: float = 1800.0  # seconds: how fast the baseline forgets
    warmup: float = 600.0  # seconds of history before the rule may fire
    for_samples: int = 3
    window: int = 3
    clear_samples: int = 3


DEFAULT_RULES = (
    Rule("failed-connections", "Tcp.AttemptFails", "failed TCP connections",
         warn=1.0, error=5.0, critical=20.0),
    Rule("resets-sent", "Tcp.OutRsts", "TCP resets sent", warn=5.0, error=25.0,
         critical=100.0),
    Rule("listen-overflows", "TcpExt.ListenOverflows", "listen queue overflows",
         any_increase=True, error=10.0, critical=100.0, for_samples=1),
    # connects an ICMP error ended, which Tcp.AttemptFails misses (where the trace runs,
    # failed-connections counts them: these are then dropped)
    Rule("icmp-unreachables", "Icmp.InDestUnreachs", "ICMP destination unreachables",
         warn=1.0, error=5.0, critical=20.0, untraced_only=True),
    Rule("icmp6-unreachables", "Icmp6.InDestUnreachs", "ICMPv6 destination unreachables",
         warn=1.0, error=5.0, critical=20.0, untraced_only=True),
)
TRACED = "rsthound.FailedConnects"  # the namespace's failed connects the trace saw (watch)
DEFAULT_BASELINES = (
    Baseline("failed-connections-unusual", "Tcp.AttemptFails", "failed TCP connections"),
)


@dataclass
class Event:
    """An alert raised (or raised to a higher level), or cleared."""

    event: str  # "alert" or "clear"
    rule: str
    title: str
    level: str  # for a clear: the level it had
    metric: str
    rate: float
    threshold: float
    started: float  # wall time the condition began
    ts: float  # wall time of this event
    cases: list[str] = field(default_factory=list)
    explanation: str = ""


@dataclass
class _State:
    level: str | None = None
    streak: int = 0  # samples in a row meeting the next level up
    streak_start: float = 0.0
    quiet: int = 0  # samples in a row below the clear level
    started: float = 0.0
    mean: float = 0.0  # baselines: trailing average rate
    seen: float = 0.0  # baselines: seconds of history


class Alerter:
    """Feed it counter samples in time order; it returns the events each one causes."""

    def __init__(self, rules: tuple[Rule, ...] = DEFAULT_RULES,
                 baselines: tuple[Baseline, ...] = DEFAULT_BASELINES) -> None:
        self.rules = rules
        self.baselines = baselines
        depth = max([r.window for r in rules] + [b.window for b in baselines] + [1])
        self._steps: deque[tuple[float, float, dict[str, int]]] = deque(maxlen=depth)
        self._state = {x.name: _State() for x in (*rules, *baselines)}

    def rate(self, metric: str, window: int) -> float | None:
        """Per-second rate over the last `window` intervals; None before the first one.

        Until `window` intervals have passed, the time is still counted as a whole window, so
        the first seconds after start-up cannot make two failures look like a storm.
        """
        steps = list(self._steps)[-window:]
        if not steps:
            return None
        seconds = sum(s[0] for s in steps) * window / len(steps)
        if seconds <= 0:
            return None
        return sum(s[2].get(metric, 0) for s in steps) / seconds

    def _began(self, metric: str, window: int) -> float:
        """Wall time at the start of the first interval in the window where `metric` grew."""
        steps = list(self._steps)[-window:]
        for dt, wall, inc in steps:
            if inc.get(metric, 0):
                return wall - dt
        return steps[-1][1] - steps[-1][0]

    def observe(self, tick: Tick) -> list[Event]:
        wall = tick.wall
        if tick.increases is not None:
            self._steps.append((tick.seconds, wall, tick.increases))
        if not self._steps:
            return []
        events = [e for r in self.rules if (e := self._static(r, wall))]
        events += [e for b in self.baselines if (e := self._baseline(b, wall))]
        for e in events:
            e.cases, e.explanation = self.explain(e.metric)
        return events

    def _static(self, rule: Rule, wall: float) -> Event | None:
        r = self.rate(rule.metric, rule.window)
        if r is None:
            return None
        st = self._state[rule.name]
        want = rule.level_for(r)
        rank = LEVELS.index
        if want is not None and (st.level is None or rank(want) > rank(st.level)):
            if st.streak == 0:
                st.streak_start = self._began(rule.metric, rule.window)
            st.streak += 1
        else:
            st.streak = 0
        threshold = dict(rule.thresholds()).get(want or "", 0.0)
        if st.streak >= rule.for_samples and want is not None:
            raised = st.level is None
            st.level, st.streak, st.quiet = want, 0, 0
            if raised:
                st.started = st.streak_start
            return Event("alert", rule.name, rule.title, want, rule.metric, r, threshold,
                         st.started, wall)
        if st.level is not None:
            warn = rule.thresholds()[0][1]
            if r < warn * rule.clear_ratio or (warn == 0 and r == 0):
                st.quiet += 1
            else:
                st.quiet = 0
            if st.quiet >= rule.clear_samples:
                level, st.level, st.quiet = st.level, None, 0
                return Event("clear", rule.name, rule.title, level, rule.metric, r, warn,
                             st.started, wall)
        return None

    def _baseline(self, b: Baseline, wall: float) -> Event | None:
        r = self.rate(b.metric, b.window)
        dt, _w, inc = self._steps[-1]
        if r is None or dt <= 0:
            return None
        st = self._state[b.name]
        limit = max(b.min_rate, b.factor * st.mean)
        event = None
        if st.level is None:
            if st.seen >= b.warmup and r >= limit:
                if st.streak == 0:
                    st.streak_start = self._began(b.metric, b.window)
                st.streak += 1
                if st.streak >= b.for_samples:
                    st.level, st.streak, st.quiet, st.started = "warn", 0, 0, st.streak_start
                    event = Event("alert", b.name, b.title, "warn", b.metric, r, limit,
                                  st.started, wall)
            else:
                st.streak = 0
        else:
            st.quiet = st.quiet + 1 if r < limit / 2 else 0
            if st.quiet >= b.clear_samples:
                st.level, st.quiet = None, 0
                event = Event("clear", b.name, b.title, "warn", b.metric, r, limit,
                              st.started, wall)
        if st.level is None and event is None:  # an anomaly does not become the normal
            step_rate = inc.get(b.metric, 0) / dt
            alpha = 1 - math.exp(-dt * math.log(2) / b.half_life)
            st.mean = step_rate if st.seen == 0 else st.mean + alpha * (step_rate - st.mean)
            st.seen += dt
        return event

    def explain(self, metric: str) -> tuple[list[str], str]:
        """Which case the counters show, over the last few intervals: short names, and
        plain words with the figures behind them."""
        def r(name: str) -> float:
            return self.rate(name, 3) or 0.0

        fails = r(TRACED) if any(TRACED in s[2] for s in self._steps) else r("Tcp.AttemptFails")
        rsts, synr = r("Tcp.OutRsts"), r("TcpExt.TCPSynRetrans")
        icmp = r("Icmp.InDestUnreachs") + r("Icmp6.InDestUnreachs")
        ovf, estab = r("TcpExt.ListenOverflows"), r("Tcp.EstabResets")
        cases: list[str] = []
        words: list[str] = []
        if ovf > 0:
            cases.append("listen-overflow")
            words.append(f"a local listener's accept queue is full (TcpExt.ListenOverflows "
                         f"{_r(ovf)}): incoming connects are dropped without a reset; raise "
                         "its backlog or make it accept faster")
        if fails > 0 and metric != "TcpExt.ListenOverflows":
            if rsts >= fails / 2:
                cases.append("outgoing-refused")
                words.append("outgoing connects refused on this host: nothing listens on the "
                             "port they connect to (this host sent the resets too: "
                             f"Tcp.OutRsts {_r(rsts)})")
            elif icmp > 0:
                pass  # ICMP errors came back: said below
            elif synr > 0:
                cases.append("outgoing-timeout")
                words.append("outgoing connects time out: SYNs go unanswered "
                             f"(TcpExt.TCPSynRetrans {_r(synr)}, no resets): a firewall that "
                             "drops, a host that is down, or a full listen queue over there")
            elif ovf == 0:
                cases.append("outgoing-refused")
                words.append("outgoing connects refused by the other side or a firewall on "
                             "the way (resets came in; this host's TCP sent none)")
        if icmp > 0 and metric not in ("Tcp.OutRsts", "TcpExt.ListenOverflows"):
            cases.append("outgoing-icmp")
            words.append(f"connects answered by ICMP destination unreachable ({_r(icmp)}): a "
                         "REJECT rule (port unreachable, prohibited) or a host or net out of "
                         "reach; no reset comes, and Tcp.AttemptFails may not count them")
        if estab > 0 and rsts < estab / 2 and metric == "Tcp.OutRsts":
            cases.append("incoming-resets")
            words.append(f"open connections reset by their peers (Tcp.EstabResets {_r(estab)})")
        if metric == "Tcp.OutRsts" and not cases:
            cases.append("resets-sent")
            words.append(f"this host's TCP sends resets (Tcp.OutRsts {_r(rsts)}): to closed "
                         "ports, or aborting connections")
        text = "; ".join(words)
        return cases, (text[0].upper() + text[1:] + ".") if text else ""


def _r(rate: float) -> str:
    return f"{rate:.1f}/s" if rate >= 0.05 else f"{rate * 60:.1f}/min"
