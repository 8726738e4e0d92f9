"""Command line: parse arguments, run a command, print, pick the exit code.

This is the only module that prints errors. `main()` takes its streams as arguments so that
tests run the whole CLI in-process.
"""

from __future__ import annotations

import argparse
import datetime as dt
import enum
import ipaddress
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from rsthound import __version__
from rsthound.errors import BadInput, RstHoundError

PROGRESS_MIN_BYTES = 64 << 20


class Exit(enum.IntEnum):
    OK = 0
    FOUND = 1  # diagnose: something abnormal was found (grep-like)
    ERROR = 2  # bad usage, or an input that could not be used at all
    DAMAGED = 3  # results were reported, but part of the input was damaged and skipped


ANALYZE_EPILOG = """\
examples:
  rsthound analyze capture.pcap             summary: failing services, findings
  rsthound analyze --resets capture.pcap    one line per reset, with its kind
  rsthound analyze --conns --json a.pcapng  a JSON line per connection (Zeek)
  rsthound analyze --port 7211 --since 2026-11-22T10:54:00 dump.pcap

  control packets alone are enough, and keep captures small:
  tcpdump -i any -w rst.pcap 'tcp[tcpflags] & (tcp-syn|tcp-rst|tcp-fin) != 0'
  tcpdump -i any -c 500 -w - 'tcp[tcpflags] & tcp-rst != 0' | rsthound analyze -

exit status: 0 analysed; 2 error (no usable input); 3 analysed, but part of a
file was damaged and skipped (said on stderr and in the output).
"""


COUNTERS_EPILOG = """\
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


WATCH_EPILOG = """\
examples:
  rsthound watch                          alerts on stdout, every second
  rsthound watch --json --duration 60     JSON lines for a minute, then stop
  rsthound watch --config /etc/rsthound/watch.toml --alertmanager http://127.0.0.1:9093
  rsthound watch --netns blue --webhook https://hooks.example/rsthound
  sudo rsthound watch --listen 127.0.0.1:9321
                                          /metrics, a dashboard at /, the JSON API

default rules (change or add them in --config, see docs/watch.md):
  failed-connections  Tcp.AttemptFails        warn 1/s, error 5/s, critical 20/s
  resets-sent         Tcp.OutRsts             warn 5/s, error 25/s, critical 100/s
  listen-overflows    TcpExt.ListenOverflows  warn on any, error 10/s, critical 100/s
  failed-connections-unusual  10x this host's own trailing average (after 10 min)
A level fires after 2 samples in a row (1 for overflows) over the last 3 intervals, and
clears after 3 samples below half the warn level. Sampling once a second costs well
under 1% of a core.

History (see 'rsthound history'): every interval and every alert go to a SQLite file,
kept for 400 days in a few MB; if it cannot be written, watch says so once and goes on.

exit status: 0 stopped (--duration, Ctrl-C, SIGTERM); 2 error.
"""


CAPTURE_EPILOG = """\
examples:
  rsthound capture                        every interface, loopback included
  rsthound capture port 7211              tcpdump's filter syntax
  rsthound capture -i eth0 -c 20 --json   20 events from eth0, as JSON lines
  rsthound capture --duration 60 -w rst.pcap --summary
                                          a minute; keep the packets; a summary at the end

Only SYN, FIN and RST segments reach rsthound (a BPF filter in the kernel), so a busy
host costs little. One line per reset (its kind: refused, abort, after-close, stray,
injected?) and per connection whose SYNs went unanswered (timeout). On exit, the
packet counts, and the kernel's drops, as tcpdump prints them.

exit status: 0 stopped (-c, --duration, Ctrl-C, SIGTERM); 2 error (no privilege, no
such interface, a bad filter).
"""


DIAGNOSE_EPILOG = """\
examples:
  sudo rsthound diagnose                  this host, 3 s: what fails, who, why, what to do
  sudo rsthound diagnose --duration 10    a longer look, for rarer failures
  sudo rsthound diagnose --netns blue     the namespace 'ip netns' calls blue
  sudo rsthound diagnose --json | jq '.findings[0]'
  rsthound demo                           the whole story, in a namespace of its own

