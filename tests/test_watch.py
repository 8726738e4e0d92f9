"""`rsthound watch`: alert rules on counter samples, config, notifications, and real kernels."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import pytest

from rsthound.analyze.alerts import Alerter, Baseline, Rule
from rsthound.analyze.rates import Ticker
from rsthound.config import load_config
from rsthound.errors import BadInput

RULE = Rule("failed-connections", "Tcp.AttemptFails", "failed TCP connections",
            warn=1.0, error=5.0, critical=20.0)


def feed(alerter: Alerter, per_second: list[float], extra: dict[str, list[float]] | None = None,
         t0: float = 1000.0):
    """One sample per second; counters grow by the given amounts. Returns (second, event)."""
    values = {"Tcp.AttemptFails": 10**6, "Tcp.OutRsts": 5, "TcpExt.TCPSynRetrans": 0,
              "TcpExt.ListenOverflows": 0, "Tcp.EstabResets": 0}
    got = []
    ticker = Ticker()
    for i, n in enumerate([0.0, *per_second]):
        values["Tcp.AttemptFails"] += int(n)
        for k, series in (extra or {}).items():
            values[k] += int(([0.0, *series])[i])
        got += [(i, e) for e in alerter.observe(ticker.next(t0 + i, t0 + i, dict(values)))]
    return got


def test_start_up_never_alerts():
    # a counter already in the millions is where the host stands, not a burst
    assert feed(Alerter((RULE,), ()), [0, 0, 0]) == []


def test_warn_within_three_samples_and_clear_with_hysteresis():
    ev = feed(Alerter((RULE,), ()), [2, 2, 2, 2, 0.0, 1, 0, 0, 0, 0, 0])
    assert [(i, e.event, e.level) for i, e in ev] == [(3, "alert", "warn"), (9, "clear", "warn")]
    alert = ev[0][1]
    assert alert.rate == pytest.approx(2.0) and alert.threshold == 1.0
    assert alert.started == 1000.0  # the start of the first interval with failures
    assert alert.cases == ["outgoing-refused"]  # no resets sent here, no SYN retransmissions


def test_one_spike_does_not_alert_and_escalation_keeps_start():
    assert feed(Alerter((RULE,), ()), [2, 0, 0, 0, 0]) == []
    assert feed(Alerter((RULE,), ()), [0, 0, 2, 0, 0, 0]) == []
    ev = feed(Alerter((RULE,), ()), [2, 2, 9, 9, 9, 30, 30, 30, 30])
    levels = [(e.event, e.level) for _, e in ev]
    assert levels == [("alert", "warn"), ("alert", "error"), ("alert", "critical")]
    assert len({e.started for _, e in ev}) == 1


@pytest.mark.parametrize(("extra", "case", "words"), [
    ({"Tcp.OutRsts": [2] * 6}, "outgoing-refused", "refused on this host"),
    ({"TcpExt.TCPSynRetrans": [4] * 6}, "outgoing-timeout", "time out"),
    ({"TcpExt.ListenOverflows": [3] * 6}, "listen-overflow", "accept queue is full"),
])
def test_the_case_the_counters_show(extra, case, words):
    ev = feed(Alerter((RULE,), ()), [2] * 6, extra)
    assert ev and case in ev[0][1].cases and words in ev[0][1].explanation


def test_any_overflow_is_at_least_warn():
    rule = Rule("listen-overflows", "TcpExt.ListenOverflows", "overflows", any_increase=True,
                error=10.0, for_samples=1)
    ev = feed(Alerter((rule,), ()), [0, 0, 0], {"TcpExt.ListenOverflows": [0, 1, 0]})
    assert [(i, e.event, e.level) for i, e in ev] == [(2, "alert", "warn")]


def test_baseline_means_unusual_here():
    b = Baseline("unusual", "Tcp.AttemptFails", "failed", factor=10, min_rate=0.2,
                 warmup=20, for_samples=2, half_life=60)
    quiet = [0.0, 1.0] * 15  # this host's normal: 0.5/s
    ev = feed(Alerter((), (b,)), [*quiet, 2, 2, 2, 2])  # 4x normal: not unusual enough
    assert ev == []
    ev = feed(Alerter((), (b,)), [*quiet, 9, 9, 9, 0, 0, 0, 0, 0, 0])
    assert [e.event for _, e in ev] == ["alert", "clear"]
    ev = feed(Alerter((), (b,)), [9, 9, 9, 9])  # no alert before the warm-up
    assert ev == []


def test_config_changes_defaults_and_adds_rules(tmp_path):
    f = tmp_path / "w.toml"
    f.write_text('[rules.failed-connections]\nwarn = 2\nfor = 3\n\n'
                 '[rules.resets-sent]\nenabled = false\n\n'
                 '[rules.aborts]\nmetric = "TcpExt.TCPAbortOnTimeout"\nwarn = 0.5\n\n'
                 '[notify]\nwebhook = "http://127.0.0.1:1/x"\n')
    cfg = load_config(str(f))
    rules = {r.name: r for r in cfg.rules}
    assert rules["failed-connections"].warn == 2 and rules["failed-connections"].for_samples == 3
    assert rules["failed-connections"].error == 5.0  # untouched keys keep their defaults
    assert "resets-sent" not in rules and rules["aborts"].metric == "TcpExt.TCPAbortOnTimeout"
    assert cfg.webhook == "http://127.0.0.1:1/x"


@pytest.mark.parametrize(("text", "said"), [
    ("[rules.failed-connections]\nwarn = -1\n", "line 2: rules.failed-connections.warn: must"),
    ("[rules.x]\nwarn = 1\n", "line 1: rules.x: a new rule needs a metric"),
    ('[rules.x]\nmetric = "Tcp.Nope"\n', "line 2: rules.x.metric: 'Tcp.Nope' is not a counter"),
    ("[rules.failed-connections]\n\nfor = 0\n", "line 3: rules.failed-connections.for: must"),
    ('[notify]\nwebhook = "ftp://x"\n', "line 2: notify.webhook: must be a URL"),
    ("[alerts]\n", "line 1: alerts: unknown section"),
    ("[rules\n", "line 1: not valid TOML"),
])
def test_broken_config_names_file_line_key(tmp_path, text, said):
    f = tmp_path / "w.toml"
    f.write_text(text)
    with pytest.raises(BadInput) as e:
        load_config(str(f))
    assert str(e.value).startswith(f"{f}: {said}")


def test_broken_config_is_one_line_from_the_cli(cli, tmp_path):
    f = tmp_path / "w.toml"
    f.write_text("[rules.failed-connections]\nwran = 2\n")
    r = cli("watch", "--config", f, "--duration", "0")
    assert r.code == 2 and r.err.count("\n") == 1 and "line 2: " in r.err and "wran" in r.err


class _Receiver(BaseHTTPRequestHandler):
    got: ClassVar[list[tuple[str, object]]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.got.append((self.path, json.loads(body)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    _Receiver.got = []
    srv = HTTPServer(("127.0.0.1", 0), _Receiver)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", _Receiver.got
    srv.shutdown()


@pytest.mark.kernel
def test_refusals_alert_then_clear(cli, netns, receiver):
    """~2 refused connects a second inside a namespace: a warn alert within 4 samples that
    names outgoing refusals, a clear after they stop; the webhook and Alertmanager get both."""
    url, got = receiver
    client = netns.knock_threads(8, 0.5)
    t0 = time.time()
    r = cli("watch", "--netns", netns, "--interval", "0.5", "--duration", "8", "--json",
            "--host", "box", "--webhook", url + "/hook", "--alertmanager", url)
    client.wait(timeout=30)
    assert r.code == 0, r.err
    ev = r.lines()
    first = [e for e in ev if e["rule"] == "failed-connections"]
    # the findings come when the investigation ends: before the clear, or on a loaded
    # machine after it
    assert _in_turn([e["event"] for e in first]), ev
    alert = first[0]
    assert alert["level"] == "warn" and alert["case"] == ["outgoing-refused"]
    assert 1.0 <= alert["rate"] <= 3.0 and alert["host"] == "box"
    assert "refused on this host" in alert["summary"]
    assert not [e for e in ev if e["rule"] == "resets-sent"]  # 2/s of resets is under warn
    # the alert set off diagnose's investigation: its findings follow the alert
    found = [e for e in ev if e["event"] == "findings"]
    assert [e["rule"] for e in found] == ["failed-connections"], ev
    top = found[0]["findings"][0]
    assert (top["cause"], top["service"]) == ("no-listener", "127.0.0.1:7211"), top
    assert [c["pid"] for c in top["clients"]] == [client.pid]
    assert "127.0.0.1:7211: no-listener" in found[0]["summary"]
    hooks = [b for p, b in got if p == "/hook"]
    assert _in_turn([b["event"] for b in hooks if b["rule"] == "failed-connections"]), hooks
    am = [b for p, b in got if p == "/api/v2/alerts"]
    assert am[0][0]["labels"]["alertname"] == "RstHound_failed_connections"
    assert "endsAt" in am[-1][0] and am[0][0]["labels"]["severity"] == "warn"
    noted = [a[0]["annotations"] for a in am if "findings" in a[0]["annotations"]]
    assert noted and noted[0]["cause"] == "no-listener", am
    assert noted[0]["service"] == "127.0.0.1:7211"
    # the history, where a service's $STATE_DIRECTORY says, has the refusals and the alert
    # (the first knock may come before watch's first sample)
    h = cli("history", "--netns", netns, "--since", "1m", "--json")
    assert h.code == 0, h.err
    points = h.json()["points"]
    # knocks before watch's first sample are not its to count: one, or more on a loaded
    # machine whose start-up is slow
    missed = int((_epoch(points[0]["t"]) - t0) / 0.5) + 1
    assert 8 - missed <= sum(p["increase"] for p in points) <= 8, (t0, points)
    # the alert comes at watch's 4th sample: the first counts as a whole window (1 failure in
    # 1.5 s is under warn), then 3 at the warn rate. Counted in samples, not seconds, so that
    # a loaded machine's start-up is not taken for watch's latency.
    at = _epoch(alert["ts"])
    before = [p for p in points if _epoch(p["t"]) + p["seconds"] <= at + 0.05]
    assert 3 <= len(before) <= 4, (points, alert["ts"])
    assert _in_turn([e["event"] for e in h.json()["alerts"]]), h.out
    chart = cli("history", "--netns", netns, "--since", "1m")
    assert "FINDINGS warn: 127.0.0.1:7211: no-listener" in chart.out


# refused connects from processes gone before the trace could ask for their namespace: a
# subshell connects and exits at once, 150 times, 20 ms apart
_SHORT_LIVED = ("for i in $(seq 150); do (exec 3<>/dev/tcp/127.0.0.1/7211) 2>/dev/null; "
                "sleep 0.02; done")


@pytest.mark.kernel
def test_failures_of_gone_processes_count_in_their_namespace_only(cli, netns_factory):
    """The trace is the whole host's. A failed connect whose process was gone before its
    namespace could be read counts where the capture saw its packets, at that moment: the
    namespace it failed in alerts on it, another one watched at the same time, with the
    same addresses and ports failing more slowly, neither counts nor names it."""
    import subprocess
    import sys

    calm, busy = netns_factory(), netns_factory()
    noise = subprocess.Popen(busy.argv("bash", "-c", _SHORT_LIVED))
    client = calm.knock_threads(8, 0.5)
    try:
        there = subprocess.Popen(
            [sys.executable, "-m", "rsthound", "watch", "--netns", busy, "--interval", "0.5",
             "--duration", "3", "--json", "--no-history"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        here = cli("watch", "--netns", calm, "--interval", "0.5", "--duration", "4", "--json")
        out, err = there.communicate(timeout=30)
        client.wait(timeout=10)
    finally:
        noise.kill()
        noise.wait()
    assert here.code == 0 and there.returncode == 0, (here.err, err)
    ev = [e for e in here.lines() if e["rule"] == "failed-connections"]
    assert {e["level"] for e in ev} == {"warn"}, here.out  # 2/s: its own knocks only
    found = [e for e in ev if e["event"] == "findings"]
    assert found, here.out
    clients = found[0]["findings"][0]["clients"]  # threads gone by then named too
    assert [c["pid"] for c in clients] == [client.pid], clients
    h = cli("history", "--netns", calm, "--since", "1m", "--json")
    assert h.code == 0 and sum(p["increase"] for p in h.json()["points"]) <= 8, h.out
    alert = [json.loads(x) for x in out.splitlines()]
    alert = [e for e in alert if e["event"] == "alert" and e["rule"] == "failed-connections"]
    assert alert and alert[0]["level"] in ("error", "critical"), out
    assert alert[0]["case"] == ["outgoing-refused"], alert


@pytest.mark.kernel
def test_full_listen_queue_is_named_overflow(cli, netns):
    server = netns.start(
        "import socket, time\n"
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.bind(('127.0.0.1', 7300)); s.listen(1); time.sleep(30)\n")
    try:
        time.sleep(0.3)
        client = netns.start(
            "import socket, time\n"
            "held = []\n"
            "for _ in range(12):\n"
            "    c = socket.socket(); c.setblocking(False)\n"
            "    try: c.connect(('127.0.0.1', 7300))\n"
            "    except BlockingIOError: pass\n"
            "    held.append(c); time.sleep(0.25)\n"
            "time.sleep(3)\n")
        r = cli("watch", "--netns", netns, "--interval", "0.5", "--duration", "4", "--json")
        client.kill()
    finally:
        server.kill()
    assert r.code == 0, r.err
    ev = [e for e in r.lines() if e["event"] == "alert"]
    over = [e for e in ev if e["rule"] == "listen-overflows"]
    assert over and "listen-overflow" in over[0]["case"], ev
    assert "accept queue is full" in over[0]["summary"]


@pytest.mark.kernel
def test_silent_drop_is_named_timeouts(cli, netns):
    netns.drop_syns(7400, syn_retries=1)
    client = netns.knock_threads(16, 0.5, port=7400)
    r = cli("watch", "--netns", netns, "--interval", "0.5", "--duration", "10", "--json")
    client.kill()
    assert r.code == 0, r.err
    alerts = [e for e in r.lines() if e["event"] == "alert" and e["rule"] ==
              "failed-connections"]
    assert alerts and alerts[0]["case"] == ["outgoing-timeout"], r.out
    assert "time out" in alerts[0]["summary"]


def _in_turn(events: list[str]) -> bool:
    """An alert, then its findings and its clear, in either order."""
    return events in (["alert", "findings", "clear"], ["alert", "clear", "findings"])


def _epoch(iso: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


@pytest.mark.kernel
def test_real_alertmanager_gets_the_alert_and_its_resolution(netns, tmp_path):
    """Debian's prometheus-alertmanager takes watch's alert (labels, annotations) while
    refusals go on, and holds it as resolved once they stop."""
    import shutil
    import socket
    import subprocess
    import sys
    import urllib.request

    am = shutil.which("prometheus-alertmanager")
    if am is None:
        pytest.skip("needs prometheus-alertmanager (make test installs it as root)")
    (tmp_path / "am.yml").write_text("route:\n  receiver: none\nreceivers:\n  - name: none\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [am, f"--config.file={tmp_path / 'am.yml'}", f"--storage.path={tmp_path / 'am'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def alerts() -> list[dict]:
        with urllib.request.urlopen(f"{url}/api/v2/alerts", timeout=2) as r:
            return [a for a in json.load(r) if a["labels"].get("rule") == "failed-connections"]

    try:
        for _ in range(100):
            try:
                alerts()
                break
            except OSError:
                time.sleep(0.1)
        client = netns.knock_threads(10, 0.5)
        # outside the namespace, where Alertmanager listens; 12 s: the knocks take 5 s and
        # the alert clears after 1.5 s without them, with room for a loaded machine
        watch = subprocess.Popen(
            [sys.executable, "-m", "rsthound", "watch", "--netns", netns, "--interval", "0.5",
             "--duration", "12", "--host", "box", "--no-history", "--alertmanager", url],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        held = []
        for _ in range(80):
            held = alerts()
            if held:
                break
            time.sleep(0.1)
        assert held, "Alertmanager never had the alert"
        a = held[0]
        assert a["labels"]["alertname"] == "RstHound_failed_connections"
        assert a["labels"]["severity"] == "warn" and a["labels"]["host"] == "box"
        assert a["labels"]["netns"] == f"netns {netns}"
        assert "refused" in a["annotations"]["summary"] and a["status"]["state"] == "active"
        out, err = watch.communicate(timeout=30)
        client.wait(timeout=10)
        assert watch.returncode == 0, err
        # resolved: endsAt has passed, so no longer listed
        assert alerts() == [], f"watch said:\n{out}\n{err}"
    finally:
        server.kill()
        server.wait()


class SteppedClock:
    """watch's clock for a test: each wait moves time on at once and lets the test change
    the counters, so a minute of watching takes milliseconds."""

    def __init__(self, on_wait) -> None:
        self.now = 1_000.0
        self.on_wait = on_wait

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_700_000_000.0 + self.now

    def wait(self, stop, seconds: float) -> bool:
        self.now += seconds
        self.on_wait(self.now)
        return stop.is_set()


def test_the_loop_alerts_and_clears_on_its_clock(tmp_path):
    """The whole watch loop (counters -> ticks -> alerts -> output) on a stepped clock and
    counter files written by the test: refusals at 5/s for 10 s raise the error level,
    quiet seconds clear it, with the clock's times in the events."""
    import argparse
    import io

    from rsthound.commands import watch

    net = tmp_path / "proc" / "1" / "net"
    net.mkdir(parents=True)
    fails = [0]

    def write(now: float) -> None:
        if 1_003 <= now < 1_013:
            fails[0] += 5
        (net / "snmp").write_text("Tcp: ActiveOpens AttemptFails OutRsts\n"
                                  f"Tcp: {fails[0]} {fails[0]} 0\n")

    write(1_000.0)
    (net / "netstat").write_text("TcpExt: ListenOverflows\nTcpExt: 0\n")
    args = argparse.Namespace(
        interval=1.0, duration=30.0, json=True, config=None, webhook=None, alertmanager=None,
        host="box", no_investigate=True, listen=None, token_file=None, basic_auth_file=None,
        services=20, no_capture=True, user=None, db=None, no_history=True, netns=None,
        proc_root=str(tmp_path / "proc"), debug=False)
    out, err = io.StringIO(), io.StringIO()
    assert watch.run(args, out, err, clock=SteppedClock(write)) == 0
    events = [json.loads(ln) for ln in out.getvalue().splitlines()]
    got = [(e["event"], e["level"], e["rule"]) for e in events]
    assert ("alert", "error", "failed-connections") in got, got
    assert got[-1][0] == "clear" and got[-1][2] == "failed-connections", got
    alert = next(e for e in events if e["event"] == "alert")
    assert alert["ts"].startswith("2023-11-14T22:30:"), alert  # the clock's, not the host's


