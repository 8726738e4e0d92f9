"""tracefs binary records: this kernel's event formats, and ring-buffer pages."""

from __future__ import annotations

import socket
import struct
import sys
import time
from pathlib import Path

import pytest

from rsthound.formats.traceraw import page_records, parse_format, sockaddr

DATA = Path(__file__).parent / "data" / "tracefs"


def test_formats_of_this_kernel():
    state = parse_format((DATA / "inet_sock_set_state.format").read_text())
    assert state.name == "inet_sock_set_state"
    assert state.fields["skaddr"] == (8, 8, False) and state.fields["sport"] == (24, 2, False)
    assert state.symbol("newstate", 2) == "TCP_SYN_SENT"
    reset = parse_format((DATA / "tcp_send_reset.format").read_text())
    assert reset.fields["saddr"] == (32, 28, False)
    assert reset.symbol("reason", 1) == "NO_SOCKET"  # the kernel's names, not a copy
    assert reset.symbol("reason", 11) == "TCP_ABORT_ON_CLOSE"
    assert reset.symbol("reason", 999) == "999"


def record(fmt, **values) -> bytes:
    rec = bytearray(max(off + size for off, size, _ in fmt.fields.values()))
    rec[0:2] = fmt.id.to_bytes(2, sys.byteorder)
    for name, v in values.items():
        off, size, signed = fmt.fields[name]
        rec[off:off + size] = v if isinstance(v, bytes) else v.to_bytes(size, sys.byteorder,
                                                                          signed=signed)
    return bytes(rec)


def page(*records: bytes, extend: bool = True) -> bytes:
    """A trace_pipe_raw page: a time-extend event, then each record (short ones by type_len,
    a long one with its length in the next word), then padding."""
    data = bytearray()
    if extend:
        data += struct.pack("=II", 30, 0)
    for r in records:
        r = r + bytes(-len(r) % 4)
        if len(r) <= 28 * 4 and len(records) > 1:
            data += struct.pack("=I", len(r) // 4) + r
        else:
            data += struct.pack("=II", 0, len(r) + 4) + r
    data += struct.pack("=II", 29 | (5 << 5), 8) + bytes(8)
    return struct.pack("=QQ", 123456, len(data)) + bytes(data) + bytes(4096 - 16 - len(data))


def test_page_records_walks_every_kind_of_entry():
    state = parse_format((DATA / "inet_sock_set_state.format").read_text())
    reset = parse_format((DATA / "tcp_send_reset.format").read_text())
    a = record(state, skaddr=0xFFFF888117F5B780, oldstate=7, newstate=2, dport=7211)
    v6 = struct.pack("=H", socket.AF_INET6) + (7211).to_bytes(2, "big") + bytes(4) + \
        socket.inet_pton(socket.AF_INET6, "::1") + bytes(4)
    b = record(reset, reason=1, saddr=v6, daddr=v6)
    for p, want in ((page(a, b), [a, b]), (page(b), [b]), (page(a, extend=False), [a])):
        got = [bytes(r) for r in page_records(p)]
        assert [g[:len(w)] for g, w in zip(got, want, strict=True)] == want
    recs = [bytes(r) for r in page_records(page(a, b))]
    assert state.get(recs[0], "skaddr") == 0xFFFF888117F5B780
    assert state.get(recs[0], "dport") == 7211 and state.get(recs[0], "newstate") == 2
    assert reset.symbol("reason", reset.get(recs[1], "reason")) == "NO_SOCKET"
    assert sockaddr(reset.raw(recs[1], "saddr")) == ("::1", 7211)
    v4 = struct.pack("=H", socket.AF_INET) + (80).to_bytes(2, "big") + bytes([10, 0, 0, 5])
    assert sockaddr(v4 + bytes(20)) == ("10.0.0.5", 80)
    assert list(page_records(b"short")) == []


def test_reset_endpoints_match_the_packets():
    from rsthound.sources.tracefs import _ep

    assert _ep("::ffff:127.0.0.1", 80) == ("127.0.0.1", 80)  # a dual-stack socket's peer
    assert _ep("::1", 7211) == ("::1", 7211) and _ep("10.0.0.5", 22) == ("10.0.0.5", 22)


def _traced(tracer_of, run) -> tuple[list, object]:
    """What a fresh tracer (`tracer_of()`) saw while `run(tracer)` ran (its failed connects,
    and what `run` returned), tried again up to three times if the trace fell behind: events
    are lost then, as they must be under a storm of connects elsewhere on the host (another
    test's), and no count can be checked."""
    for _ in range(3):
        tracer = tracer_of()
        try:
            made = run(tracer)
            time.sleep(0.3)
            got = tracer.failed()
        finally:
            tracer.close()
        if not tracer.behind:
            return got, made
    pytest.skip("the trace fell behind three times: storms of connects elsewhere on this "
                "host (other tests') filled its buffer, and events were lost")


@pytest.mark.kernel
def test_a_connect_traced_on_two_cpus_is_one_failure_of_its_process(netns_factory,
                                                                     tracefs_root):
    """A connect enters SYN_SENT on its caller's CPU (1); the reset, steered to CPU 0 by
    RPS, closes it there. Read CPU by CPU, the close would come before the connect and the
    failure be lost. The callers are threads that end at once: named by their process, by
    the trace of their creation (the kernel's saved_tgids is off on most hosts)."""
    import os
    import subprocess

    from test_diagnose_scenarios import veth

    from rsthound.sources.tracefs import Tracer

    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs 2 CPUs (a connect's events on two of them)")
    a, b = netns_factory(), netns_factory()
    _, there = veth(a, b)
    rps = subprocess.run(a.argv("sh", "-c", "echo 1 > /sys/class/net/rh0/queues/rx-0/rps_cpus"),
                         capture_output=True, text=True)
    if rps.returncode:
        pytest.skip(f"needs RPS (CONFIG_RPS) to take the resets on CPU 0: {rps.stderr.strip()}")
    def knock(_tracer):
        client = a.knock_threads(6, 0.1, addr=there, cpu=1)
        assert client.wait(timeout=30) == 0, client.stderr.read()
        return client

    failed, client = _traced(lambda: Tracer(tracefs_root), knock)
    # (other tests' namespaces may use the same addresses at the same time)
    seen = [x for x in failed if (x.dst, x.dport) == (there, 7211)]
    got = [x.errno for x in seen if x.process and x.process.pid == client.pid]
    assert got == ["ECONNREFUSED"] * 6, seen  # each failure once, each named


@pytest.mark.kernel
def test_an_event_whose_filter_the_kernel_refuses_is_left_out(netns, tracefs_root,
                                                              monkeypatch):
    """An older kernel may not parse a filter of one of the optional events: the trace
    runs without that event, and still sees every failed connect."""
    import rsthound.sources.tracefs as tracefs

    monkeypatch.setitem(tracefs.OPTIONAL, "task/task_newtask", "no_such_field == 1")
    def knock(tracer):
        events = Path(tracer.instances[0], "events")
        assert (events / "task/task_newtask/enable").read_text().strip() == "0"
        assert (events / "sock/inet_sk_error_report/enable").read_text().strip() == "1"
        client = netns.knock(n=3, gap=0.05)
        assert client.wait(timeout=30) == 0
        return client

    failed, client = _traced(lambda: tracefs.Tracer(tracefs_root), knock)
    got = [x.errno for x in failed if x.process and x.process.pid == client.pid]
    assert got == ["ECONNREFUSED"] * 3
