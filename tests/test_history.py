"""History: the SQLite store (tiers, roll-ups, restarts, bad files), `rsthound history`, and
`watch` writing it on a real kernel, through kill -9."""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from rsthound.analyze.alerts import Event
from rsthound.analyze.rates import Ticker
from rsthound.errors import BadInput
from rsthound.metrics import BY_NAME
from rsthound.model import Point
from rsthound.report.history import columns, render_history
from rsthound.sinks.history import History, Recorder

NOW = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC, an hour boundary
MS = 1000
FAILS = "Tcp.AttemptFails"


def fill(h: History, start: float, end: float, step: float, rng: random.Random,
         source: str = "boot/ns") -> list[tuple[float, int]]:
    """Intervals of `step` seconds from start to end, with random failures; returns them."""
    values = {k: 0 for k in BY_NAME}
    out = []
    t = start
    while t < end:
        n = rng.choice([0, 0, 0, 1, 2, 7])
        values[FAILS] += n
        values["Tcp.OutRsts"] += 1
        h.add(source, t, t + step, dict(values), {FAILS: n, "Tcp.OutRsts": 1})
        out.append((t, n))
        t += step
    return out


def total(points: list[Point]) -> tuple[int, int]:
    return sum(p.n for p in points), sum(p.covered_ms for p in points)


def test_roll_ups_keep_every_count_once(tmp_path):
    """Three hours of 5-second intervals: old rows live on only as minutes and hours, and
    every query, whichever tiers serve it, sees each failure exactly once."""
    rng = random.Random(7)
    start = NOW - 3 * 3600 - 1234.5  # not on any boundary
    with History(str(tmp_path / "h.db"), write=True) as h:
        got = fill(h, start, NOW, 5.0, rng)
        tiers = dict(h.db.execute("SELECT tier, min(t) FROM points GROUP BY tier"))
        assert tiers[0] >= (NOW - 3600) * MS - 60 * MS  # intervals are kept for an hour
        assert set(tiers) == {0, 1, 2}
        points = h.series(FAILS, 0, round(NOW * MS) + MS)
        assert total(points) == (sum(n for _, n in got), len(got) * 5 * MS)
        assert all(a.t_ms + a.covered_ms <= b.t_ms for a, b in itertools.pairwise(points))
        # rows an interval long for the last hour, minutes before (kept for 8 days)
        assert points[-1].span_ms == 5 * MS and points[0].span_ms == 60 * MS
        assert {p.span_ms for p in points} == {5 * MS, 60 * MS}
        for lo, hi in [(NOW - 3 * 3600, NOW - 3600), (NOW - 7200, NOW), (NOW - 600, NOW)]:
            want = sum(n for t, n in got if lo <= t < hi)
            assert total(h.series(FAILS, round(lo * MS), round(hi * MS)))[0] == want, (lo, hi)


def test_a_year_fits_in_a_few_megabytes(tmp_path):
    """The worst case: every counter grows in every interval. Hours for a year, minutes for
    8 days, seconds for the last hour: the size the retention settles at."""
    path = tmp_path / "year.db"
    values = {k: 0 for k in BY_NAME}
    incs = {k: 1000 + i for i, k in enumerate(BY_NAME)}
    with History(str(path), write=True) as h:
        t = NOW - 365 * 86400
        for step, until in ((3600, NOW - 8 * 86400), (60, NOW - 3600), (1, NOW)):
            while t < until:
                for k, n in incs.items():
                    values[k] += n
                h.add("s", t, t + step, values, incs)
                t += step
        rows = dict(h.db.execute("SELECT tier, count(*) FROM points GROUP BY tier"))
        h.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        points = h.series(FAILS, 0, round(NOW * MS))
    assert rows[0] <= 3601 and rows[1] <= 8 * 1440 + 1 and rows[2] <= 400 * 24
    assert path.stat().st_size < 3_000_000, path.stat().st_size
    assert points[0].t_ms < (NOW - 360 * 86400) * MS  # a year back, still there
    assert [p.span_ms for p in (points[0], points[-4000], points[-1])] == [3600 * MS, 60 * MS,
                                                                         MS]


def test_restart_fills_the_gap_from_the_counters(tmp_path):
    path = str(tmp_path / "h.db")
    before = {FAILS: 100, "Tcp.OutRsts": 5}
    with History(path, write=True) as h:
        h.add("boot1/ns1", NOW - 60, NOW - 30, before, {FAILS: 3})
    with History(path, write=True) as h:  # same boot and namespace: the counters went on
        assert h.resume("boot1/ns1", NOW, {FAILS: 160, "Tcp.OutRsts": 5}) == NOW - 30
        pts = h.series(FAILS, 0, round(NOW * MS))
        assert [(p.t_ms, p.covered_ms, p.n) for p in pts] == [
            ((NOW - 60) * MS, 30 * MS, 3), ((NOW - 30) * MS, 30 * MS, 60)]
    with History(path, write=True) as h:  # another boot: counters started again, no guess
        assert h.resume("boot2/ns1", NOW + 60, {FAILS: 2}) is None
        assert len(h.series(FAILS, 0, round((NOW + 60) * MS))) == 2


