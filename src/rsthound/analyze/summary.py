"""Roll finished connections and resets up into what a person reads first.

Memory stays bounded: at most `max_services` services are kept apart (the rest are summed
under "(other)"), and at most `max_clients` distinct clients are remembered per service.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from rsthound.analyze.evidence import n_of
from rsthound.analyze.flows import FAILURE, REJ, STATES, Quick
from rsthound.formats.columns import HASH_MIX, by_hash
from rsthound.formats.inet import format_addr
from rsthound.model import Conn, Damage, Icmp, Reset, ResetKind
from rsthound.textforms import endpoint, rate, seconds, steady

FAILURES = (ResetKind.REFUSED, ResetKind.TIMEOUT, ResetKind.REJECTED, ResetKind.UNREACHABLE)
ICMP = (ResetKind.REJECTED, ResetKind.UNREACHABLE)
OTHER = "(other)"


@dataclass
class Service:
    """One server address and port, and what happened to the connections to it."""

    name: str
    conns: int = 0
    answered: int = 0  # connections the server side took part in
    failed: Counter[str] = field(default_factory=Counter)  # refused / timeout
    resets: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, sent_by)
    clients: set[str] = field(default_factory=set)
    clients_capped: bool = False
    syn_retrans: int = 0
    icmp_from: str | None = None  # who sent the ICMP errors that ended connects
    first: float = math.inf  # first and last failure
    last: float = -math.inf

    @property
    def failures(self) -> int:
        return sum(self.failed.values())

    @property
    def reset_count(self) -> int:
        return sum(self.resets.values())

    def rate(self) -> tuple[float, float]:
        return pace(self.failures, self.first, self.last)


def pace(n: int, first: float, last: float) -> tuple[float, float]:
    """(events per second, the span they cover) for n events from `first` to `last`.

    n events at a steady pace fill n intervals, so 16 refusals 0.5 s apart (7.5 s from the
    first to the last) are 2.0/s over 8 s.
    """
    if n < 2 or last <= first:
        return (0.0, 0.0)
    span = (last - first) * n / (n - 1)
    return (n / span, span)


@dataclass
class Summary:
    """Everything `analyze` reports, as plain data (rendered by report/)."""

    files: list[str] = field(default_factory=list)
    packets: int = 0
    tcp_packets: int = 0
    icmp_packets: int = 0  # ICMP errors about TCP
    skipped: Counter[str] = field(default_factory=Counter)
    links: Counter[str] = field(default_factory=Counter)
    flags: Counter[str] = field(default_factory=Counter)
    damages: list[Damage] = field(default_factory=list)
    first_ts: float = math.inf
    last_ts: float = -math.inf
    conns: int = 0
    states: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    resets: Counter[str] = field(default_factory=Counter)
    icmp: Counter[str] = field(default_factory=Counter)  # ICMP errors about TCP, by kind
    services: dict[str, Service] = field(default_factory=dict)
    fail_seconds: Counter[int] = field(default_factory=Counter)  # whole second -> failures
    fail_first: float = math.inf
    fail_last: float = -math.inf
    evicted: int = 0

    @property
    def duration(self) -> float:
        return max(0.0, self.last_ts - self.first_ts) if self.packets else 0.0

    def failed_total(self) -> int:
        return sum(self.failures[k] for k in FAILURES)

    def failure_rate(self) -> tuple[float, float]:
        return pace(self.failed_total(), self.fail_first, self.fail_last)

    def ranked(self) -> list[Service]:
        return sorted(
            self.services.values(),
            key=lambda s: (-s.failures, -s.reset_count, -s.conns, s.name),
        )


class Summarizer:
    """Receives connections and resets (the FlowTable's callbacks) and fills a Summary."""

    def __init__(self, summary: Summary, max_services: int = 10_000, max_clients: int = 10_000):
        self.s = summary
        self.max_services = max_services
        self.max_clients = max_clients
        self._addrs: dict[tuple[int, int], str] = {}  # address halves -> text
        # for `quick`: numbers for services and clients, and the pairs of them already told
        self._client_ids: dict[tuple[int, int], int] = {}
        self._clients: list[str] = []
        self._service_ids: dict[str, int] = {}
        self._by_id: list[Service] = []
        self._pairs: set[int] = set()

    def _addr(self, hi: int, lo: int) -> str:
        """An address from the two 64-bit halves the decoder keeps."""
        text = self._addrs.get((hi, lo))
        if text is None:
            if len(self._addrs) > 65536:  # a scan: do not let the cache grow with it
                self._addrs.clear()
            text = self._addrs[(hi, lo)] = format_addr(hi.to_bytes(8, "big")
                                                       + lo.to_bytes(8, "big"))
        return text

    def _service(self, host: str, port: int) -> Service:
        name = endpoint(host, port)
        svc = self.s.services.get(name)
        if svc is None:
            if len(self.s.services) >= self.max_services:
                name = OTHER
                svc = self.s.services.get(name)
            if svc is None:
                svc = self.s.services[name] = Service(name)
        return svc

    def conn(self, c: Conn) -> None:
        s = self.s
        s.conns += 1
        s.states[c.conn_state] += 1
        svc = self._service(c.resp_h, c.resp_p)
        svc.conns += 1
        if c.resp_pkts and c.conn_state != "REJ" and c.failure is not ResetKind.REFUSED:
            svc.answered += 1
        if len(svc.clients) < self.max_clients:
            svc.clients.add(c.orig_h)
        else:
            svc.clients_capped = svc.clients_capped or c.orig_h not in svc.clients
        if c.failure is not None:
            s.failures[c.failure.value] += 1
        if c.failure in FAILURES:
            svc.failed[c.failure.value] += 1
            if c.icmp and svc.icmp_from is None:
                svc.icmp_from = c.icmp.rsplit(" from ", 1)[-1]
            svc.syn_retrans += c.syn_retrans
            # a connect fails when its last SYN goes unanswered, or when it is refused
            t = c.end if c.failure is ResetKind.REFUSED or c.failure in ICMP else c.ts
            svc.first = min(svc.first, t)
            svc.last = max(svc.last, t)
            s.fail_seconds[int(t)] += 1
            s.fail_first = min(s.fail_first, t)
            s.fail_last = max(s.fail_last, t)

    def quick(self, q: Quick) -> None:
        """Plain connections counted together: what `conn` (and `reset`, for each of their
        resets) would have made of each, one at a time."""
        s = self.s
        s.conns += len(q)
        for code, n in enumerate(np.bincount(q.state, minlength=len(STATES)).tolist()):
            if n:  # a Counter shows a key once it is touched, even by zero
                s.states[STATES[code]] += n
        for code, n in enumerate(np.bincount(q.failure, minlength=len(FAILURE)).tolist()):
            if n and code:
                s.failures[FAILURE[code].value] += n  # type: ignore[union-attr]
        for code, n in enumerate(np.bincount(q.reset_kind, minlength=len(FAILURE)).tolist()):
            if n:
                s.resets[FAILURE[code].value] += n  # type: ignore[union-attr]
        # by service: its conns, answered, refused, resets
        refusal = FAILURE.index(ResetKind.REFUSED)
        rej = q.failure == refusal
        rep, which = _groups(q.resp_hi, q.resp_lo, q.resp_port.astype(np.uint64))
        conns = np.bincount(which, minlength=len(rep))
        answered = np.bincount(which, weights=(q.state != REJ) & ~rej,
                               minlength=len(rep)).astype(np.int64)
        refused = np.bincount(which, weights=rej, minlength=len(rep)).astype(np.int64)
        services = [self._service(self._addr(hi, lo), port) for hi, lo, port in zip(
            q.resp_hi[rep].tolist(), q.resp_lo[rep].tolist(), q.resp_port[rep].tolist(),
            strict=True)]
        for svc, n, a, r in zip(services, conns.tolist(), answered.tolist(), refused.tolist(),
                                strict=True):
            svc.conns += n
            svc.answered += a
            if r:
                svc.failed["refused"] += r
        if len(q.reset_of):
            code = (which[q.reset_of] * len(FAILURE) + q.reset_kind) * 2 + q.reset_by_orig
            kinds, n = np.unique(code, return_counts=True)
            for c, k in zip(kinds.tolist(), n.tolist(), strict=True):
                svc = services[c // (2 * len(FAILURE))]
                kind = FAILURE[(c // 2) % len(FAILURE)]
                svc.resets[(kind.value, "orig" if c % 2 else "resp")] += k  # type: ignore[union-attr]
        nrej = int(rej.sum())
        if nrej:  # a refusal's time is its RST's
            t = q.end[rej]
            w = which[rej]
            first = np.full(len(rep), np.inf)
            last = np.full(len(rep), -np.inf)
            np.minimum.at(first, w, t)
            np.maximum.at(last, w, t)
            for i in np.unique(w).tolist():
                svc = services[i]
                svc.first = min(svc.first, float(first[i]))
                svc.last = max(svc.last, float(last[i]))
            secs, n = np.unique(t.astype(np.int64), return_counts=True)
            s.fail_seconds.update(dict(zip(secs.tolist(), n.tolist(), strict=True)))
            s.fail_first = min(s.fail_first, float(t.min()))
            s.fail_last = max(s.fail_last, float(t.max()))
        # each service's clients: only the (service, client) pairs not seen before
        crep, cwhich = _groups(q.orig_hi, q.orig_lo)
        cids = np.array([self._client_id(hi, lo) for hi, lo in zip(
            q.orig_hi[crep].tolist(), q.orig_lo[crep].tolist(), strict=True)], dtype=np.int64)
        sids = np.array([self._service_id(svc) for svc in services], dtype=np.int64)
        told = self._pairs
        if len(told) > 1 << 21:  # bounded: forgetting costs time only
            told.clear()
        new = [c for c in np.unique((sids[which] << 32) | cids[cwhich]).tolist()
               if c not in told]
        told.update(new)
        for code in new:
            svc = self._by_id[code >> 32]
            client = self._clients[code & 0xFFFFFFFF]
            if len(svc.clients) < self.max_clients:
                svc.clients.add(client)
            else:
                svc.clients_capped = svc.clients_capped or client not in svc.clients

    def _client_id(self, hi: int, lo: int) -> int:
        cid = self._client_ids.get((hi, lo))
        if cid is None:
            cid = self._client_ids[(hi, lo)] = len(self._clients)
            self._clients.append(self._addr(hi, lo))
        return cid

    def _service_id(self, svc: Service) -> int:
        sid = self._service_ids.get(svc.name)
        if sid is None:
            sid = self._service_ids[svc.name] = len(self._by_id)
            self._by_id.append(svc)
        return sid

    def icmp(self, i: Icmp) -> None:
        """An ICMP error: counted by kind; the connection it ended counts as a failure."""
        self.s.icmp[i.kind.value] += 1

    def reset(self, r: Reset) -> None:
        self.s.resets[r.kind.value] += 1
        server = (r.dst, r.dport) if r.sent_by == "orig" else (r.src, r.sport)
        self._service(*server).resets[(r.kind.value, r.sent_by)] += 1


def _groups(*cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows with equal values in all of `cols` (uint64): (a row of each group, each row's
    group). Grouped by a hash, checked against the values (np.unique's own way if two
    differ)."""
    with np.errstate(over="ignore"):
        h = np.zeros(len(cols[0]), dtype=np.uint64)
        for c, k in zip(cols, HASH_MIX, strict=False):
            h ^= c * k
        h ^= h >> np.uint64(29)
    which, rep = by_hash(h)
    if all((c == c[rep][which]).all() for c in cols):
        return rep, which
    _, rep, which = np.unique(np.stack(cols, axis=1), axis=0, return_index=True,
                              return_inverse=True)
    return rep, which.ravel()


def failure_series(s: Summary, buckets: int = 60) -> tuple[float, list[float]]:
    """Failed connections per second over the capture: (bucket width in s, rate per bucket)."""
    if not s.packets:
        return (1.0, [])
    start = math.floor(s.first_ts)
    span = max(1, math.ceil(s.last_ts) - start)
    width = max(1, math.ceil(span / buckets))
    out = [0.0] * math.ceil(span / width)
    if not out:
        out = [0.0]
    for sec, n in s.fail_seconds.items():
        i = min(len(out) - 1, max(0, (sec - start) // width))
        out[i] += n / width
    return (float(width), out)


def findings(s: Summary, limit: int = 10) -> list[str]:
    """Plain-words statements about the services that failed or saw resets, worst first."""
    out: list[str] = []
    for svc in s.ranked():
        if len(out) >= limit:
            break
        nclients = len(svc.clients)
        clients = f"{nclients}{'+' if svc.clients_capped else ''} client" + (
            "" if nclients == 1 else "s")
        refused = svc.failed["refused"]
        if refused:
            per_s, span = svc.rate()
            n, gap = refused, svc.last - svc.first
            pace = (f" ({rate(per_s)} over {span:.0f} s)" if steady(n, gap) else
                    f" (in {gap * 1000:.1f} ms)" if n > 1 and gap < 1 else
                    f" (over {seconds(gap)})" if n > 1 else "")
            tail = (
                "nothing on that port ever answered" if not svc.answered
                else f"it accepted {svc.answered} other connection"
                + ("" if svc.answered == 1 else "s")
            )
            out.append(f"{svc.name} refused {n_of(refused, 'connection')}{pace} from {clients}; "
                       f"{tail}.")
        for kind, what in (("icmp-rejected", "rejected by an ICMP error (a firewall's REJECT: "
                            "port unreachable or prohibited)"),
                           ("icmp-unreachable", "ended by an ICMP host or net unreachable")):
            if svc.failed[kind]:
                by = f" from {svc.icmp_from}" if svc.icmp_from else ""
                out.append(f"{svc.name}: {n_of(svc.failed[kind], 'connection attempt')} "
                           f"{what}{by}, from {clients}.")
        timeouts = svc.failed["timeout"]
        if timeouts:
            out.append(
                f"{svc.name}: {n_of(timeouts, 'connection attempt')} timed out from {clients} "
                f"({n_of(svc.syn_retrans, 'SYN retransmission')}, no answer at all): a firewall "
                "that drops, a host that is down, or a full listen queue."
            )
        for (kind, by), n in sorted(svc.resets.items(), key=lambda kv: (-kv[1], kv[0])):
            if kind == "refused":
                continue
            who = "the client" if by == "orig" else "the server"
            text = {
                "abort": f"{n_of(n, 'connection')} aborted by {who} (RST on an open connection)",
                "after-close": f"{n_of(n, 'reset')} from {who} after a FIN: one side closed "
                "with data unread, or data arrived after close",
                "stray": f"{n_of(n, 'reset')} from {who} for connections never seen opening "
                "(the capture started late, or backscatter)",
                "injected?": f"{n_of(n, 'reset')} claiming to come from {who} whose TTL or IP ID "
                "does not fit its other packets: possibly injected by a middlebox",
            }[kind]
            out.append(f"{svc.name}: {text}.")
    return out[:limit]
