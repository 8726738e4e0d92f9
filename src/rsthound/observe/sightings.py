"""What a live capture's batches show, classified as `analyze` classifies files: each reset
and each connect whose SYNs went unanswered, in the order they were classified, named
through the observation (the process that connected, the kernel's reason for a reset)."""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque

from rsthound.analyze.diagnosis import Seen
from rsthound.analyze.flows import TIMEOUT_AFTER
from rsthound.analyze.session import Analysis
from rsthound.formats.records import RecordBatch
from rsthound.model import Conn, FailedConnect, Icmp, Reset, ResetKind
from rsthound.observe.observation import TOGETHER, Observation, client_server
from rsthound.report.text import render_failure, render_icmp, render_reset


class Sightings:
    def __init__(self, obs: Observation, summarize: bool = False) -> None:
        self.obs = obs
        self.resets = 0  # resets classified so far
        self._pending: deque[tuple[float, Reset | Conn | Icmp]] = deque()
        self.analysis = Analysis(on_reset=self._reset, on_conn=self._conn, ifname=obs.ifname,
                                 summarize=summarize, on_icmp=self._icmp)

    def _reset(self, r: Reset) -> None:
        self.resets += 1
        self._pending.append((time.monotonic(), r))

    def _icmp(self, i: Icmp) -> None:
        self._pending.append((time.monotonic(), i))

    def _conn(self, c: Conn) -> None:
        if c.failure is ResetKind.TIMEOUT:
            self._pending.append((time.monotonic(), c))

    def feed(self, batch: RecordBatch) -> None:
        if len(batch):
            self.analysis.feed(batch)

    def expire(self, now: float) -> None:
        """Connects unanswered for long enough are timeouts now."""
        self.analysis.table.expire_unanswered(now)

    def close(self) -> None:
        """The end of the window: what is still open is ended (timeouts among it)."""
        self.analysis.table.close()

    def take(self, until: float = math.inf) -> list[Seen]:
        """What was classified before `until` (monotonic seconds) and not taken yet, in that
        order, with the process and the reset reason the trace gives. A caller that tells
        events as they come waits a moment (`until` = now - a little): the trace of the
        same connect may still be on its way."""
        out = []
        while self._pending and self._pending[0][0] <= until:
            out.append(self.seen(self._pending.popleft()[1]))
        return out

    def seen(self, ev: Reset | Conn | Icmp) -> Seen:
        proc, reason = self.obs.name(ev)
        if isinstance(ev, Icmp):
            return Seen(ev.ts, ev.kind, (ev.dst, ev.dport), (ev.src, ev.sport), ev.sender,
                        render_icmp(ev), proc, None, ev)
        if isinstance(ev, Conn):
            return Seen(ev.ts, ResetKind.TIMEOUT, (ev.resp_h, ev.resp_p), (ev.orig_h, ev.orig_p),
                        None, render_failure(ev), proc, None, ev)
        client, server = client_server(ev)
        return Seen(ev.ts, ev.kind, server, client, ev.src, render_reset(ev), proc, reason, ev)


HOLD = 2.0  # seconds a traced failed connect waits for its packets, once they can come
KEEP = 4096  # sightings' connections remembered, so that no connect counts twice


class Pairing:
    """Which traced failed connects go with which sightings, for those who take both as
    they come (watch's ticks, capture's lines): the trace and the capture do not tell a
    connect at the same moment. A connect whose packets come in the same take goes with
    them; one whose packets were taken before is not counted twice; one with no packet yet
    waits up to HOLD seconds for them (`_due`), then goes alone.

    `ours` counts the failed connects of this namespace, each once, as soon as that is
    known: at once for one whose process is known to be here; for one whose process was gone
    before it could be asked (the trace is the whole host's), once this namespace's capture
    saw its packets. Another namespace's never are: its packets are not here."""

    def __init__(self) -> None:
        self._held: list[FailedConnect] = []
        self._taken: OrderedDict[tuple, float] = OrderedDict()  # pair -> its last sighting
        self.ours = 0

    def add(self, failed: list[FailedConnect]) -> None:
        """Failed connects as the trace tells them: counted in `ours` at once where they
        are known to be here, judged at the next `pair`."""
        self.ours += sum(map(known_here, failed))
        self._held += failed

    def pair(self, seen: list[Seen], failed: list[FailedConnect], now: float,
             final: bool = False) -> list[FailedConnect]:
        """The failed connects to judge with `seen` now, those `add`ed before and `failed`
        (`final`: hold none back)."""
        self.add(failed)
        times = sighted(seen)
        for k, ts in times.items():
            self._taken[k] = max(ts)
            self._taken.move_to_end(k)
        while len(self._taken) > KEEP:
            self._taken.popitem(last=False)
        out, held = [], []
        for x in self._held:
            k = x.pair
            if k in times and met(x, times[k]):
                out.append(x)
                self.ours += not known_here(x)
            elif k in self._taken and met(x, [self._taken[k]]):
                # its packets were taken before (and counted with them), also when the
                # trace told it late, past its HOLD
                self.ours += not known_here(x)
            elif final or now - _due(x) >= HOLD:
                if known_here(x):  # alone, only where it is known to be this namespace's
                    out.append(x)
            else:
                held.append(x)
        self._held = held
        return out


def _due(x: FailedConnect) -> float:
    """When a failed connect's packets have all been classified: at its end; but unanswered
    SYNs are a timeout to the capture only TIMEOUT_AFTER seconds after the first, and a
    client that gave up on them sooner (no error) waits for that."""
    if x.errno is None and x.sport:
        return max(x.end, x.start + TIMEOUT_AFTER)
    return x.end


def both_ways(seen: list[Seen]) -> set[tuple[tuple[str, int], tuple[str, int]]]:
    """The (client, server) pairs of these sightings, each also turned round: which side
    of a reset for a connection never seen opening is the client is a guess."""
    return set(sighted(seen))


def sighted(seen: list[Seen]) -> dict[tuple[tuple[str, int], tuple[str, int]], list[float]]:
    """`both_ways`'s pairs, each with when it was seen."""
    out: dict[tuple[tuple[str, int], tuple[str, int]], list[float]] = {}
    for s in seen:
        for k in ((s.client, s.server), (s.server, s.client)):
            out.setdefault(k, []).append(s.ts)
    return out


def met(x: FailedConnect, times: list[float]) -> bool:
    """Whether packets of x's addresses and ports, seen at `times`, can be x's: seen while
    it was open. Another namespace can have a connect with the very same addresses and
    ports (every container has its 127.0.0.1, and the kernel picks a source port from the
    addresses, not the namespace), but not at the same moment."""
    return any(x.start - TOGETHER <= t <= x.end + TOGETHER for t in times)


def known_here(x: FailedConnect) -> bool:
    """Whether a failed connect is known to be the observed namespace's: its process's
    namespace was read (Observation kept only those of this namespace). Where it could not
    be (watch as a user cannot read other users' /proc/PID/ns), only the capture can tell:
    a connect with packets here is ours, one without may be another namespace's."""
    return x.process is not None and x.process.netns is not None


def ours(failed: list[FailedConnect], seen: list[Seen]) -> list[FailedConnect]:
    """The failed connects known to be this namespace's, or that its capture saw."""
    times = sighted(seen)
    return [x for x in failed if known_here(x) or (x.pair in times and met(x, times[x.pair]))]