def test_icmp_rejects_alert_without_the_trace_and_name_their_case():
    """Without the trace, connects an ICMP error refused move Icmp.InDestUnreachs, not
    always Tcp.AttemptFails: their own default rule fires, and the case says ICMP."""
    alerter = Alerter()
    ticker = Ticker()
    got = []
    for i in range(6):
        values = {"Tcp.AttemptFails": 0, "Tcp.OutRsts": 0, "TcpExt.TCPSynRetrans": 0,
                  "TcpExt.ListenOverflows": 0, "Tcp.EstabResets": 0,
                  "Icmp.InDestUnreachs": 3 * i, "Icmp6.InDestUnreachs": 0}
        got += alerter.observe(ticker.next(1000.0 + i, 1000.0 + i, values))
    assert [(e.event, e.rule, e.level) for e in got] == [("alert", "icmp-unreachables", "warn")]
    assert got[0].cases == ["outgoing-icmp"] and "REJECT" in got[0].explanation


def test_where_the_trace_counts_the_rules_count_from_it():
    """The rules on Tcp.AttemptFails count rsthound.FailedConnects instead, and the ICMP
    rules that stood in for the trace are dropped."""
    from rsthound.analyze.alerts import TRACED
    from rsthound.commands.watch import _rules

    cfg = load_config(None)
    said: list[str] = []
    rules, baselines = _rules(cfg, True, said.append)
    assert {r.name: r.metric for r in rules}["failed-connections"] == TRACED
    assert not [r for r in rules if r.metric.startswith("Icmp")]
    assert [b.metric for b in baselines] == [TRACED] and "kernel trace" in said[0]
    assert _rules(cfg, False, said.append) == (cfg.rules, cfg.baselines)
