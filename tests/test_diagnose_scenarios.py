"""`rsthound diagnose`: real failures made on purpose in namespaces of our own, each running
while diagnose watches, and the finding diagnose ranks first must name the case, the service
and who is involved. Nothing the tool should find is told to it: it gets a namespace, a window
and (for the seed) the history that `watch` wrote."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import Netns, tracefs_reason_field

pytestmark = pytest.mark.kernel

ENV = dict(os.environ, PYTHONUNBUFFERED="1")

# -- the scenarios' programs (argv: see each) ---------------------------------------------

# connect to HOST PORT every GAP seconds for a minute (on a schedule, so the rate is 1/GAP
# however long a connect takes); a refused or reset connect is just closed
CONNECT_EVERY = """
import socket, sys, time
host, port, gap = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
fam = socket.AF_INET6 if ':' in host else socket.AF_INET
t = time.monotonic()
for _ in range(int(60 / gap)):
    s = socket.socket(fam)
    try: s.connect((host, port))
    except OSError: pass
    s.close()
    t += gap
    time.sleep(max(0.0, t - time.monotonic()))
"""

# a plain server that accepts and serves until killed: the one that goes away in the seed
COLLECTOR = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(64)
while True:
    c, _ = s.accept(); c.close()
"""

# a listener that is there all along (HOST PORT BACKLOG ACCEPT_EVERY; 0: never accepts)
LISTENER = """
import socket, sys, time
host, port, backlog, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port)); s.listen(backlog)
held = []
while True:
    time.sleep(every or 3600)
    held.append(s.accept()[0])
"""

# each connect in a thread of its own, one started every GAP seconds: connects that nobody
# answers take the kernel's SYN timeout each, and still start on pace
CONNECT_THREADS = """
import socket, sys, threading, time
host, port, gap = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
def knock():
    s = socket.socket()
    try: s.connect((host, port))
    except OSError: pass
    s.close()
for _ in range(int(60 / gap)):
    threading.Thread(target=knock, daemon=True).start()
    time.sleep(gap)
"""

# N non-blocking connects a second to HOST PORT, all kept open: they pile up on a listener
# that does not accept
CONNECT_AND_HOLD = """
import socket, sys, time
host, port, per_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
held = []
for _ in range(600):
    c = socket.socket(); c.setblocking(False)
    try: c.connect((host, port))
    except BlockingIOError: pass
    held.append(c)
    time.sleep(1 / per_s)
time.sleep(60)
"""

# reads a request, writes part of the answer, and aborts: SO_LINGER 0, then close (HOST PORT)
ABORTING_SERVER = """
import socket, struct, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(64)
while True:
    c, _ = s.accept()
    c.recv(4096)
    c.sendall(b'HTTP/1.1 200 OK\\r\\nContent-Length: 100000\\r\\n\\r\\n' + b'x' * 2000)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
    c.close()
"""

# accepts, leaves the request unread, and closes: the kernel resets instead of a FIN
# (HOST PORT)
UNREAD_CLOSER = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(64)
while True:
    c, _ = s.accept()
    time.sleep(0.05)  # the request is in by now, and stays unread
    c.close()
"""

# every GAP seconds: connect, send a request, read what comes until EOF or an error, close
# (HOST PORT GAP)
REQUEST_EVERY = """
import socket, sys, time
host, port, gap = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
t = time.monotonic()
for _ in range(int(60 / gap)):
    s = socket.socket()
    try:
        s.connect((host, port))
        s.sendall(b'GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')
        while s.recv(65536):
            pass
    except OSError:
        pass
    s.close()
    t += gap
    time.sleep(max(0.0, t - time.monotonic()))
"""

# HTTP/1.1 with keep-alive; an idle connection is closed (FIN) after 0.2 s (PORT)
HTTP_SERVER = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    timeout = 0.2  # idle keep-alive connections: closed by the server
    def do_GET(self):
        body = b'ok\\n'
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()
"""

