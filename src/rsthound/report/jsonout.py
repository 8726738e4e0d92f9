"""JSON renderings: the summary as one object; connections and resets as JSON lines.

Connection fields use Zeek's conn.log JSON names where Zeek has the field.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

from rsthound.analyze.summary import Summary, failure_series, findings
from rsthound.model import Conn, FailedConnect, Icmp, Reset


def _ts(x: float) -> float | None:
    return round(x, 6) if math.isfinite(x) else None


def summary_obj(s: Summary) -> dict[str, Any]:
    width, series = failure_series(s)
    failed = s.failed_total()
    services = []
    for svc in s.ranked():
        rate, span = svc.rate()
        resets: dict[str, dict[str, int]] = {}
        for (kind, by), n in sorted(svc.resets.items(), key=lambda kv: (-kv[1], kv[0])):
            resets.setdefault(kind, {})[by] = n
        services.append({
            "service": svc.name,
            "connections": svc.conns,
            "answered": svc.answered,
            "failed": svc.failures,
            "refused": svc.failed["refused"],
            "timeout": svc.failed["timeout"],
            "syn_retrans": svc.syn_retrans,
            "resets": resets,
            "clients": len(svc.clients),
            "clients_capped": svc.clients_capped,
            "first": _ts(svc.first),
            "last": _ts(svc.last),
            "rate_per_s": round(rate, 3),
            "span_s": round(span, 3),
        })
    return {
        "files": s.files,
        "packets": s.packets,
        "tcp_packets": s.tcp_packets,
        "icmp_packets": s.icmp_packets,
        "link_types": dict(s.links),
        "tcp_flags": {k: s.flags[k] for k in ("syn", "syn-ack", "fin", "rst")},
        "skipped": dict(s.skipped),
        "start": _ts(s.first_ts),
        "end": _ts(s.last_ts),
        "duration": round(s.duration, 6),
        "connections": s.conns,
        "conn_states": _by_count(s.states),
        "failed": {
            "total": failed,
            "refused": s.failures["refused"],
            "timeout": s.failures["timeout"],
            "rate_per_s": round(s.failure_rate()[0], 3),
            "first": _ts(s.fail_first),
            "last": _ts(s.fail_last),
        },
        "resets": {"total": sum(s.resets.values()), "by_kind": _by_count(s.resets)},
        "failures_per_second": {
            "bucket_s": width,
            "series": [round(v, 3) for v in series],
            "peak": round(max(series), 3) if series else 0.0,
        },
        "services": services,
        "findings": findings(s),
        "damage": [
            {"file": d.path, "offset": d.offset, "skipped": d.skipped, "reason": d.reason}
            for d in s.damages
        ],
        "evicted": s.evicted,
    }


def render_summary_json(s: Summary) -> str:
    return json.dumps(summary_obj(s), indent=2) + "\n"


def conn_obj(c: Conn) -> dict[str, Any]:
    return {
        "ts": _ts(c.ts),
        "uid": c.uid,
        "id.orig_h": c.orig_h,
        "id.orig_p": c.orig_p,
        "id.resp_h": c.resp_h,
        "id.resp_p": c.resp_p,
        "proto": "tcp",
        "duration": round(c.duration, 6),
        "orig_bytes": c.orig_bytes,
        "resp_bytes": c.resp_bytes,
        "conn_state": c.conn_state,
        "history": c.history,
        "orig_pkts": c.orig_pkts,
        "orig_ip_bytes": c.orig_ip_bytes,
        "resp_pkts": c.resp_pkts,
        "resp_ip_bytes": c.resp_ip_bytes,
        "failure": c.failure.value if c.failure else None,
        "syn_retrans": c.syn_retrans,
        "resets": c.resets,
        "iface": c.iface,
        "icmp": c.icmp,
    }


def connect_obj(x: FailedConnect) -> dict[str, Any]:
    """A failed connect the kernel trace saw and the wire did not, in the shape of
    `reset_obj`."""
    return {
        "ts": _ts(x.end), "src": x.src if x.sport else None, "sport": x.sport or None,
        "dst": x.dst, "dport": x.dport, "kind": "connect-failed", "sent_by": None,
        "errno": x.errno, "seconds": round(x.seconds, 6), "why": x.ending(),
        "process": x.process.obj() if x.process else None,
    }


def icmp_obj(i: Icmp) -> dict[str, Any]:
    """An ICMP error about a connect, in the shape of `reset_obj`: src:sport > dst:dport is
    the connection it is about (the client first), `sender` who sent it."""
    return {
        "ts": _ts(i.ts), "src": i.src, "sport": i.sport, "dst": i.dst, "dport": i.dport,
        "kind": i.kind.value, "sent_by": None, "sender": i.sender, "code": i.code,
        "ttl": i.ttl, "iface": i.iface,
        "why": f"ICMP {i.code} from {i.sender}" + (
            " (the target itself)" if i.sender == i.dst else " (on the way)"),
    }


def reset_obj(r: Reset) -> dict[str, Any]:
    return {
        "ts": _ts(r.ts),
        "src": r.src,
        "sport": r.sport,
        "dst": r.dst,
        "dport": r.dport,
        "kind": r.kind.value,
        "sent_by": r.sent_by,
        "flags": r.flags,
        "seq": r.seq,
        "ack": r.ack,
        "ttl": r.ttl,
        "iface": r.iface,
        "uid": r.uid,
        "why": r.why,
    }


def reset_line(r: Reset, reason: str | None = None, process: Any = None) -> str:
    """`line(reset_obj(r) | {"reason": reason, "process": process.obj()})`, the same text,
    made three times faster: `capture --json` writes one per reset, tens of thousands a
    second. `process` has an `obj()` (sources.processes.Process), or is None."""
    return (f'{{"ts":{_num(_ts(r.ts))},"src":{_str(r.src)},"sport":{r.sport},'
            f'"dst":{_str(r.dst)},"dport":{r.dport},"kind":{_str(r.kind.value)},'
            f'"sent_by":{_str(r.sent_by)},"flags":{r.flags},"seq":{r.seq},"ack":{r.ack},'
            f'"ttl":{r.ttl},"iface":{_str(r.iface)},"uid":{_str(r.uid)},"why":{_str(r.why)},'
            f'"reason":{_str(reason)},"process":{_process(process)}}}\n')


_strings: dict[str | None, str] = {}


def _str(x: str | None) -> str:
    """A JSON string (or null), remembered: addresses, kinds and reasons repeat."""
    got = _strings.get(x)
    if got is None:
        if len(_strings) > 65536:
            _strings.clear()
        got = _strings[x] = _encode(x)
    return got


_processes: dict[Any, str] = {}


def _process(p: Any) -> str:
    """A process as JSON, remembered: a storm's connects come from few processes."""
    if p is None:
        return "null"
    got = _processes.get(p)
    if got is None:
        if len(_processes) > 4096:
            _processes.clear()
        got = _processes[p] = _encode(p.obj())
    return got


def _num(x: float | None) -> str:
    return "null" if x is None else repr(x)


def failure_obj(c: Conn) -> dict[str, Any]:
    """A connection that failed without a reset, in the shape of `reset_obj`."""
    return {
        "ts": _ts(c.ts), "src": c.orig_h, "sport": c.orig_p, "dst": c.resp_h,
        "dport": c.resp_p, "kind": str(c.failure), "sent_by": None, "syns": c.syn_retrans + 1,
        "seconds": round(c.duration, 6), "iface": c.iface, "uid": c.uid,
        "why": "SYNs went unanswered",
    }


_encode = json.JSONEncoder(separators=(",", ":")).encode  # made once: lines come by the 100k


def line(obj: dict[str, Any]) -> str:
    return _encode(obj) + "\n"


def _by_count(counts: Counter[str]) -> dict[str, int]:
    """Most first, then by name: the same whatever order the connections ended in."""
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
