"""One text form each for what every layer shows people: an endpoint, a rate, a time of
day, a date and time, a span, and text from others made inert for a terminal.

Pure and shared, like `model`: analysis words its findings with these, reports render with
them, so "2.0/s", "[::1]:7211" and "10:54:50" read the same everywhere.
"""

from __future__ import annotations

import math
import time

_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7f, 0xa0))}


def endpoint(host: str, port: int) -> str:
    """The address and port, IPv6 in brackets.

    >>> endpoint("10.0.0.1", 80), endpoint("::1", 80)
    ('10.0.0.1:80', '[::1]:80')
    """
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def host(addr: str) -> str:
    """An address as it stands before a port or in a URL: IPv6 in brackets.

    >>> host("127.0.0.1"), host("::1")
    ('127.0.0.1', '[::1]')
    """
    return f"[{addr}]" if ":" in addr else addr


def rate(per_second: float) -> str:
    """A rate in the unit that keeps one decimal meaningful.

    >>> rate(2.0), rate(0.035), rate(0.0005), rate(0)
    ('2.0/s', '2.1/min', '1.8/h', '0/s')
    """
    if per_second == 0:
        return "0/s"
    if per_second >= 0.1:
        return f"{per_second:.1f}/s"
    if per_second * 60 >= 0.1:
        return f"{per_second * 60:.1f}/min"
    return f"{per_second * 3600:.1f}/h"


def steady(n: int, span: float) -> bool:
    """Whether n events over `span` seconds make a rate worth giving: 3 at least, over a
    second at least (else a count over the span says more)."""
    return n >= 3 and span >= 1


def pace(n: int, span: float) -> str:
    """How often n events came, `span` seconds from the first to the last: a rate (n events
    at a steady pace make n - 1 intervals), unless there are too few of them, or too short
    a span, for a rate to mean anything; then the count over the span.

    >>> pace(16, 7.5), pace(18, 0.0002), pace(2, 5.0)
    ('2.0/s', '18 in 0.2 ms', '2 in 5.0 s')
    """
    if not steady(n, span):
        return f"{n} in {span * 1000:.1f} ms" if span < 1 else f"{n} in {seconds(span)}"
    return rate((n - 1) / span)


def clock(ts: float, micros: bool = False) -> str:
    """A time of day, local time, 24 hours, as tcpdump prints it.

    >>> import os; os.environ["TZ"] = "UTC"; time.tzset()
    >>> clock(1700000000.25), clock(1700000000.25, micros=True)
    ('22:13:20', '22:13:20.250000')
    """
    if not math.isfinite(ts):
        return "-"
    base = time.strftime("%H:%M:%S", time.localtime(ts))
    return f"{base}.{round((ts % 1) * 1e6) % 1000000:06d}" if micros else base


def micro_clock(ts: float) -> str:
    """A packet's time of day, to the microsecond, as tcpdump prints it."""
    return clock(ts, micros=True)


class DatedClock:
    """Packet times for a stream of lines: the time of day, as tcpdump prints it, with the
    date too once the lines cross midnight (from then on), or always (`always`, as tcpdump
    -tttt).

    >>> import os; os.environ["TZ"] = "UTC"; time.tzset()
    >>> t = DatedClock(); t(86399.5), t(86400.25)
    ('23:59:59.500000', '1970-01-02 00:00:00.250000')
    """

    def __init__(self, always: bool = False) -> None:
        self.dated = always
        self._day: str | None = None

    def __call__(self, ts: float) -> str:
        if not math.isfinite(ts):
            return "-"
        day = time.strftime("%Y-%m-%d", time.localtime(ts))
        if self._day is None:
            self._day = day
        elif day != self._day:
            self.dated = True
        return f"{day} {clock(ts, micros=True)}" if self.dated else clock(ts, micros=True)


def stamp(ts: float) -> str:
    """A date and time of day, local time.

    >>> import os; os.environ["TZ"] = "UTC"; time.tzset()
    >>> stamp(1700000000.25)
    '2023-11-14 22:13:20'
    """
    if not math.isfinite(ts):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def seconds(span: float) -> str:
    """A span of time.

    >>> seconds(8.0), seconds(4000)
    ('8.0 s', '1h06m40s')
    """
    if span < 60:
        return f"{span:.1f} s"
    m, s = divmod(round(span), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def printable(text: str) -> str:
    r"""Text from anyone on the host (process names, command lines), made inert for a
    terminal: control characters (escape sequences, carriage returns) become \xNN.

    >>> printable("evil\x1b[2Jname\r")
    'evil\\x1b[2Jname\\x0d'
    """
    return text.translate(_CONTROLS)
