"""`watch --listen`: /metrics read back by Prometheus's own tools, the JSON API, the
dashboard in a real headless Chromium, authentication, read-only, bounded labels, and
hostile process names shown inert (real sockets, namespaces of our own)."""

from __future__ import annotations

import base64
import json
import math
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from itertools import pairwise
from pathlib import Path

import pytest

from conftest import Netns, free_port
from rsthound.textforms import printable

OUT = Path(__file__).parent.parent / "test-output"  # kept after the run (git-ignored)
ENV = dict(os.environ, PYTHONUNBUFFERED="1")
KNOCK = """
import socket, sys, time
for _ in range(int(sys.argv[2])):
    s = socket.socket()
    try: s.connect(('127.0.0.1', int(sys.argv[1])))
    except OSError: pass
    s.close(); time.sleep(float(sys.argv[3]))
"""
# ten thousand closed ports, as fast as they come
SCAN = """
import socket
for port in range(20000, 30000):
    s = socket.socket()
    try: s.connect(('127.0.0.1', port))
    except OSError: pass
    s.close()
"""
HOSTILE = "<img src=x onerror=alert(1)>\x1b[31mRED\x1b[0m<script>alert(2)</script>"

_started: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_leftovers():
    yield
    while _started:
        p = _started.pop()
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


def watch(*argv: str, port: int) -> subprocess.Popen:
    """`rsthound watch --listen 127.0.0.1:PORT ...` in the background, once it serves."""
    p = subprocess.Popen([sys.executable, "-m", "rsthound", "watch", "--listen",
                          f"127.0.0.1:{port}", *argv], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, env=ENV)
    _started.append(p)
    for _ in range(100):
        try:
            st = status(port)
            if st["capture"]["running"] or "--no-capture" in argv:
                return p  # serving, and capturing when it should
        except OSError:
            if p.poll() is not None:
                raise AssertionError(p.stderr.read()) from None
        time.sleep(0.1)
    raise AssertionError(f"watch never served, or never captured: {status(port)}")


def get(port: int, path: str, headers: dict[str, str] | None = None) -> bytes:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.read()


def status(port: int) -> dict:
    return json.loads(get(port, "/api/status"))