# ordinary requests, each on a new connection closed cleanly, 5 a second; and once a second
# the keep-alive race: a second request on a connection the server closed while it was idle,
# which the server's kernel answers with a reset (PORT)
HTTP_CLIENT = """
import socket, sys, time
port = int(sys.argv[1])
def request(s, close):
    s.sendall(b'GET / HTTP/1.1\\r\\nHost: x\\r\\n' + (b'Connection: close\\r\\n' if close
              else b'') + b'\\r\\n')
def ordinary():
    s = socket.create_connection(('127.0.0.1', port))
    request(s, True)
    while s.recv(65536):
        pass
    s.close()
def late():
    s = socket.create_connection(('127.0.0.1', port))
    request(s, False)
    got = b''
    while not got.endswith(b'ok\\n'):  # the whole answer (headers and body: two writes)
        more = s.recv(65536)
        if not more:
            break
        got += more
    time.sleep(0.4)  # idle past the server's timeout: it has closed its side by now
    try:
        request(s, False)  # not noticing the FIN, as a pooled client would not
        time.sleep(0.05)
        while s.recv(65536):
            pass
    except OSError:
        pass
    s.close()
t = time.monotonic()
for i in range(300):
    try:
        late() if i % 5 == 0 else ordinary()
    except OSError:
        pass
    t += 0.2
    time.sleep(max(0.0, t - time.monotonic()))
"""


# -- helpers -----------------------------------------------------------------------------

_started: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_leftovers():
    """A scenario's servers and clients die with its test, passed or failed."""
    yield
    stop(*_started)


def bg(ns: Netns, code: str, *args: object) -> subprocess.Popen:
    """Python `code` running in the namespace; its pid is the pid of the process that
    connects or listens (ip netns exec execs python in the same process)."""
    p = subprocess.Popen(ns.argv(sys.executable, "-c", code, *map(str, args)),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    _started.append(p)
    return p


def stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)
        if p.stderr:
            p.stderr.close()
        if p in _started:
            _started.remove(p)


def running(*procs: subprocess.Popen) -> None:
    """The scenario is really on: none of its programs died (a port in use, a typo)."""
    for p in procs:
        if p.poll() is not None:
            raise AssertionError(f"scenario program exited {p.returncode}: {p.stderr.read()}")


def sysctl(ns: Netns, name: str, value: object) -> None:
    """Set a per-namespace sysctl inside `ns` (no procps needed)."""
    path = "/proc/sys/" + name.replace(".", "/")
    subprocess.run(ns.argv("sh", "-c", f"echo {value} > {path}"), check=True)


def veth(a: Netns, b: Netns) -> tuple[str, str]:
    """Join two namespaces with a veth pair: a is 10.77.0.1, b is 10.77.0.2."""
    subprocess.run(["ip", "-n", a, "link", "add", "rh0", "type", "veth", "peer", "name", "rh0",
                    "netns", b], check=True)
    for ns, addr in ((a, "10.77.0.1"), (b, "10.77.0.2")):
        subprocess.run(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "rh0"], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "rh0", "up"], check=True)
    return "10.77.0.1", "10.77.0.2"


def comm() -> str:
    """The comm of the scenario programs: the name exec'd, as the kernel cuts it (a venv's
    "python", not the file its symlink leads to)."""
    return os.path.basename(sys.executable)[:15]


@dataclass
class Diagnosis:
    code: int
    report: dict
    err: str

    @property
    def top(self) -> dict:
        assert self.report["findings"], f"no findings\n{self}"
        return self.report["findings"][0]

    def of(self, service: str) -> list[dict]:
        return [f for f in self.report["findings"] if f["service"] == service]

    def __str__(self) -> str:  # in assertion messages: what diagnose said, all of it
        return f"exit {self.code}\n{json.dumps(self.report, indent=1)}\nstderr: {self.err}"


def diagnose(ns: Netns, *argv: str) -> Diagnosis:
    """`rsthound diagnose --json` inside the namespace, while the scenario runs."""
    r = subprocess.run(ns.argv(sys.executable, "-m", "rsthound", "diagnose", "--json", *argv),
                       capture_output=True, text=True, timeout=30, env=ENV)
    assert r.returncode in (0, 1), f"exit {r.returncode}: {r.stderr}{r.stdout}"
    try:
        report = json.loads(r.stdout)
    except ValueError:
        raise AssertionError(f"not one JSON object: {r.stdout!r}\n{r.stderr}") from None
    d = Diagnosis(r.returncode, report, r.stderr)
    w = report["window"]
    assert w["end"] >= w["start"] and w["seconds"] > 0, str(d)
    return d


