"""The fast paths must not change answers: on real captures and on a large generated one,
(1) the vectorised batch path and one-packet-at-a-time tracking give the same connections
and resets, and (2) the summary-only mode gives the same summary as full tracking."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DATA
from flowrun import analyse
from rsthound.analyze.session import Analysis
from rsthound.report.jsonout import summary_obj
from rsthound.sources.capfile import read_capture

GEN = Path(__file__).parent.parent / "bench" / "gen_capture.py"


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gen") / "gen.pcap"
    subprocess.run([sys.executable, str(GEN), "--packets", "150000", "--seed", "7", "-q",
                    "-o", str(out)], check=True)
    return out


def summary(path: Path, full: bool) -> dict:
    a = Analysis(on_conn=(lambda c: None) if full else None)
    for batch in read_capture(str(path), a.summary.damages):
        a.feed(batch)
    return summary_obj(a.finish([str(path)]))


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*.pcap*")))
def test_summary_mode_matches_full_tracking_golden(name):
    assert summary(DATA / name, full=False) == summary(DATA / name, full=True)


def test_summary_mode_matches_full_tracking_generated(generated):
    fast = summary(generated, full=False)
    assert fast == summary(generated, full=True)
    assert fast["failed"]["refused"] > 100 and fast["resets"]["by_kind"]["abort"] > 100


def test_client_counts_under_a_small_cap_match_full_tracking(generated, monkeypatch):
    """Services' clients are counted up to a cap (then shown as "N+"): counted in bulk for
    plain connections, or one connection at a time, the counts and the capped flags are
    the same, and the cap is reached here."""
    from rsthound.analyze import summary as summary_mod

    init = summary_mod.Summarizer.__init__

    def small(self, s, max_services=10_000, max_clients=10_000):
        init(self, s, max_services, max_clients=25)

    monkeypatch.setattr(summary_mod.Summarizer, "__init__", small)
    fast = summary(generated, full=False)
    assert fast == summary(generated, full=True)
    assert any(svc["clients_capped"] for svc in fast["services"])
    assert all(svc["clients"] <= 25 for svc in fast["services"])
    assert any(not svc["clients_capped"] and svc["clients"] > 1 for svc in fast["services"])


def test_batch_path_matches_packet_path_generated(generated):
    conns, resets, _ = analyse(generated)  # asserts both paths agree
    assert len(conns) > 5000 and len(resets) > 500


def _run(path: Path, parallel: bool) -> tuple[dict, list]:
    from rsthound.pipeline import analyze_file

    a = Analysis()
    analyze_file(str(path), a, parallel=parallel)
    return summary_obj(a.finish([str(path)])), a.summary.damages


def test_reading_in_a_helper_process_changes_nothing(generated, tmp_path):
    # a damaged copy too: damage found by the helper must come back
    raw = generated.read_bytes()
    damaged = tmp_path / "damaged.pcap"
    damaged.write_bytes(raw[: len(raw) // 2] + b"\xff" * 4000 + raw[len(raw) // 2 :])
    for path in (generated, damaged):
        inline = _run(path, parallel=False)
        assert _run(path, parallel=True) == inline
    assert inline[1], "the damaged copy should report damage"


def test_helper_process_reports_unusable_file(tmp_path):
    from rsthound.errors import BadInput

    f = tmp_path / "junk.pcap"
    f.write_bytes(b"definitely not a capture" * 10)
    with pytest.raises(BadInput, match="at byte 0: not a capture"):
        _run(f, parallel=True)


def test_busy_summary_fits_80_columns(cli, generated):
    """On an 80-column terminal it fits; off a terminal only the service column may grow
    (nothing is cut there)."""
    from flowrun import run_batches
    from rsthound.report.text import render_summary

    _conns, _resets, a = run_batches(generated)
    out = render_summary(a.summary, columns=80)
    assert "Findings" in out
    assert all(len(line) <= 80 for line in out.splitlines()), out
    piped = cli("analyze", generated).out
    assert "…" not in piped and "Findings" in piped


@pytest.fixture
def small_spans(monkeypatch):
    """Spans of 4 MB instead of 256 MB, so that a test capture has many."""
    from rsthound import pipeline

    monkeypatch.setattr(pipeline, "CHUNK", 4 << 20)


def test_spans_read_by_helpers_change_nothing(generated, tmp_path, small_spans):
    """A pcap read in spans by helper processes, each span's first record guessed: the
    same summary and the same damage as one walk from the start, damaged or not."""
    from rsthound import pipeline

    assert len(pipeline._spans(str(generated))) > 10
    raw = generated.read_bytes()
    damaged = tmp_path / "damaged.pcap"
    # damage right at a span's start, and in the middle of another
    cut = 3 * pipeline.CHUNK + 100
    damaged.write_bytes(raw[:cut] + b"\xff" * 4000 + raw[cut:len(raw) // 2] + b"\x00" * 999
                        + raw[len(raw) // 2:])
    for path in (generated, damaged):
        inline = _run(path, parallel=False)
        assert _run(path, parallel=True) == inline
    assert len(inline[1]) >= 2, inline[1]


def test_a_wrong_guess_of_a_spans_first_record_is_caught(generated, monkeypatch, small_spans):
    """Each span's first record is a guess, proved by the span before it ending there: a
    wrong guess (here every other one, or none) and the span is read again, from the right
    place, by the main process."""
    from rsthound import pipeline

    real = pipeline.record_near
    calls = []

    def wrong(path: str, at: int) -> int | None:
        calls.append(at)
        got = real(path, at)
        return None if len(calls) % 5 == 0 else got + 16 if len(calls) % 2 else got

    inline = _run(generated, parallel=False)
    monkeypatch.setattr(pipeline, "record_near", wrong)
    assert _run(generated, parallel=True) == inline


def test_this_process_reads_spans_too_while_the_helper_is_busy(generated, monkeypatch,
                                                               small_spans):
    """The helper and this process each take the next span when they are free. With a
    helper made slow at each span's start, this process reads spans ahead of their turn
    (every third guess of a first record wrong, here as in the helper): the summary and
    the damage are still one walk's, and both processes read some spans."""
    import os
    import time

    from rsthound import pipeline

    inline = _run(generated, parallel=False)
    here = os.getpid()
    real, calls = pipeline.record_near, []

    def guess(path: str, at: int) -> int | None:
        if os.getpid() != here:
            time.sleep(0.1)
        calls.append(at)
        got = real(path, at)
        return got + 16 if got is not None and len(calls) % 3 == 0 else got

    ahead, theirs = [], []
    take, from_helper = pipeline._Ahead.take, pipeline._from_helper

    def took(self, idx: int):
        got = take(self, idx)
        if got is not None:
            ahead.append(idx)
        return got

    def helpers(*args, **kwargs):
        theirs.append(1)
        return from_helper(*args, **kwargs)

    monkeypatch.setattr(pipeline, "record_near", guess)
    monkeypatch.setattr(pipeline._Ahead, "take", took)
    monkeypatch.setattr(pipeline, "_from_helper", helpers)
    assert _run(generated, parallel=True) == inline
    assert len(ahead) >= 3 and theirs, (ahead, theirs)


