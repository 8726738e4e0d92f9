"""What `rsthound watch` costs: CPU and memory at a 1 s interval, history included.

The peer, in the same run and for the same time, is what people script without rsthound:
`nstat -az` once a second (iproute2's reader of the same counters), from a shell loop.

    python bench/run_watch.py --duration 600          (the issue's 10 minutes)

Writes bench/out/watch.json and prints a table. CPU is user + system time of the process
and its children (wait4), as a share of one core over the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).parent / "out"


def start(argv: list[str]) -> tuple[subprocess.Popen, float]:
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), \
        time.monotonic()


def finish(p: subprocess.Popen, t0: float) -> dict[str, float]:
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - t0
    cpu = ru.ru_utime + ru.ru_stime
    return {"exit": p.returncode, "wall_s": round(wall, 1), "cpu_s": round(cpu, 3),
            "core_percent": round(100 * cpu / wall, 3), "max_rss_mb": round(ru.ru_maxrss / 1024, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=600, help="seconds (default 600)")
    ap.add_argument("--rsthound", default=shutil.which("rsthound") or "rsthound")
    args = ap.parse_args()
    if shutil.which("nstat") is None:
        sys.exit("bench: needs nstat (iproute2; make debs installs it)")
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "history.db")
        runs = {
            "rsthound watch": start([args.rsthound, "watch", "--duration", str(args.duration),
                                     "--db", db]),
            "nstat -az every 1 s": start([
                "sh", "-c", f"i=0; while [ $i -lt {args.duration} ]; do nstat -az >/dev/null; "
                "sleep 1; i=$((i+1)); done"]),
        }
        got = {name: finish(*run) for name, run in runs.items()}
        got["rsthound watch"]["history_kb"] = round(
            sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp)) / 1024)
    OUT.mkdir(exist_ok=True)
    (OUT / "watch.json").write_text(json.dumps(got, indent=2) + "\n")
    mine, peer = got["rsthound watch"], got["nstat -az every 1 s"]
    print(f"{args.duration} s at 1 s intervals ({os.cpu_count()} cores)")
    print(f"{'':22} {'CPU s':>8} {'% of a core':>12} {'peak RSS MB':>12}")
    for name, r in got.items():
        print(f"{name:22} {r['cpu_s']:>8.2f} {r['core_percent']:>12.3f} {r['max_rss_mb']:>12.1f}")
    print(f"rsthound / nstat CPU: {mine['cpu_s'] / max(peer['cpu_s'], 1e-9):.2f}x; "
          f"history file {mine['history_kb']} KB")
    return 0 if all(r["exit"] == 0 for r in got.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
