"""Pairing traced failed connects with what the capture classified, as watch's ticks and
capture's lines take them: each connect counted once, with its packets when they come."""

from __future__ import annotations

from rsthound.analyze.facts import Seen
from rsthound.analyze.flows import TIMEOUT_AFTER
from rsthound.model import FailedConnect, Process, ResetKind
from rsthound.observe.sightings import HOLD, Pairing

HERE = Process(4321, "curl", "curl http://10.77.0.2:7301/", "root", netns=4026531840)
T0 = 1_000_000.0


def gave_up(after: float, errno: str | None = None) -> FailedConnect:
    """A connect to a dropping firewall that its client gave up on `after` seconds."""
    return FailedConnect(T0, T0 + after, "10.77.0.1", 40000, "10.77.0.2", 7301, HERE, errno)


def timeout_seen() -> Seen:
    """Its unanswered SYNs, as the capture calls them: a timeout, at the first SYN's time."""
    return Seen(T0, ResetKind.TIMEOUT, ("10.77.0.2", 7301), ("10.77.0.1", 40000), None, "")


def test_a_client_that_gave_up_waits_for_its_timeout_to_be_classified():
    """The client closed after 1 s; the capture calls its SYNs a timeout only TIMEOUT_AFTER
    after the first, and a tick later. Until then the connect waits: then both go together,
    once."""
    p = Pairing()
    x = gave_up(1.0)
    assert p.pair([], [x], T0 + 1.0 + HOLD + 0.1) == []  # past HOLD after its end: waits
    assert p.ours == 1  # (counted at once all the same: its process is known to be here)
    got = p.pair([timeout_seen()], [], T0 + TIMEOUT_AFTER + 0.6)
    assert got == [x] and p.ours == 1
    assert p.pair([], [], T0 + 60) == []  # never again


def test_a_connect_no_packet_explains_goes_alone_after_hold():
    p = Pairing()
    x = gave_up(1.0)
    assert p.pair([], [x], T0 + TIMEOUT_AFTER + HOLD - 0.1) == []
    assert p.pair([], [], T0 + TIMEOUT_AFTER + HOLD + 0.1) == [x]
    # an error the kernel reported (no route, say) has no timeout to wait for
    y = FailedConnect(T0, T0, "0.0.0.0", 0, "10.9.9.9", 80, HERE, "ENETUNREACH")
    assert Pairing().pair([], [y], T0 + HOLD + 0.1) == [y]


def test_a_connect_the_trace_told_late_is_not_counted_again_after_its_packets():
    """The trace fell behind (a busy host): a connect comes past its timeout and HOLD,
    after its packets were taken, and counted, in an earlier tick. It does not go alone
    now (that counted it twice); nor does one whose process was gone before it could be
    asked, which counts in `ours` through those packets."""
    for process, ours in ((HERE, 1), (None, 1)):
        p = Pairing()
        assert p.pair([timeout_seen()], [], T0 + TIMEOUT_AFTER + 0.6) == []
        late = FailedConnect(T0, T0 + 1.0, "10.77.0.1", 40000, "10.77.0.2", 7301, process,
                             None)
        assert p.pair([], [late], T0 + TIMEOUT_AFTER + HOLD + 1.0) == []
        assert p.ours == ours
        assert p.pair([], [], T0 + 60, final=True) == []