It captures on every interface (loopback included), traces the kernel for the process
behind each connect and the reason for each reset, reads the counters, the listeners,
the firewall rules and watch's history, then ranks what it found. Causes: no-listener,
firewall-reject, firewall-drop, unreachable, listen-overflow, peer-abort, local-abort,
normal. Without root it reads what it can (counters, listeners) and says what it skipped.

exit status: 0 nothing abnormal; 1 something abnormal found; 2 error.
"""


DEMO_EPILOG = """\
Needs root (it makes a network namespace). In it: a service, 'collector', listens on
127.0.0.1:7211 while 'rsthound watch' keeps a history; the collector dies; a client,
'shipper', keeps connecting twice a second. Then 'rsthound diagnose' runs there, and
everything is removed. Nothing leaves the namespace.

exit status: 1 (diagnose found the failure, as it should); 2 error.
"""


LISTENERS_EPILOG = """\
examples:
  rsthound listeners                 this host's listeners
  rsthound listeners --netns blue    those of 'ip netns' namespace blue
  rsthound listeners --json | jq 'select(.full)'

QUEUE is how many connections wait for accept(); at BACKLOG the queue is full and new
connections are dropped (FULL). DROPS counts what this listener dropped so far.
Processes of other users are named only to root.

exit status: 0 shown; 2 error.
"""


HISTORY_EPILOG = """\
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


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


class _UsageError(Exception):
    pass


def _time_arg(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: use Unix seconds or ISO 8601 like 2026-11-22T10:54:50"
        ) from None
    return t.timestamp()


_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def _when_arg(text: str) -> float:
    """'30m', '6h', '7d' ago, or a time as _time_arg reads it."""
    import re
    import time

    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|min|m|h|d|w)", text.strip())
    if m:
        return time.time() - float(m[1]) * _UNITS[m[2]]
    try:
        return _time_arg(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: use 30m, 6h, 7d (ago), ISO 8601 like "
            "2026-11-22T10:54:50, or Unix seconds") from None


def _metric_arg(text: str) -> str:
    from rsthound.metrics import BY_NAME

    for name in BY_NAME:
        if text.lower() in (name.lower(), name.replace(".", "").lower()):
            return name
    raise argparse.ArgumentTypeError(
        f"{text!r} is not a counter rsthound keeps; one of: {', '.join(BY_NAME)}")


def _port_arg(text: str) -> int:
    try:
        p = int(text)
    except ValueError:
        p = -1
    if not 0 <= p <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return p


