"""Alert events as people and programs read them: one line, a JSON object, Alertmanager's."""

from __future__ import annotations

import datetime as dt
from typing import Any

from rsthound.analyze.alerts import Event
from rsthound.textforms import clock, rate, seconds, stamp


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def summary_text(e: Event, host: str) -> str:
    if e.event == "clear":
        return (f"{e.title} on {host} back to {rate(e.rate)} ({e.metric}); the "
                f"{e.level} alert since {clock(e.started)} lasted {seconds(e.ts - e.started)}")
    text = (f"{e.title} on {host}: {rate(e.rate)} ({e.metric}; {e.level} at "
            f"{_limit(e)}), since {clock(e.started)}")
    if e.explanation:
        text += f". {e.explanation}"
    return text


def _limit(e: Event) -> str:
    if e.threshold == 0:
        return "any"
    if e.rule.endswith("-unusual"):
        return f"{rate(e.threshold)}, far above this host's usual"
    return rate(e.threshold)


def render_event(e: Event, host: str) -> str:
    word = "ALERT" if e.event == "alert" else "CLEAR"
    return f"{stamp(e.ts)} {word} {e.level}: {summary_text(e, host)}\n"


def event_obj(e: Event, host: str, netns: str) -> dict[str, Any]:
    return {
        "event": e.event, "level": e.level, "rule": e.rule, "metric": e.metric,
        "rate": round(e.rate, 3), "threshold": round(e.threshold, 3),
        "started": iso(e.started), "ts": iso(e.ts), "host": host, "netns": netns,
        "case": e.cases, "summary": summary_text(e, host),
    }


def alertmanager_obj(e: Event, host: str, netns: str) -> dict[str, Any]:
    """One alert for Alertmanager's v2 API; a clear carries endsAt."""
    obj: dict[str, Any] = {
        "labels": {"alertname": "RstHound_" + e.rule.replace("-", "_"), "severity": e.level,
                   "host": host, "netns": netns, "metric": e.metric, "rule": e.rule},
        "annotations": {"summary": summary_text(e, host), "case": ",".join(e.cases),
                        "rate": f"{e.rate:.3f}"},
        "startsAt": iso(e.started),
    }
    if e.event == "clear":
        obj["endsAt"] = iso(e.ts)
    return obj