def in_window(*procs: subprocess.Popen) -> None:
    """Let the failing traffic start before diagnose opens its window."""
    time.sleep(0.5)
    running(*procs)


def has_client(f: dict, pid: int) -> bool:
    return any(c["pid"] == pid and c["comm"] == comm() for c in f["clients"])


def served(ns: Netns, db: Path, port: int) -> list[dict]:
    """Who listened on `port`, as `watch` recorded it (`history --port`)."""
    r = subprocess.run(ns.argv(sys.executable, "-m", "rsthound", "history", "--port",
                               str(port), "--db", str(db), "--json"),
                       capture_output=True, text=True, timeout=30)
    return json.loads(r.stdout)["served"] if r.returncode == 0 else []


def history_ok(ns: Netns, db: Path) -> bool:
    """watch has written its first sample."""
    return db.exists() and subprocess.run(
        ns.argv(sys.executable, "-m", "rsthound", "history", "--db", str(db), "--json"),
        capture_output=True, timeout=30).returncode == 0


def until(what, timeout: float = 10) -> object:
    """Poll `what()` until it is true; its value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = what()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"waited {timeout} s in vain for {what.__doc__ or what}")


# -- the scenarios ------------------------------------------------------------------------


def start_seed(ns: Netns, tmp_path: Path) -> dict:
    """A collector listens on 127.0.0.1:7211 while watch records the listeners; it goes
    away; its client goes on connecting twice a second, refused each time."""
    db = tmp_path / "history.db"
    script = tmp_path / "collector.py"
    script.write_text(COLLECTOR)
    watch = subprocess.Popen(ns.argv(sys.executable, "-m", "rsthound", "watch", "--db", str(db),
                                     "--interval", "1", "--duration", "30"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env=ENV)
    _started.append(watch)
    until(lambda: history_ok(ns, db), 10)  # watch's first look is done: the collector's
    # start is one watch sees, not one it found already there
    collector = subprocess.Popen(ns.argv(sys.executable, str(script), "7211"),
                                 stderr=subprocess.PIPE, text=True, env=ENV)
    _started.append(collector)
    until(lambda: served(ns, db, 7211), 10)  # watch has seen it listen
    time.sleep(0.5)
    running(collector, watch)
    stop(collector)
    killed = time.time()
    until(lambda: [x for x in served(ns, db, 7211) if x["stopped"]], 10)  # and stop
    stop(watch)
    client = bg(ns, CONNECT_EVERY, "127.0.0.1", 7211, 0.5)
    return {"db": db, "collector": collector.pid, "killed": killed, "client": client}


def test_seed_collector_gone(netns, tmp_path):
    """The seed: a collector that stopped, a client still knocking. No listener, and
    diagnose says who listened there last and when it stopped, from watch's history."""
    s = start_seed(netns, tmp_path)
    in_window(s["client"])
    d = diagnose(netns, "--db", str(s["db"]))
    top = d.top
    assert (top["cause"], top["service"], top["abnormal"]) == (
        "no-listener", "127.0.0.1:7211", True), str(d)
    assert has_client(top, s["client"].pid), str(d)
    assert 1.0 <= top["rate_per_s"] <= 3.5, str(d)
    last = top["last_listener"]
    assert last and last["process"]["pid"] == s["collector"], str(d)
    assert "collector.py" in last["process"]["cmdline"], str(d)
    assert last["stopped"] is not None and abs(last["stopped"] - s["killed"]) <= 3, str(d)
    assert d.code == 1, str(d)


def start_remote_refusal(a: Netns, b: Netns) -> subprocess.Popen:
    """A client in a knocks on 10.77.0.2:7300 in b, where nothing listens: b's kernel resets."""
    veth(a, b)
    return bg(a, CONNECT_EVERY, "10.77.0.2", 7300, 0.25)


