"""`rsthound diagnose`: watch this host for a few seconds with everything rsthound has,
then say what fails, who does it, why, since when, and what to do."""

from __future__ import annotations

import argparse
import signal
import socket
import threading
from typing import Any, TextIO

from rsthound.analyze.diagnosis import diagnose
from rsthound.commands import Exit, options
from rsthound.observe.investigate import collect
from rsthound.report.diagnosis import diagnosis_obj, render_diagnosis
from rsthound.report.jsonout import line
from rsthound.sources.procfs import in_netns, netns_label, netns_path

EPILOG = """\
examples:
  sudo rsthound diagnose                  this host, 3 s: what fails, who, why, what to do
  sudo rsthound diagnose --duration 10    a longer look, for rarer failures
  sudo rsthound diagnose --netns blue     the namespace 'ip netns' calls blue
  sudo rsthound diagnose --json | jq '.findings[0]'
  rsthound demo                           the whole story, in a namespace of its own

It captures on every interface (loopback included), traces the kernel for the process
behind each connect and the reason for each reset, reads the counters, the listeners,
the firewall rules and watch's history, then ranks what it found. Every connect that
failed in the window is counted (from the trace) and explained, or said to be unexplained.
Causes: no-listener, wrong-address, firewall-reject, firewall-drop, unreachable,
listen-overflow, peer-abort, local-abort, normal, unexplained. Without root it reads what
it can (counters, listeners) and says what it skipped.

exit status: 0 nothing abnormal; 1 something abnormal found; 2 error.
"""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "diagnose",
        help="the whole investigation: what fails, who, why, since when, what to do",
        description="Watch this host for a few seconds with everything rsthound has, then "
        "say what\nfails, which process does it, why, since when, and what to do.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    p.add_argument("--duration", type=options.seconds_arg, default=3.0,
                   help="seconds to watch (default 3)")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.add_argument("--no-trace", action="store_true",
                   help="do not trace the kernel (no process names or reset reasons)")
    options.add_db(p, write=False)
    options.add_namespace(p)
    options.add_debug(p)


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C or SIGTERM end the window early: what it saw is still reported
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
    where = netns_label(args.netns)
    if args.netns:  # a namespace that is not there: one line, before announcing anything
        in_netns(netns_path(args.netns, args.proc_root), lambda: None)
    err.write(f"rsthound: watching {where} for {args.duration:g} s: capture on every "
              "interface, kernel trace, counters, listeners\n")
    err.flush()
    facts = collect(args.duration, args.netns, args.db, trace=not args.no_trace,
                    should_stop=stop.is_set, proc_root=args.proc_root)
    if stop.is_set():
        err.write(f"rsthound: stopped after {facts.end - facts.start:.1f} s of "
                  f"{args.duration:g}; reporting what that window saw\n")
    findings = diagnose(facts)
    host = socket.gethostname() + ("" if args.netns is None else f" ({where})")
    if args.json:
        out.write(line(diagnosis_obj(host, facts, findings)))
    else:
        out.write(render_diagnosis(host, facts, findings))
    return Exit.FOUND if any(x.abnormal for x in findings) else Exit.OK
