"""One analysis: record batches in, a Summary (and streams of connections and resets) out."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rsthound.analyze.flows import FlowTable, Plan, plan_batch
from rsthound.analyze.summary import Summarizer, Summary
from rsthound.formats.columns import DecodeStats, TcpColumns, decode_tcp
from rsthound.formats.records import RecordBatch
from rsthound.model import Conn, Reset


@dataclass(frozen=True)
class Selection:
    """Which packets to look at: `--port`, `--host`, `--since`, `--until`."""

    ports: tuple[int, ...] = ()
    hosts: tuple[str, ...] = ()
    since: float | None = None
    until: float | None = None

    def mask(self, cols: TcpColumns) -> np.ndarray | None:
        """Rows to keep, or None for all."""
        keep = None
        if self.ports:
            want = np.array(self.ports)
            keep = np.isin(cols.a_port, want) | np.isin(cols.b_port, want)
        if self.hosts:
            m = np.zeros(len(cols), dtype=bool)
            for h in self.hosts:
                raw = _raw16(h)
                hi = np.uint64(int.from_bytes(raw[:8], "big"))
                lo = np.uint64(int.from_bytes(raw[8:], "big"))
                m |= (cols.a_hi == hi) & (cols.a_lo == lo)
                m |= (cols.b_hi == hi) & (cols.b_lo == lo)
            keep = m if keep is None else keep & m
        if self.since is not None:
            m = cols.ts >= self.since
            keep = m if keep is None else keep & m
        if self.until is not None:
            m = cols.ts < self.until
            keep = m if keep is None else keep & m
        return keep


def _raw16(host: str) -> bytes:
    addr = ipaddress.ip_address(host)
    if addr.version == 4:
        return b"\0" * 10 + b"\xff\xff" + addr.packed
    return addr.packed


@dataclass
class Prepared:
    """A batch made ready for the flow table (decoded, selected, planned): plain data."""

    plan: Plan
    names: list[str | None]  # interface names of the file so far
    first_ts: float
    last_ts: float
    end_offset: int  # file offset of the batch's last record (for progress)


def prepare(batch: RecordBatch, selection: Selection, stats: DecodeStats,
            counts: bool) -> Prepared:
    """Everything about a batch that needs no connection state (numpy only)."""
    cols = decode_tcp(batch, stats)
    keep = selection.mask(cols)
    if keep is not None:
        cols = cols.take(np.flatnonzero(keep))
    n = len(batch)
    return Prepared(
        plan=plan_batch(cols, counts),
        names=[i.name for i in batch.interfaces],
        first_ts=float(batch.ts.min()) if n else math.inf,
        last_ts=float(batch.ts.max()) if n else -math.inf,
        end_offset=int(batch.rec_off[-1]) if n else 0,
    )


class Analysis:
    """Feeds batches through decoding, selection and the flow table into a Summary."""

    def __init__(
        self,
        selection: Selection | None = None,
        on_conn: Callable[[Conn], None] | None = None,
        on_reset: Callable[[Reset], None] | None = None,
        max_conns: int = 200_000,
    ) -> None:
        """`on_conn` given: connections are reported whole (packet and byte counts, full
        history); without it only the summary is wanted, and the tracker can skip more."""
        self.summary = Summary()
        self.stats = DecodeStats()
        self.selection = selection or Selection()
        self._sum = Summarizer(self.summary)
        conn_cb, reset_cb = self._sum.conn, self._sum.reset
        if on_conn is not None:
            def conn_cb(c: Conn) -> None:
                self._sum.conn(c)
                on_conn(c)
        if on_reset is not None:
            def reset_cb(r: Reset) -> None:
                self._sum.reset(r)
                on_reset(r)
        self.table = FlowTable(conn_cb, reset_cb, max_conns=max_conns,
                               counts=on_conn is not None)

    def feed(self, batch: RecordBatch) -> None:
        self.feed_prepared(prepare(batch, self.selection, self.stats, self.table.counts))

    def feed_prepared(self, p: Prepared) -> None:
        s = self.summary
        s.first_ts = min(s.first_ts, p.first_ts)
        s.last_ts = max(s.last_ts, p.last_ts)
        names = p.names
        several = len(names) > 1

        def label(iface: int, ifindex: int) -> str | None:
            name = names[iface] if 0 <= iface < len(names) else None
            if name is None and several and iface >= 0:
                name = f"if{iface}"
            if ifindex >= 0:
                return f"{name}:ifindex {ifindex}" if name and name != "any" else (
                    f"ifindex {ifindex}")
            return name

        self.table.apply(p.plan, label)

    def finish(self, files: list[str]) -> Summary:
        self.table.close()
        s = self.summary
        s.files = files
        s.packets = self.stats.packets
        s.tcp_packets = self.stats.tcp
        s.skipped = +self.stats.skipped  # unary plus drops the zero counts
        s.links = self.stats.links
        s.flags = self.stats.flags
        s.evicted = self.table.evicted
        return s
