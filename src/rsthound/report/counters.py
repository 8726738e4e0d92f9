"""The terminal and JSON views of `rsthound counters`."""

from __future__ import annotations

import json
import textwrap
from typing import Any

from rsthound.metrics import COUNTERS
from rsthound.textforms import rate, stamp


def render_counters(label: str, wall: float, values: dict[str, int],
                    rates: dict[str, float] | None, interval: float,
                    damaged: bool = False) -> str:
    """One line per counter the kernel has: name, value, rate, meaning (80 columns)."""
    over = f", rates over {interval:g} s" if rates is not None else ""
    lines = [f"rsthound counters: {label}{over}, {stamp(wall)}",
             f"{'COUNTER':<27} {'VALUE':>13} {'RATE' if rates is not None else '':>9}  MEANING"]
    missing = []
    for m in COUNTERS:
        if m.name not in values:
            missing.append(m.name)
            continue
        shown = rate(rates[m.name]) if rates is not None else ""
        lines.append(f"{m.name:<27} {values[m.name]:>13,} {shown:>9}  {m.short}")
    if missing:
        why = "not read (damaged, see above)" if damaged else "not in this kernel"
        lines += textwrap.wrap(f"{why}: " + ", ".join(missing), 80, subsequent_indent="  ",
                               break_on_hyphens=False)
    return "\n".join(lines) + "\n"


def counters_obj(values: dict[str, int], rates: dict[str, float] | None) -> dict[str, Any]:
    """{"Tcp.AttemptFails": {"value": 3, "rate": 2.0}, ...} for the counters the kernel has."""
    out: dict[str, Any] = {}
    for m in COUNTERS:
        if m.name in values:
            entry: dict[str, Any] = {"value": values[m.name]}
            if rates is not None:
                entry["rate"] = round(rates[m.name], 3)
            out[m.name] = entry
    return out


def render_counters_json(values: dict[str, int], rates: dict[str, float] | None) -> str:
    return json.dumps(counters_obj(values, rates), indent=2) + "\n"
