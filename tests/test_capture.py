"""`rsthound capture`: live traffic in network namespaces of our own, read by libpcap."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import Netns, tracefs_reason_field

pytestmark = pytest.mark.kernel

CLIENT = """
import socket, sys, time
fam = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET
for i in range(int(sys.argv[3])):
    s = socket.socket(fam)
    if sys.argv[4] == 'nonblock':
        s.setblocking(False)
        try: s.connect((sys.argv[1], int(sys.argv[2])))
        except BlockingIOError: pass
        time.sleep(0.05)
    else:
        try: s.connect((sys.argv[1], int(sys.argv[2])))
        except OSError: pass
    s.close()
    time.sleep(0.1)
"""


_started: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_leftover_captures():
    """A test that fails before its capture ends must not leave it running."""
    yield
    while _started:
        p = _started.pop()
        if p.poll() is None:
            p.kill()
            p.wait()


def capture(ns: Netns, *argv: str) -> subprocess.Popen:
    """`rsthound capture` inside the namespace, started once it says it is capturing."""
    p = subprocess.Popen(ns.argv(sys.executable, "-m", "rsthound", "capture", *argv),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONUNBUFFERED="1"))
    _started.append(p)
    line = p.stderr.readline()
    assert "capturing on" in line, line + p.stderr.read()
    return p


def client(ns: Netns, host: str, port: int, n: int, mode: str = "sync") -> int:
    """Connect n times; the client's pid (ip netns exec runs it in its own process)."""
    p = subprocess.Popen(ns.argv(sys.executable, "-c", CLIENT, host, str(port), str(n), mode))
    assert p.wait(timeout=30) == 0
    return p.pid


@pytest.mark.parametrize(("host", "mode"), [("127.0.0.1", "sync"), ("::1", "sync"),
                                            ("127.0.0.1", "nonblock"), ("::1", "nonblock")])
def test_any_sees_loopback_refusals(netns, host, mode):
    """Refused connects on loopback, seen on `any`; each names the client that connected
    (pid, comm, cmdline), and the kernel's reason where it has one."""
    cap = capture(netns, "--json", "-c", "3")
    pid = client(netns, host, 7211, 3, mode)
    out, err = cap.communicate(timeout=30)
    assert cap.returncode == 0, err
    got = [json.loads(ln) for ln in out.splitlines()]
    assert [(g["kind"], g["iface"], g["src"], g["sport"], g["dport"] == 7211) for g in got] == [
        ("refused", "lo", host, 7211, False)] * 3
    assert "packets captured" in err and "0 dropped by kernel" in err
    assert "3 resets seen; this host's TCP sent 3 meanwhile (Tcp.OutRsts)" in err
    if "without process names" in err:
        pytest.skip(f"tracefs: {err.splitlines()[0]}")
    procs = [g["process"] for g in got]
    assert all(p and p["pid"] == pid and p["comm"].startswith("python") for p in procs), (
        pid, procs)
    assert "CLIENT" not in procs[0]["cmdline"] and "-c" in procs[0]["cmdline"]
    assert procs[0]["netns"] == os.stat(f"/run/netns/{netns}").st_ino
    if tracefs_reason_field():
        assert [g["reason"] for g in got] == ["NO_SOCKET"] * 3
    else:
        print("this kernel's tcp_send_reset has no reason field: reason not checked")
    assert not glob.glob(f"/sys/kernel/tracing/instances/rsthound-{cap.pid}-*")  # removed


def test_filter_expression_and_write_read_back(netns, tmp_path):
    if shutil.which("tcpdump") is None:
        pytest.skip("needs tcpdump (make test installs it as root)")
    out_file = tmp_path / "cap.pcap"
    cap = capture(netns, "-w", str(out_file), "--duration", "3", "port", "7211")
    client(netns, "127.0.0.1", 7211, 4)
    client(netns, "127.0.0.1", 7299, 2)  # not on the port asked for
    out, err = cap.communicate(timeout=30)
    assert cap.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 4 and all("refused by server" in ln and " lo IP " in ln
                                   for ln in lines), out
    assert "8 packets captured" in err  # SYN and RST of each
    r = subprocess.run(["tcpdump", "-nr", str(out_file)], capture_output=True, text=True)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 8, r.stderr
    a = subprocess.run([sys.executable, "-m", "rsthound", "analyze", "--resets", "--json",
                        str(out_file)], capture_output=True, text=True)
    kinds = [json.loads(ln)["kind"] for ln in a.stdout.splitlines()]
    assert kinds == ["refused"] * 4, a.stderr


