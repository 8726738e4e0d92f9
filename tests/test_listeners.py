"""`rsthound listeners`: sock_diag in a namespace of our own, against what `ss` says."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.kernel

SERVER = """
import socket, sys, time
s = socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(int(sys.argv[3]))
print('up', flush=True)
time.sleep(60)
"""

FLOOD = """
import socket, sys, time
held = []
for _ in range(int(sys.argv[2])):
    c = socket.socket(); c.setblocking(False)
    try: c.connect(('127.0.0.1', int(sys.argv[1])))
    except BlockingIOError: pass
    held.append(c); time.sleep(0.05)
time.sleep(1.5)
"""


def start_server(netns, host, port, backlog):
    p = subprocess.Popen(netns.argv(sys.executable, "-c", SERVER, host, str(port), str(backlog)),
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "up"
    return p


def test_full_accept_queue_is_shown_with_its_owner(cli, netns):
    server = start_server(netns, "127.0.0.1", 7300, 1)
    other = start_server(netns, "::1", 7301, 50)
    try:
        subprocess.run(netns.argv(sys.executable, "-c", FLOOD, "7300", "6"), check=True,
                       timeout=30)
        r = cli("listeners", "--netns", netns, "--json")
        assert r.code == 0, r.err
        got = {x["port"]: x for x in r.lines()}
        full = got[7300]
        assert full["addr"] == "127.0.0.1" and full["backlog"] == 1
        assert full["queue"] == 2 and full["full"]  # the kernel queues backlog + 1
        assert full["drops"] >= 1
        assert full["process"]["pid"] == server.pid
        assert full["process"]["comm"].startswith("python")
        assert got[7301]["addr"] == "::1" and got[7301]["backlog"] == 50
        assert not got[7301]["full"] and got[7301]["process"]["pid"] == other.pid
        text = cli("listeners", "--netns", netns)
        assert text.code == 0 and "127.0.0.1:7300" in text.out and "FULL" in text.out
        assert "[::1]:7301" in text.out
        if shutil.which("ss"):  # the same numbers as ss
            ss = subprocess.run(["ip", "netns", "exec", netns, "ss", "-ltnH",
                                 "sport = :7300"], capture_output=True, text=True).stdout
            recv_q, send_q = ss.split()[1:3]
            assert (int(recv_q), int(send_q)) == (full["queue"], full["backlog"])
    finally:
        server.kill()
        other.kill()


def test_missing_namespace_is_one_line(cli):
    r = cli("listeners", "--netns", "rh-no-such-ns")
    assert r.code == 2 and "no such network namespace" in r.err
    assert len(r.err.splitlines()) == 1


def test_watch_keeps_who_listened_and_until_when(cli, netns, tmp_path):
    """A server that was up before watch started, and one that comes and goes while watch
    runs: `history --port` names each, and says when it stopped."""
    db = str(tmp_path / "h.db")
    early = start_server(netns, "127.0.0.1", 8080, 5)
    try:
        watch = subprocess.Popen([sys.executable, "-m", "rsthound", "watch", "--netns", netns,
                                  "--interval", "0.2", "--duration", "4", "--db", db],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        late = start_server(netns, "127.0.0.1", 7211, 5)
        time.sleep(1.0)
        late.kill()
        late.wait()
        stopped_at = time.time()
        _, err = watch.communicate(timeout=30)
        assert watch.returncode == 0, err
    finally:
        early.kill()
    r = cli("history", "--db", db, "--port", "7211", "--json")
    assert r.code == 0, r.err
    (row,) = r.json()["served"]
    assert row["process"]["pid"] == late.pid and row["addr"] == "127.0.0.1"
    assert row["seen_start"] and abs(_epoch(row["stopped"]) - stopped_at) < 1.0
    text = " ".join(cli("history", "--db", db, "--port", "7211").out.split())  # unwrapped
    assert "nothing listens now" in text and "last served by python" in text
    assert "nothing since" in text
    (row,) = cli("history", "--db", db, "--port", "8080", "--json").json()["served"]
    assert row["stopped"] is None and not row["seen_start"]  # up before watch looked
    text = " ".join(cli("history", "--db", db, "--port", "8080").out.split())
    assert "when watch first looked" in text


def _epoch(iso: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(iso).timestamp()
