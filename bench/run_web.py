"""`watch --listen` under load: /metrics and /api/status with 50 concurrent clients (hey),
while watch samples every second, in a namespace where a client fails twice a second.

    sudo .venv/bin/python bench/run_web.py --requests 20000 --rsthound .venv/bin/rsthound

For each endpoint: hey's latency percentiles and requests per second. Then watch's own
sampling during the load: the gaps between its samples, from /api/series (on time means
about 1 s each). For reference, in the same run, the same load on a static file served by
Python's http.server (the floor of any Python web server here). Writes bench/out/web.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

OUT = Path(__file__).parent / "out"
NS = f"rh-bench-web-{os.getpid()}"
KNOCK = """
import socket, time
while True:
    s = socket.socket()
    try: s.connect(('127.0.0.1', 7211))
    except OSError: pass
    s.close(); time.sleep(0.5)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hey(url: str, n: int, c: int) -> dict:
    out = subprocess.run(["hey", "-n", str(n), "-c", str(c), url], capture_output=True,
                         text=True, check=True).stdout
    pct = {f"p{m[1]}": float(m[2]) * 1000 for m in re.finditer(
        r"\s(\d+)%+ in ([\d.]+) secs", out)}
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])
    codes = dict(re.findall(r"\[(\d+)\]\s+(\d+) responses", out))
    return {"rps": round(rps), "p50_ms": round(pct.get("p50", -1), 1),
            "p99_ms": round(pct.get("p99", -1), 1), "status": codes}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--rsthound", default=shutil.which("rsthound") or "rsthound")
    args = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("hey"):
        sys.exit("bench: needs root (a network namespace) and hey (apt-get install hey)")
    subprocess.run(["ip", "netns", "add", NS], check=True)
    procs: list[subprocess.Popen] = []
    work = tempfile.mkdtemp(prefix="rh-bench-web-")
    results: dict = {}
    try:
        subprocess.run(["ip", "-n", NS, "link", "set", "lo", "up"], check=True)
        procs.append(subprocess.Popen(["ip", "netns", "exec", NS, sys.executable, "-c",
                                       KNOCK]))
        port = free_port()
        procs.append(subprocess.Popen(
            [*shlex.split(args.rsthound), "watch", "--netns", NS, "--no-history",
             "--listen", f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL))
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(base + "/api/status", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        time.sleep(3)
        start = time.time()
        for path in ("/metrics", "/api/status"):
            results[path] = hey(base + path, args.requests, args.concurrency)
        end = time.time()
        with urllib.request.urlopen(f"{base}/api/series?since={start}", timeout=5) as r:
            walls = [w for w, _ in json.load(r)["points"] if w <= end + 1]
        gaps = [round(b - a, 3) for a, b in itertools.pairwise(walls)]
        results["watch sampling during the load"] = {
            "samples": len(walls), "max_gap_s": max(gaps, default=None),
            "mean_gap_s": round(sum(gaps) / len(gaps), 3) if gaps else None}
        Path(work, "metrics").write_bytes(b"x" * 6000)
        static = free_port()
        procs.append(subprocess.Popen([sys.executable, "-m", "http.server", str(static),
                                       "--bind", "127.0.0.1", "--directory", work],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(1)
        results["python http.server, a static 6 KB file"] = hey(
            f"http://127.0.0.1:{static}/metrics", args.requests, args.concurrency)
    finally:
        for p in procs:
            p.kill()
            p.wait()
        subprocess.run(["ip", "netns", "del", NS], check=False)
        shutil.rmtree(work, ignore_errors=True)
    OUT.mkdir(exist_ok=True)
    (OUT / "web.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
