"""Who listened on a port, from the history: "last served by ... until ...; nothing since"."""

from __future__ import annotations

import textwrap
from typing import Any

from rsthound.model import PortName, process_text
from rsthound.report.alerts import iso
from rsthound.textforms import host, seconds, stamp

SHOWN = 10


def _who(row: dict[str, Any]) -> str:
    return process_text(row["process"])


def _addr(row: dict[str, Any]) -> str:
    return host(row["addr"])


def render_served(port: int, label: str, name: PortName, rows: list[dict[str, Any]],
                  as_of: float) -> str:
    lines = [f"port {port}, {label}: {name.text()}"]
    now = [r for r in rows if r["stopped"] is None]
    past = [r for r in rows if r["stopped"] is not None]
    if now:
        for r in now:
            since = (f"since {stamp(r['started'])}" if r["seen_start"] else
                     f"since before {stamp(r['started'])}, when watch first looked")
            lines.append(f"served now (as of {stamp(as_of)}) by {_who(r)} on {_addr(r)}, "
                         f"{since}")
    elif past:
        last = past[0]
        lines.append(f"nothing listens now (as of {stamp(as_of)}); last served by "
                     f"{_who(last)} on {_addr(last)} until {stamp(last['stopped'])}, for "
                     f"{seconds(last['stopped'] - last['started'])}; nothing since")
    else:
        lines.append(f"nothing has listened on it since the history began (as of "
                     f"{stamp(as_of)})")
    earlier = past[1:] if not now else past
    if earlier:
        lines.append("before that:")
        for r in earlier[:SHOWN]:
            lines.append(f"  {stamp(r['started'])} .. {stamp(r['stopped'])}  {_who(r)} on "
                         f"{_addr(r)}")
        if len(earlier) > SHOWN:
            lines.append(f"  ... and {len(earlier) - SHOWN} more (--json has them all)")
    return "".join(textwrap.fill(ln, 80, subsequent_indent="    ") + "\n" for ln in lines)


def served_obj(port: int, label: str, name: PortName, rows: list[dict[str, Any]],
               as_of: float) -> dict[str, Any]:
    return {
        "port": port, "netns": label, "service": name.service, "units": list(name.units),
        "as_of": iso(as_of),
        "served": [{"addr": r["addr"], "started": iso(r["started"]),
                    "stopped": None if r["stopped"] is None else iso(r["stopped"]),
                    "seen_start": r["seen_start"], "process": r["process"]} for r in rows],
    }