def until(what, timeout: float = 20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = what()
        if got:
            return got
        time.sleep(0.25)
    raise AssertionError(f"waited {timeout} s in vain")


def test_printable_neutralises_terminal_escapes():
    assert printable(HOSTILE).count("\x1b") == 0
    assert "\\x1b[31mRED" in printable(HOSTILE)


def test_listen_address_and_auth_files(tmp_path):
    from rsthound.errors import BadInput
    from rsthound.sinks.web import Auth, parse_listen

    assert parse_listen("9321") == ("127.0.0.1", 9321)
    assert parse_listen("0.0.0.0:80") == ("0.0.0.0", 80)
    assert parse_listen("[::1]:9321") == ("::1", 9321)
    with pytest.raises(BadInput):
        parse_listen("localhost:http")
    (tmp_path / "basic").write_text("ops:s3cret\n")
    auth = Auth(basic_file=str(tmp_path / "basic"))
    good = "Basic " + base64.b64encode(b"ops:s3cret").decode()
    assert auth.allows(good) and not auth.allows("Basic " + base64.b64encode(b"ops:x").decode())
    assert not auth.allows(None) and not auth.allows("Basic !!!")
    (tmp_path / "empty").write_text("")
    with pytest.raises(BadInput):
        Auth(token_file=str(tmp_path / "empty"))


@pytest.mark.kernel
def test_metrics_parse_back_and_name_the_failing_service(netns, tmp_path):
    """Refusals in a namespace: /metrics (checked by promtool and prometheus-client's
    parser) has the kernel counter, the failure by cause and service, the reset by kind,
    the alert, and the listener's queue gauges; the API has the same story."""
    from prometheus_client.parser import text_string_to_metric_families

    server = netns.start("import socket, time\ns = socket.socket()\n"
                         "s.bind(('127.0.0.1', 7300)); s.listen(7); time.sleep(60)\n")
    client = subprocess.Popen(netns.argv(sys.executable, "-c", KNOCK, "7211", "40", "0.25"))
    _started.extend([server, client])
    port = free_port()
    watch("--netns", netns, "--db", str(tmp_path / "h.db"), port=port)
    until(lambda: status(port)["active"])
    text = get(port, "/metrics").decode()
    if shutil.which("promtool"):
        lint = subprocess.run(["promtool", "check", "metrics"], input=text, text=True,
                              capture_output=True)
        # it parses; its only remarks are on the kernel's CamelCase names, kept as
        # node_exporter keeps them (node_netstat_Tcp_AttemptFails)
        remarks = [ln for ln in lint.stderr.splitlines() if ln.strip()]
        assert remarks and all(ln.startswith("rsthound_netstat_") and "camelCase" in ln
                               for ln in remarks), lint.stderr
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("rsthound_netstat_Tcp_AttemptFails_total", ())] >= 4
    failed = {k[1]: v for k, v in samples.items() if k[0] == "rsthound_failed_connections_total"}
    assert failed[(("cause", "no-listener"), ("service", "127.0.0.1:7211"))] >= 4, failed
    resets = {k[1]: v for k, v in samples.items() if k[0] == "rsthound_resets_total"}
    assert resets[(("direction", "sent"), ("kind", "refused"),
                   ("service", "127.0.0.1:7211"))] >= 4, resets
    assert samples[("rsthound_alert_active", (("level", "warn"),
                                              ("rule", "failed-connections")))] == 1
    assert samples[("rsthound_capture_up", ())] == 1
    assert samples[("rsthound_listener_backlog", (("listener", "127.0.0.1:7300"),))] == 7
    st = status(port)
    assert st["services"][0]["service"] == "127.0.0.1:7211"
    assert st["services"][0]["clients"][0]["pid"] == client.pid
    assert [x["port"] for x in st["listeners"]] == [7300]
    assert st["listeners"][0]["process"]["pid"] == server.pid  # its owner, named
    rates = [r for _, r in st["series"]["Tcp.AttemptFails"]]
    assert 2.0 <= max(rates) <= 6.0, rates
    points = json.loads(get(port, "/api/series?metric=Tcp.OutRsts"))["points"]
    assert points and max(r for _, r in points) >= 2.0
    with pytest.raises(urllib.error.HTTPError) as bad:  # not 200 with nothing in it
        get(port, "/api/series?metric=Bogus")
    assert bad.value.code == 404
    assert "Tcp.AttemptFails" in json.loads(bad.value.read())["known"]


@pytest.mark.kernel
def test_ten_thousand_failing_ports_make_a_bounded_number_of_series(netns):
    port = free_port()
    watch("--netns", netns, "--no-history", "--services", "20", port=port)
    scan = subprocess.run(netns.argv(sys.executable, "-c", SCAN), timeout=60)
    assert scan.returncode == 0

    def failed() -> dict:
        from prometheus_client.parser import text_string_to_metric_families

        text = get(port, "/metrics").decode()
        return {s.labels["service"]: s.value for f in text_string_to_metric_families(text)
                for s in f.samples if s.name == "rsthound_failed_connections_total"}

    got = until(lambda: (f := failed()) and sum(f.values()) >= 10_000 and f, timeout=30)
    assert len(got) == 21 and "other" in got, sorted(got)[:5]
    assert sum(got.values()) == 10_000  # every failure counted once, in some series
    assert got["other"] == 10_000 - 20


@pytest.mark.kernel
def test_auth_and_read_only(netns, tmp_path):
    (tmp_path / "token").write_text("t0ken-abc\n")
    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "rsthound", "watch", "--netns", netns,
                          "--no-history", "--no-capture", "--listen", f"127.0.0.1:{port}",
                          "--token-file", str(tmp_path / "token")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    _started.append(p)
    good = {"Authorization": "Bearer t0ken-abc"}
    until(lambda: _serves(port, good))
    for path in ("/metrics", "/", "/api/status"):
        with pytest.raises(urllib.error.HTTPError) as e:
            get(port, path)
        assert e.value.code == 401
        with pytest.raises(urllib.error.HTTPError) as e:
            get(port, path, {"Authorization": "Bearer wrong"})
        assert e.value.code == 401
        assert get(port, path, good)
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", data=b"x", headers=good)
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 405
    bound = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True,
                           text=True).stdout
    assert f"127.0.0.1:{port}" in bound  # loopback only, unless asked


