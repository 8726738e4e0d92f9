"""`rsthound diagnose`: findings for people (numbered, what / who / why / evidence / fix) and
for programs (one JSON object)."""

from __future__ import annotations

import textwrap
from typing import Any

from rsthound.analyze.connects import accounting
from rsthound.analyze.diagnosis import SHOWN_COUNTERS, Facts
from rsthound.analyze.evidence import n_of
from rsthound.model import Finding, process_text
from rsthound.textforms import clock, rate, seconds

WIDTH = 80


def finding_obj(x: Finding) -> dict[str, Any]:
    return {"service": x.service, "cause": x.cause, "abnormal": x.abnormal, "count": x.count,
            "rate_per_s": round(x.rate_per_s, 3), "since": x.since, "what": x.what,
            "why": x.why, "clients": x.clients, "server": x.server, "listener": x.listener,
            "last_listener": x.last_listener, "usually": x.usually, "reason": x.reason,
            "errno": x.errno, "connects": x.connects, "elsewhere": x.elsewhere,
            "evidence": x.evidence, "fix": x.fix}


def diagnosis_obj(host: str, facts: Facts, findings: list[Finding]) -> dict[str, Any]:
    return {"host": host,
            "window": {"start": facts.start, "end": facts.end,
                       "seconds": round(facts.end - facts.start, 3)},
            "failed_connects": accounting(facts, findings),
            "pending_connects": facts.pending,
            "findings": [finding_obj(x) for x in findings],
            "counters": facts.counters, "skipped": facts.skipped}


def render_diagnosis(host: str, facts: Facts, findings: list[Finding]) -> str:
    head = (f"rsthound diagnose: {host}, {seconds(facts.end - facts.start)} "
            f"({clock(facts.start)}-{clock(facts.end)})")
    lines = [head]
    got = accounting(facts, findings)
    if got["total"]:
        lines += _wrap(f"{n_of(got['total'], 'connect')} failed "
                       f"({'traced' if got['source'] == 'trace' else 'counted by the kernel'}"
                       f"), {got['explained']} explained below", "", "  ")
    if facts.pending:
        lines += _wrap(f"{n_of(facts.pending, 'connect')} still waiting for an answer when "
                       "the window closed (neither failed nor done yet: not counted)", "", "  ")
    lines.append("")
    abnormal = [x for x in findings if x.abnormal]
    if not abnormal:
        shown = ", ".join(f"{m} +{facts.counters[m]}" for m in SHOWN_COUNTERS
                          if facts.counters.get(m) is not None)
        lines += _wrap("Nothing abnormal" + (f": {shown}." if shown else "."), "", "  ")
        normal = [x for x in findings if not x.abnormal]
        if normal:
            lines.append("Also seen, ordinary churn: " + "; ".join(
                f"{x.service} {x.what}" for x in normal) + ".")
    for i, x in enumerate(abnormal, 1):
        lines += _finding(i, x)
    if abnormal and len(findings) > len(abnormal):
        lines.append("Also seen, ordinary churn: " + "; ".join(
            f"{x.service} {x.what}" for x in findings if not x.abnormal) + ".")
    if facts.skipped:
        lines += ["", "Skipped:"]
        for s in facts.skipped:
            lines += _wrap(f"{s['what']}: {s['why']}; {s['how']}", "  ", "    ")
    return "\n".join(lines).rstrip("\n") + "\n"


def _finding(i: int, x: Finding) -> list[str]:
    since = f" since {clock(x.since)}" if x.since else ""
    out = _wrap(f"{i}. {x.service or 'some service'}: {x.what} ({rate(x.rate_per_s)})"
                f"{since}: {x.cause}", "", "   ")
    pad = "   "
    if x.clients:
        names = "; ".join(f"{process_text(c)} x{c['count']}" for c in x.clients[:3])
        out += _wrap(f"who:  {names}", pad, pad + "      ")
    if x.errno:
        out += _wrap(f"errno: {x.errno}, as connect() saw it", pad, pad + "      ")
    if x.server:
        out += _wrap(f"server: {process_text(x.server)}", pad, pad + "      ")
    out += _wrap(f"why:  {x.why}", pad, pad + "      ")
    if x.evidence:
        out.append(f"{pad}evidence:")
        for e in x.evidence:
            out += _wrap(e, pad + "  ", pad + "    ")
    out += _wrap(f"fix:  {x.fix}", pad, pad + "      ")
    out.append("")
    return out


def _wrap(text: str, first: str, rest: str) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=first, subsequent_indent=rest,
                         break_on_hyphens=False, break_long_words=False) or [first]


def finding_line(x: Finding) -> str:
    """One finding in one line: for alerts, webhooks and Alertmanager annotations."""
    by = f" by {process_text(x.clients[0])}" if x.clients else ""
    return (f"{x.service or 'some service'}: {x.cause}, {x.what} ({rate(x.rate_per_s)})"
            f"{by}. Fix: {x.fix}")


def findings_text(findings: list[Finding], top: int = 3) -> str:
    abnormal = [x for x in findings if x.abnormal]
    if not abnormal:
        return "nothing abnormal while investigating"
    return " | ".join(finding_line(x) for x in abnormal[:top])
