"""`rsthound watch`: the sampling loop. Counters in, then alerts (stdout, JSON lines,
webhook, Alertmanager), the investigation an alert sets off, the history, and with
`--listen` (or `--user`) the always-on observation behind the metrics and the
investigations."""

from __future__ import annotations

import argparse
import dataclasses
import os
import pwd
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

import rsthound.observe  # noqa: F401  (whole, before `--user` gives up root)
from rsthound.analyze.alerts import TRACED, Alerter
from rsthound.analyze.rates import Ticker
from rsthound.commands import Exit, options
from rsthound.config import load_config
from rsthound.errors import BadInput, RstHoundError
from rsthound.observe.investigate import Investigator
from rsthound.observe.monitor import Monitor
from rsthound.observe.observation import observed_ns
from rsthound.report import alerts as view
from rsthound.report.diagnosis import finding_obj, findings_text
from rsthound.report.jsonout import line
from rsthound.sinks.history import Recorder, default_path
from rsthound.sinks.notify import Poster
from rsthound.sinks.web import Auth, WatchState, WebServer, parse_listen
from rsthound.sources.procfs import CounterReader, in_netns, netns_path
from rsthound.sources.sockdiag import ListenerReader, OwnerCache
from rsthound.textforms import host as url_host
from rsthound.textforms import stamp


class Clock:
    """The loop's time: the system's, or a test's own (which need not wait real seconds)."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        """Sleep up to `seconds`; True when `stop` was set meanwhile."""
        return stop.wait(seconds)


EPILOG = """\
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


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "watch",
        help="always on: counters -> alerts that say which case it is",
        description="Sample the kernel's TCP counters, raise and clear alerts (levels, this "
        "host's\nbaseline, hysteresis), and say which case the counters show.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    p.add_argument("--interval", type=options.interval_arg(0.1), default=1.0,
                   help="seconds between samples (default 1)")
    p.add_argument("--duration", type=options.seconds_arg, help="stop after this many seconds")
    p.add_argument("--json", action="store_true", help="one JSON object per event")
    p.add_argument("--config", metavar="FILE", help="alert rules and notifications (TOML)")
    p.add_argument("--webhook", metavar="URL", type=options.url_arg,
                   help="POST each event as JSON to this URL")
    p.add_argument("--alertmanager", metavar="URL", type=options.url_arg,
                   help="send alerts to this Alertmanager (its /api/v2/alerts)")
    p.add_argument("--host", help="the host name in alerts (default: this host's name)")
    p.add_argument("--no-investigate", action="store_true",
                   help="do not run diagnose's investigation (3 s) when an alert fires")
    p.add_argument("--listen", metavar="[ADDR:]PORT",
                   help="serve /metrics (Prometheus), a dashboard at / and /api/... here "
                   "(address 127.0.0.1 unless given)")
    p.add_argument("--token-file", metavar="FILE",
                   help="with --listen: require 'Authorization: Bearer' with this file's token")
    p.add_argument("--basic-auth-file", metavar="FILE",
                   help="with --listen: require basic authentication, USER:PASSWORD in FILE")
    p.add_argument("--services", type=int, default=20, metavar="N",
                   help="with --listen: services with their own label in /metrics, the "
                   "rest are 'other' (default 20)")
    p.add_argument("--no-capture", action="store_true",
                   help="no always-on capture and trace (as root, watch keeps one for its "
                   "investigations and /metrics; without it, an alert's investigation opens "
                   "its own)")
    p.add_argument("--user", metavar="NAME",
                   help="start as root, open what needs it (capture, tracing, sockets), "
                   "then run as this user")
    options.add_db(p)
    options.add_namespace(p)
    options.add_debug(p)


