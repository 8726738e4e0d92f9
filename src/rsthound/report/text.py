"""The terminal view of `analyze`: a summary readable in ten seconds, 80 columns wide."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from rsthound.analyze.summary import Summary, failure_series, findings
from rsthound.formats.inet import flag_text
from rsthound.model import Conn, Icmp, Reset
from rsthound.textforms import (
    clock,
    endpoint,
    micro_clock,
    pace,
    rate,
    seconds,
    stamp,
    steady,
)

SPARK = " ▁▂▃▄▅▆▇█"
WIDTH = 80


def render_summary(s: Summary, top: int = 10, command: str = "analyze",
                   columns: int | None = WIDTH) -> str:
    """`columns`: the terminal's width, which the service column may fill (None: not a
    terminal, cut nothing)."""
    lines: list[str] = []
    names = ", ".join(s.files)
    lines.append(f"rsthound {command}: {names}")
    if not s.packets:
        lines.append("no packets")
        lines.extend(_damage_lines(s))
        return "\n".join(lines) + "\n"
    head = " " * 10
    lines += _wrap(
        f"capture   {stamp(s.first_ts)} .. {clock(s.last_ts)} ({seconds(s.duration)}), "
        f"{s.packets:,}\xa0packets, {s.tcp_packets:,}\xa0TCP"
        + (f", {s.icmp_packets:,}\xa0ICMP errors" if s.icmp_packets else ""), head)
    fl = s.flags
    lines += _wrap(f"segments  {fl['syn']:,} SYN, {fl['syn-ack']:,} SYN-ACK, {fl['fin']:,} FIN, "
                   f"{fl['rst']:,} RST", head)
    lines += _wrap(f"conns     {s.conns:,} connections: " + _top_counts(s.states, 8), head)
    failed = s.failed_total()
    often = pace(failed, s.fail_last - s.fail_first)
    if failed and clock(s.fail_first) == clock(s.fail_last):
        pace_ = f", {often} at\xa0{clock(s.fail_first)}" if failed > 1 else ""
    else:
        pace_ = (f", {often} from\xa0{clock(s.fail_first)} to\xa0{clock(s.fail_last)}"
                 if failed else "")
    icmp = s.failures["icmp-rejected"] + s.failures["icmp-unreachable"]
    lines += _wrap(
        f"failed    {failed:,} connections ({s.failures['refused']:,} refused, "
        f"{s.failures['timeout']:,} timed out"
        + (f", {icmp:,} ended by ICMP" if icmp else "") + f"){pace_}", head)
    resets = sum(s.resets.values())
    lines += _wrap(f"resets    {resets:,}" + (f": {_top_counts(s.resets, 6)}" if resets else ""),
                   head)
    if failed:
        width, series = failure_series(s)
        peak = max(series)
        spark = "".join(SPARK[min(8, round(8 * v / peak))] if peak else " " for v in series)
        per = "second" if width == 1 else seconds(width)
        lines.append(f"per {per}: |{spark}| peak {peak:.1f}/s")
    lines.append("")
    failing = [svc for svc in s.ranked() if svc.failures or svc.reset_count]
    ranked = failing[:top]
    if ranked:
        rows = [["SERVICE", "FAILED", "REFUSED", "TIMEOUT", "RESETS", "CLIENTS", "RATE",
                 "FIRST", "LAST"]]
        for svc in ranked:
            rate_s, _span = svc.rate()
            # too few, or too close together, for a rate: FAILED, FIRST and LAST say it
            often = rate(rate_s) if rate_s and steady(svc.failures,
                                                      svc.last - svc.first) else "-"
            rows.append([
                svc.name, str(svc.failures), str(svc.failed["refused"]),
                str(svc.failed["timeout"]),
                str(sum(n for (kind, _by), n in svc.resets.items() if kind != "refused")),
                f"{len(svc.clients)}{'+' if svc.clients_capped else ''}",
                often,
                clock(svc.first) if svc.failures else "-",
                clock(svc.last) if svc.failures else "-",
            ])
        lines.extend(_table(rows, columns))
    if failing:
        more = len(failing) - len(ranked)
        if more > 0:
            lines.append(f"... and {more} more services (--json lists them all)")
        if ranked:
            lines.append("(RESETS: other than refusals: abort, after-close, stray, injected?)")
            lines.append("")
        lines.append("Findings")
        for f in findings(s):
            lines.extend(_wrap("- " + f, "  "))
    else:
        lines.append("No failed connections and no resets.")
    skipped = sum(s.skipped.values())
    if skipped:
        lines.append("")
        lines += _wrap(f"not analysed: {skipped:,} packets ({_top_counts(s.skipped, 5)})", "  ")
    if s.evicted:
        lines.append(f"memory cap: {s.evicted:,} connections were ended early to stay bounded")
    lines.extend(_damage_lines(s))
    return "\n".join(lines) + "\n"


def _damage_lines(s: Summary) -> list[str]:
    out = []
    for d in s.damages:
        out.extend(_wrap("damaged: " + d.describe(), "  "))
    return out


def _top_counts(c: Counter[str], n: int) -> str:
    items = sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{v:,}\xa0{k}" for k, v in items[:n])
    return text + (", ..." if len(items) > n else "")


def _table(rows: list[list[str]], width: int | None = WIDTH) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    if width is not None:  # the first column (services) gives way, never below 12
        room = max(width, WIDTH) - sum(widths[1:]) - (len(widths) - 1)
        widths[0] = max(12, min(widths[0], room))
    out = []
    for r in rows:
        cells = [_elide(r[0], widths[0]).ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
        out.append(" ".join(cells).rstrip())
    return out


def _elide(service: str, width: int) -> str:
    """Shorten the address, never the port: '[fd00::a00:15]:7211' -> '[fd00…0:15]:7211'."""
    if len(service) <= width:
        return service
    host, _, port = service.rpartition(":")
    keep = width - len(port) - 2  # ':' and '…'
    if keep < 2:
        return service[:width]
    head = (keep + 1) // 2
    return f"{host[:head]}…{host[len(host) - (keep - head):]}:{port}"


def _wrap(text: str, indent: str) -> list[str]:
    words = text.split(" ")
    lines, cur = [], ""
    for w in words:
        if cur and len(cur) + 1 + len(w) > WIDTH:
            lines.append(cur)
            cur = indent + w
        else:
            cur = f"{cur} {w}" if cur else w
    lines.append(cur)
    return [line.replace("\xa0", " ") for line in lines]  # no-break spaces held words together


def _ep(host: str, port: int) -> str:
    return f"{host}.{port}"


def render_reset(r: Reset, when: Callable[[float], str] = micro_clock) -> str:
    """One reset, tcpdump style, then its kind and who sent it."""
    ip = "IP6" if ":" in r.src else "IP"
    where = f"{r.iface} " if r.iface else ""
    return (
        f"{when(r.ts)} {where}{ip} {_ep(r.src, r.sport)} > {_ep(r.dst, r.dport)}: "
        f"Flags [{flag_text(r.flags)}], seq {r.seq}, ack {r.ack}, ttl {r.ttl}  "
        f"{r.kind.value} by {'client' if r.sent_by == 'orig' else 'server'}"
    )


def render_failure(c: Conn) -> str:
    """A connection that failed without a reset (its SYNs went unanswered), as one line."""
    ip = "IP6" if ":" in c.orig_h else "IP"
    where = f"{c.iface} " if c.iface else ""
    syns = c.syn_retrans + 1
    return (f"{clock(c.ts, micros=True)} {where}{ip} {_ep(c.orig_h, c.orig_p)} > "
            f"{_ep(c.resp_h, c.resp_p)}: {syns} SYN{'s' if syns > 1 else ''} in "
            f"{c.duration:.1f} s, no answer  {c.failure}")


def render_icmp(i: Icmp) -> str:
    """An ICMP error about a connect, tcpdump style, then its kind."""
    ip = "IP6" if ":" in i.sender else "IP"
    where = f"{i.iface} " if i.iface else ""
    return (f"{clock(i.ts, micros=True)} {where}{ip} {i.sender} > {i.src}: ICMP {i.code} "
            f"for {_ep(i.src, i.sport)} > {_ep(i.dst, i.dport)}, ttl {i.ttl}  {i.kind.value}"
            + ("" if i.sender == i.dst else f" by router {i.sender}"))


CONN_HEADER = (
    f"{'TS':<15} {'ORIG':<28} {'RESP':<22} {'STATE':<6} {'HISTORY':<10} PKTS BYTES FAILURE"
)


def render_conn(c: Conn, when: Callable[[float], str] = micro_clock) -> str:
    """One connection, like a line of Zeek's conn.log, narrowed."""
    orig = endpoint(c.orig_h, c.orig_p)
    return (
        f"{when(c.ts)} {orig:<28} {c.service:<22} {c.conn_state:<6} "
        f"{c.history:<10} {c.orig_pkts}/{c.resp_pkts} {c.orig_bytes}/{c.resp_bytes} "
        f"{c.failure.value if c.failure else '-'}"
    )
