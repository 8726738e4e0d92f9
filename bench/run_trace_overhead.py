"""What rsthound's tracing costs a connect-heavy program.

In a namespace of its own, a client makes successful connects to a local server (which
accepts and closes) as fast as it can, both pinned to CPU 0, for --seconds. Round after
round, it runs with nothing else, beside `tcpdump -i any` (the peer), beside `rsthound
capture --no-trace`, and beside `rsthound capture` (tracing), each pinned to CPU 1 and
filtering on another port, so that what is measured is the cost to the traced program.
Any AF_PACKET capture on `any` costs something (the kernel clones outgoing packets for
it); tracing's own cost is the capture with tracing against the capture without.

    sudo .venv/bin/python bench/run_trace_overhead.py --seconds 5 --rounds 5

Writes bench/out/trace_overhead.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).parent / "out"
NS = f"rh-tbench-{os.getpid()}"
SERVER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', 7500)); s.listen(4096)
print('up', flush=True)
while True:
    c, _ = s.accept(); c.close()
"""
CLIENT = """
import socket, sys, time
end = time.monotonic() + float(sys.argv[1]); n = 0
while time.monotonic() < end:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b'\\x01\\0\\0\\0\\0\\0\\0\\0')
    s.connect(('127.0.0.1', 7500)); s.close(); n += 1
print(n)
"""


CONFIGS: dict[str, list[str]] = {
    "nothing": [],
    "tcpdump -i any": ["tcpdump", "-i", "any", "-w", "/dev/null", "port", "7999"],
    "rsthound capture --no-trace": ["rsthound", "capture", "--no-trace", "port", "7999"],
    "rsthound capture": ["rsthound", "capture", "port", "7999"],
}


def in_ns(*argv: str) -> list[str]:
    return ["ip", "netns", "exec", NS, *argv]


def rate(seconds: float) -> float:
    r = subprocess.run(in_ns("taskset", "-c", "0", sys.executable, "-c", CLIENT,
                             str(seconds)), capture_output=True, text=True, check=True)
    return int(r.stdout) / seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rsthound", default=shutil.which("rsthound") or "rsthound")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: needs root (a network namespace, tracefs)")
    subprocess.run(["ip", "netns", "add", NS], check=True)
    server = None
    try:
        subprocess.run(["ip", "-n", NS, "link", "set", "lo", "up"], check=True)
        server = subprocess.Popen(in_ns("taskset", "-c", "0", sys.executable, "-c", SERVER),
                                  stdout=subprocess.PIPE, text=True)
        server.stdout.readline()
        runs: dict[str, list[float]] = {k: [] for k in CONFIGS}
        for _ in range(args.rounds):
            for name, argv in CONFIGS.items():
                tool = None
                if argv:
                    argv = [args.rsthound if a == "rsthound" else a for a in argv]
                    tool = subprocess.Popen(in_ns("taskset", "-c", "1", *argv),
                                            stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL)
                    time.sleep(1.5)  # up, tracefs instances made
                runs[name].append(rate(args.seconds))
                if tool is not None:
                    tool.terminate()
                    tool.wait(timeout=30)
    finally:
        if server is not None:
            server.kill()
        subprocess.run(["ip", "netns", "del", NS], check=False)
    med = {k: statistics.median(v) for k, v in runs.items()}
    base = med["nothing"]
    got = {k: {"connects_per_s": round(v), "slower_percent": round(100 * (base - v) / base, 1),
               "runs": [round(x) for x in runs[k]]} for k, v in med.items()}
    got["tracing_alone_percent"] = round(
        100 * (med["rsthound capture --no-trace"] - med["rsthound capture"])
        / med["rsthound capture --no-trace"], 1)
    OUT.mkdir(exist_ok=True)
    (OUT / "trace_overhead.json").write_text(json.dumps(got, indent=2) + "\n")
    print(f"successful connects/s, median of {args.rounds} x {args.seconds:g} s")
    for k, v in med.items():
        print(f"  {k:32} {v:>9,.0f}  {got[k]['slower_percent']:>5}% slower")
    print(f"tracing alone (capture with tracing vs without): "
          f"{got['tracing_alone_percent']}% slower")
    return 0


if __name__ == "__main__":
    sys.exit(main())
