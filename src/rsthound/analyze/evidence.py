"""The small pieces every judgment uses: a count in words, the counters that moved, the
most common value."""

from __future__ import annotations

from collections import Counter
from typing import Any

from rsthound.analyze.facts import Facts
from rsthound.model import Finding


def counter_evidence(finding: Finding, f: Facts, names: tuple[str, ...]) -> None:
    head = f"counters over {f.seconds:.1f} s: "
    line = next((i for i, e in enumerate(finding.evidence) if e.startswith(head)), None)
    shown = finding.evidence[line] if line is not None else ""
    parts = [f"{m} +{f.counters[m]}" for m in names
             if f.counters.get(m) is not None and f"{m} +" not in shown]
    if not parts:
        return
    if line is None:
        finding.evidence.append(head + ", ".join(parts))
    else:
        finding.evidence[line] += ", " + ", ".join(parts)


def most_common(values: Any) -> str | None:
    got = Counter(v for v in values if v)
    return got.most_common(1)[0][0] if got else None


def n_of(n: int, thing: str) -> str:
    return f"{n} {thing}{'' if n == 1 else 's'}"


