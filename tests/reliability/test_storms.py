"""Storms read by `rsthound analyze`: a SYN scan and a burst of resets, each touching
1,000,000 distinct connections at 100,000 a second. Memory stays under the documented cap
(300 MB), the connections ended early to stay under `--max-conns` are counted and
reported, and every packet is accounted for. The figures (time, peak memory, evictions)
are printed and kept in test-output/storms.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rsthound.formats.pcap import pcap_file_header

SCAN = 1_000_000
CAP_MB = 300  # bench/README.md, "Targets": analyze's peak RSS
OUT = Path(__file__).parent.parent.parent / "test-output"

# slow: make test runs them, -m 'not slow' leaves them out. storm: they flood every
# tracer on the host (the trace sees all namespaces), so make test runs them alone
pytestmark = [pytest.mark.slow, pytest.mark.storm]


def storm(path: Path, n: int, flags: int) -> None:
    """n segments with these TCP flags from 10.9.0.0/16 to 10.0.0.0/16, each a connection
    of its own, 10 us apart (100,000 a second), as one Ethernet pcap (numpy writes it in a
    moment)."""
    frame = 14 + 20 + 20
    rec = np.zeros((n, 16 + frame), dtype=np.uint8)
    i = np.arange(n, dtype=np.uint64)
    ts = 1_700_000_000_000_000 + i * 10
    hdr = rec[:, :16].view("<u4")
    hdr[:, 0] = (ts // 1_000_000).astype(np.uint32)
    hdr[:, 1] = (ts % 1_000_000).astype(np.uint32)
    hdr[:, 2] = hdr[:, 3] = frame
    eth = rec[:, 16:]
    eth[:, 0:6] = 2
    eth[:, 6:12] = 4
    eth[:, 12:14] = (0x08, 0x00)
    ip = eth[:, 14:34]
    ip[:, 0] = 0x45
    ip[:, 2:4] = (0, 40)
    ip[:, 8] = 64
    ip[:, 9] = 6
    src = (i % 65536).astype(np.uint32)
    dst = (i // 65536).astype(np.uint32)
    ip[:, 12:14] = (10, 9)
    ip[:, 14] = (src >> 8).astype(np.uint8)
    ip[:, 15] = (src & 0xFF).astype(np.uint8)
    ip[:, 16:18] = (10, 0)
    ip[:, 18] = (dst >> 8).astype(np.uint8)
    ip[:, 19] = (dst & 0xFF).astype(np.uint8)
    tcp = eth[:, 34:54]
    sport = (40000 + i % 20000).astype(np.uint16)
    tcp[:, 0] = (sport >> 8).astype(np.uint8)
    tcp[:, 1] = (sport & 0xFF).astype(np.uint8)
    tcp[:, 2:4] = (0x1C, 0x2B)  # port 7211
    tcp[:, 12] = 5 << 4
    tcp[:, 13] = flags
    tcp[:, 14:16] = 0xFF
    with open(path, "wb") as f:
        f.write(pcap_file_header(1))
        f.write(rec.tobytes())


@pytest.mark.parametrize(("name", "flags", "kind"), [
    ("SYN scan", 0x02, None), ("reset burst", 0x14, "stray")],
    ids=["syn-scan", "reset-burst"])
def test_a_million_connections_stay_bounded(tmp_path, name, flags, kind):
    """A SYN scan, and a burst of resets for connections never seen (backscatter), each
    touching a million connections at 100,000 a second."""
    f = tmp_path / "storm.pcap"
    storm(f, SCAN, flags)
    t0 = time.monotonic()
    with open(tmp_path / "out", "w+") as out, open(tmp_path / "err", "w+") as err:
        p = subprocess.Popen([sys.executable, "-m", "rsthound", "analyze", "--json",
                              "--no-progress", str(f)], stdout=out, stderr=err)
        _, status, usage = os.wait4(p.pid, 0)  # this child's own peak memory
        seconds = time.monotonic() - t0
        out.seek(0)
        err.seek(0)
        assert os.waitstatus_to_exitcode(status) == 0, err.read()
        got = json.loads(out.read())
    figures = {"storm": name, "connections": SCAN, "seconds": round(seconds, 1),
               "packets_per_s": round(SCAN / seconds),
               "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "evicted": got["evicted"]}
    OUT.mkdir(exist_ok=True)
    saved = OUT / "storms.json"
    old = json.loads(saved.read_text()) if saved.exists() else {}
    saved.write_text(json.dumps(old | {name: figures}, indent=1) + "\n")
    print(f"{name}: {figures}")
    assert got["packets"] == SCAN
    if kind is None:  # SYNs: each a connection, tracked until the cap ends the oldest
        assert got["evicted"] >= SCAN - 200_000  # --max-conns 200,000 by default
    else:  # every reset counted, by kind
        assert got["resets"]["by_kind"] == {kind: SCAN}, got["resets"]
    assert figures["peak_rss_mb"] < CAP_MB, figures


@pytest.mark.kernel
def test_a_live_burst_of_100000_resets_a_second_is_counted(netns, tmp_path):
    """tcpreplay puts 300,000 resets (each for a connection of its own) on a namespace's
    loopback at 100,000 a second, twice what one Python core classifies here. rsthound
    capture says how many it saw and how many the kernel dropped (none unaccounted for),
    stays under the memory cap, and keeps its pace."""
    import shutil
    import signal

    if shutil.which("tcpreplay") is None:
        pytest.skip("needs tcpreplay (make test installs it as root)")
    n = 300_000
    f = tmp_path / "burst.pcap"
    storm(f, n, 0x14)  # RST+ACK
    with open(tmp_path / "out", "w+") as out, open(tmp_path / "err", "w+") as err:
        cap = subprocess.Popen(netns.argv(sys.executable, "-m", "rsthound", "capture", "-i",
                                          "lo", "--json", "--no-trace"), stdout=out,
                               stderr=err)
        for _ in range(100):
            if "capturing on" in (tmp_path / "err").read_text():
                break
            time.sleep(0.1)
        t0 = time.monotonic()
        subprocess.run(netns.argv("tcpreplay", "--pps=100000", "-i", "lo", str(f)),
                       check=True, capture_output=True, timeout=60)
        sent_for = time.monotonic() - t0
        time.sleep(2)
        cap.send_signal(signal.SIGTERM)
        _, status, usage = os.wait4(cap.pid, 0)
        out.seek(0)
        err.seek(0)
        seen = sum(1 for ln in out if '"kind":"stray"' in ln)
        said = err.read()
    assert os.waitstatus_to_exitcode(status) == 0, said
    import re

    m = re.search(r"(\d+) packets captured, (\d+) received by filter, (\d+) dropped by kernel",
                  said)
    assert m, said
    captured, received, dropped = map(int, m.groups())
    figures = {"sent": n, "sent_per_s": round(n / sent_for), "seen": seen,
               "captured": captured, "received_by_filter": received,
               "dropped_by_kernel": dropped, "seen_per_s": round(seen / sent_for),
               "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}
    saved = OUT / "storms.json"
    OUT.mkdir(exist_ok=True)
    old = json.loads(saved.read_text()) if saved.exists() else {}
    saved.write_text(json.dumps(old | {"live reset burst": figures}, indent=1) + "\n")
    print(f"live reset burst: {figures}")
    assert seen == captured  # every packet handed over became a reset line
    # loopback: each injected frame passes the kernel's filter twice (out, and back in);
    # libpcap keeps the incoming copy. Nothing is unaccounted for.
    assert received == 2 * n, figures
    assert seen == n or dropped > 0, figures
    assert figures["peak_rss_mb"] < CAP_MB, figures