def _serves(port: int, headers: dict[str, str]) -> bool:
    try:
        return bool(get(port, "/api/status", headers))
    except OSError:
        return False


def chromium(*argv: str) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("needs chromium (make test installs it as root)")
    return subprocess.run([exe, "--headless=new", "--no-sandbox", "--disable-gpu",
                           "--disable-dev-shm-usage", "--no-first-run", *argv],
                          capture_output=True, text=True, timeout=90)


@pytest.mark.kernel
def test_dashboard_in_chromium_shows_the_rate_the_alert_and_hostile_names_inert(
        netns: Netns, tmp_path):
    """The page in a real headless Chromium: the graph has the refusals' rate, the alert and
    its findings are listed, and a client whose command line is HTML and terminal escapes
    is shown as text (no element, no script). A screenshot is kept in test-output/."""
    script = tmp_path / "knock.py"
    script.write_text(KNOCK)
    hostile = subprocess.Popen(netns.argv("bash", "-c", f'exec -a "{HOSTILE}" '
                                          f'{sys.executable} {script} 7211 80 0.3'))
    _started.append(hostile)
    port = free_port()
    watch("--netns", netns, "--db", str(tmp_path / "h.db"), port=port)
    until(lambda: any(a.get("findings") for a in status(port)["active"]), timeout=30)
    url = f"http://127.0.0.1:{port}/"
    dom = chromium("--virtual-time-budget=5000", "--dump-dom", url).stdout
    assert 'id="rate-line"' in dom, dom[:2000]
    peak = float(dom.split('data-max="', 1)[1].split('"', 1)[0])
    assert 2.0 <= peak <= 6.0, peak
    assert "failed TCP connections on" in dom and "no-listener" in dom
    # the failures by service and by cause, from the always-on capture
    by_service = dom.split('id="by-service"', 1)[1].split("</svg>", 1)[0]
    assert 'data-name="127.0.0.1:7211"' in by_service, by_service[:1000]
    by_cause = dom.split('id="by-cause"', 1)[1].split("</svg>", 1)[0]
    assert 'data-name="no-listener"' in by_cause, by_cause[:1000]
    # one form of time (24 hours), round axis steps, findings shown once as a table
    assert " AM" not in dom and " PM" not in dom
    ticks = [float(t.split(">", 1)[1].split("<", 1)[0])
             for t in dom.split('class="tick"')[1:]]
    step = ticks[1] - ticks[0]
    assert ticks[0] == 0 and all(abs(b - a - step) < 1e-9 for a, b in pairwise(ticks))
    assert step / 10 ** math.floor(math.log10(step)) in (1, 2, 2.5, 5), ticks
    assert dom.count('class="findings"') == 1 and " | " not in dom
    assert "failures since" in dom
    # the hostile command line is there, as text: escaped by the DOM, never an element
    assert "&lt;img src=x onerror=alert(1)&gt;" in dom
    assert "<img" not in dom and dom.count("<script") == 1  # the page's own script only
    OUT.mkdir(exist_ok=True)
    shot = OUT / "dashboard.png"
    chromium("--virtual-time-budget=5000", "--window-size=1200,1500",
             f"--screenshot={shot}", url)
    assert shot.stat().st_size > 10_000
    print(f"dashboard screenshot: {shot}")


