"""Faults under the daemon: the namespace it watches removed, its tracefs instance pulled
at, SIGTERM in the middle of everything. Each is reported, never a crash, and nothing
committed is lost. (kill -9 during writes and a full disk: tests/test_history.py and
tests/test_watch.py.)"""

from __future__ import annotations

import glob
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import free_port

pytestmark = pytest.mark.kernel




def status(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=2) as r:
        return json.load(r)


def serving(port: int, p: subprocess.Popen, timeout: float = 20) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert p.poll() is None, p.stderr.read()
        try:
            st = status(port)
            if st["capture"]["running"]:
                return st
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("watch never captured")


def watch_serving(netns: str, db: object, port: int, *argv: str) -> subprocess.Popen:
    """`watch --listen` on the namespace, with its history in `db`, once it captures."""
    p = subprocess.Popen([sys.executable, "-m", "rsthound", "watch", "--netns", netns,
                          "--db", str(db), "--listen", f"127.0.0.1:{port}", *argv],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    serving(port, p)
    return p


def test_the_watched_namespace_removed_is_one_line_and_all_closed(netns, tmp_path,
                                                                 tracefs_root):
    """`ip netns del` under a running watch --listen: one line that says so, exit 2, its
    tracefs instances removed, and the history kept up to the removal."""
    root = tracefs_root
    client = netns.knock(100, 0.25)
    port, db = free_port(), tmp_path / "h.db"
    try:
        p = watch_serving(netns, db, port, "--duration", "20")
        time.sleep(4)
        client.kill()
        client.wait()
        removed = time.time()
        netns.delete()
        _, err = p.communicate(timeout=30)
    finally:
        client.kill()
        client.wait()
    assert p.returncode == 2, err
    assert "Traceback" not in err
    said = [ln for ln in err.splitlines() if "removed" in ln]
    assert len(said) == 1 and f"netns {netns}" in said[0], err
    assert not glob.glob(f"{root}/instances/rsthound-{p.pid}-*")
    last = sqlite3.connect(db).execute("SELECT max(t + covered) FROM points").fetchone()[0]
    # kept to the end: written within two intervals of the removal (not stopped earlier,
    # some 4 s before; a busy machine may be late by one interval)
    assert last / 1000 >= removed - 2.0, (removed, last)


def test_sigterm_removes_every_tracefs_instance_and_keeps_the_history(netns, tmp_path,
                                                                       tracefs_root):
    """watch --listen with its always-on capture, and an investigation running (an alert
    fired): SIGTERM ends it with exit 0, its tracefs instances gone and the history
    written up to the end."""
    root = tracefs_root
    client = netns.knock(100, 0.25)
    port, db = free_port(), tmp_path / "h.db"
    try:
        p = watch_serving(netns, db, port, "--json")
        for _ in range(100):  # until the alert has set off an investigation
            if status(port)["active"]:
                break
            time.sleep(0.1)
        time.sleep(0.5)
        ours = glob.glob(f"{root}/instances/rsthound-{p.pid}-*")
        # the always-on capture's: the investigation watches through it
        assert len(ours) == 1, ours
        # the kernel keeps an instance whose files are open: pulling it fails, and
        # tracing goes on
        with pytest.raises(OSError):
            os.rmdir(ours[0])
        killed = time.time()
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
    finally:
        client.kill()
        client.wait()
    assert p.returncode == 0, err
    assert "Traceback" not in err
    assert not glob.glob(f"{root}/instances/rsthound-{p.pid}-*")
    last = sqlite3.connect(db).execute("SELECT max(t + covered) FROM points").fetchone()[0]
    assert last / 1000 >= killed - 2.0  # written to the end, not stopped earlier
    events = [json.loads(ln)["event"] for ln in out.splitlines()]
    assert events[:2] == ["alert", "findings"], events  # the investigation was not lost


def test_a_read_only_history_is_one_line_and_alerts_go_on(netns, tmp_path):
    """The history's folder mounted read-only (in a mount namespace of the test's own): one
    line says so, and the refusal alert still comes."""
    import shutil

    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux)")
    folder = tmp_path / "state"
    folder.mkdir()
    first = subprocess.run([sys.executable, "-m", "rsthound", "watch", "--netns", netns,
                            "--db", str(folder / "h.db"), "--duration", "1"],
                           capture_output=True, text=True, timeout=30)
    assert first.returncode == 0, first.stderr  # the file exists, with a first row
    client = netns.knock(100, 0.25)
    script = (f"mount --bind {folder} {folder} && mount -o remount,bind,ro {folder} && "
              f"exec {sys.executable} -m rsthound watch --netns {netns} --json "
              f"--db {folder / 'h.db'} --duration 6")
    try:
        r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                           capture_output=True, text=True, timeout=60)
    finally:
        client.kill()
        client.wait()
    assert r.returncode == 0, r.stderr
    said = [ln for ln in r.stderr.splitlines() if "history" in ln and "rsthound:" in ln
            and "watching" not in ln]
    assert len(said) == 1 and ("read-only" in said[0] or "readonly" in said[0]), r.stderr
    assert "Traceback" not in r.stderr
    assert any(json.loads(ln)["event"] == "alert" for ln in r.stdout.splitlines()), r.stdout