def test_spans_read_beside_a_spawned_helper_change_nothing(generated, small_spans):
    """While another thread runs (a progress bar's, say), the helper is spawned, not
    forked: it starts without this process's state, and the result is still one walk's."""
    import threading

    from rsthound import pipeline

    inline = _run(generated, parallel=False)
    done = threading.Event()
    other = threading.Thread(target=done.wait)
    other.start()
    try:
        assert pipeline._context().get_start_method() == "spawn"
        assert _run(generated, parallel=True) == inline
    finally:
        done.set()
        other.join()


@pytest.mark.parametrize("ring", [256 << 10, 8 << 10], ids=["wrapping", "too-small"])
def test_plans_through_shared_memory_change_nothing(generated, monkeypatch, small_spans,
                                                    ring):
    """A forked helper's plans come through memory shared with it, stored one after the
    other and wrapping around, the helper waiting for room: a ring that holds one or two
    plans at a time, or hardly any (then they come pickled through the queue), gives
    one walk's result."""
    from rsthound import pipeline

    inline = _run(generated, parallel=False)
    monkeypatch.setattr(pipeline, "RING", ring)
    monkeypatch.setattr(pipeline, "AHEAD", 0)  # (the helper reads nearly every span)
    took, take = [], pipeline._Ring.take

    def taken(self, prepared):  # (here: where the ring had handed out bytes up to)
        stored = prepared.plan
        took.append(stored.end if isinstance(stored, pipeline._Stored) else None)
        return take(self, prepared)

    monkeypatch.setattr(pipeline._Ring, "take", taken)
    assert _run(generated, parallel=True) == inline
    ends = [e for e in took if e is not None]
    if ring > 64 << 10:  # most plans fit, and went round the ring several times
        assert len(ends) > len(took) * 0.8 and max(ends) > 4 * ring, took
    else:  # most plans come pickled (a small one may still fit)
        assert len(took) > 10 and len(ends) < len(took) * 0.2, took


