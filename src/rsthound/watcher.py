"""`rsthound watch`: the sampling loop. Counters in, then alerts (stdout, JSON lines,
webhook, Alertmanager), the investigation an alert sets off, the history, and with
`--listen` the web server and the always-on capture behind its metrics."""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from rsthound.analyze.alerts import Alerter
from rsthound.config import load_config
from rsthound.errors import BadInput
from rsthound.investigate import Investigator
from rsthound.report import alerts as view
from rsthound.report.diagnosis import finding_obj, findings_text
from rsthound.report.jsonout import line
from rsthound.report.timefmt import stamp
from rsthound.sinks.history import Recorder, default_path
from rsthound.sinks.notify import Poster
from rsthound.sources.procfs import CounterReader
from rsthound.sources.sockdiag import OwnerCache


def run_watch(args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
    """`rsthound watch`: sample, alert, investigate, keep history, serve; until stopped."""
    if args.user and os.geteuid() != 0:
        raise BadInput("--user: only root can become another user (run it as root)",
                       args.user)
    if args.user and args.netns:
        raise BadInput("--user and --netns: reading another namespace needs root "
                       "throughout (run watch inside the namespace instead: ip netns exec)",
                       args.user)
    cfg = load_config(args.config)
    interval = args.interval or 1.0
    host = args.host or cfg.host or socket.gethostname()
    webhook = args.webhook or cfg.webhook
    manager = args.alertmanager or cfg.alertmanager
    if manager and not manager.rstrip("/").endswith("/api/v2/alerts"):
        manager = manager.rstrip("/") + "/api/v2/alerts"
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def say(text: str) -> None:
        err.write(f"rsthound: {text}\n")
        err.flush()

    poster = Poster(say) if webhook or manager else None
    active: dict[str, object] = {}
    notes: dict[str, dict[str, str]] = {}  # rule -> its findings, as Alertmanager annotations
    with CounterReader(args.proc_root, args.netns) as reader:
        alerter = Alerter(cfg.rules, cfg.baselines)
        db = None if args.no_history else args.db or default_path(args.netns)
        say(f"watching {reader.label} every {interval:g} s with {len(cfg.rules)} rules and "
            f"{len(cfg.baselines)} baseline(s) from {cfg.source}"
            + (f", for {args.duration:g} s" if args.duration else "")
            + (f"; history in {db}" if db else "; no history"))
        history = Recorder(db, reader.identity(), reader.label, say) if db else None
        # the listeners of the namespace whose counters are read (a host's, through
        # --proc-root, is its PID 1's)
        where = args.netns or (None if args.proc_root.rstrip("/") == "/proc"
                               else f"{args.proc_root.rstrip('/')}/1/ns/net")
        served = _serve(args, host, reader.label, cfg.rules, interval, db, say)
        state = served[1] if served else None
        sockets = _listener_reader(where, say) if history or state else None
        owners = OwnerCache()  # for the history and the web page alike
        investigator = None if args.no_investigate else Investigator(
            args.netns, db, should_stop=stop.is_set,
            monitor=state.monitor if state is not None else None)
        if args.user:
            _become(args.user, state.monitor if state is not None else None, db, say)

        def tell_findings(wait: float = 0.0) -> None:
            for alert, facts, findings, error in investigator.finished(wait):
                if error:
                    say(f"investigating {alert.rule}: {error}")
                    continue
                e = dataclasses.replace(alert, event="findings", ts=time.time())
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
                    history.event(time.monotonic(), e, obj)

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
            start = time.monotonic()
            tick = start
            last_resend = start
            while True:
                sample = reader.read()
                for p in sample.problems:
                    if p not in seen_problems:
                        seen_problems.add(p)
                        say(f"damaged: {p}")

                events = [(e, view.event_obj(e, host, reader.label))
                          for e in alerter.observe(sample.mono, sample.wall, sample.values)]
                if state is not None:
                    state.sample(sample.mono, sample.wall, sample.values)
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
                    history.sample(sample.mono, sample.wall, sample.values)
                    if sockets is not None:
                        history.listeners(sample.mono, sample.wall, listening)
                    for e, obj in events:
                        history.event(sample.mono, e, obj)
                if poster and manager and active and sample.mono - last_resend >= 60:
                    # Alertmanager resolves an alert it has not heard of for a while
                    last_resend = sample.mono
                    poster.post(manager, [am_obj(e) for e in active.values()])
                if investigator is not None:
                    tell_findings()
                tick += interval
                if args.duration is not None and tick - start > args.duration + 1e-6:
                    break
                if stop.wait(max(0.0, tick - time.monotonic())):
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
                if state is not None and state.monitor is not None:
                    state.monitor.close()


def _serve(args: argparse.Namespace, host: str, label: str, rules: Any, interval: float,
           db: str | None, say: Callable[[str], None]) -> Any:
    """watch --listen: the web server, and the always-on capture behind its metrics."""
    if not args.listen:
        return None
    from rsthound.monitor import Monitor
    from rsthound.sinks.web import Auth, WatchState, WebServer, parse_listen

    addr, port = parse_listen(args.listen)
    auth = Auth(args.token_file, args.basic_auth_file)
    state = WatchState(host, label, rules, interval, db)
    server = WebServer(addr, port, state, auth)
    shown = f"[{addr}]" if ":" in addr else addr
    say(f"serving http://{shown}:{server.address[1]}/ (/metrics, /api/status)"
        + ("" if auth.required else ", no authentication"))
    if not args.no_capture:
        state.monitor = Monitor(args.netns, top=args.services)
        state.monitor.start()
    return server, state


def _listener_reader(netns: str | None, say: Callable[[str], None]) -> Any:
    """watch's reader of listeners, for the listener history; None (said once) if none."""
    from rsthound.errors import RstHoundError
    from rsthound.sources.sockdiag import ListenerReader

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
    capture and its tracefs instance are open already and stay so."""
    import pwd
    import subprocess
    import sys

    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise BadInput("no such user", user) from None
    if monitor is not None:  # its capture and trace open on its thread: wait for them
        for _ in range(100):
            if monitor.running or monitor.error:
                break
            time.sleep(0.1)
    if monitor is not None and monitor.instances:
        _helpers.append(subprocess.Popen(
            [sys.executable, "-c", _CLEANUP, *monitor.instances], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
    if db:  # the history goes on being written, and may need opening again
        for path in (os.path.dirname(db), db, db + "-wal", db + "-shm"):
            if os.path.exists(path):
                os.chown(path, pw.pw_uid, pw.pw_gid)
    # what investigations import later, imported now: as the user, Python's own library
    # may be out of reach (an interpreter under /root, say)
    import importlib

    for name in ("rsthound.investigate", "rsthound.sources.portnames",
                 "rsthound.sources.netstate", "rsthound.sources.processes",
                 "rsthound.sinks.history", "rsthound.report.text", "rsthound.report.diagnosis",
                 "rsthound.analyze.diagnosis", "rsthound.analyze.session"):
        importlib.import_module(name)
    os.setgroups([])
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)
    say(f"running as {user} from now on; what needs root is open already (investigations "
        "use the always-on capture)" if monitor is not None else
        f"running as {user} from now on (investigations will lack capture and tracing: "
        "add --listen for an always-on capture)")