@pytest.mark.kernel
def test_hostile_names_are_inert_in_the_terminal(netns, tmp_path):
    script = tmp_path / "knock.py"
    script.write_text(KNOCK)
    p = subprocess.Popen(netns.argv("bash", "-c", f'exec -a "{HOSTILE}" '
                                    f'{sys.executable} {script} 7211 20 0.25'))
    _started.append(p)
    time.sleep(0.5)
    r = subprocess.run(netns.argv(sys.executable, "-m", "rsthound", "diagnose"),
                       capture_output=True, text=True, timeout=60, env=ENV)
    assert r.returncode == 1, r.stderr
    assert "\x1b" not in r.stdout and "\\x1b[31mRED" in r.stdout, r.stdout


def test_promtool_accepts_the_rules():
    if shutil.which("promtool") is None:
        pytest.skip("needs promtool (make test installs prometheus as root)")
    rules = Path(__file__).parent.parent / "contrib" / "prometheus" / "rules.yml"
    r = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    from rsthound.analyze.alerts import DEFAULT_RULES

    text = rules.read_text()
    for rule in DEFAULT_RULES:  # the same levels as watch's defaults
        for level, t in rule.thresholds():
            if t:
                assert f"{level} at {t:g}/s" in text, (rule.name, level)


# N connects to HOST PORT, each given up after TIMEOUT s, GAP s apart
CONNECTS = """
import socket, sys, time
for _ in range(int(sys.argv[3])):
    s = socket.socket(); s.settimeout(float(sys.argv[4]))
    try: s.connect((sys.argv[1], int(sys.argv[2])))
    except OSError: pass
    s.close(); time.sleep(0.2)
"""


@pytest.mark.kernel
def test_icmp_rejects_and_client_timeouts_alert_and_count(netns_factory, tmp_path):
    """Failures Tcp.AttemptFails misses: connects an ICMP port unreachable ends, and
    connects the client gives up on after 1 s against a dropping firewall. watch counts
    them from the trace: the failed-connections alert fires, and /metrics has each failure
    by its cause and service, as many as there were. (Few rejects: the kernel rate-limits
    the ICMP errors it sends, about 6 at once and then 1 a second, and a connect whose
    error was not sent times out instead.)"""
    from prometheus_client.parser import text_string_to_metric_families
    from test_diagnose_scenarios import veth

    a, b = netns_factory(), netns_factory()
    veth(a, b)
    subprocess.run(b.argv("nft", "add table inet t; add chain inet t in { type filter hook "
                          "input priority 0; }; add rule inet t in tcp dport 7300 reject; "
                          "add rule inet t in tcp dport 7301 drop"), check=True)
    port = free_port()
    watch("--netns", a, "--no-history", "--interval", "0.5", port=port)
    clients = [subprocess.Popen(a.argv(sys.executable, "-c", CONNECTS, "10.77.0.2", p, n, "1"))
               for p, n in (("7300", "5"), ("7301", "3"))]
    _started.extend(clients)
    for c in clients:
        c.wait(timeout=30)

    def failed() -> dict:
        text = get(port, "/metrics").decode()
        return {tuple(sorted(s.labels.items())): s.value
                for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == "rsthound_failed_connections_total"}

    rejected = (("cause", "firewall-reject"), ("service", "10.77.0.2:7300"))
    dropped = (("cause", "firewall-drop"), ("service", "10.77.0.2:7301"))
    try:
        got = until(lambda: (f := failed()).get(rejected) == 5 and f.get(dropped) == 3 and f)
    except AssertionError:
        raise AssertionError(f"{failed()}\n{status(port)['services']}") from None
    assert sum(got.values()) == 8, got
    st = status(port)
    assert any(x["rule"] == "failed-connections" and x["event"] == "alert"
               for x in st["recent"]), st["recent"]


def test_the_dashboard_answers_while_the_history_is_being_made(tmp_path):
    """A history file whose tables watch has not all made yet (it has just begun): the
    status has no listener history, and no error."""
    import sqlite3

    from rsthound.sinks.web import WatchState

    db = tmp_path / "h.db"
    with sqlite3.connect(db) as c:  # the first of the schema's tables only
        c.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    state = WatchState("box", "host", (), 1.0, str(db))
    assert state.listener_history() == []
    assert state.status()["listener_history"] == []