def test_a_reader_waiting_for_room_goes_when_analyze_is_killed(generated):
    """kill -9 of analyze while its reader waits for room in the shared ring (nobody will
    ever give it back): the reader does not outlive it."""
    import contextlib
    import glob
    import os
    import signal
    import time

    script = f"""
import time
from rsthound import pipeline
from rsthound.analyze import session
pipeline.CHUNK, pipeline.RING, pipeline.AHEAD = 4 << 20, 256 << 10, 0
real = session.Analysis.feed_prepared
def slow(self, prepared):  # the reader fills the ring and waits
    time.sleep(0.3)
    return real(self, prepared)
session.Analysis.feed_prepared = slow
pipeline.analyze_file({str(generated)!r}, session.Analysis(), parallel=True)
"""
    p = subprocess.Popen([sys.executable, "-c", script])
    kids: list[int] = []

    def stat(pid: int | str) -> list[str]:  # the fields after the name: state, ppid, ...
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()
        except OSError:
            return []

    def children(pid: int) -> list[int]:
        return [int(p) for p in (d.split("/")[2] for d in glob.glob("/proc/[0-9]*"))
                if stat(p)[1:2] == [str(pid)]]

    def alive(pid: int) -> bool:  # (an orphan that ended may stay a zombie a moment)
        return stat(pid)[:1] not in ([], ["Z"])

    try:
        end = time.monotonic() + 20
        while not kids and time.monotonic() < end:
            time.sleep(0.2)
            kids = children(p.pid)
        assert kids, "no reader process was started"
        time.sleep(1.5)  # the reader is waiting for room by now
        assert p.poll() is None and all(alive(k) for k in kids)
        p.send_signal(signal.SIGKILL)
        p.wait()
        end = time.monotonic() + 10
        while any(alive(k) for k in kids) and time.monotonic() < end:
            time.sleep(0.1)
        assert not any(alive(k) for k in kids), kids
    finally:
        p.kill()
        p.wait()
        for k in [k for k in kids if alive(k)]:  # (none, unless the test failed)
            with contextlib.suppress(OSError):
                os.kill(k, signal.SIGKILL)


def test_spans_are_all_read_here_where_no_process_can_start(generated, monkeypatch,
                                                             small_spans):
    """Where no semaphore or process can be made (some sandboxes), every span is read
    here, with the same result."""
    from rsthound import pipeline

    class Refused:
        def __getattr__(self, name: str):
            raise OSError("no semaphores here")

    inline = _run(generated, parallel=False)
    monkeypatch.setattr(pipeline, "_context", Refused)
    assert _run(generated, parallel=True) == inline


def test_chains_whose_guesses_miss_fall_back_to_the_plain_walk(generated, monkeypatch):
    """The record walk's guesses (a first record in each range) proved wrong: the region
    is walked one record at a time, and the same records come out."""
    from rsthound.formats import pcap

    def offsets() -> list[int]:
        return [int(o) for b in read_capture(str(generated), []) for o in b.rec_off]

    want = offsets()
    real = pcap._Walker._guess
    monkeypatch.setattr(pcap._Walker, "_guess", lambda self, *a, **k: real(self, *a, **k) + 1)
    assert offsets() == want


def test_summary_mode_matches_full_tracking_in_tiny_batches(monkeypatch):
    """Batches of 7 packets: nearly every connection spans batches, so the plain ones are
    carried from batch to batch, held, and replayed when their four-tuple comes back or an
    ICMP error is about them. The summary is still full tracking's."""
    from rsthound.formats import pcap

    monkeypatch.setattr(pcap, "BATCH", 7)
    for name in sorted(p.name for p in DATA.glob("*.pcap")):
        assert summary(DATA / name, full=False) == summary(DATA / name, full=True), name


def test_streamed_connections_keep_their_order_in_a_big_file(generated, small_spans):
    """--conns and --resets stream records in the order connections end: a big file gives
    them in the same order as reading it in one process (spans would move batch borders,
    and with them when connections end, so they are left to summaries)."""
    from rsthound.pipeline import analyze_file

    def run(parallel: bool) -> tuple[list, list]:
        conns: list = []
        resets: list = []
        a = Analysis(on_conn=conns.append, on_reset=resets.append)
        analyze_file(str(generated), a, parallel=parallel)
        a.finish([str(generated)])
        return conns, resets

    inline = run(False)
    assert run(True) == inline and len(inline[0]) > 5000


