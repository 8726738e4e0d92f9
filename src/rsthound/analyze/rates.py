"""Counter increases and rates that survive wraps and resets.

    >>> increase(10, 15), increase(2**32 - 3, 4), increase(900, 7)
    (5, 7, 7)

A counter that goes down either wrapped (32-bit kernels keep 32-bit counters) or started
again from zero (the network namespace was re-created); then, as Prometheus does, the new
value is the increase.
"""

from __future__ import annotations

from rsthound.model import Tick

WRAP32 = 1 << 32


def increase(prev: int, cur: int) -> int:
    if cur >= prev:
        return cur - prev
    if prev < WRAP32 and cur + WRAP32 - prev < WRAP32 // 2:
        return cur + WRAP32 - prev
    return cur


def increases(prev: dict[str, int], cur: dict[str, int]) -> dict[str, int]:
    """The increase of every counter present in both samples."""
    return {k: increase(prev[k], v) for k, v in cur.items() if k in prev}


def rates(prev: dict[str, int], cur: dict[str, int], seconds: float) -> dict[str, float]:
    """Per-second rate of every counter present in both samples."""
    if seconds <= 0:
        return {}
    return {k: n / seconds for k, n in increases(prev, cur).items()}


class Ticker:
    """Makes watch's Ticks: each sample with its increases since the previous one, worked
    out once for every consumer (alerts, history, the web page)."""

    def __init__(self) -> None:
        self._prev: Tick | None = None

    def next(self, mono: float, wall: float, values: dict[str, int]) -> Tick:
        p = self._prev
        tick = Tick(mono, wall, values) if p is None else Tick(
            mono, wall, values, increases(p.values, values), mono - p.mono, p.wall)
        self._prev = tick
        return tick
