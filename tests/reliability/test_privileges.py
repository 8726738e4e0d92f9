"""Least privilege: what each command needs, checked by running it without (setpriv), and
webhooks that verify TLS certificates by default."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time

import pytest

from conftest import DATA, free_port
from rsthound.sinks.notify import Poster

NOBODY = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=-all",
          "--bounding-set=-all")


def as_nobody(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to drop to nobody")
    r = subprocess.run([*NOBODY, sys.executable, "-m", "rsthound", *argv],
                       capture_output=True, text=True, timeout=timeout,
                       env=dict(os.environ, STATE_DIRECTORY="", HOME="/nonexistent"))
    if "Permission denied" in r.stderr and "rsthound" not in r.stderr:
        pytest.skip(f"python cannot run as nobody here: {r.stderr.strip()[:200]}")
    return r


def test_analyze_needs_nothing():
    r = as_nobody("analyze", "--json", str(DATA / "refused.pcap"))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["failed"]["refused"] > 0


def test_counters_need_nothing():
    r = as_nobody("counters", "--interval", "0", "--json")
    assert r.returncode == 0, r.stderr
    assert "Tcp.AttemptFails" in json.loads(r.stdout)


def test_capture_names_the_capability_it_lacks():
    r = as_nobody("capture", "--duration", "1")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "CAP_NET_RAW" in r.stderr and "Traceback" not in r.stderr


def test_watch_serves_without_privileges_and_says_what_it_cannot():
    """Without any capability, watch still samples counters, serves /metrics and the API,
    and says why the always-on capture is off."""
    port = free_port()
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to drop to nobody")
    p = subprocess.Popen([*NOBODY, sys.executable, "-m", "rsthound", "watch", "--no-history",
                          "--listen", f"127.0.0.1:{port}", "--duration", "6"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        import urllib.request

        status = None
        for _ in range(60):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status",
                                            timeout=2) as r:
                    status = json.load(r)
                if status["capture"]["error"] not in (None, "not started"):
                    break
            except OSError:
                pass
            time.sleep(0.1)
        assert status is not None, p.stderr.read() if p.poll() is not None else "no answer"
        assert status["capture"]["running"] is False
        assert "CAP_NET_RAW" in status["capture"]["error"], status["capture"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
        assert "rsthound_capture_up 0.0" in text and "rsthound_netstat_Tcp_OutRsts_total" in text
    finally:
        p.kill()
        p.wait()


@pytest.fixture
def https_receiver(tmp_path):
    """An HTTPS receiver with a self-signed certificate for 127.0.0.1."""
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    got: list[bytes] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            got.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"https://127.0.0.1:{srv.server_address[1]}/hook", cert, got
    srv.shutdown()


def test_webhooks_verify_tls_by_default(https_receiver, monkeypatch):
    """A receiver whose certificate nobody vouches for gets nothing, and that is said; the
    same receiver with its CA trusted (SSL_CERT_FILE, as OpenSSL reads it) gets the post."""
    url, cert, got = https_receiver
    said: list[str] = []
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    poster = Poster(said.append)
    poster.post(url, {"event": "alert"})
    poster.close()
    assert got == [] and len(said) == 1, said
    assert "CERTIFICATE_VERIFY_FAILED" in said[0] and "cannot notify" in said[0]

    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    said.clear()
    poster = Poster(said.append)
    poster.post(url, {"event": "alert"})
    poster.close()
    assert said == [] and json.loads(got[0]) == {"event": "alert"}


@pytest.mark.parametrize("listen", [True, False], ids=["listen", "no-listen"])
def test_watch_runs_as_a_user_once_what_needs_root_is_open(netns_factory, tracefs_root,
                                                           listen):
    """watch --user nobody (with --listen or without), inside a namespace with refusals: it
    runs as nobody, its investigation (through the always-on capture opened as root) still
    names the service, the cause and the client, and its tracefs instance is gone after it
    exits. Without --listen this once lost its investigations: a module imported late
    could not be read as nobody."""
    import glob

    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux)")
    root = tracefs_root
    ns = netns_factory()
    client = ns.knock(60, 0.25)
    serve = ["--listen", f"127.0.0.1:{free_port()}"] if listen else []
    watch = subprocess.Popen(ns.argv(sys.executable, "-m", "rsthound", "watch", *serve,
                                     "--user", "nobody", "--no-history", "--json",
                                     "--duration", "8"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        uids = set()
        for _ in range(60):
            try:
                with open(f"/proc/{watch.pid}/status") as f:
                    uids = {ln.split()[1] for ln in f if ln.startswith("Uid:")}
            except OSError:
                break
            if uids == {"65534"}:
                break
            time.sleep(0.1)
        out, err = watch.communicate(timeout=60)
    finally:
        client.kill()
        client.wait()
    if "Permission denied" in err and "python" in err:
        pytest.skip(f"python cannot run as nobody here: {err.strip()[-200:]}")
    assert watch.returncode == 0, err
    assert "No module named" not in err and "investigating" not in err, err
    assert uids == {"65534"}, uids  # the real uid, as ps shows it
    assert "running as nobody" in err and "Traceback" not in err, err
    found = [json.loads(ln) for ln in out.splitlines() if '"findings"' in ln]
    assert found, out
    top = found[0]["findings"][0]
    assert (top["cause"], top["service"]) == ("no-listener", "127.0.0.1:7211"), top
    assert [c["pid"] for c in top["clients"]] == [client.pid], top
    for _ in range(30):  # the root helper removes the instance once watch is gone
        if not glob.glob(f"{root}/instances/rsthound-{watch.pid}-*"):
            break
        time.sleep(0.1)
    assert not glob.glob(f"{root}/instances/rsthound-{watch.pid}-*")





def test_watch_user_mistakes_are_one_line(cli):
    if os.geteuid() != 0:
        pytest.skip("--user is for root")
    r = cli("watch", "--user", "nobody", "--netns", "blue", "--duration", "0")
    assert r.code == 2 and r.err.count("\n") == 1 and "--user and --netns" in r.err, r.err
    r = cli("watch", "--user", "no-such-user-here", "--no-history", "--duration", "0")
    assert r.code == 2 and r.err.endswith("rsthound: no-such-user-here: no such user\n"), r.err