def _rewrite(src: Path, dst: Path, big_endian: bool, nanos: bool) -> None:
    """The same capture as a big-endian and/or nanosecond pcap."""
    import struct

    raw = src.read_bytes()
    magic, major, minor, zone, sigfigs, snaplen, link = struct.unpack("<IHHiIII", raw[:24])
    order = ">" if big_endian else "<"
    out = [struct.pack(order + "IHHiIII", 0xA1B23C4D if nanos else magic, major, minor, zone,
                       sigfigs, snaplen, link)]
    off = 24
    while off + 16 <= len(raw):
        sec, frac, incl, orig = struct.unpack_from("<IIII", raw, off)
        out.append(struct.pack(order + "IIII", sec, frac * 1000 if nanos else frac, incl, orig))
        out.append(raw[off + 16:off + 16 + incl])
        off += 16 + incl
    dst.write_bytes(b"".join(out))


@pytest.mark.parametrize(("big_endian", "nanos"), [(True, False), (False, True), (True, True)],
                         ids=["big-endian", "nanoseconds", "both"])
def test_spans_of_other_pcap_flavours_and_a_filter(generated, tmp_path, monkeypatch,
                                                   big_endian, nanos):
    """Big-endian and nanosecond pcaps read in spans (1 MB here) give what one walk gives,
    and so does a tcpdump filter expression applied in the helpers."""
    from rsthound import pipeline
    from rsthound.pipeline import analyze_file

    small = tmp_path / "small.pcap"
    subprocess.run([sys.executable, str(GEN), "--packets", "20000", "--seed", "3", "-q",
                    "-o", str(small)], check=True)
    other = tmp_path / "other.pcap"
    _rewrite(small, other, big_endian, nanos)
    monkeypatch.setattr(pipeline, "CHUNK", 1 << 20)
    assert len(pipeline._spans(str(other))) > 5

    def run(parallel: bool, expression: str | None) -> dict:
        a = Analysis()
        analyze_file(str(other), a, parallel=parallel, expression=expression)
        return summary_obj(a.finish(["f"]))

    for expression in (None, "port 7211 or port 443"):
        inline = run(False, expression)
        assert run(True, expression) == inline
        assert inline["packets"] > 1000
    assert run(False, None) == summary(small, full=False) | {"files": ["f"]}


def test_progress_bar_on_a_terminal_and_the_same_summary(generated):
    """On a terminal a big file shows a progress bar (refreshed by analyze itself, so that
    no thread keeps the readers from being forked), then the summary a pipe gets."""
    import os
    import pty

    piped = subprocess.run([sys.executable, "-m", "rsthound", "analyze", str(generated)],
                           capture_output=True, text=True, check=True).stdout
    pid, fd = pty.fork()
    if pid == 0:  # the child: rsthound on the terminal
        os.execv(sys.executable, [sys.executable, "-m", "rsthound", "analyze", str(generated)])
    seen = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the child has gone: the terminal is closed
            break
        if not chunk:
            break
        seen += chunk
    _, status = os.waitpid(pid, 0)
    text = seen.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) in (0, 1), text
    import re

    # the bar: the file, and how much of how many megabytes
    assert "gen.pcap" in text and re.search(r"\d/\d+\.\d MB", text), text[:2000]
    summary = piped.splitlines()
    assert summary[1] in text and summary[-1].strip() in text


def _record_at_or_after(raw: bytes | bytearray, at: int) -> int:
    import struct

    off = 24
    while off < at:
        off += 16 + struct.unpack_from("<I", raw, off + 8)[0]
    return off


def test_damage_at_a_spans_first_record_and_a_jump_in_time(generated, tmp_path, small_spans):
    """Found by fuzzing: (1) damage right at a span's first record, where the resync must
    judge times by the record before (in the span before); (2) a jump of 400 s, after which
    idle connections end where a batch ends. Read in spans, both give one walk's result."""
    import struct

    from rsthound import pipeline

    raw = bytearray(generated.read_bytes())
    damaged = tmp_path / "damaged.pcap"
    at = _record_at_or_after(raw, 5 * pipeline.CHUNK)
    bad = bytearray(raw)
    struct.pack_into("<I", bad, at + 8, 262145)  # one more than any snaplen
    damaged.write_bytes(bad)
    jumped = tmp_path / "jumped.pcap"
    at = _record_at_or_after(raw, len(raw) // 2)
    late = bytearray(raw)
    struct.pack_into("<I", late, at, struct.unpack_from("<I", raw, at)[0] + 400)
    jumped.write_bytes(late)
    for path in (damaged, jumped):
        inline = _run(path, parallel=False)
        assert _run(path, parallel=True) == inline, path.name
