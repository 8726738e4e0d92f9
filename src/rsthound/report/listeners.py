"""Listeners as a table and as JSON."""

from __future__ import annotations

import textwrap
from typing import Any

from rsthound.model import Listener
from rsthound.textforms import stamp


def render_listeners(found: list[Listener], label: str, source: str, wall: float) -> str:
    lines = [f"rsthound listeners: {label}, {stamp(wall)} (from {source})",
             f"{'LISTEN':<28} {'QUEUE':>5} {'BACKLOG':>7} {'DROPS':>6}  PROCESS"]
    for x in found:
        backlog = "-" if x.backlog is None else str(x.backlog)
        drops = "-" if x.drops is None else str(x.drops)
        who = x.process.text() if x.process else f"? (uid {x.uid}, socket {x.inode})"
        mark = "  FULL" if x.full else ""
        lines.append(f"{x.endpoint:<28} {x.queue:>5} {backlog:>7} {drops:>6}  {who}{mark}")
    if not found:
        lines.append("nothing listens")
    full = [x for x in found if x.full]
    if full:
        lines.append("")
        lines += textwrap.wrap(
            f"FULL: the accept queue is past its backlog, so new connections to "
            f"{', '.join(x.endpoint for x in full)} are dropped (TcpExt.ListenOverflows) until "
            "the process calls accept() faster or listens with a larger backlog.", 80)
    return "\n".join(lines) + "\n"


def listener_obj(x: Listener) -> dict[str, Any]:
    return {"addr": x.addr, "port": x.port, "queue": x.queue, "backlog": x.backlog,
            "drops": x.drops, "full": x.full, "uid": x.uid, "inode": x.inode,
            "process": x.process.obj() if x.process else None}