def run(args: argparse.Namespace, out: TextIO, err: TextIO, clock: Clock | None = None) -> int:
    """Sample, alert, investigate, keep history, serve; until stopped. `clock` is the
    system's unless a test gives its own."""
    clock = clock or Clock()
    if args.user and os.geteuid() != 0:
        raise BadInput("--user: only root can become another user (run it as root)",
                       args.user)
    if args.user and args.netns:
        raise BadInput("--user and --netns: reading another namespace needs root "
                       "throughout (run watch inside the namespace instead: ip netns exec)",
                       args.user)
    _check(args)
    cfg = load_config(args.config)
    interval = args.interval
    host = args.host or cfg.host or socket.gethostname()
    webhook = args.webhook or cfg.webhook
    manager = args.alertmanager or cfg.alertmanager
    if manager and not manager.rstrip("/").endswith("/api/v2/alerts"):
        manager = manager.rstrip("/") + "/api/v2/alerts"
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C and SIGTERM stop it cleanly: what is running is closed, exit status 0
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())

    def say(text: str) -> None:
        err.write(f"rsthound: {text}\n")
        err.flush()

    poster = Poster(say) if webhook or manager else None
    active: dict[str, object] = {}
    notes: dict[str, dict[str, str]] = {}  # rule -> its findings, as Alertmanager annotations
    with CounterReader(args.proc_root, args.netns) as reader:
        db = None if args.no_history else args.db or default_path(args.netns)
        say(f"watching {reader.label} every {interval:g} s with {len(cfg.rules)} rules and "
            f"{len(cfg.baselines)} baseline(s) from {cfg.source}"
            + (f", for {args.duration:g} s" if args.duration else "")
            + (f"; history in {db}" if db else "; no history"))
        history = Recorder(db, reader.identity(), reader.label, say) if db else None
        # the listeners of the namespace whose counters are read (a host's, through
        # --proc-root, is its PID 1's)
        where = observed_ns(args.netns, args.proc_root)
        served = _serve(args, host, reader.label, cfg.rules, interval, db, say)
        state = served[1] if served else None
        # the always-on observation: behind /metrics, and what investigations read once
        # watch runs as a user (it opens the capture and the trace while still root)
        monitor = None
        if not args.no_capture and (args.listen or args.user or os.geteuid() == 0):
            monitor = Monitor(args.netns, top=args.services, proc_root=args.proc_root, db=db)
            monitor.start()
            if state is not None:
                state.monitor = monitor
        sockets = _listener_reader(where, say) if history or state else None
        owners = OwnerCache(args.proc_root)  # for the history and the web page alike
        investigator = None if args.no_investigate else Investigator(
            args.netns, db, should_stop=stop.is_set, monitor=monitor,
            proc_root=args.proc_root)
        if monitor is not None:
            monitor.wait_started()
            if monitor.error:
                say(f"no always-on capture: {monitor.error}")
            for part in monitor.skipped:
                say(f"without {part.text()}")
        alerter = Alerter(*_rules(cfg, monitor is not None and monitor.traced, say))
        if args.user:
            _become(args.user, monitor, db, say)

        def tell_findings(wait: float = 0.0) -> None:
            for alert, facts, findings, error in investigator.finished(wait):
                if error:
                    say(f"investigating {alert.rule}: {error}")
                    continue
                e = dataclasses.replace(alert, event="findings", ts=clock.time())
                summary = findings_text(findings)
                obj = view.event_obj(e, host, reader.label) | {
                    "summary": summary, "findings": [finding_obj(x) for x in findings],
                    "skipped": facts.skipped}
                tell(obj, f"{stamp(e.ts)} FINDINGS {alert.rule}: {summary}\n")
                top = next((x for x in findings if x.abnormal), None)
                notes[alert.rule] = {"findings": summary, "cause": top.cause if top else "",
                                     "service": (top.service or "") if top else ""}
                if poster and manager and alert.rule in active:
                    poster.post(manager, [am_obj(active[alert.rule])])
                if history:
                    history.event(clock.monotonic(), e, obj)

        def tell(obj: dict[str, Any], text: str) -> None:
            """An event (alert, clear, findings) to stdout, the web page and the webhook."""
            out.write(line(obj) if args.json else text)
            out.flush()
            if state is not None:
                state.event(obj)
            if poster and webhook:
                poster.post(webhook, obj)

        def am_obj(e: Any) -> dict[str, Any]:
            obj = view.alertmanager_obj(e, host, reader.label)
            obj["annotations"].update(notes.get(e.rule, {}))
            return obj

        try:
            seen_problems: set[str] = set()
            ticker = Ticker()
            start = clock.monotonic()
            due = start
            last_resend = start
            while True:
                sample = reader.read()
                for p in sample.problems:
                    if p not in seen_problems:
                        seen_problems.add(p)
                        say(f"damaged: {p}")
                values = sample.values
                if monitor is not None and monitor.traced:
                    values = {**values, TRACED: monitor.failed_connects}
                t = ticker.next(clock.monotonic(), clock.time(), values)
                events = [(e, view.event_obj(e, host, reader.label))
                          for e in alerter.observe(t)]
                if state is not None:
                    state.sample(t)
                for e, obj in events:
                    if e.event == "alert":
                        active[e.rule] = e
                    else:
                        active.pop(e.rule, None)
                    tell(obj, view.render_event(e, host))
                    if e.event == "alert" and investigator is not None:
                        investigator.start(e)
                    if poster and manager:
                        poster.post(manager, [am_obj(e)])
                listening = owners.fill(sockets.read()) if sockets is not None else []
                if state is not None:
                    state.listeners(listening)
                if history:  # after the alerts are out: a slow disk must not delay them
                    history.sample(t)
                    if sockets is not None:
                        history.listeners(t.mono, t.wall, listening)
                    for e, obj in events:
                        history.event(t.mono, e, obj)
                if poster and manager and active and t.mono - last_resend >= 60:
                    # Alertmanager resolves an alert it has not heard of for a while
                    last_resend = t.mono
                    poster.post(manager, [am_obj(e) for e in active.values()])
                if investigator is not None:
                    tell_findings()
                due += interval
                if args.duration is not None and due - start > args.duration + 1e-6:
                    break
                if clock.wait(stop, max(0.0, due - clock.monotonic())):
                    break
            if investigator is not None:  # one still running: what it saw is not lost
                tell_findings(wait=investigator.duration + 5)
        finally:  # however the loop ends (a namespace gone, an error): all is closed
            if history:
                history.close()
            if sockets is not None:
                sockets.close()
            if poster:
                poster.close()
            if served:
                served[0].close()
            if monitor is not None:
                monitor.close()
    return Exit.OK