def _host_arg(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IPv4 or IPv6 address") from None


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="rsthound",
        description="Track down failed TCP connections and RST packets, and explain them.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'rsthound COMMAND --help' for a command's options and examples.",
    )
    p.add_argument("--version", action="version", version=f"rsthound {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    a = sub.add_parser(
        "analyze",
        help="failed connections and resets in pcap/pcapng files",
        description="Classify every TCP connection and reset in capture files\n"
        "(pcap or pcapng, from tcpdump, dumpcap, Wireshark or any other tool).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=ANALYZE_EPILOG,
    )
    a.add_argument("files", nargs="+", metavar="FILE",
                   help="pcap or pcapng capture file(s); - reads standard input")
    view = a.add_mutually_exclusive_group()
    view.add_argument("--resets", action="store_true", help="one line per reset, with its kind")
    view.add_argument("--conns", action="store_true", help="one line per connection (conn.log)")
    a.add_argument("--json", action="store_true",
                   help="JSON: the summary as one object; with --resets/--conns, JSON lines")
    a.add_argument("--port", type=_port_arg, action="append", default=[],
                   help="only connections with this port on either side (repeatable)")
    a.add_argument("--host", type=_host_arg, action="append", default=[],
                   help="only connections with this address on either side (repeatable)")
    a.add_argument("--since", type=_time_arg, help="only packets at or after this time")
    a.add_argument("--until", type=_time_arg, help="only packets before this time")
    a.add_argument("--top", type=int, default=10, help="services in the table (default 10)")
    a.add_argument("--max-conns", type=int, default=200_000,
                   help="connections tracked at once before the oldest are ended "
                   "(bounds memory; default 200000)")
    a.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    a.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    c = sub.add_parser(
        "counters",
        help="the kernel's TCP failure counters, their rates and meaning",
        description="The kernel's counters of failed connections and resets\n"
        "(/proc/net/snmp and /proc/net/netstat), their rates, and what each one means.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=COUNTERS_EPILOG,
    )
    c.add_argument("--interval", type=_seconds_arg, default=1.0,
                   help="seconds between the two samples the rates come from "
                   "(default 1; 0: values only)")
    c.add_argument("--json", action="store_true",
                   help='one object: {"Tcp.AttemptFails": {"value": N, "rate": R}, ...}')
    _add_namespace_args(c)
    c.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    w = sub.add_parser(
        "watch",
        help="always on: counters -> alerts that say which case it is",
        description="Sample the kernel's TCP counters, raise and clear alerts (levels, this "
        "host's\nbaseline, hysteresis), and say which case the counters show.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=WATCH_EPILOG,
    )
    w.add_argument("--interval", type=_seconds_arg, default=1.0,
                   help="seconds between samples (default 1)")
    w.add_argument("--duration", type=_seconds_arg, help="stop after this many seconds")
    w.add_argument("--json", action="store_true", help="one JSON object per event")
    w.add_argument("--config", metavar="FILE", help="alert rules and notifications (TOML)")
    w.add_argument("--webhook", metavar="URL", help="POST each event as JSON to this URL")
    w.add_argument("--alertmanager", metavar="URL",
                   help="send alerts to this Alertmanager (its /api/v2/alerts)")
    w.add_argument("--host", help="the host name in alerts (default: this host's name)")
    w.add_argument("--no-investigate", action="store_true",
                   help="do not run diagnose's investigation (3 s) when an alert fires")
    w.add_argument("--listen", metavar="[ADDR:]PORT",
                   help="serve /metrics (Prometheus), a dashboard at / and /api/... here "
                   "(address 127.0.0.1 unless given)")
    w.add_argument("--token-file", metavar="FILE",
                   help="with --listen: require 'Authorization: Bearer' with this file's token")
    w.add_argument("--basic-auth-file", metavar="FILE",
                   help="with --listen: require basic authentication, USER:PASSWORD in FILE")
    w.add_argument("--services", type=int, default=20, metavar="N",
                   help="with --listen: services with their own label in /metrics, the "
                   "rest are 'other' (default 20)")
    w.add_argument("--no-capture", action="store_true",
                   help="with --listen: no always-on capture (only the kernel's counters)")
    w.add_argument("--user", metavar="NAME",
                   help="start as root, open what needs it (capture, tracing, sockets), "
                   "then run as this user")
    _add_db_args(w)
    _add_namespace_args(w)
    w.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    cap = sub.add_parser(
        "capture",
        help="resets and failed connections in live traffic, every interface",
        description="Resets and failed connections in live traffic, classified as they "
        "come,\non every interface (loopback included) unless told otherwise.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=CAPTURE_EPILOG,
    )
    cap.add_argument("expression", nargs="*", metavar="EXPRESSION",
                     help="a tcpdump filter expression (port 7211, host 10.0.0.5, ...)")
    cap.add_argument("-i", "--interface", default="any", metavar="IFACE",
                     help="the interface (default any: all of them, loopback included)")
    cap.add_argument("-c", "--count", type=int, metavar="N",
                     help="stop after N resets or failed connections")
    cap.add_argument("--duration", type=_seconds_arg, help="stop after this many seconds")
    cap.add_argument("-w", "--write", metavar="FILE",
                     help="also write the packets rsthound sees to a pcap file")
    cap.add_argument("-s", "--snaplen", type=int, default=256, metavar="BYTES",
                     help="bytes kept of each packet (default 256: all headers)")
    cap.add_argument("--json", action="store_true", help="one JSON object per event")
    cap.add_argument("--summary", action="store_true",
                     help="a summary of the failing services at the end")
    cap.add_argument("--no-trace", action="store_true",
                     help="do not name processes (no kernel tracing through tracefs)")
    cap.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    d = sub.add_parser(
        "diagnose",
        help="the whole investigation: what fails, who, why, since when, what to do",
        description="Watch this host for a few seconds with everything rsthound has, then "
        "say what\nfails, which process does it, why, since when, and what to do.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=DIAGNOSE_EPILOG,
    )
    d.add_argument("--duration", type=_seconds_arg, default=3.0,
                   help="seconds to watch (default 3)")
    d.add_argument("--json", action="store_true", help="one JSON object")
    d.add_argument("--no-trace", action="store_true",
                   help="do not trace the kernel (no process names or reset reasons)")
    _add_db_args(d, write=False)
    _add_namespace_args(d, proc_root=False)
    d.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    dm = sub.add_parser(
        "demo",
        help="recreate a refused-connection case in a private namespace and diagnose it",
        description="Recreate the classic case (a client knocking on 127.0.0.1:7211 twice "
        "a second,\nwhere a service that used to listen has died) in a private network "
        "namespace,\nrun 'rsthound diagnose' on it, and clean up.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=DEMO_EPILOG,
    )
    dm.add_argument("--json", action="store_true", help="diagnose's JSON object")
    dm.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    li = sub.add_parser(
        "listeners",
        help="who listens where: accept queues, backlogs, drops, processes",
        description="Listening TCP sockets with their accept queue, backlog, drops and "
        "owning process\n(sock_diag netlink, as 'ss -ltnpm' shows them).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=LISTENERS_EPILOG,
    )
    li.add_argument("--json", action="store_true", help="one JSON object per listener")
    _add_namespace_args(li, proc_root=False)
    li.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    h = sub.add_parser(
        "history",
        help="a counter's rate over time, with the alerts, from watch's history",
        description="A counter's rate over time as 'rsthound watch' recorded it, as a "
        "terminal chart\nwith its alerts marked.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=HISTORY_EPILOG,
    )
    h.add_argument("--since", type=_when_arg, default="1h", metavar="WHEN",
                   help="from when: 30m, 6h, 7d ago, or a time (ISO 8601, Unix seconds); "
                   "default 1h")
    h.add_argument("--until", type=_when_arg, metavar="WHEN", help="until when (default: now)")
    h.add_argument("--metric", type=_metric_arg, default="Tcp.AttemptFails", metavar="NAME",
                   help="the counter, by its kernel name (default Tcp.AttemptFails; "
                   "'rsthound counters' lists them)")
    h.add_argument("--port", type=_port_arg, metavar="PORT",
                   help="instead: who listened on this port, and until when")
    h.add_argument("--json", action="store_true", help="one object: the rows and the alerts")
    _add_db_args(h, write=False)
    h.add_argument("--netns", metavar="NAME|PID",
                   help="the history 'watch --netns' wrote for this namespace")
    h.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    return p