def test_refused_by_a_remote_host(netns_factory):
    """The reset comes in from another host: still no listener there, and no history of
    that host's listeners to tell."""
    a, b = netns_factory(), netns_factory()
    client = start_remote_refusal(a, b)
    in_window(client)
    d = diagnose(a)
    top = d.top
    assert (top["cause"], top["service"]) == ("no-listener", "10.77.0.2:7300"), str(d)
    assert has_client(top, client.pid) and top["last_listener"] is None, str(d)
    assert d.code == 1, str(d)


def start_firewall_reject(ns: Netns) -> dict:
    """A server listens on 127.0.0.1:7400, and nftables answers its SYNs with resets before
    they reach it."""
    if shutil.which("nft") is None:
        pytest.skip("needs nft (make test installs nftables as root)")
    server = bg(ns, LISTENER, "127.0.0.1", 7400, 64, 0.1)
    subprocess.run(ns.argv("nft", "add table inet rh; add chain inet rh in { type filter hook "
                           "input priority 0; }; add rule inet rh in tcp dport 7400 "
                           "reject with tcp reset"), check=True)
    time.sleep(0.3)
    return {"server": server, "client": bg(ns, CONNECT_EVERY, "127.0.0.1", 7400, 0.25)}


def test_firewall_reject(netns):
    """Resets where a listener is: not 'no listener' but the firewall, and its rule shown."""
    s = start_firewall_reject(netns)
    in_window(*s.values())
    d = diagnose(netns)
    top = d.top
    assert (top["cause"], top["service"]) == ("firewall-reject", "127.0.0.1:7400"), str(d)
    assert any("reject" in e for e in top["evidence"]), str(d)
    assert d.code == 1, str(d)


def start_firewall_drop(ns: Netns) -> subprocess.Popen:
    """SYNs to 127.0.0.1:7500 dropped by nftables; connects give up after one retry (~3 s),
    a new one every 0.5 s."""
    ns.drop_syns(7500, syn_retries=1)
    return bg(ns, CONNECT_THREADS, "127.0.0.1", 7500, 0.5)


def test_firewall_drop(netns):
    """Unanswered SYNs that time out: dropped, not refused (no reset anywhere)."""
    client = start_firewall_drop(netns)
    in_window(client)
    d = diagnose(netns, "--duration", "5")  # the first connects time out at about 3 s
    top = d.top
    assert (top["cause"], top["service"]) == ("firewall-drop", "127.0.0.1:7500"), str(d)
    assert all(f["cause"] != "no-listener" for f in d.of("127.0.0.1:7500")), str(d)
    # each connect runs in a thread of its own: all of them are the one process
    assert [c["pid"] for c in top["clients"]] == [client.pid], str(d)
    assert d.code == 1, str(d)


def start_overflow(ns: Netns, abort: int) -> dict:
    """A server on 127.0.0.1:7600 with listen(1) that accepts once in 5 s; 20 new
    connections a second, kept open."""
    sysctl(ns, "net.ipv4.tcp_abort_on_overflow", abort)
    server = bg(ns, LISTENER, "127.0.0.1", 7600, 1, 5)
    time.sleep(0.3)
    return {"server": server, "client": bg(ns, CONNECT_AND_HOLD, "127.0.0.1", 7600, 20)}


@pytest.mark.parametrize("abort", [0, 1], ids=["abort_on_overflow=0", "abort_on_overflow=1"])
def test_listen_overflow(netns, abort):
    """A full accept queue, named as the listener's overflow with its queue, backlog and
    process. Either way the kernel drops a SYN that finds the queue full (no reset, the
    client retries); abort_on_overflow=1 resets only a handshake whose last ACK finds it full,
    a rare race here (one reset in 8 s, reason INVALID_SYN), so it cannot be what tells."""
    s = start_overflow(netns, abort)
    in_window(*s.values())
    d = diagnose(netns)
    top = d.top
    assert (top["cause"], top["service"]) == ("listen-overflow", "127.0.0.1:7600"), str(d)
    lst = top["listener"]
    assert lst and lst["backlog"] == 1 and lst["queue"] >= 1, str(d)
    assert top["server"] and top["server"]["pid"] == s["server"].pid, str(d)
    assert d.code == 1, str(d)


