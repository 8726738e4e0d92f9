"""capture's fast path for refused connects gives the resets the full path gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from rsthound.analyze.session import Analysis
from rsthound.pipeline import analyze_file

DATA = Path(__file__).parent / "data"
FILES = sorted(p.name for p in DATA.glob("*.pcap*"))


def resets_and_timeouts(path: Path, fast: bool) -> tuple[list, list]:
    resets: list = []
    conns: list = []
    a = Analysis(on_conn=conns.append, on_reset=resets.append, summarize=not fast)
    analyze_file(str(path), a, parallel=False)
    a.finish([str(path)])
    timeouts = sorted((c.ts, c.uid) for c in conns if c.failure and c.failure.value == "timeout")
    return sorted(resets, key=lambda r: (r.ts, r.uid)), timeouts


@pytest.mark.parametrize("name", FILES)
def test_fast_path_agrees(name):
    slow = resets_and_timeouts(DATA / name, fast=False)
    fast = resets_and_timeouts(DATA / name, fast=True)
    assert fast == slow


def test_fast_path_is_taken(monkeypatch):
    """refused.pcap: 16 refusals, each SYN and RST in one batch: none goes through a Flow."""
    from rsthound.analyze import flows

    made = []
    real = flows.Flow.__init__
    monkeypatch.setattr(flows.Flow, "__init__",
                        lambda self, *a, **kw: made.append(1) or real(self, *a, **kw))
    resets, _ = resets_and_timeouts(DATA / "refused.pcap", fast=True)
    assert len(resets) == 16 and not made


@pytest.mark.parametrize("name", ["refused.pcap", "ipv6.pcap", "multi_if.pcapng",
                                  "linger_abort_client.pcap", "any_sll2.pcap"])
def test_reset_line_is_line_of_reset_obj(name):
    from rsthound.model import Process
    from rsthound.report.jsonout import line, reset_line, reset_obj

    resets, _ = resets_and_timeouts(DATA / name, fast=True)
    proc = Process(7, 'we"ird\\n', "x y", None, "a.service", None, 1)
    assert resets
    for r in resets:
        for reason, process in ((None, None), ("NO_SOCKET", proc)):
            assert reset_line(r, reason, process) == line(
                reset_obj(r) | {"reason": reason, "process": process and process.obj()})