def _add_db_args(p: argparse.ArgumentParser, write: bool = True) -> None:
    p.add_argument("--db", metavar="FILE",
                   help="the history file (default: /var/lib/rsthound/history.db as root, "
                   "else ~/.local/state/rsthound/history.db; one per --netns)")
    if write:
        p.add_argument("--no-history", action="store_true", help="keep no history")


def _add_namespace_args(p: argparse.ArgumentParser, proc_root: bool = True) -> None:
    p.add_argument("--netns", metavar="NAME|PID",
                   help="another network namespace: a name from 'ip netns list', or a "
                   "process id (needs root)")
    if not proc_root:
        return
    p.add_argument("--proc-root", metavar="DIR", default="/proc",
                   help="where proc is mounted (in a container: /host/proc, which reads "
                   "the host's counters); default /proc")


def _seconds_arg(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not 0 <= v <= 86400:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0-86400)")
    return v


def main(argv: Sequence[str] | None = None, stdout: TextIO | None = None,
         stderr: TextIO | None = None) -> int:
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else sys.argv[1:])
    except _UsageError as e:
        err.write(f"{e}\n")
        return Exit.ERROR
    except SystemExit as e:  # --help, --version
        return int(e.code or 0)
    if args.command is None:
        parser.print_help(out)
        return Exit.ERROR
    commands: dict[str, Callable[[argparse.Namespace, TextIO, TextIO], int]] = {
        "analyze": _cmd_analyze,
        "counters": _cmd_counters,
        "watch": _cmd_watch,
        "history": _cmd_history,
        "capture": _cmd_capture,
        "listeners": _cmd_listeners,
        "diagnose": _cmd_diagnose,
        "demo": _cmd_demo,
    }
    try:
        return commands[args.command](args, out, err)
    except RstHoundError as e:
        if args.debug:
            traceback.print_exc(file=err)
        err.write(f"rsthound: {e}\n")
        return Exit.ERROR
    except KeyboardInterrupt:
        err.write("rsthound: interrupted\n")
        return 130
    except BrokenPipeError:
        # the reader went away (| head): say nothing, as other Unix tools do
        _silence_stdout()
        return Exit.OK


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _cmd_analyze(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from rsthound.analyze.session import Analysis, Selection
    from rsthound.pipeline import analyze_file
    from rsthound.report import jsonout, text

    sel = Selection(tuple(args.port), tuple(args.host), args.since, args.until)
    on_conn = on_reset = None
    if args.conns:
        on_conn = (lambda c: out.write(jsonout.line(jsonout.conn_obj(c)))) if args.json else (
            lambda c: out.write(text.render_conn(c) + "\n"))
        if not args.json:
            out.write(text.CONN_HEADER + "\n")
    if args.resets:
        on_reset = (lambda r: out.write(jsonout.line(jsonout.reset_obj(r)))) if args.json else (
            lambda r: out.write(text.render_reset(r) + "\n"))
    analysis = Analysis(sel, on_conn, on_reset, max_conns=args.max_conns)
    damages = analysis.summary.damages
    used: list[str] = []
    failed = 0
    progress = _Progress(args.files, err, enabled=not args.no_progress)
    for path in args.files:
        try:
            analyze_file(path, analysis, lambda off, p=path: progress.update(p, off))
            used.append(path)
        except BadInput as e:
            if args.debug:
                traceback.print_exc(file=err)
            err.write(f"rsthound: {e}\n")
            failed += 1
        progress.done(path)
    progress.close()
    summary = analysis.finish(used)
    for d in damages:
        err.write(f"rsthound: damaged: {d.describe()}\n")
    if not used:
        return Exit.ERROR
    if not (args.conns or args.resets):
        out.write(jsonout.render_summary_json(summary) if args.json else text.render_summary(
            summary, top=args.top))
    if failed:
        return Exit.ERROR
    return Exit.DAMAGED if damages else Exit.OK


def _cmd_counters(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import time

    from rsthound.analyze.rates import rates
    from rsthound.report.counters import render_counters, render_counters_json
    from rsthound.sources.procfs import CounterReader

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


def _cmd_watch(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from rsthound.watcher import run_watch

    run_watch(args, out, err)
    return Exit.OK


def _cmd_capture(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import collections
    import signal
    import threading
    import time

    from rsthound.analyze.rates import increase
    from rsthound.analyze.session import Analysis
    from rsthound.model import Conn, Reset, ResetKind
    from rsthound.report import jsonout, text
    from rsthound.sources.live import LiveCapture

    expression = " ".join(args.expression) or None
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
    tracer = None  # started once the capture is open: no privilege, one line
    delay = 0.0
    pending: collections.deque[tuple[float, Reset | Conn]] = collections.deque()
    reported = 0

    def tell(ev: Reset | Conn) -> None:
        nonlocal reported
        if args.count and reported >= args.count:
            return
        proc = reason = None
        is_reset = isinstance(ev, Reset)
        if tracer is not None and is_reset:
            proc = tracer.process(ev.dport, ev.sport) or tracer.process(ev.sport, ev.dport)
            reason = tracer.reason(ev.src, ev.sport, ev.dst, ev.dport)
        elif tracer is not None:
            proc = tracer.process(ev.orig_p, ev.resp_p)
        if args.json and is_reset:
            out.write(jsonout.reset_line(ev, reason, proc))
        elif args.json:
            obj = jsonout.failure_obj(ev)
            obj["reason"] = reason
            obj["process"] = proc.obj() if proc else None
            out.write(jsonout.line(obj))
        else:
            line = text.render_reset(ev) if is_reset else text.render_failure(ev)
            if reason:
                line += f"  reason {reason}"
            if proc:
                line += f"  connect by {proc.text()}"
            out.write(line + "\n")
        reported += 1
        if args.count and reported >= args.count:
            stop.set()

    def flush(now: float) -> None:
        if pending and pending[0][0] <= now:
            while pending and pending[0][0] <= now:
                tell(pending.popleft()[1])
            out.flush()  # once per batch: a storm's lines go out in few writes

    seen_resets = 0

    def on_reset(r: Reset) -> None:
        nonlocal seen_resets
        seen_resets += 1
        if not live_view:
            pending.append((time.monotonic() + delay, r))

    def on_conn(c: Conn) -> None:
        if c.failure is ResetKind.TIMEOUT and not live_view:
            pending.append((time.monotonic() + delay, c))

    # --summary on a terminal: a table that updates every second instead of event lines
    live_view = args.summary and not args.json and out.isatty()
    rsts_before = _out_rsts()

    try:
        with LiveCapture(args.interface, expression, args.snaplen, write=args.write) as live:
            tracer = None if args.no_trace else _start_tracer(err)
            # events wait a moment before they are told: the trace of the same connect may
            # still be on its way (it names the process)
            delay = 0.3 if tracer is not None else 0.0
            analysis = Analysis(on_conn=on_conn, on_reset=on_reset, ifname=live.ifname,
                                summarize=args.summary)
            where = "every interface" if args.interface == "any" else args.interface
            err.write(f"rsthound: capturing on {where}, SYN/FIN/RST only"
                      + (f", and {expression}" if expression else "")
                      + (f", for {args.duration:g} s" if args.duration else "")
                      + (f", writing {args.write}" if args.write else "") + "; Ctrl-C stops\n")
            err.flush()
            end = time.monotonic() + args.duration if args.duration else None

            def should_stop() -> bool:
                return stop.is_set() or (end is not None and time.monotonic() >= end)

            files = [f"live capture on {where}"]

            def render() -> str:
                return text.render_summary(analysis.snapshot(files), command="capture")

            view = _LiveSummary(out) if live_view else None
            for batch in live.batches(should_stop):
                if len(batch):
                    analysis.feed(batch)
                analysis.table.expire_unanswered(time.time())
                flush(time.monotonic())
                if view is not None:
                    view.show(render)
            if not stop.is_set():
                analysis.table.close()  # what was still open: timeouts among them
            if view is not None:  # the last frame: everything
                view.show(render, force=True)
                view.close()
            stats = live.stats()
        if pending and delay:
            time.sleep(delay)
        flush(float("inf"))
    finally:
        if tracer is not None:
            tracer.close()
    summary = analysis.finish(files)
    if args.summary and not args.json and not live_view:
        out.write(text.render_summary(summary, command="capture"))
    err.write(f"rsthound: {stats.captured} packets captured, {stats.received} received by "
              f"filter, {stats.dropped} dropped by kernel, {stats.ifdropped} dropped by "
              "interface\n")
    if tracer is not None and tracer.behind:
        err.write("rsthound: the trace came faster than rsthound reads it (packets come "
                  "first): some events name no process\n")
    rsts_after = _out_rsts()
    if rsts_before is not None and rsts_after is not None:
        sent = increase(rsts_before, rsts_after)
        lost = ("; resets went missing in the kernel's drops"
                if stats.dropped and seen_resets < sent else "")
        err.write(f"rsthound: {seen_resets} resets seen; this host's TCP sent {sent} "
                  f"meanwhile (Tcp.OutRsts){lost}\n")
    return Exit.OK


def _out_rsts() -> int | None:
    """Tcp.OutRsts of this namespace, None where it cannot be read."""
    from rsthound.errors import RstHoundError
    from rsthound.sources.procfs import CounterReader

    try:
        with CounterReader() as reader:
            return reader.read().values.get("Tcp.OutRsts")
    except (RstHoundError, OSError):
        return None


class _LiveSummary:
    """`capture --summary` on a terminal: the summary, redrawn once a second."""

    def __init__(self, out: TextIO) -> None:
        import time

        from rich.console import Console
        from rich.live import Live

        self._time = time.monotonic
        self._next = 0.0
        self.live = Live(console=Console(file=out), auto_refresh=False, transient=False)
        self.live.start()

    def show(self, render: Callable[[], str], force: bool = False) -> None:
        from rich.text import Text

        if force or self._time() >= self._next:
            self._next = self._time() + 1.0
            self.live.update(Text(render()), refresh=True)

    def close(self) -> None:
        self.live.stop()


def _start_tracer(err: TextIO) -> Any:
    """The tracefs reader that names processes; None (said once) where it cannot run."""
    from rsthound.errors import RstHoundError
    from rsthound.sources.tracefs import Tracer

    try:
        return Tracer()
    except (RstHoundError, OSError) as e:
        err.write(f"rsthound: no process names: {e}; capture goes on without them\n")
        return None


def _cmd_diagnose(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import signal
    import socket
    import threading

    from rsthound.analyze.diagnosis import diagnose
    from rsthound.investigate import collect
    from rsthound.report.diagnosis import diagnosis_obj, render_diagnosis
    from rsthound.report.jsonout import line
    from rsthound.sources.procfs import netns_label

    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    where = netns_label(args.netns)
    err.write(f"rsthound: watching {where} for {args.duration:g} s: capture on every "
              "interface, kernel trace, counters, listeners\n")
    err.flush()
    facts = collect(args.duration, args.netns, args.db, trace=not args.no_trace,
                    should_stop=stop.is_set)
    findings = diagnose(facts)
    host = socket.gethostname() + ("" if args.netns is None else f" ({where})")
    if args.json:
        out.write(line(diagnosis_obj(host, facts, findings)))
    else:
        out.write(render_diagnosis(host, facts, findings))
    return Exit.FOUND if any(x.abnormal for x in findings) else Exit.OK


def _cmd_demo(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from rsthound.demo import run_demo

    return run_demo(args.json, out, err)


def _cmd_listeners(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import time

    from rsthound.report.jsonout import line
    from rsthound.report.listeners import listener_obj, render_listeners
    from rsthound.sources.procfs import netns_label
    from rsthound.sources.sockdiag import listeners

    found, source = listeners(args.netns)
    if args.json:
        out.write("".join(line(listener_obj(x)) for x in found))
    else:
        label = netns_label(args.netns)
        out.write(render_listeners(found, label, source, time.time()))
    return Exit.OK


def _cmd_history(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import shutil
    import time

    from rsthound.metrics import BY_NAME
    from rsthound.report import history as view
    from rsthound.report.jsonout import line
    from rsthound.sinks.history import History, default_path
    from rsthound.sources.procfs import netns_label

    until = args.until if args.until is not None else time.time()
    since = args.since
    if since >= until:
        err.write("rsthound history: --since must be before --until\n")
        return Exit.ERROR
    path = args.db or default_path(args.netns)
    metric = BY_NAME[args.metric]
    if args.port is not None:
        return _history_of_port(args, path, out)
    with History(path) as store:
        label = store.label or netns_label(args.netns)
        lo, hi = round(since * 1000), round(until * 1000)
        points = store.series(metric.name, lo, hi)
        events = [e for e in store.events(lo, hi) if e.get("metric") == metric.name]
    if args.json:
        out.write(line(view.history_obj(metric, label, path, since, until, points, events)))
    else:
        width = min(200, shutil.get_terminal_size((80, 24)).columns)
        out.write(view.render_history(metric, label, since, until, points, events, width))
    return Exit.OK


def _history_of_port(args: argparse.Namespace, path: str, out: TextIO) -> int:
    from rsthound.report.jsonout import line
    from rsthound.report.served import render_served, served_obj
    from rsthound.sinks.history import History
    from rsthound.sources.portnames import port_name
    from rsthound.sources.procfs import netns_label

    with History(path) as store:
        label = store.label or netns_label(args.netns)
        rows = store.served(args.port)
        as_of = store.end_ms / 1000
    name = port_name(args.port)
    out.write(line(served_obj(args.port, label, name, rows, as_of)) if args.json
              else render_served(args.port, label, name, rows, as_of))
    return Exit.OK


class _Progress:
    """A progress bar on stderr for big files, when stderr is a terminal."""

    def __init__(self, files: list[str], err: TextIO, enabled: bool) -> None:
        self.bar = None
        sizes = {}
        for f in files:
            try:
                sizes[f] = os.path.getsize(f)
            except OSError:
                sizes[f] = 0
        self.sizes = sizes
        if not (enabled and err.isatty() and sum(sizes.values()) >= PROGRESS_MIN_BYTES):
            return
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

        self.bar = Progress(
            "[progress.description]{task.description}", BarColumn(), DownloadColumn(),
            TimeRemainingColumn(), console=Console(file=err), transient=True,
        )
        self.bar.start()
        self.tasks = {f: self.bar.add_task(os.path.basename(f), total=s) for f, s in sizes.items()}

    def update(self, path: str, offset: int) -> None:
        if self.bar is not None:
            self.bar.update(self.tasks[path], completed=offset)

    def done(self, path: str) -> None:
        if self.bar is not None:
            self.bar.update(self.tasks[path], completed=self.sizes[path])

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