def test_a_clock_stepped_back_keeps_rows_in_order(tmp_path):
    with History(str(tmp_path / "h.db"), write=True) as h:
        h.add("s", NOW, NOW + 10, {FAILS: 4}, {FAILS: 4})
        h.add("s", NOW - 100, NOW - 90, {FAILS: 6}, {FAILS: 2})  # clock went back 100 s
        pts = h.series(FAILS, 0, round((NOW + 20) * MS))
    assert [(p.t_ms, p.n) for p in pts] == [(NOW * MS, 4), ((NOW + 10) * MS, 2)]


def test_one_writer_per_file_and_bad_files_are_one_line(tmp_path):
    path = str(tmp_path / "h.db")
    with History(path, write=True), pytest.raises(BadInput, match="another 'rsthound watch'"):
        History(path, write=True)
    with History(path) as reader:  # readers are welcome
        assert reader.series(FAILS, 0, 1) == []
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not SQLite at all" * 100)
    with pytest.raises(BadInput, match=r"junk\.db: not a usable history file"):
        History(str(junk))
    with pytest.raises(BadInput, match="no history here yet"):
        History(str(tmp_path / "missing.db"))
    with pytest.raises(BadInput, match="cannot create its folder"):
        History(str(junk / "sub" / "h.db"), write=True)  # a file where a folder should be


def event(kind: str, level: str, ts: float, started: float) -> Event:
    return Event(kind, "failed-connections", "failed TCP connections", level, FAILS, 2.0, 1.0,
                 started, ts)


def obj(e: Event) -> dict:
    from rsthound.report.alerts import event_obj

    return event_obj(e, "box", "this host")


def test_events_include_alerts_still_open_at_since(tmp_path):
    with History(str(tmp_path / "h.db"), write=True) as h:
        for e in (event("alert", "warn", NOW - 500, NOW - 510),
                  event("clear", "warn", NOW - 400, NOW - 510),
                  event("alert", "warn", NOW - 300, NOW - 310),
                  event("alert", "error", NOW - 200, NOW - 310)):
            h.add_event(e, obj(e))
        got = h.events(round((NOW - 250) * MS), round(NOW * MS))
    assert [(g["event"], g["level"]) for g in got] == [("alert", "warn"), ("alert", "error")]


