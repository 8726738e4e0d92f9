"""`rsthound capture`: resets and failed connections in live traffic, classified as they
come, on every interface unless told otherwise, each named with its process where the
kernel trace allows."""

from __future__ import annotations

import argparse
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from rsthound.analyze.diagnosis import Seen
from rsthound.analyze.rates import increase
from rsthound.commands import Exit, options
from rsthound.model import FailedConnect, Icmp, Reset, ResetKind
from rsthound.observe.observation import TRACE_LAG, Observation
from rsthound.observe.sightings import Pairing, Sightings, both_ways
from rsthound.report import jsonout, text
from rsthound.textforms import clock

EPILOG = """\
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


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "capture",
        help="resets and failed connections in live traffic, every interface",
        description="Resets and failed connections in live traffic, classified as they "
        "come,\non every interface (loopback included) unless told otherwise.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    p.add_argument("expression", nargs="*", metavar="EXPRESSION",
                   help="a tcpdump filter expression (port 7211, host 10.0.0.5, ...)")
    p.add_argument("-i", "--interface", default="any", metavar="IFACE",
                   help="the interface (default any: all of them, loopback included)")
    p.add_argument("-c", "--count", type=options.count_arg(1), metavar="N",
                   help="stop after N resets or failed connections")
    p.add_argument("--duration", type=options.seconds_arg, help="stop after this many seconds")
    p.add_argument("-w", "--write", metavar="FILE",
                   help="also write the packets rsthound sees to a pcap file")
    p.add_argument("-s", "--snaplen", type=options.count_arg(128, 262144), default=256,
                   metavar="BYTES",
                   help="bytes kept of each packet (default 256; 128 at least: every header "
                   "rsthound reads, an ICMPv6 error quoting IPv6 and TCP included)")
    p.add_argument("--json", action="store_true", help="one JSON object per event")
    p.add_argument("--summary", action="store_true",
                   help="a summary of the failing services at the end (with --json: the "
                   "last line, {\"event\": \"summary\", ...})")
    p.add_argument("--no-trace", action="store_true",
                   help="do not name processes (no kernel tracing through tracefs)")
    options.add_namespace(p)
    options.add_debug(p)


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    expression = " ".join(args.expression) or None
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
    # --summary on a terminal: a table that updates every second instead of event lines
    live_view = args.summary and not args.json and out.isatty()
    reported = 0

    def tell(s: Seen) -> None:
        nonlocal reported
        if args.count and reported >= args.count:
            return
        ev = s.event
        if args.json and ev is None and s.connect is not None:
            out.write(jsonout.line(jsonout.connect_obj(s.connect)))
        elif args.json and isinstance(ev, Reset):
            out.write(jsonout.reset_line(ev, s.reason, s.process))
        elif args.json:
            obj = jsonout.icmp_obj(ev) if isinstance(ev, Icmp) else jsonout.failure_obj(ev)
            obj["reason"] = s.reason
            obj["process"] = s.process.obj() if s.process else None
            out.write(jsonout.line(obj))
        else:
            line = s.line
            if s.reason:
                line += f"  reason {s.reason}"
            if s.process:
                line += f"  connect by {s.process.text()}"
            out.write(line + "\n")
        reported += 1
        if args.count and reported >= args.count:
            stop.set()

    with Observation(args.netns, command="capture", trace=not args.no_trace,
                     listeners=False, require=("capture",), proc_root=args.proc_root,
                     iface=args.interface, expression=expression, snaplen=args.snaplen,
                     write=args.write) as obs:
        rsts_before = obs.counter_values().get("Tcp.OutRsts")
        delay = TRACE_LAG if obs.tracer is not None else 0.0  # lines wait for their names
        sights = Sightings(obs, summarize=args.summary)
        pairing = Pairing()
        where = "every interface" if args.interface == "any" else args.interface
        err.write(f"rsthound: capturing on {where}, SYN/FIN/RST and ICMP unreachables only"
                  + (f", and {expression}" if expression else "")
                  + (f", for {args.duration:g} s" if args.duration else "")
                  + (f", writing {args.write}" if args.write else "") + "; Ctrl-C stops\n")
        for s in obs.skipped:
            err.write(f"rsthound: without {s.text()}\n")
        err.flush()
        end = time.monotonic() + args.duration if args.duration else None

        def should_stop() -> bool:
            return stop.is_set() or (end is not None and time.monotonic() >= end)

        def flush(until: float, final: bool = False) -> None:
            told = sights.take(until)
            # connects the trace saw fail that no line told: no route, no neighbour, a
            # program that gave up on its SYNs before they counted as a timeout
            shown = both_ways(told)
            told += [alone(x) for x in pairing.pair(told, obs.failed_connects(), time.time(),
                                                    final)
                     if x.pair not in shown and obs.live is not None
                     and obs.live.selects(x.src, x.sport, x.dst, x.dport)]
            if not live_view:
                for s in told:
                    tell(s)
            if told:
                out.flush()  # once per batch: a storm's lines go out in few writes

        files = [f"live capture on {where}"]

        def render() -> str:
            return text.render_summary(sights.analysis.snapshot(files), command="capture")

        view = LiveSummary(out) if live_view else None
        for batch in obs.batches(should_stop):
            sights.feed(batch)
            sights.expire(time.time())
            flush(time.monotonic() - delay)
            if view is not None:
                view.show(render)
        if not stop.is_set():
            sights.close()  # what was still open: timeouts among it
        if view is not None:  # the last frame: everything
            view.show(render, force=True)
            view.close()
        stats = obs.live.stats() if obs.live is not None else None
        if delay:
            time.sleep(delay)
        flush(float("inf"), final=True)
        behind = obs.behind
        rsts_after = obs.counter_values().get("Tcp.OutRsts")
    summary = sights.analysis.finish(files)
    if args.summary and args.json:  # the last line: the summary, as analyze --json has it
        out.write(jsonout.line({"event": "summary"} | jsonout.summary_obj(summary)))
    elif args.summary and not live_view:
        out.write(text.render_summary(summary, command="capture",
                                      columns=text.WIDTH if out.isatty() else None))
    if stats is not None:
        err.write(f"rsthound: {stats.captured} packets captured, {stats.received} received "
                  f"by filter, {stats.dropped} dropped by kernel, {stats.ifdropped} dropped "
                  "by interface\n")
    if behind:
        err.write("rsthound: the trace came faster than rsthound reads it (packets come "
                  "first): some events name no process\n")
    if rsts_before is not None and rsts_after is not None:
        sent = increase(rsts_before, rsts_after)
        lost = ("; resets went missing in the kernel's drops"
                if stats is not None and stats.dropped and sights.resets < sent else "")
        err.write(f"rsthound: {sights.resets} resets seen; this host's TCP sent {sent} "
                  f"meanwhile (Tcp.OutRsts){lost}\n")
    return Exit.OK


def alone(x: FailedConnect) -> Seen:
    """A failed connect the capture saw nothing of, as a line of its own."""
    line = f"{clock(x.end, micros=True)} {x.text()}, no packet captured"
    return Seen(x.end, ResetKind.STRAY, (x.dst, x.dport), (x.src, x.sport), None, line,
                x.process, None, None, x)


class LiveSummary:
    """`capture --summary` on a terminal: the summary, redrawn once a second."""

    def __init__(self, out: TextIO) -> None:
        from rich.console import Console
        from rich.live import Live

        self._next = 0.0
        self.live = Live(console=Console(file=out), auto_refresh=False, transient=False)
        self.live.start()

    def show(self, render: Callable[[], str], force: bool = False) -> None:
        from rich.text import Text

        if force or time.monotonic() >= self._next:
            self._next = time.monotonic() + 1.0
            self.live.update(Text(render()), refresh=True)

    def close(self) -> None:
        self.live.stop()
