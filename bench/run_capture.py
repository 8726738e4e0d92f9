"""`rsthound capture` under a storm of refused connects, beside tcpdump, in one run.

A namespace of its own; one process makes refused connects to 127.0.0.1 as fast as one core
can (pinned to CPU 0) for --seconds: bench/storm.c when a C compiler is there (it makes more
than Python can), else a Python loop. The capture under test is pinned to CPU 1. The storm
runs once under `rsthound capture` and once under `tcpdump -i any -w /dev/null`. The resets
the kernel sent are the namespace's `Tcp.OutRsts` delta. rsthound's count is its reset
lines; tcpdump's is what it captured of the RST segments its filter passed.

    sudo .venv/bin/python bench/run_capture.py --seconds 10

Writes bench/out/capture.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).parent / "out"
NS = f"rh-bench-{os.getpid()}"
STORM = """
import socket, sys, time
end = time.monotonic() + float(sys.argv[1]); n = 0
while time.monotonic() < end:
    s = socket.socket()
    try: s.connect(('127.0.0.1', 7999))
    except OSError: pass
    s.close(); n += 1
print(n)
"""


def in_ns(*argv: str) -> list[str]:
    return ["ip", "netns", "exec", NS, *argv]


def out_rsts() -> int:
    text = subprocess.run(in_ns("cat", "/proc/net/snmp"), capture_output=True, text=True,
                          check=True).stdout
    head, vals = [ln.split() for ln in text.splitlines() if ln.startswith("Tcp:")]
    return int(vals[head.index("OutRsts")])


def storm_command(seconds: float, workdir: str) -> list[str]:
    """bench/storm.c compiled, or the Python loop without a compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc:
        exe = os.path.join(workdir, "storm")
        if not os.path.exists(exe):
            subprocess.run([cc, "-O2", "-o", exe, str(Path(__file__).parent / "storm.c")],
                           check=True)
        return [exe, str(seconds)]
    return [sys.executable, "-c", STORM, str(seconds)]


def storm(seconds: float, tool: list[str], generator: list[str]) -> dict:
    # output to a file, read afterwards: a pipe nobody reads would stall the tool
    with tempfile.TemporaryFile("w+") as sink:
        t = subprocess.Popen(in_ns("taskset", "-c", "1", *tool), stdout=sink,
                             stderr=subprocess.PIPE, text=True)
        time.sleep(2.0)  # the capture is up
        before = out_rsts()
        made = subprocess.run(in_ns("taskset", "-c", "0", *generator), capture_output=True,
                              text=True, check=True)
        time.sleep(1.0)
        after = out_rsts()
        t.terminate()
        _, err = t.communicate(timeout=120)
        sink.seek(0)
        out = sink.read()
    return {"connects": int(made.stdout), "resets_sent": after - before, "out": out,
            "err": err, "seconds": seconds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rsthound", default=shutil.which("rsthound") or "rsthound")
    args = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("tcpdump"):
        sys.exit("bench: needs root (a network namespace) and tcpdump")
    subprocess.run(["ip", "netns", "add", NS], check=True)
    work = tempfile.mkdtemp(prefix="rh-bench-")
    generator = storm_command(args.seconds, work)
    try:
        subprocess.run(["ip", "-n", NS, "link", "set", "lo", "up"], check=True)
        results = {}
        for name, tool in (
            ("rsthound capture", [args.rsthound, "capture", "--json", "--no-trace"]),
            ("rsthound capture (tracing)", [args.rsthound, "capture", "--json"]),
            ("tcpdump -i any -w /dev/null", ["tcpdump", "-i", "any", "-w", "/dev/null",
                                              "tcp[tcpflags] & tcp-rst != 0"]),
        ):
            r = storm(args.seconds, tool, generator)
            if name.startswith("rsthound"):
                seen = sum(1 for ln in r["out"].splitlines() if '"kind":"refused"' in ln)
                m = re.search(r"(\d+) packets captured, (\d+) received by filter, (\d+) "
                              r"dropped by kernel", r["err"])
            else:
                m = re.search(r"(\d+) packets captured\n(\d+) packets received by filter\n"
                              r"(\d+) packets dropped by kernel", r["err"])
                seen = int(m[1]) if m else 0
            results[name] = {
                "connects_per_s": round(r["connects"] / r["seconds"]),
                "resets_sent": r["resets_sent"], "resets_seen": seen,
                "captured": int(m[1]) if m else None, "received": int(m[2]) if m else None,
                "dropped": int(m[3]) if m else None,
                "resets_per_s_seen": round(seen / r["seconds"]),
            }
    finally:
        subprocess.run(["ip", "netns", "del", NS], check=False)
        shutil.rmtree(work, ignore_errors=True)
    OUT.mkdir(exist_ok=True)
    (OUT / "capture.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"{args.seconds:g} s storms of refused connects on loopback ({os.cpu_count()} cores), "
          f"made by {os.path.basename(generator[0])}")
    print(f"{'':30} {'connects/s':>10} {'RSTs sent':>10} {'RSTs seen':>10} {'dropped':>8}")
    for name, r in results.items():
        print(f"{name:30} {r['connects_per_s']:>10} {r['resets_sent']:>10} "
              f"{r['resets_seen']:>10} {r['dropped']!s:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
