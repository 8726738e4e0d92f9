"""Storms: a SYN scan touching 1,000,000 distinct connections, read by `rsthound analyze`.
Memory stays under the documented cap (300 MB), the connections ended early to stay under
`--max-conns` are counted and reported, and every SYN is accounted for. The figures
(time, peak memory, evictions) are printed and kept in test-output/storms.json."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from rsthound.formats.pcap import pcap_file_header

SCAN = 1_000_000
CAP_MB = 300  # bench/README.md, "Targets": analyze's peak RSS
OUT = Path(__file__).parent.parent.parent / "test-output"


def syn_scan(path: Path, n: int) -> None:
    """n SYNs from 10.9.0.0/16 to 10.0.0.0/16, each a connection of its own, 10 us apart,
    as one Ethernet pcap (numpy writes it in a moment)."""
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
    tcp[:, 13] = 0x02  # SYN
    tcp[:, 14:16] = 0xFF
    with open(path, "wb") as f:
        f.write(pcap_file_header(1))
        f.write(rec.tobytes())


def test_a_million_connection_syn_scan_stays_bounded(tmp_path):
    f = tmp_path / "scan.pcap"
    syn_scan(f, SCAN)
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, "-m", "rsthound", "analyze", "--json",
                          "--no-progress", str(f)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=300)
    seconds = time.monotonic() - t0
    assert p.returncode == 0, err
    got = json.loads(out)
    rss_mb = _peak_rss_mb()
    figures = {"connections": SCAN, "seconds": round(seconds, 1),
               "packets_per_s": round(SCAN / seconds), "peak_rss_mb": rss_mb,
               "evicted": got["evicted"]}
    OUT.mkdir(exist_ok=True)
    (OUT / "storms.json").write_text(json.dumps(figures, indent=1) + "\n")
    print(f"SYN scan: {figures}")
    assert got["packets"] == SCAN
    assert got["evicted"] >= SCAN - 200_000  # --max-conns 200,000 by default
    assert "connections were ended early" not in err  # said in the summary, not as an error
    assert rss_mb < CAP_MB, figures


def _peak_rss_mb() -> float:
    """The largest peak RSS of this process's waited-for children (the analyze run)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
