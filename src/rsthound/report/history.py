"""A counter's stored history as a terminal chart with its alerts marked, and as JSON."""

from __future__ import annotations

import datetime as dt
import math
import time
from dataclasses import dataclass
from typing import Any

from rsthound.metrics import Metric
from rsthound.model import Point
from rsthound.report.alerts import iso
from rsthound.report.text import SPARK
from rsthound.textforms import clock, rate, stamp

HEIGHT = 8  # rows of bars
AXIS = 8  # columns left of the bars, for the rate labels
LEVEL_MARK = {"warn": "w", "error": "E", "critical": "C"}
LEVEL_RANK = {"warn": 1, "error": 2, "critical": 3}


@dataclass
class Column:
    """One column of the chart: what grew in it, over how many watched seconds."""

    n: float = 0.0
    covered: float = 0.0

    @property
    def rate(self) -> float | None:
        return self.n / self.covered if self.covered > 0 else None


def columns(points: list[Point], since: float, until: float, count: int) -> list[Column]:
    """Spread each stored row evenly over the time it stands for, into `count` equal columns
    (a minute row watched for 30 s: its count and its 30 s over the whole minute)."""
    cols = [Column() for _ in range(count)]
    step = (until - since) / count
    for p in points:
        start, length = p.t_ms / 1000, p.span_ms / 1000
        if p.covered_ms <= 0:
            continue
        first = max(0, int((start - since) // step))
        last = min(count - 1, int((start + length - since) // step))
        for i in range(first, last + 1):
            lo, hi = since + i * step, since + (i + 1) * step
            part = (min(hi, start + length) - max(lo, start)) / length
            if part > 0:
                cols[i].n += p.n * part
                cols[i].covered += p.covered_ms / 1000 * part
    return cols


def _alert_marks(events: list[dict[str, Any]], since: float, until: float,
                 count: int, watched: list[bool] | None = None) -> str:
    """Per column, the highest alert level active in it (w, E, C), or a blank. Only columns
    someone watched: an alert left open when watch stopped ends where watching did."""
    rank = [0] * count
    step = (until - since) / count
    open_: dict[str, tuple[float, str]] = {}

    def paint(start: float, end: float, level: str) -> None:
        lo = max(0, int((start - since) // step))
        hi = min(count - 1, int((min(end, until) - since) // step))
        for i in range(lo, hi + 1):
            if watched is None or watched[i]:
                rank[i] = max(rank[i], LEVEL_RANK.get(level, 1))

    for e in events:
        ts, rule = _unix(e["ts"]), e["rule"]
        if e["event"] == "alert":
            if rule in open_:
                paint(open_[rule][0], ts, open_[rule][1])
            open_[rule] = (ts if rule in open_ else _unix(e["started"]), e["level"])
        elif e["event"] == "clear" and rule in open_:
            paint(open_[rule][0], ts, open_.pop(rule)[1])
    for start, level in open_.values():
        paint(start, until, level)
    marks = {v: k for k, v in LEVEL_RANK.items()}
    return "".join(LEVEL_MARK[marks[r]] if r else " " for r in rank)


def _unix(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


def _nice_top(peak: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k at or above `peak`."""
    if peak <= 0:
        return 1.0
    base = 10 ** math.floor(math.log10(peak))
    return next(m * base for m in (1, 2, 2.5, 5, 10) if m * base >= peak * (1 - 1e-9))


def _tick(v: float) -> str:
    """An axis tick (1, 2, 2.5, 5 x 10^k and their halves): exact, unlike a measured rate."""
    return "0/s" if v == 0 else f"{v:.3g}/s"


def render_history(metric: Metric, label: str, since: float, until: float,
                   points: list[Point], events: list[dict[str, Any]], width: int = 80) -> str:
    count = max(10, width - AXIS)
    cols = columns(points, since, until, count)
    rates = [c.rate for c in cols]
    peak = max((r for r in rates if r is not None), default=0.0)
    top = _nice_top(peak)
    step = (until - since) / count
    lines = [f"{metric.short} per second ({metric.name}), {label}",
             f"{stamp(since)} to {stamp(until)}, one column = {_span(step)}", ""]
    for row in range(HEIGHT, 0, -1):  # top row first
        cells = []
        for r in rates:
            eighths = 0 if not r else max(1, round(r / top * HEIGHT * 8))
            cells.append(SPARK[min(8, max(0, eighths - (row - 1) * 8))])
        value = top * row / HEIGHT
        axis = f"{_tick(value):>{AXIS - 2}} ┤" if row in (HEIGHT, HEIGHT // 2) else (
            " " * (AXIS - 2) + " │")
        lines.append((axis + "".join(cells)).rstrip())
    lines.append(f"{'0/s':>{AXIS - 2}} ┼" + "".join("─" if r is not None else "·" for r in rates))
    lines.append(" " * AXIS + _time_axis(since, until, count))
    marks = _alert_marks(events, since, until, count, [c.covered > 0 for c in cols])
    if marks.strip():
        lines.append(f"{'alerts':<{AXIS}}" + marks.rstrip())
    lines.append("")
    watched = sum(c.covered for c in cols)
    total = sum(c.n for c in cols)
    if watched:
        lines.append(f"{round(total)} {metric.unit} in {_span(watched)} watched (mean "
                     f"{rate(total / watched)}, peak {rate(peak)})")
        lines.append("· not watched; alerts: w warn, E error, C critical")
    else:
        lines.append("nothing was watched in this time")
    for e in events:
        word = {"alert": "ALERT", "clear": "CLEAR"}.get(str(e["event"]), "FINDINGS")
        lines.append(f"{clock(_unix(e['ts']))} {word} {e['level']}: {e['summary']}")
    return "\n".join(lines) + "\n"


TICKS = (10, 30, 60, 300, 600, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400,
         7 * 86400, 30 * 86400)


def _time_axis(since: float, until: float, count: int) -> str:
    """Local clock labels on round times, at least 14 columns apart."""
    step = (until - since) / count
    tick = next((t for t in TICKS if t / step >= 14), TICKS[-1])
    fmt = "%H:%M:%S" if tick < 60 else "%H:%M" if tick < 86400 else "%b %d"
    off = time.localtime(since).tm_gmtoff  # round in local time: midnight, not 00:00 UTC
    cells = [" "] * (count + 16)
    t = math.ceil((since + off) / tick) * tick - off
    while t < until:
        col = round((t - since) / step)
        text = time.strftime(fmt, time.localtime(t))
        if all(c == " " for c in cells[max(0, col - 1):col + len(text) + 1]):
            cells[col:col + len(text)] = text
        t += tick
    return "".join(cells).rstrip()


def _span(s: float) -> str:
    if s < 120:
        return f"{s:.3g} s"
    if s < 7200:
        return f"{s / 60:.3g} min"
    if s < 172800:
        return f"{s / 3600:.3g} h"
    return f"{s / 86400:.3g} days"


def history_obj(metric: Metric, label: str, path: str, since: float, until: float,
                points: list[Point], events: list[dict[str, Any]]) -> dict[str, Any]:
    """The stored rows as they are (finest first available), and the events."""
    return {
        "metric": metric.name, "meaning": metric.meaning, "netns": label, "db": path,
        "since": iso(since), "until": iso(until),
        "points": [{"t": iso(p.t_ms / 1000), "seconds": p.covered_ms / 1000, "increase": p.n,
                    "rate": round(p.n * 1000 / p.covered_ms, 4) if p.covered_ms else None}
                   for p in points],
        "alerts": events,
    }
