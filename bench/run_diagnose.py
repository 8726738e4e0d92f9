"""How long `rsthound diagnose` takes to its first correct finding in the seed's case, and
what it costs, beside tcpdump showing the first reset in the same namespace.

A namespace of its own; in it a client connects twice a second to 127.0.0.1:7211, where
nothing listens. Each round runs, inside the namespace:

- `rsthound diagnose --json` (default settings): wall time from start to exit (its findings
  come out at exit), checked to be correct (top finding no-listener on 127.0.0.1:7211, with
  the client's pid), its CPU time (user + system) and peak RSS, from wait4;
- `tcpdump -i any -c 1 'tcp[tcpflags] & tcp-rst != 0'`: time to the first reset printed,
  which only tells that resets happen (not who, nor why).

    sudo .venv/bin/python bench/run_diagnose.py --rounds 5 --rsthound .venv/bin/rsthound

Writes bench/out/diagnose.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).parent / "out"
NS = f"rh-bench-diag-{os.getpid()}"
CLIENT = """
import socket, time
while True:
    s = socket.socket()
    try: s.connect(('127.0.0.1', 7211))
    except OSError: pass
    s.close()
    time.sleep(0.5)
"""


def timed(argv: list[str]) -> tuple[float, float, int, str, int]:
    """wall s, CPU s (user + system, children included), peak RSS KiB, stdout, exit code."""
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = p.stdout.read() if p.stdout else ""
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss, out, p.returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rsthound", default=shutil.which("rsthound") or "rsthound")
    args = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("tcpdump"):
        sys.exit("bench: needs root (a network namespace) and tcpdump")
    subprocess.run(["ip", "netns", "add", NS], check=True)
    client = None
    rows = []
    try:
        subprocess.run(["ip", "-n", NS, "link", "set", "lo", "up"], check=True)
        client = subprocess.Popen(["ip", "netns", "exec", NS, sys.executable, "-c", CLIENT])
        time.sleep(1.0)
        ns = ["ip", "netns", "exec", NS]
        for _ in range(args.rounds):
            wall, cpu, rss, out, code = timed([*ns, *shlex.split(args.rsthound), "diagnose",
                                               "--json"])
            top = (json.loads(out)["findings"] or [{}])[0] if out.strip() else {}
            correct = (code == 1 and top.get("cause") == "no-listener"
                       and top.get("service") == "127.0.0.1:7211"
                       and client.pid in [c["pid"] for c in top.get("clients", [])])
            t_wall, *_ = timed([*ns, "tcpdump", "-i", "any", "-n", "-c", "1",
                                "tcp[tcpflags] & tcp-rst != 0"])
            rows.append({"diagnose_s": round(wall, 3), "correct": correct,
                         "cpu_s": round(cpu, 3), "peak_rss_mb": round(rss / 1024, 1),
                         "tcpdump_first_reset_s": round(t_wall, 3)})
    finally:
        if client is not None:
            client.kill()
            client.wait()
        subprocess.run(["ip", "netns", "del", NS], check=False)
    OUT.mkdir(exist_ok=True)
    (OUT / "diagnose.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("rsthound diagnose in the seed's case (2 refused connects/s on 127.0.0.1:7211)")
    print(f"{'round':>5} {'diagnose s':>11} {'correct':>8} {'CPU s':>7} {'peak MB':>8} "
          f"{'tcpdump 1st RST s':>18}")
    for i, r in enumerate(rows, 1):
        print(f"{i:>5} {r['diagnose_s']:>11} {r['correct']!s:>8} {r['cpu_s']:>7} "
              f"{r['peak_rss_mb']:>8} {r['tcpdump_first_reset_s']:>18}")
    med = statistics.median(r["diagnose_s"] for r in rows)
    print(f"median: diagnose {med:.2f} s (target <= 5 s), "
          f"all correct: {all(r['correct'] for r in rows)}")
    return 0 if all(r["correct"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
