"""One analysis: record batches in, a Summary (and streams of connections and resets) out."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from rsthound.analyze.flows import FlowTable, Plan, plan_batch
from rsthound.analyze.summary import Summarizer, Summary
from rsthound.formats.columns import DecodeStats, TcpColumns, decode_tcp
from rsthound.formats.icmp import IcmpError
from rsthound.formats.inet import addr_bytes
from rsthound.formats.linktypes import LINUX_SLL2
from rsthound.formats.records import RecordBatch
from rsthound.model import Conn, Icmp, Reset


@dataclass(frozen=True)
class Selection:
    """Which packets to look at: `--port`, `--host`, `--since`, `--until`."""

    ports: tuple[int, ...] = ()
    hosts: tuple[str, ...] = ()
    since: float | None = None
    until: float | None = None

    def mask(self, cols: TcpColumns) -> np.ndarray | None:
        """Rows to keep, or None for all."""
        masks = []
        if self.ports:
            want = np.array(self.ports)
            masks.append(np.isin(cols.sport, want) | np.isin(cols.dport, want))
        if self.hosts:
            m = np.zeros(len(cols), dtype=bool)
            for h in self.hosts:
                raw = addr_bytes(h)
                hi = np.uint64(int.from_bytes(raw[:8], "big"))
                lo = np.uint64(int.from_bytes(raw[8:], "big"))
                m |= (cols.s_hi == hi) & (cols.s_lo == lo)
                m |= (cols.d_hi == hi) & (cols.d_lo == lo)
            masks.append(m)
        if self.since is not None:
            masks.append(cols.ts >= self.since)
        if self.until is not None:
            masks.append(cols.ts < self.until)
        return np.logical_and.reduce(masks) if masks else None

    def takes(self, ts: float, e: IcmpError) -> bool:
        """Whether an ICMP error about the segment e quotes is selected."""
        return ((not self.ports or e.sport in self.ports or e.dport in self.ports)
                and (not self.hosts or e.src in self.hosts or e.dst in self.hosts)
                and (self.since is None or ts >= self.since)
                and (self.until is None or ts < self.until))


def interface_label(names: list[str | None], iface: int, ifindex: int) -> str | None:
    """How a packet's interface is shown: the file's name for it (or `ifN` when the file
    has several and names none), and the Linux ifindex from SLL2 when there is one ("any"
    names no interface, so then the index alone)."""
    name = names[iface] if 0 <= iface < len(names) else None
    if name is None and len(names) > 1 and iface >= 0:
        name = f"if{iface}"
    if ifindex >= 0:
        return f"{name}:ifindex {ifindex}" if name and name != "any" else f"ifindex {ifindex}"
    return name


@dataclass
class Prepared:
    """A batch made ready for the flow table (decoded, selected, planned): plain data."""

    plan: Plan
    names: list[str | None]  # interface names of the file so far
    first_ts: float
    last_ts: float
    end_offset: int  # file offset of the batch's last record (for progress)
    # ICMP errors about TCP: (time, message, interface index in the file, Linux ifindex)
    icmp: list[tuple[float, IcmpError, int, int]] = field(default_factory=list)


def prepare(batch: RecordBatch, selection: Selection, stats: DecodeStats,
            counts: bool) -> Prepared:
    """Everything about a batch that needs no connection state (numpy only)."""
    found: list[tuple[int, IcmpError]] = []
    cols = decode_tcp(batch, stats, found, lean=not counts)
    keep = selection.mask(cols)
    if keep is not None:
        cols = cols.take(np.flatnonzero(keep))
    n = len(batch)
    icmp = [(float(batch.ts[r]), e, int(batch.iface[r]) if len(batch.interfaces) > 1 else -1,
             _sll2_ifindex(batch, r)) for r, e in found if selection.takes(float(batch.ts[r]), e)]
    return Prepared(
        plan=plan_batch(cols, counts),
        names=[i.name for i in batch.interfaces],
        first_ts=float(batch.ts.min()) if n else math.inf,
        last_ts=float(batch.ts.max()) if n else -math.inf,
        end_offset=int(batch.rec_off[-1]) if n else 0,
        icmp=icmp,
    )


def _sll2_ifindex(batch: RecordBatch, r: int) -> int:
    """The Linux ifindex of record `r` when its link type (SLL2) carries one, else -1."""
    if batch.interfaces[int(batch.iface[r])].linktype != LINUX_SLL2:
        return -1
    off = int(batch.data_off[r]) + 4
    return int.from_bytes(batch.buf[off:off + 4].tobytes(), "big")


class Analysis:
    """Feeds batches through decoding, selection and the flow table into a Summary."""

    def __init__(
        self,
        selection: Selection | None = None,
        on_conn: Callable[[Conn], None] | None = None,
        on_reset: Callable[[Reset], None] | None = None,
        max_conns: int = 200_000,
        ifname: Callable[[int], str | None] | None = None,
        summarize: bool = True,
        on_icmp: Callable[[Icmp], None] | None = None,
    ) -> None:
        """`on_conn` given: connections are reported whole (packet and byte counts, full
        history); without it only the summary is wanted, and the tracker can skip more.
        `ifname`: this host's name for an interface index (live capture only).
        `summarize` False: only the resets and the connections that failed without one are
        wanted, through the callbacks (the summary stays empty). `on_icmp`: each ICMP
        error about TCP, as it comes."""
        self.ifname = ifname
        self.summary = Summary()
        self.stats = DecodeStats()
        self.selection = selection or Selection()
        self._sum = Summarizer(self.summary)
        conn_cb, reset_cb = self._sum.conn, self._sum.reset
        if not summarize:
            conn_cb = on_conn or (lambda _c: None)
            reset_cb = on_reset or (lambda _r: None)
        elif on_conn is not None:
            def conn_cb(c: Conn) -> None:
                self._sum.conn(c)
                on_conn(c)
        if summarize and on_reset is not None:
            def reset_cb(r: Reset) -> None:
                self._sum.reset(r)
                on_reset(r)
        icmp_cb = on_icmp or (lambda _i: None)
        if summarize:
            def icmp_cb(i: Icmp) -> None:
                self._sum.icmp(i)
                if on_icmp is not None:
                    on_icmp(i)
        # a summary alone: plain connections are counted together, not one by one
        quick = self._sum.quick if summarize and on_conn is None and on_reset is None else None
        self.table = FlowTable(conn_cb, reset_cb, max_conns=max_conns,
                               counts=on_conn is not None, unanswered_only=not summarize,
                               on_icmp=icmp_cb, on_quick=quick)

    def feed(self, batch: RecordBatch) -> Prepared:
        p = prepare(batch, self.selection, self.stats, self.table.counts)
        self.feed_prepared(p)
        return p

    def feed_prepared(self, p: Prepared) -> None:
        s = self.summary
        s.first_ts = min(s.first_ts, p.first_ts)
        s.last_ts = max(s.last_ts, p.last_ts)
        ifname = self.ifname

        def label(iface: int, ifindex: int) -> str | None:
            if ifname is not None and ifindex >= 0:
                return ifname(ifindex) or f"ifindex {ifindex}"
            return interface_label(p.names, iface, ifindex)

        plan = p.plan
        if self.table.unanswered_only:
            plan = self.table.take_refusals(plan, label)
        self.table.apply(plan, label)
        for ts, err, iface, ifindex in p.icmp:
            self.table.icmp(ts, err, label(iface, ifindex))

    def finish(self, files: list[str]) -> Summary:
        self.table.close()
        return self.snapshot(files)

    def snapshot(self, files: list[str]) -> Summary:
        """The summary so far, with connections still open left open (live views)."""
        s = self.summary
        s.files = files
        s.packets = self.stats.packets
        s.tcp_packets = self.stats.tcp
        s.icmp_packets = self.stats.icmp
        s.skipped = +self.stats.skipped  # unary plus drops the zero counts
        s.links = self.stats.links
        s.flags = self.stats.flags
        s.evicted = self.table.evicted
        return s
