"""`rsthound counters`: the kernel's TCP failure counters, their rates and meaning."""

from __future__ import annotations

import argparse
import signal
import threading
import time
from typing import Any, TextIO

from rsthound.analyze.rates import rates
from rsthound.commands import Exit, options
from rsthound.report.counters import render_counters, render_counters_json
from rsthound.sources.procfs import CounterReader

EPILOG = """\
examples:
  rsthound counters                    values, and rates over one second
  rsthound counters --interval 10      rates over ten seconds
  rsthound counters --interval 0       values only, at once
  rsthound counters --netns blue       the counters of 'ip netns' namespace blue
  rsthound counters --netns 4312       the network namespace of process 4312
  rsthound counters --proc-root /host/proc --json   a host's, from inside a container
  rsthound counters -a                 every TCP, IP and ICMP counter, as nstat -a
  rsthound counters --repeat 5         again every 5 s, rates over those 5 s (Ctrl-C stops)

Tcp.AttemptFails counts connections that died while opening: mostly this host's
own outgoing connects, refused or timed out. A full listen queue shows up as
TcpExt.ListenOverflows instead. Every counter is explained in docs/counters.md.

exit status: 0 read; 2 error; 3 read, but a counter file had lines that could
not be read (said on stderr; the rest is shown).
"""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "counters",
        help="the kernel's TCP failure counters, their rates and meaning",
        description="The kernel's counters of failed connections and resets\n"
        "(/proc/net/snmp and /proc/net/netstat), their rates, and what each one means.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    p.add_argument("--interval", type=options.interval_arg(0.01, zero=True), default=1.0,
                   help="seconds between the two samples the rates come from "
                   "(default 1; 0: values only)")
    p.add_argument("--json", action="store_true",
                   help='one object: {"Tcp.AttemptFails": {"value": N, "rate": R}, ...} '
                   "(with --repeat: one line per interval)")
    p.add_argument("-a", "--all", action="store_true",
                   help="every counter of the TCP, TcpExt, IP and ICMP groups too, as nstat "
                   "-a shows them")
    p.add_argument("--repeat", type=options.interval_arg(0.1), metavar="S",
                   help="again every S seconds, with the rates over those S seconds, until "
                   "Ctrl-C (as nstat in a loop)")
    options.add_namespace(p)
    options.add_debug(p)


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.repeat:
        return _repeat(args, out, err)
    with CounterReader(args.proc_root, args.netns) as reader:
        first = reader.read()
        last, rate = first, None
        if args.interval > 0:
            time.sleep(args.interval)
            last = reader.read()
            rate = rates(first.values, last.values, last.mono - first.mono)
    problems = list(dict.fromkeys(first.problems + last.problems))
    if not last.values:
        for p in problems:
            err.write(f"rsthound: {p}\n")
        err.write(f"rsthound: no counters could be read ({reader.label})\n")
        return Exit.ERROR
    for p in problems:
        err.write(f"rsthound: damaged: {p}\n")
    err.flush()
    out.write(render_counters_json(last.values, rate, args.all) if args.json else
              render_counters(reader.label, last.wall, last.values, rate, args.interval,
                              damaged=bool(problems), every=args.all))
    return Exit.DAMAGED if problems else Exit.OK


def _repeat(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Every --repeat seconds, the values and the rates since the last time; Ctrl-C (or
    SIGTERM) ends it, exit status 0."""
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    said: set[str] = set()
    with CounterReader(args.proc_root, args.netns) as reader:
        last = reader.read()
        while not stop.wait(args.repeat):
            now = reader.read()
            for p in now.problems:
                if p not in said:
                    said.add(p)
                    err.write(f"rsthound: damaged: {p}\n")
            rate = rates(last.values, now.values, now.mono - last.mono)
            if args.json:
                out.write(render_counters_json(now.values, rate, args.all, compact=True))
            else:
                out.write(render_counters(reader.label, now.wall, now.values, rate,
                                          args.repeat, every=args.all) + "\n")
            out.flush()
            last = now
    return Exit.OK
