"""The terminal and JSON views of `rsthound counters`."""

from __future__ import annotations

import json
import textwrap
from typing import Any

from rsthound.metrics import COUNTERS
from rsthound.textforms import rate, stamp

ALL_GROUPS = ("Tcp", "TcpExt", "Ip", "IpExt", "Icmp", "Ip6", "Icmp6")


def render_counters(label: str, wall: float, values: dict[str, int],
                    rates: dict[str, float] | None, interval: float,
                    damaged: bool = False, every: bool = False) -> str:
    """One line per counter the kernel has: name, value, rate, meaning (80 columns).
    `every`: then every other counter of the TCP, IP and ICMP groups, as nstat shows them."""
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
    if every:
        known = {m.name for m in COUNTERS}
        others = sorted((k for k in values if k not in known and k.split(".")[0] in ALL_GROUPS),
                        key=lambda k: (ALL_GROUPS.index(k.split(".")[0]), k))
        if others:
            lines += ["", "every other counter of the TCP, IP and ICMP groups:"]
        for k in others:
            shown = rate(rates[k]) if rates is not None and k in rates else ""
            lines.append(f"{k:<40} {values[k]:>20,} {shown:>9}".rstrip())
    if missing:
        why = "not read (damaged, see above)" if damaged else "not in this kernel"
        lines += textwrap.wrap(f"{why}: " + ", ".join(missing), 80, subsequent_indent="  ",
                               break_on_hyphens=False)
    return "\n".join(lines) + "\n"


def counters_obj(values: dict[str, int], rates: dict[str, float] | None,
                 every: bool = False) -> dict[str, Any]:
    """{"Tcp.AttemptFails": {"value": 3, "rate": 2.0}, ...} for the counters the kernel has
    (`every`: and every other of the TCP, IP and ICMP groups)."""
    names = [m.name for m in COUNTERS]
    if every:
        names += sorted(k for k in values if k not in names and k.split(".")[0] in ALL_GROUPS)
    out: dict[str, Any] = {}
    for name in names:
        if name in values:
            entry: dict[str, Any] = {"value": values[name]}
            if rates is not None and name in rates:
                entry["rate"] = round(rates[name], 3)
            out[name] = entry
    return out


def render_counters_json(values: dict[str, int], rates: dict[str, float] | None,
                         every: bool = False, compact: bool = False) -> str:
    obj = counters_obj(values, rates, every)
    return (json.dumps(obj, separators=(",", ":")) if compact else json.dumps(obj, indent=2)) \
        + "\n"
