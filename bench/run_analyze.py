#!/usr/bin/env python3
"""Time `rsthound analyze` against tcpdump and tshark on the same capture, in the same run.

The capture is made by gen_capture.py into bench/out/ (reused when the packet count, seed and
generator are unchanged), or given with --file. The page cache is warmed first (and
rsthound's bytecode caches: see CHILD_ENV), then each repeat runs the three tools one after
the other; each child's wall time and peak RSS
(ru_maxrss from wait4) are recorded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import mmap
import os
import shlex
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
GEN = HERE / "gen_capture.py"
OUT = HERE / "out"

# Targets from the project (see bench/README.md, issue 16)
MAX_RATIO_TCPDUMP = 2.0  # rsthound analyze wall time / tcpdump RST-filter wall time
MAX_CPU_RATIO_TCPDUMP = 4.0  # the same for CPU time (user + system, all processes)
MIN_RATIO_TSHARK = 10.0  # tshark conv,tcp time / rsthound analyze time
MAX_RSS_MB = 300.0  # rsthound analyze peak RSS (of any one of its processes)
BIG = 10_000_000  # --big: packets


def generator_digest() -> str:
    return hashlib.sha256(GEN.read_bytes()).hexdigest()[:16]


def ensure_capture(packets: int, seed: int) -> tuple[Path, int]:
    """Generate the capture into bench/out/ unless an identical one is already there."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"capture-{packets}-s{seed}.pcap"
    meta_path = path.with_suffix(".json")
    want = {"packets": packets, "seed": seed, "generator": generator_digest()}
    if path.exists() and meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError:
            meta = {}
        if (
            all(meta.get(k) == v for k, v in want.items())
            and meta.get("bytes") == path.stat().st_size
        ):
            print(f"reusing {rel(path)}", file=sys.stderr)
            return path, packets
    tmp = path.with_suffix(".pcap.tmp")
    print(f"generating {rel(path)} ({packets:,} packets, seed {seed}) ...", file=sys.stderr)
    t0 = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            str(GEN),
            "--packets",
            str(packets),
            "--seed",
            str(seed),
            "-o",
            str(tmp),
            "-q",
        ],
        check=True,
    )
    tmp.replace(path)
    print(f"generated in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    meta_path.write_text(json.dumps({**want, "bytes": path.stat().st_size}) + "\n")
    return path, packets


def rel(p: Path) -> str:
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def count_packets(path: Path) -> int:
    """Packets in a pcap or pcapng file, by walking the record or block headers."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        size = len(m)
        magic = m[:4]
        if magic == b"\x0a\x0d\x0d\x0a":
            n = 0
            off = 0
            endian = "<" if m[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
            fmt = endian + "II"
            while off + 8 <= size:
                btype, blen = struct.unpack_from(fmt, m, off)
                if btype == 0x0A0D0D0A:
                    endian = "<" if m[off + 8 : off + 12] == b"\x4d\x3c\x2b\x1a" else ">"
                    fmt = endian + "II"
                    btype, blen = struct.unpack_from(fmt, m, off)
                if btype in (2, 3, 6):
                    n += 1
                if blen < 12:
                    break
                off += blen
            return n
        if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
            fmt = "<I"
        elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
            fmt = ">I"
        else:
            raise ValueError(f"{path}: not a pcap or pcapng file")
        n = 0
        off = 24
        unpack = struct.Struct(fmt).unpack_from
        while off + 16 <= size:
            (incl,) = unpack(m, off + 8)
            off += 16 + incl
            n += 1
        return n


def warm(path: Path) -> None:
    with open(os.devnull, "wb") as dn:
        subprocess.run(["cat", str(path)], stdout=dn, check=True)


# The tools run as installed ones do: Python's bytecode caches are written and read (pip
# writes them when it installs), even where this environment says not to write them; and an
# untimed run of `rsthound analyze` on an empty capture writes them before the timed runs
# (otherwise each start would compile rsthound's modules again: about 0.08 s).
CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def warm_rsthound(rsthound: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.pcap"
        empty.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        run_once([*rsthound, "analyze", str(empty)])


# Children are started by a minimal launcher (python -S -I) that forks and waits for them:
# a child's ru_maxrss starts at the RSS of the process it was forked from, so forking the tools
# from this process (or after it has touched a mapped capture) would inflate their peak RSS.
LAUNCHER = """
import os, sys, time
fd, cmd = int(sys.argv[1]), sys.argv[2:]
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(cmd[0], cmd)
    except OSError as e:
        os.write(2, f"{cmd[0]}: {e}\\n".encode())
    os._exit(127)
_, status, ru = os.wait4(pid, 0)
secs = time.perf_counter() - t0
kids = __import__("resource").getrusage(__import__("resource").RUSAGE_CHILDREN)
cpu = kids.ru_utime + kids.ru_stime  # the tool and every process it waited for
rss = max(ru.ru_maxrss, kids.ru_maxrss)
os.write(fd, f"{secs} {rss} {os.waitstatus_to_exitcode(status)} {cpu}".encode())
"""


def run_once(cmd: list[str]) -> tuple[float, float, int, str, float]:
    """Run cmd with stdout to /dev/null: (wall s, peak RSS MiB, exit code, stderr, CPU s)."""
    r, w = os.pipe()
    with open(os.devnull, "wb") as dn, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(
            [sys.executable, "-S", "-I", "-c", LAUNCHER, str(w), *cmd],
            stdout=dn,
            stderr=err,
            stdin=subprocess.DEVNULL,
            pass_fds=(w,),
            env=CHILD_ENV,
        )
        os.close(w)
        with os.fdopen(r, "rb") as rf:
            report = rf.read().decode()
        p.wait()
        err.seek(0)
        text = err.read().decode(errors="replace")
    try:
        secs, rss_kib, code, cpu = report.split()
    except ValueError:
        return 0.0, 0.0, p.returncode or 1, text + "\n(launcher failed)", 0.0
    return float(secs), int(rss_kib) / 1024, int(code), text, float(cpu)


def first_line(cmd: list[str]) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    lines = (r.stdout or r.stderr).strip().splitlines()
    return lines[0] if lines else ""


def bench(path: Path, repeat: int, rsthound: list[str], tshark: bool = True,
          ) -> dict[str, dict[str, Any]]:
    f = str(path)
    tools: dict[str, dict[str, Any]] = {
        "rsthound": {"cmd": [*rsthound, "analyze", f]},
        "tcpdump": {
            "cmd": ["tcpdump", "-n", "-r", f, "-w", "/dev/null", "tcp[tcpflags] & (tcp-rst) != 0"]
        },
        "cat": {"cmd": ["cat", f]},  # the floor: reading the file from the page cache
    }
    if tshark:
        tools["tshark"] = {"cmd": ["tshark", "-n", "-r", f, "-q", "-z", "conv,tcp"]}
    for name, t in tools.items():
        t.update(times_s=[], rss_mb=[], cpu_s=[], exit_code=0, stderr="")
        exe = t["cmd"][0]
        if shutil.which(exe) is None:
            t.update(exit_code=127, stderr=f"{exe}: not found on PATH")
        elif name not in ("rsthound", "cat"):
            t["version"] = first_line([exe, "--version"])
    for _ in range(repeat):
        for t in tools.values():
            if t["exit_code"] != 0:
                continue
            secs, rss, code, err, cpu = run_once(t["cmd"])
            if code != 0:
                t.update(exit_code=code, stderr=err)
                continue
            t["times_s"].append(round(secs, 4))
            t["rss_mb"].append(round(rss, 1))
            t["cpu_s"].append(round(cpu, 3))
    for t in tools.values():
        ok = t["exit_code"] == 0 and bool(t["times_s"])
        t["ok"] = ok
        t["best_s"] = min(t["times_s"]) if ok else None
        t["median_s"] = round(statistics.median(t["times_s"]), 4) if ok else None
        t["peak_rss_mb"] = max(t["rss_mb"]) if ok else None
        # the CPU time of the run with the best wall time
        t["cpu_s_best"] = t["cpu_s"][t["times_s"].index(t["best_s"])] if ok else None
        if ok:
            t["stderr"] = ""
    return tools


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def verdicts(tools: dict[str, dict[str, Any]]) -> dict[str, Any]:
    r = tools["rsthound"]
    vs_tcpdump = ratio(r["best_s"], tools["tcpdump"]["best_s"])
    cpu_vs_tcpdump = ratio(r["cpu_s_best"], tools["tcpdump"]["cpu_s_best"])
    vs_cat = ratio(r["best_s"], tools["cat"]["best_s"])
    vs_tshark = ratio(tools.get("tshark", {}).get("best_s"), r["best_s"])
    rss = r["peak_rss_mb"]
    return {
        "rsthound_over_tcpdump": vs_tcpdump,
        "rsthound_cpu_over_tcpdump": cpu_vs_tcpdump,
        "rsthound_over_cat": vs_cat,
        "tshark_over_rsthound": vs_tshark,
        "targets": {
            "rsthound_over_tcpdump_max": MAX_RATIO_TCPDUMP,
            "rsthound_cpu_over_tcpdump_max": MAX_CPU_RATIO_TCPDUMP,
            "tshark_over_rsthound_min": MIN_RATIO_TSHARK,
            "rsthound_peak_rss_mb_max": MAX_RSS_MB,
        },
        "met": {
            "rsthound_over_tcpdump": None
            if vs_tcpdump is None
            else vs_tcpdump <= MAX_RATIO_TCPDUMP,
            "rsthound_cpu_over_tcpdump": None
            if cpu_vs_tcpdump is None
            else cpu_vs_tcpdump <= MAX_CPU_RATIO_TCPDUMP,
            "tshark_over_rsthound": None if vs_tshark is None else vs_tshark >= MIN_RATIO_TSHARK,
            "rsthound_peak_rss": None if rss is None else rss < MAX_RSS_MB,
        },
    }


def fmt(x: float | None, spec: str) -> str:
    width = spec.split(".")[0]
    return format("n/a", f">{width}") if x is None else format(x, spec)


def mark(ok: bool | None) -> str:
    return {True: "met", False: "MISSED", None: "n/a"}[ok]


def print_table(res: dict[str, Any]) -> None:
    print(
        f"capture: {res['file']}  {res['packets']:,} packets  "
        f"{res['bytes'] / 1e6:,.1f} MB  (best of {res['repeat']}, warm cache)"
    )
    print(f"{'tool':<10} {'best s':>9} {'median s':>9} {'CPU s':>9} {'peak RSS MB':>12}")
    for name, t in res["tools"].items():
        print(
            f"{name:<10} {fmt(t['best_s'], '9.3f')} {fmt(t['median_s'], '9.3f')} "
            f"{fmt(t['cpu_s_best'], '9.3f')} "
            f"{fmt(t['peak_rss_mb'], '12.1f')}" + ("" if t["ok"] else "  FAILED")
        )
    v = res["ratios"]
    met = v["met"]
    print(
        f"rsthound/tcpdump: {fmt(v['rsthound_over_tcpdump'], '.2f')}"
        f"  (target <= {MAX_RATIO_TCPDUMP:g}: {mark(met['rsthound_over_tcpdump'])})"
    )
    print(
        f"rsthound/tcpdump CPU: {fmt(v['rsthound_cpu_over_tcpdump'], '.2f')}"
        f"  (target <= {MAX_CPU_RATIO_TCPDUMP:g}: {mark(met['rsthound_cpu_over_tcpdump'])})"
    )
    print(f"rsthound/cat (the floor): {fmt(v['rsthound_over_cat'], '.2f')}")
    print(
        f"tshark/rsthound:  {fmt(v['tshark_over_rsthound'], '.2f')}"
        f"  (target >= {MIN_RATIO_TSHARK:g}: {mark(met['tshark_over_rsthound'])})"
    )
    print(
        f"rsthound peak RSS: {fmt(res['tools']['rsthound']['peak_rss_mb'], '.1f')} MB"
        f"  (target < {MAX_RSS_MB:g}: {mark(met['rsthound_peak_rss'])})"
    )
    for name, t in res["tools"].items():
        if not t["ok"]:
            print(f"\n{name} failed (exit {t['exit_code']}): {shlex.join(t['cmd'])}")
            if t["stderr"].strip():
                print(t["stderr"].rstrip())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--packets",
        type=int,
        default=1_000_000,
        help="packets in the generated capture (default 1000000)",
    )
    ap.add_argument("--seed", type=int, default=1, help="generator seed (default 1)")
    ap.add_argument("--file", type=Path, help="use this capture instead of generating one")
    ap.add_argument("--repeat", type=int, default=3, help="runs per tool (default 3)")
    ap.add_argument(
        "--rsthound",
        default="rsthound",
        help="rsthound command, split like a shell would (default: rsthound)",
    )
    ap.add_argument("--big", action="store_true",
                    help=f"a {BIG:,}-packet capture (about 6 GB in bench/out), without tshark "
                    "(which needs minutes and gigabytes of memory on it)")
    ap.add_argument("--no-tshark", action="store_true", help="leave tshark out")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument(
        "--check",
        action="store_true",
        help="exit 2 when a target is missed (exit 1 when rsthound fails)",
    )
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    if args.file is not None:
        if not args.file.is_file():
            ap.error(f"{args.file}: no such file")
        path = args.file
        packets = count_packets(path)
    else:
        path, packets = ensure_capture(BIG if args.big else args.packets, args.seed)
    warm(path)
    warm_rsthound(shlex.split(args.rsthound))
    tools = bench(path, args.repeat, shlex.split(args.rsthound),
                  tshark=not (args.big or args.no_tshark))
    res = {
        "file": rel(path),
        "bytes": path.stat().st_size,
        "packets": packets,
        "repeat": args.repeat,
        "tools": tools,
        "ratios": verdicts(tools),
    }
    if args.json:
        json.dump(res, sys.stdout, indent=2)
        print()
    else:
        print_table(res)
    if not tools["rsthound"]["ok"]:
        return 1
    if args.check and not all(v is not False for v in res["ratios"]["met"].values()):
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
