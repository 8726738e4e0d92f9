"""`rsthound counters`: the kernel's TCP failure counters, their rates and meaning."""

from __future__ import annotations

import argparse
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
                   help='one object: {"Tcp.AttemptFails": {"value": N, "rate": R}, ...}')
    options.add_namespace(p)
    options.add_debug(p)


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
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
    out.write(render_counters_json(last.values, rate) if args.json else render_counters(
        reader.label, last.wall, last.values, rate, args.interval, damaged=bool(problems)))
    return Exit.DAMAGED if problems else Exit.OK