def test_a_client_that_gave_up_before_its_syn_was_sent_again_timed_out(netns):
    """A non-blocking connect closed after 50 ms: one SYN, unanswered, and nothing after.
    The capture calls it a timeout (with that one packet) once it is TIMEOUT_AFTER old, as
    it does SYNs sent again; not a failed connect it saw nothing of."""
    netns.drop_syns(7401, syn_retries=2)
    cap = capture(netns, "--json", "-c", "1", "--duration", "12")
    pid = client(netns, "127.0.0.1", 7401, 1, "nonblock")
    out, err = cap.communicate(timeout=30)
    got = [json.loads(ln) for ln in out.splitlines()]
    assert len(got) == 1 and got[0]["kind"] == "timeout" and got[0]["dport"] == 7401, out
    assert got[0]["syns"] == 1
    if "without process names" in err:
        pytest.skip(f"tracefs: {err.splitlines()[0]}")
    assert got[0]["process"]["pid"] == pid


def test_unanswered_syns_are_timeouts_with_their_process(netns):
    netns.drop_syns(7400, syn_retries=2)
    cap = capture(netns, "--json", "-c", "1", "--duration", "20")
    pid = client(netns, "127.0.0.1", 7400, 1)
    out, err = cap.communicate(timeout=30)
    got = [json.loads(ln) for ln in out.splitlines()]
    assert len(got) == 1 and got[0]["kind"] == "timeout" and got[0]["dport"] == 7400, err
    assert got[0]["syns"] >= 2
    if "without process names" in err:
        pytest.skip(f"tracefs: {err.splitlines()[0]}")
    assert got[0]["process"]["pid"] == pid


def test_bad_filter_and_bad_interface_are_one_line(netns):
    for argv, said in ((["port", "seventy"], "not a filter expression"),
                       (["-i", "nosuch0"], "no such interface")):
        r = subprocess.run(netns.argv(sys.executable, "-m", "rsthound", "capture", *argv),
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and said in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_without_cap_net_raw_one_line(netns):
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux)")
    r = subprocess.run(netns.argv("setpriv", "--inh-caps=-net_raw", "--bounding-set=-net_raw",
                                  sys.executable, "-m", "rsthound", "capture",
                                  "--duration", "1"),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "CAP_NET_RAW" in r.stderr, r.stderr


def test_summary_at_the_end(netns):
    cap = capture(netns, "--summary", "--duration", "2.5")
    client(netns, "127.0.0.1", 7211, 5)
    out, _ = cap.communicate(timeout=30)
    assert "rsthound capture: live capture on every interface" in out
    assert "127.0.0.1:7211" in out


def _pid_namespace(*argv: str) -> tuple[subprocess.Popen, int]:
    """`argv` run as PID 1 of a new pid namespace (a container's, as the host sees it), and
    that namespace's inode."""
    p = subprocess.Popen(["unshare", "--pid", "--fork", "sh", "-c",
                          'stat -Lc %i /proc/self/ns/pid && exec "$@"', "sh", *argv],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    return p, int(p.stdout.readline())


def test_sigterm_and_stale_instances_are_cleaned_up(netns, tracefs_root):
    """At start, the instances of gone rsthound processes are removed: of this pid
    namespace, by their pid; of another (a container's watch), once nothing is left in
    that namespace. A live container's are left alone, whatever its pids."""
    root = tracefs_root
    dead = subprocess.Popen(["true"])
    dead.wait()
    here = os.stat("/proc/self/ns/pid").st_ino
    live, there = _pid_namespace("sleep", "60")
    ended, gone = _pid_namespace("true")
    ended.wait()
    stale = Path(root, "instances", f"rsthound-{dead.pid}-1-p{here}")  # a pid that is gone
    older = Path(root, "instances", f"rsthound-{dead.pid}")  # as earlier versions named them
    theirs = Path(root, "instances", f"rsthound-{dead.pid}-1-p{there}")
    left = Path(root, "instances", f"rsthound-{dead.pid}-1-p{gone}")
    for p in (stale, older, theirs, left):
        p.mkdir()
    try:
        cap = capture(netns)
        assert not stale.exists() and not older.exists() and not left.exists()
        assert theirs.exists()
    finally:
        live.kill()
        live.wait()
        for p in (theirs, left):
            if p.exists():
                p.rmdir()
    assert glob.glob(f"{root}/instances/rsthound-{cap.pid}-*")
    cap.terminate()
    _, err = cap.communicate(timeout=10)
    assert cap.returncode == 0 and "packets captured" in err
    assert not glob.glob(f"{root}/instances/rsthound-{cap.pid}-*")


def test_summary_on_a_terminal_is_a_live_table(netns):
    if shutil.which("script") is None:
        pytest.skip("needs script (util-linux) for a terminal")
    cmd = f"{sys.executable} -m rsthound capture --summary --duration 3"
    cap = subprocess.Popen(netns.argv("script", "-qec", cmd, "/dev/null"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    client(netns, "127.0.0.1", 7211, 4)
    out, _ = cap.communicate(timeout=30)
    assert cap.returncode == 0
    assert out.count("rsthound capture: live capture on every interface") >= 2  # redrawn
    assert "refused by server" not in out  # no event lines under the table
    last = out.rsplit("rsthound capture:", 1)[1]
    assert "127.0.0.1:7211      4       4" in last