def start_abort(a: Netns, b: Netns, port: int) -> dict:
    """A server in b answers part of each request and aborts (SO_LINGER 0); a client in a
    asks every 0.3 s."""
    veth(a, b)
    server = bg(b, ABORTING_SERVER, "10.77.0.2", port)
    time.sleep(0.3)
    return {"server": server, "client": bg(a, REQUEST_EVERY, "10.77.0.2", port, 0.3)}


def test_peer_abort_seen_from_the_client(netns_factory):
    """Reset mid-stream by the other host: peer-abort, on the client's side."""
    a, b = netns_factory(), netns_factory()
    s = start_abort(a, b, 7700)
    in_window(*s.values())
    d = diagnose(a)
    top = d.top
    assert (top["cause"], top["service"]) == ("peer-abort", "10.77.0.2:7700"), str(d)
    assert [c["pid"] for c in top["clients"]] == [s["client"].pid], str(d)
    assert d.code == 1, str(d)


def test_local_abort_seen_from_the_server(netns_factory):
    """The same resets on the server's host: this host's stack sent them (local-abort), with
    the kernel's reason where it tells it."""
    a, b = netns_factory(), netns_factory()
    s = start_abort(a, b, 7700)
    in_window(*s.values())
    d = diagnose(b)
    top = d.top
    assert (top["cause"], top["service"]) == ("local-abort", "10.77.0.2:7700"), str(d)
    assert top["server"] and top["server"]["pid"] == s["server"].pid, str(d)
    assert d.code == 1, str(d)
    if not tracefs_reason_field():
        pytest.skip("this kernel's tcp_send_reset has no reason field: reason not checked")
    # close() with SO_LINGER 0 is tcp_disconnect(), whose reason is TCP_STATE (seen on 6.18
    # in a tracefs instance); TCP_ABORT_ON_LINGER is the FIN_WAIT2 path of TCP_LINGER2 < 0
    assert top["reason"] == "TCP_STATE", str(d)


def start_unread_close(ns: Netns, port: int) -> dict:
    """A server on 127.0.0.1 that closes without reading the request; a client asking every
    0.3 s."""
    server = bg(ns, UNREAD_CLOSER, "127.0.0.1", port)
    time.sleep(0.3)
    return {"server": server, "client": bg(ns, REQUEST_EVERY, "127.0.0.1", port, 0.3)}


def test_close_with_unread_data(netns):
    """Closing with a request unread is a reset, not a FIN: local-abort, with both ends on
    this host and the server's stack the one that reset."""
    s = start_unread_close(netns, 7800)
    in_window(*s.values())
    d = diagnose(netns)
    top = d.top
    assert (top["cause"], top["service"]) == ("local-abort", "127.0.0.1:7800"), str(d)
    assert d.code == 1, str(d)
    if not tracefs_reason_field():
        pytest.skip("this kernel's tcp_send_reset has no reason field: reason not checked")
    assert top["reason"] == "TCP_ABORT_ON_CLOSE", str(d)


def start_healthy_http(ns: Netns, port: int) -> dict:
    """HTTP/1.1 on 127.0.0.1: ordinary requests, and once a second a request on a keep-alive
    connection the server has just closed (FIN), which the server's kernel resets."""
    server = bg(ns, HTTP_SERVER, port)
    time.sleep(0.5)
    return {"server": server, "client": bg(ns, HTTP_CLIENT, port)}


def test_healthy_http_with_keepalive_races(netns):
    """A request racing the server's idle close gets a reset after the FIN: that is how
    keep-alive ends sometimes, not a failure; nothing abnormal, exit 0."""
    s = start_healthy_http(netns, 7900)
    in_window(*s.values())
    d = diagnose(netns)
    assert not [f for f in d.report["findings"] if f["abnormal"]], str(d)
    assert all(f["cause"] == "normal" for f in d.of("127.0.0.1:7900")), str(d)
    assert d.code == 0, str(d)


def test_seed_over_ipv6(netns):
    """Refusals on ::1: the service is written [::1]:port."""
    client = bg(netns, CONNECT_EVERY, "::1", 7211, 0.5)
    in_window(client)
    d = diagnose(netns)
    top = d.top
    assert (top["cause"], top["service"]) == ("no-listener", "[::1]:7211"), str(d)
    assert has_client(top, client.pid), str(d)
    assert d.code == 1, str(d)
