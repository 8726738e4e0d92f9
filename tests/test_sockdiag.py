"""The /proc/net/tcp fallback of `listeners`, on text in the kernel's layout
(tests/data/proc/listeners: a listener with 2 waiting, a connection, an IPv6 listener)."""

from __future__ import annotations

from pathlib import Path

from rsthound.sources.sockdiag import _proc

DATA = Path(__file__).parent / "data" / "proc" / "listeners"


def test_proc_fallback_reads_listeners_only():
    got = [(x.addr, x.port, x.queue, x.backlog, x.drops, x.uid, x.inode)
           for x in _proc(str(DATA))]
    assert got == [("127.0.0.1", 7300, 2, None, None, 1000, 4242),
                   ("::1", 7301, 0, None, None, 0, 4244)]
