"""Check the golden captures against expected.json with the real tools (tshark, tcpdump, capinfos).

    check_captures.py [--expected tests/data/expected.json] [--print] [DIR]

For every file named in expected.json: link type (as tcpdump names it), packet count,
SYNs without ACK, packets with RST, TCP conversations (tshark -z conv,tcp) and a rough
per-server-port outcome. --print shows what the files hold as JSON instead of comparing.
This is a tool for make_captures.sh, not a test: rsthound's own tests read expected.json.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

# Wireshark's short encapsulation names (capinfos) -> libpcap link type names (tcpdump).
WTAP_TO_DLT = {
    "ether": "EN10MB",
    "linux-sll": "LINUX_SLL",
    "linux-sll2": "LINUX_SLL2",
    "rawip": "RAW",
    "rawip4": "RAW",
    "null": "NULL",
}


def run(*cmd: str) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return done.stdout + done.stderr


def linktype(path: Path) -> str:
    m = re.search(r"link-type (\S+)", run("tcpdump", "-n", "-c", "1", "-r", str(path)))
    return m.group(1) if m else "?"


def interfaces(path: Path) -> list[list[str]]:
    text = run("capinfos", "-M", str(path))
    found = []
    for block in re.split(r"Interface #\d+ info:", text)[1:]:
        name = re.search(r"Name = (\S+)", block)
        encap = re.search(r"Encapsulation = .*?\(\d+ - ([\w-]+)\)", block)
        found.append(
            [
                name.group(1) if name else "?",
                WTAP_TO_DLT.get(encap.group(1), encap.group(1)) if encap else "?",
            ]
        )
    return found


def tshark_count(path: Path, display_filter: str) -> int:
    out = run(
        "tshark", "-n", "-r", str(path), "-Y", display_filter, "-T", "fields", "-e", "frame.number"
    )
    return sum(1 for line in out.splitlines() if line.strip().isdigit())


def conversations(path: Path) -> int:
    return run("tshark", "-n", "-r", str(path), "-q", "-z", "conv,tcp").count("<->")


def port_outcomes(path: Path) -> dict[str, str]:
    """Per server port: what happened to its connections, in expected.json's words."""
    fields = ["tcp.stream", "tcp.srcport", "tcp.dstport", "tcp.flags.syn", "tcp.flags.ack"]
    fields += ["tcp.flags.fin", "tcp.flags.reset", "tcp.len", "icmp.type", "icmpv6.type"]
    cmd = ["tshark", "-n", "-r", str(path), "-Y", "tcp", "-T", "fields", "-E", "separator=|"]
    for field in fields:
        cmd += ["-e", field]
    out = run(*cmd)
    streams: dict[str, list[tuple[int, int, bool, bool, bool, bool, int]]] = {}
    rejected: set[str] = set()  # streams an ICMP destination unreachable (quoting them) ended
    for line in out.splitlines():
        f = line.split("|")
        if len(f) != 10 or not f[0].isdigit():
            continue
        if f[8] == "3" or f[9] == "1":
            rejected.add(f[0])
            continue
        flags = [v in ("1", "True") for v in f[3:7]]
        streams.setdefault(f[0], []).append((int(f[1]), int(f[2]), *flags, int(f[7] or 0)))
    result: dict[str, str] = {}
    for stream, pkts in streams.items():
        syns = [p for p in pkts if p[2] and not p[3]]
        if not syns:
            continue
        server = syns[0][1]
        from_srv = [p for p in pkts if p[0] == server]
        from_cli = [p for p in pkts if p[1] == server]
        synack = any(p[2] and p[3] for p in from_srv)
        if not synack and stream in rejected:
            label = "icmp-rejected"
        elif not synack:
            label = "refused" if any(p[5] for p in from_srv) else "timeout"
        elif any(p[5] for p in from_cli):
            label = "abort-by-client"
        elif any(p[5] for p in from_srv):
            srv_data = sum(p[6] for p in from_srv)
            label = "abort-by-server" if srv_data else "unread-close-reset"
        elif any(p[4] for p in from_srv) and any(p[4] for p in from_cli):
            label = "normal"
        else:
            label = "incomplete"
        prev = result.get(str(server))
        result[str(server)] = label if prev in (None, label) else f"{prev}+{label}"
    return result


def ts_precision(path: Path) -> str:
    m = re.search(r"(?:Time|timestamp) precision\s*[=:]\s*(\w+)", run("capinfos", "-M", str(path)))
    return {"nanoseconds": "nano", "microseconds": "micro"}.get(m[1], m[1]) if m else "?"


def facts(path: Path) -> dict:
    found = {
        "linktype": linktype(path),
        "ts_precision": ts_precision(path),
        "packets": int(re.search(r"packets:\s+(\d+)", run("capinfos", "-c", "-M", str(path)))[1]),
        # (not the segments an ICMP error quotes)
        "syn": tshark_count(path, "tcp.flags.syn==1 && tcp.flags.ack==0 && !icmp && !icmpv6"),
        "rst": tshark_count(path, "tcp.flags.reset==1 && !icmp && !icmpv6"),
        "connections": conversations(path),
        "ports": port_outcomes(path),
    }
    if path.suffix == ".pcapng":
        found["interfaces"] = interfaces(path)
        found["linktype"] = found["interfaces"][0][1]
    return found


def main() -> int:
    here = Path(__file__).resolve().parent
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir", nargs="?", type=Path, default=here)
    p.add_argument("--expected", type=Path, default=here / "expected.json")
    p.add_argument("--print", action="store_true", help="print the facts found, compare nothing")
    args = p.parse_args()
    expected = json.loads(args.expected.read_text())
    if args.print:
        names = sorted(f.name for f in args.dir.iterdir() if f.suffix in (".pcap", ".pcapng"))
        print(json.dumps({n: facts(args.dir / n) for n in names}, indent=2))
        return 0
    bad = 0
    for name, want in expected.items():
        path = args.dir / name
        if not path.exists():
            print(f"MISSING {name}")
            bad += 1
            continue
        got = facts(path)
        diffs = [f"{k}: want {v!r} got {got.get(k)!r}" for k, v in want.items() if got.get(k) != v]
        print(f"{'ok  ' if not diffs else 'FAIL'} {name}" + "".join(f"\n     {d}" for d in diffs))
        bad += bool(diffs)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
