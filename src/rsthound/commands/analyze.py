"""`rsthound analyze FILE...`: every connection and reset in capture files, classified."""

from __future__ import annotations

import argparse
import os
import shutil
import time
import traceback
from typing import Any, TextIO

from rsthound.analyze.session import Analysis, Selection
from rsthound.commands import Exit, options
from rsthound.errors import BadInput
from rsthound.pipeline import analyze_file
from rsthound.report import jsonout, text
from rsthound.sources.capfile import PacketFilter
from rsthound.textforms import DatedClock

PROGRESS_MIN_BYTES = 64 << 20

EPILOG = """\
examples:
  rsthound analyze capture.pcap             summary: failing services, findings
  rsthound analyze --resets capture.pcap    one line per reset, with its kind
  rsthound analyze --conns --json a.pcapng  a JSON line per connection (Zeek)
  rsthound analyze --port 7211 --since 2026-11-22T10:54:00 dump.pcap
  rsthound analyze dump.pcap 'host 10.0.0.5 and port 5432'   tcpdump's filter syntax

  control packets alone are enough, and keep captures small:
  tcpdump -i any -w rst.pcap 'tcp[tcpflags] & (tcp-syn|tcp-rst|tcp-fin) != 0'
  tcpdump -i any -c 500 -w - 'tcp[tcpflags] & tcp-rst != 0' | rsthound analyze -

exit status: 0 analysed; 2 error (no usable input); 3 analysed, but part of a
file was damaged and skipped (said on stderr and in the output).
"""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "analyze",
        help="failed connections and resets in pcap/pcapng files",
        description="Classify every TCP connection and reset in capture files\n"
        "(pcap or pcapng, from tcpdump, dumpcap, Wireshark or any other tool).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    p.add_argument("files", nargs="+", metavar="FILE [EXPRESSION]",
                   help="pcap or pcapng capture file(s), - for standard input; then, as "
                   "tcpdump -r takes it, a filter expression (port 7211, host 10.0.0.5)")
    view = p.add_mutually_exclusive_group()
    view.add_argument("--resets", action="store_true", help="one line per reset, with its kind")
    view.add_argument("--conns", action="store_true", help="one line per connection (conn.log)")
    p.add_argument("--tttt", action="store_true",
                   help="dates in --conns and --resets times, as tcpdump -tttt (else they "
                   "come once the lines cross midnight)")
    p.add_argument("--json", action="store_true",
                   help="JSON: the summary as one object; with --resets/--conns, JSON lines")
    p.add_argument("--port", type=options.port_arg, action="append", default=[],
                   help="only connections with this port on either side (repeatable)")
    p.add_argument("--host", type=options.host_arg, action="append", default=[],
                   help="only connections with this address on either side (repeatable)")
    p.add_argument("--since", type=options.time_arg, help="only packets at or after this time")
    p.add_argument("--until", type=options.time_arg, help="only packets before this time")
    p.add_argument("--top", type=options.count_arg(0), default=10,
                   help="services in the table (default 10; 0: no table)")
    p.add_argument("--max-conns", type=options.count_arg(1), default=200_000,
                   help="connections tracked at once before the oldest are ended "
                   "(bounds memory; default 200000)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    options.add_debug(p)


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    files, expression = split_inputs(args.files)
    if expression:  # said before any file is read
        PacketFilter(expression)
    args.files = files
    when = DatedClock(always=args.tttt)
    sel = Selection(tuple(args.port), tuple(args.host), args.since, args.until)
    on_conn = on_reset = None
    if args.conns:
        on_conn = (lambda c: out.write(jsonout.line(jsonout.conn_obj(c)))) if args.json else (
            lambda c: out.write(text.render_conn(c, when) + "\n"))
        if not args.json:
            out.write(text.CONN_HEADER + "\n")
    if args.resets:
        on_reset = (lambda r: out.write(jsonout.line(jsonout.reset_obj(r)))) if args.json else (
            lambda r: out.write(text.render_reset(r, when) + "\n"))
    analysis = Analysis(sel, on_conn, on_reset, max_conns=args.max_conns)
    damages = analysis.summary.damages
    used: list[str] = []
    failed = 0
    progress = Progress(args.files, err, enabled=not args.no_progress)
    for path in args.files:
        try:
            analyze_file(path, analysis, lambda off, p=path: progress.update(p, off),
                         expression=expression)
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
        width = shutil.get_terminal_size((80, 24)).columns if out.isatty() else None
        out.write(jsonout.render_summary_json(summary) if args.json else text.render_summary(
            summary, top=args.top, columns=width))
    if failed:
        return Exit.ERROR
    return Exit.DAMAGED if damages else Exit.OK


def split_inputs(words: list[str]) -> tuple[list[str], str | None]:
    """The files (each checked before any is read), then the filter expression: what
    follows the last argument that names a file."""
    files: list[str] = []
    rest = list(words)
    while rest and (rest[0] == "-" or os.path.lexists(rest[0])):
        files.append(rest.pop(0))
    def named_file(w: str) -> bool:  # a missing file, not a word of an expression
        return "/" in w or w.endswith((".pcap", ".pcapng", ".cap", ".gz"))

    if not files:
        raise BadInput("no such file" + ("" if named_file(words[0]) else " (files come "
                       "first, then a filter expression, as tcpdump -r FILE EXPRESSION)"),
                       words[0])
    for w in rest:
        if named_file(w):
            raise BadInput("no such file", w)
    for f in files:
        if f == "-":
            continue
        if os.path.isdir(f):
            raise BadInput("a directory, not a capture file", f)
        if not os.access(f, os.R_OK):
            raise BadInput("cannot read it: permission denied", f)
    return files, " ".join(rest) or None


class Progress:
    """A progress bar on stderr for big files, when stderr is a terminal."""

    def __init__(self, files: list[str], err: TextIO, enabled: bool) -> None:
        self.bar: Any = None
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

        # refreshed from here, not by a thread of its own: with no thread running, the
        # reading processes can be forked (at once, with this one's settings), not spawned
        self.bar = Progress(
            "[progress.description]{task.description}", BarColumn(), DownloadColumn(),
            TimeRemainingColumn(), console=Console(file=err), transient=True,
            auto_refresh=False,
        )
        self.bar.start()
        self.tasks = {f: self.bar.add_task(os.path.basename(f), total=s) for f, s in sizes.items()}
        self.shown = 0.0

    def update(self, path: str, offset: int) -> None:
        if self.bar is not None:
            self.bar.update(self.tasks[path], completed=offset)
            now = time.monotonic()
            if now - self.shown >= 0.1:
                self.shown = now
                self.bar.refresh()

    def done(self, path: str) -> None:
        if self.bar is not None:
            self.bar.update(self.tasks[path], completed=self.sizes[path])

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