def _check(args: argparse.Namespace) -> None:
    """Everything the command line names is checked before watch says it starts."""
    if args.listen:
        parse_listen(args.listen)
        Auth(args.token_file, args.basic_auth_file)
    if args.user:
        try:
            pwd.getpwnam(args.user)
        except KeyError:
            raise BadInput("no such user", args.user) from None
    if args.db and not args.no_history:
        folder = os.path.dirname(os.path.abspath(args.db))
        if not os.path.isdir(folder):
            raise BadInput(f"its folder {folder} does not exist (create it, or give "
                           "another --db)", args.db)
    if args.netns:
        in_netns(netns_path(args.netns, args.proc_root), lambda: None)


def _serve(args: argparse.Namespace, host: str, label: str, rules: Any, interval: float,
           db: str | None, say: Callable[[str], None]) -> Any:
    """watch --listen: the web server and what it shows."""
    if not args.listen:
        return None
    addr, port = parse_listen(args.listen)
    auth = Auth(args.token_file, args.basic_auth_file)
    state = WatchState(host, label, rules, interval, db)
    server = WebServer(addr, port, state, auth)
    say(f"serving http://{url_host(addr)}:{server.address[1]}/ (/metrics, /api/status)"
        + ("" if auth.required else ", no authentication"))
    return server, state


def _rules(cfg: Any, traced: bool, say: Callable[[str], None]) -> tuple[tuple, tuple]:
    """The rules and baselines to watch with: where the kernel trace counts failed connects,
    the rules on Tcp.AttemptFails count from it instead (it misses ICMP rejects and client
    timeouts), and the ICMP rules that stood in for that are dropped."""
    if not traced:
        return cfg.rules, cfg.baselines
    say(f"failed connections counted from the kernel trace ({TRACED}): every connect that "
        "failed, ICMP rejects and client timeouts included")
    rules = tuple(dataclasses.replace(r, metric=TRACED) if r.metric == "Tcp.AttemptFails"
                  else r for r in cfg.rules if not r.untraced_only)
    baselines = tuple(dataclasses.replace(b, metric=TRACED) if b.metric == "Tcp.AttemptFails"
                      else b for b in cfg.baselines)
    return rules, baselines


def _listener_reader(netns: str | None, say: Callable[[str], None]) -> Any:
    """watch's reader of listeners, for the listener history; None (said once) if none."""
    try:
        return ListenerReader(netns)
    except (RstHoundError, OSError) as e:
        say(f"history: no listener history: {e}")
        return None


# Run as root until watch is gone, then remove the tracefs instances, which only root may.
_CLEANUP = """
import os, sys
sys.stdin.buffer.read()
for path in sys.argv[1:]:
    try:
        os.rmdir(path)
    except OSError:
        pass
"""
_helpers: list[Any] = []  # kept: their pipe closes when watch exits


def _become(user: str, monitor: Any, db: str | None, say: Callable[[str], None]) -> None:
    """Run as `user` from now on: the counters, listeners, history, web server, always-on
    capture and its tracefs instance are open already and stay so. Everything watch and
    its investigations run was imported with this module (rsthound.observe whole): as the
    user, Python's own library may be out of reach (an interpreter under /root, say)."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise BadInput("no such user", user) from None
    if monitor is not None and monitor.instances:
        _helpers.append(subprocess.Popen(
            [sys.executable, "-c", _CLEANUP, *monitor.instances], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
    if db:  # the history goes on being written, and may need opening again
        for path in (os.path.dirname(db), db, db + "-wal", db + "-shm"):
            if os.path.exists(path):
                os.chown(path, pw.pw_uid, pw.pw_gid)
    os.setgroups([])
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)
    say(f"running as {user} from now on; what needs root is open already (investigations "
        "use the always-on capture)" if monitor is not None else
        f"running as {user} from now on (investigations will lack capture and tracing: "
        "drop --no-capture for an always-on capture)")
