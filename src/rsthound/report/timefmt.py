"""Timestamps as people read them (local time, like tcpdump) and as JSON carries them."""

from __future__ import annotations

import math
import time


def clock(ts: float, micros: bool = False) -> str:
    """1700000000.25 -> '22:13:20' (local time); with micros '22:13:20.250000'."""
    if not math.isfinite(ts):
        return "-"
    base = time.strftime("%H:%M:%S", time.localtime(ts))
    return f"{base}.{round((ts % 1) * 1e6) % 1000000:06d}" if micros else base


def stamp(ts: float) -> str:
    """1700000000.25 -> '2023-11-14 22:13:20' (local time)."""
    if not math.isfinite(ts):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def seconds(span: float) -> str:
    """8.0 -> '8.0 s'; 4000 -> '1h06m40s'."""
    if span < 60:
        return f"{span:.1f} s"
    m, s = divmod(round(span), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
