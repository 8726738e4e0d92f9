"""The argument types and option groups several commands share."""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import re
import time
from typing import Any

from rsthound.metrics import BY_NAME

_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def time_arg(text: str) -> float:
    """Unix seconds or ISO 8601."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: use Unix seconds or ISO 8601 like 2026-11-22T10:54:50"
        ) from None
    return t.timestamp()


def when_arg(text: str) -> float:
    """'30m', '6h', '7d' ago, or a time as time_arg reads it."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|min|m|h|d|w)", text.strip())
    if m:
        return time.time() - float(m[1]) * _UNITS[m[2]]
    try:
        return time_arg(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: use 30m, 6h, 7d (ago), ISO 8601 like "
            "2026-11-22T10:54:50, or Unix seconds") from None


def metric_arg(text: str) -> str:
    for name in BY_NAME:
        if text.lower() in (name.lower(), name.replace(".", "").lower()):
            return name
    raise argparse.ArgumentTypeError(
        f"{text!r} is not a counter rsthound keeps; one of: {', '.join(BY_NAME)}")


def port_arg(text: str) -> int:
    try:
        p = int(text)
    except ValueError:
        p = -1
    if not 0 <= p <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return p


def host_arg(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IPv4 or IPv6 address") from None


def seconds_arg(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not 0 <= v <= 86400:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0-86400)")
    return v


def add_db(p: argparse.ArgumentParser, write: bool = True) -> None:
    p.add_argument("--db", metavar="FILE",
                   help="the history file (default: /var/lib/rsthound/history.db as root, "
                   "else ~/.local/state/rsthound/history.db; one per --netns)")
    if write:
        p.add_argument("--no-history", action="store_true", help="keep no history")


def add_namespace(p: argparse.ArgumentParser) -> None:
    p.add_argument("--netns", metavar="NAME|PID",
                   help="another network namespace: a name from 'ip netns list', or a "
                   "process id (needs root)")
    add_proc_root(p)


def add_proc_root(p: argparse.ArgumentParser) -> None:
    p.add_argument("--proc-root", metavar="DIR", default="/proc",
                   help="where proc is mounted (in a container: /host/proc, which reads "
                   "the host's counters and processes); default /proc")


def add_debug(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)


def count_arg(least: int, most: int | None = None) -> Any:
    """An integer argument at least `least` (and at most `most`)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = least - 1
        if v < least or (most is not None and v > most):
            limits = f"{least}-{most}" if most is not None else f"{least} or more"
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number {limits}")
        return v
    return parse


def interval_arg(least: float, zero: bool = False) -> Any:
    """Seconds between samples, `least` at the least (or 0 where `zero` allows it)."""
    def parse(text: str) -> float:
        v = seconds_arg(text)
        if v < least and not (zero and v == 0):
            raise argparse.ArgumentTypeError(
                f"{text!r} is too short an interval ({least:g} s at least"
                + (", or 0" if zero else "") + ")")
        return v
    return parse


def url_arg(text: str) -> str:
    """An http(s) URL with a host."""
    from urllib.parse import urlparse

    u = urlparse(text)
    if u.scheme not in ("http", "https") or not u.netloc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an http:// or https:// URL with a host")
    return text