def test_a_failing_store_is_said_once_and_retried(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    said: list[str] = []
    rec = Recorder(str(blocker / "h.db"), "s", "this host", said.append, retry=10)
    ticker = Ticker()
    for i in range(5):
        rec.sample(ticker.next(float(i), NOW + i, {FAILS: i}))
    assert len(said) == 1 and "cannot write" in said[0] and "alerts go on" in said[0]
    blocker.unlink()
    blocker.mkdir()  # fixed: the retry, 10 s after the failure, finds it writable
    for i in range(5, 15):
        rec.sample(ticker.next(float(i), NOW + i, {FAILS: i}))
    rec.close()
    assert said[1] == f"history: writing {blocker / 'h.db'} again"
    with History(str(blocker / "h.db")) as h:
        assert total(h.series(FAILS, 0, round((NOW + 20) * MS))) == (4, 4 * MS)


def test_columns_spread_rows_over_the_time_they_cover():
    pts = [Point(0, 10 * MS, 10), Point(20 * MS, 10 * MS, 40)]  # nothing watched in 10..20
    cols = columns(pts, 0.0, 40.0, 4)
    assert [c.rate for c in cols] == [1.0, None, 4.0, None]
    cols = columns([Point(5 * MS, 10 * MS, 10)], 0.0, 20.0, 2)  # half in each column
    assert [(c.n, c.covered) for c in cols] == [(5.0, 5.0), (5.0, 5.0)]


def test_chart_marks_alerts_and_unwatched_time():
    pts = [Point(round((NOW + i) * MS), MS, 5 if 20 <= i < 30 else 0) for i in range(40)]
    events = [obj(event("alert", "warn", NOW + 22, NOW + 20)),
              obj(event("clear", "warn", NOW + 33, NOW + 20))]
    text = render_history(BY_NAME[FAILS], "this host", NOW, NOW + 60, pts, events,
                          width=68)  # 60 columns: one per second
    lines = text.splitlines()
    bars = [ln for ln in lines if "┤" in ln or "│" in ln]
    assert bars[0].startswith("   5/s ┤") and bars[0][8 + 20:8 + 30] == "█" * 10
    assert set(bars[0][8:8 + 20].strip()) <= set()  # quiet before
    axis = next(ln for ln in lines if ln.startswith("   0/s ┼"))
    assert axis[8:] == "─" * 40 + "·" * 20  # watched for 40 s of the 60
    marks = next(ln for ln in lines if ln.startswith("alerts"))
    assert marks[8:] == " " * 20 + "w" * 14  # from the start of the condition to the clear
    assert "50 connections in 40 s watched" in text
    assert any("ALERT warn: failed TCP connections on box" in ln for ln in lines)


def test_history_command_reads_what_was_stored(cli, tmp_path):
    path = str(tmp_path / "h.db")
    now = time.time()
    with History(path, write=True) as h:
        fill(h, now - 600, now, 1.0, random.Random(3))
        e = event("alert", "warn", now - 100, now - 110)
        h.add_event(e, obj(e))
        want = total(h.series(FAILS, round((now - 300) * MS), round(now * MS)))
    r = cli("history", "--db", path, "--since", "5m", "--json")
    assert r.code == 0, r.err
    got = r.json()
    assert sum(p["increase"] for p in got["points"]) == want[0] > 0
    assert got["alerts"][0]["rule"] == "failed-connections"
    r = cli("history", "--db", path, "--since", "10m")
    assert r.code == 0 and "connects that failed per second (Tcp.AttemptFails)" in r.out
    assert "ALERT warn" in r.out
    r = cli("history", "--db", path, "--metric", "TcpExtListenOverflows", "--json")
    assert r.code == 0 and r.json()["points"] == []  # kept, but never grew: no rows
    for argv, said in ((["--since", "yesterday"], "is not a time"),
                       (["--metric", "Nope"], "is not a counter rsthound keeps"),
                       (["--db", str(tmp_path / "none.db")], "no history here yet")):
        r = cli("history", *argv)
        assert r.code == 2 and said in r.err and len(r.err.splitlines()) == 1, r.err


@pytest.mark.kernel
def test_history_survives_kill_9(netns, tmp_path):
    """watch writes refusals in a namespace; kill -9 in the middle; the refusals made while
    it was down are filled in on restart, and every one of them is in the history."""
    db = str(tmp_path / "h.db")
    argv = netns.argv(sys.executable, "-m", "rsthound", "watch", "--interval", "0.2",
                      "--db", db, "--json")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    watch = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    _wait_rows(db, 2)
    refuse = ("import socket, time\n"
              "for _ in range({n}):\n"
              "    s = socket.socket()\n"
              "    try: s.connect(('127.0.0.1', 7211))\n"
              "    except OSError: pass\n"
              "    s.close(); time.sleep(0.1)\n")
    netns.run(refuse.format(n=10))
    time.sleep(0.5)  # two intervals: the 10 are written
    watch.send_signal(signal.SIGKILL)
    watch.wait(timeout=10)
    killed = time.time()
    with History(db) as h:
        assert total(h.series(FAILS, 0, round(killed * MS)))[0] == 10
        assert h.end_ms >= (killed - 0.2 - 0.5) * MS  # at most the last interval is lost
    netns.run(refuse.format(n=7))  # while nobody watches
    r = subprocess.run([*argv, "--duration", "0.6"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    assert "filled in the" in r.stderr and "since the last run from the counters" in r.stderr
    with History(db) as h:
        assert total(h.series(FAILS, 0, round(time.time() * MS)))[0] == 17


def _wait_rows(db: str, n: int) -> None:
    for _ in range(100):
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
                if c.execute("SELECT count(*) FROM points").fetchone()[0] >= n:
                    return
        except sqlite3.Error:
            pass
        time.sleep(0.1)
    raise AssertionError(f"watch wrote no rows to {db}")


@pytest.mark.kernel
def test_watch_keeps_alerting_when_the_store_fails(netns, tmp_path):
    """The history's file system fills up under a running watch: one line says so, and the
    alert for refusals still comes."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    try:
        db = str(mnt / "h.db")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        watch = subprocess.Popen(
            netns.argv(sys.executable, "-m", "rsthound", "watch", "--interval", "0.5",
                       "--duration", "6", "--db", db, "--json"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        _wait_rows(db, 1)
        with open(mnt / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
        client = netns.start("import socket, time\n"
                             "for _ in range(10):\n"
                             "    s = socket.socket()\n"
                             "    try: s.connect(('127.0.0.1', 7211))\n"
                             "    except OSError: pass\n"
                             "    s.close(); time.sleep(0.4)\n")
        out, err = watch.communicate(timeout=30)
        client.wait(timeout=10)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
    assert watch.returncode == 0, err
    said = [ln for ln in err.splitlines() if "history:" in ln]
    assert len(said) == 1 and "cannot write" in said[0] and "alerts go on" in said[0], err
    assert '"event":"alert"' in out and "failed-connections" in out, out


def test_an_alert_open_when_watch_stopped_ends_where_watching_did():
    """watch stopped during an alert (no clear): the alert row stops with the watched time
    instead of running on across time nobody watched."""
    pts = [Point(round((NOW + i) * MS), MS, 5 if i >= 20 else 0) for i in range(30)]
    events = [obj(event("alert", "warn", NOW + 22, NOW + 20))]
    text = render_history(BY_NAME[FAILS], "this host", NOW, NOW + 60, pts, events, width=68)
    marks = next(ln for ln in text.splitlines() if ln.startswith("alerts"))
    assert marks[8:] == " " * 20 + "w" * 10, marks  # watched until 30 s, not 60
