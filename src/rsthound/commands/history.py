"""`rsthound history`: a counter's rate over time with its alerts, or who listened on a
port and until when, from watch's history."""

from __future__ import annotations

import argparse
import shutil
import time
from typing import Any, TextIO

from rsthound.analyze.alerts import TRACED
from rsthound.commands import Exit, options
from rsthound.metrics import BY_NAME
from rsthound.report import history as view
from rsthound.report.jsonout import line
from rsthound.report.served import render_served, served_obj
from rsthound.sinks.history import History, default_path
from rsthound.sources.portnames import port_name
from rsthound.sources.procfs import netns_label

EPILOG = """\
examples:
  rsthound history                          failed connections, the last hour
  rsthound history --since 7d               the last week (one row per minute or hour)
  rsthound history --since 2026-11-22T10:50 --until 2026-11-22T11:10
  rsthound history --metric TcpExt.ListenOverflows --since 24h
  rsthound history --json --since 10m       the stored rows and alerts, as JSON
  rsthound history --port 7211              who listened on 7211, and until when

'rsthound watch' writes the history: every interval for the last hour, one row per
minute for 8 days, one per hour for 400 days (a year takes a few MB).

exit status: 0 shown; 2 error (no history file, or not a usable one).
"""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "history",
        help="a counter's rate over time, with the alerts, from watch's history",
        description="A counter's rate over time as 'rsthound watch' recorded it, as a "
        "terminal chart\nwith its alerts marked.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    p.add_argument("--since", type=options.when_arg, default="1h", metavar="WHEN",
                   help="from when: 30m, 6h, 7d ago, or a time (ISO 8601, Unix seconds); "
                   "default 1h")
    p.add_argument("--until", type=options.when_arg, metavar="WHEN",
                   help="until when (default: now)")
    p.add_argument("--metric", type=options.metric_arg, default="Tcp.AttemptFails", metavar="NAME",
                   help="the counter, by its kernel name (default Tcp.AttemptFails; "
                   "'rsthound counters' lists them)")
    p.add_argument("--port", type=options.port_arg, metavar="PORT",
                   help="instead: who listened on this port, and until when")
    p.add_argument("--json", action="store_true", help="one object: the rows and the alerts")
    options.add_db(p, write=False)
    p.add_argument("--netns", metavar="NAME|PID",
                   help="the history 'watch --netns' wrote for this namespace")
    options.add_debug(p)


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    until = args.until if args.until is not None else time.time()
    since = args.since
    if since >= until:
        err.write("rsthound history: --since must be before --until\n")
        return Exit.ERROR
    path = args.db or default_path(args.netns)
    metric = BY_NAME[args.metric]
    if args.port is not None:
        return _of_port(args, path, out)
    with History(path) as store:
        label = store.label or netns_label(args.netns)
        lo, hi = round(since * 1000), round(until * 1000)
        points = store.series(metric.name, lo, hi)
        # alerts on the failed connects watch traced are this chart's too: the same failures
        # (Tcp.AttemptFails counts only some of them)
        same = {metric.name} | ({TRACED} if metric.name == "Tcp.AttemptFails" else set())
        events = [e for e in store.events(lo, hi) if e.get("metric") in same]
    if args.json:
        out.write(line(view.history_obj(metric, label, path, since, until, points, events)))
    else:
        width = min(200, shutil.get_terminal_size((80, 24)).columns)
        out.write(view.render_history(metric, label, since, until, points, events, width))
    return Exit.OK


def _of_port(args: argparse.Namespace, path: str, out: TextIO) -> int:
    with History(path) as store:
        label = store.label or netns_label(args.netns)
        rows = store.served(args.port)
        as_of = store.end_ms / 1000
    name = port_name(args.port)
    out.write(line(served_obj(args.port, label, name, rows, as_of)) if args.json
              else render_served(args.port, label, name, rows, as_of))
    return Exit.OK
