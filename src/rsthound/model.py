"""Small records shared by every layer: what the parsers produce and the analyzers report."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple


class ResetKind(enum.StrEnum):
    """rsthound's reset kinds (DESIGN.md section 4), plus the failures that send no reset."""

    REFUSED = "refused"  # RST answering a SYN
    ABORT = "abort"  # RST on an established connection
    AFTER_CLOSE = "after-close"  # RST after a FIN
    STRAY = "stray"  # RST for a connection never seen opening
    INJECTED = "injected?"  # RST whose TTL/hop limit or IP ID does not fit the sender
    TIMEOUT = "timeout"  # SYN never answered (no reset at all)


@dataclass(frozen=True, slots=True)
class Damage:
    """A part of an input that could not be read; what came before and after it still counts."""

    path: str
    offset: int
    skipped: int  # bytes passed over (to the next readable record, or to the end)
    reason: str

    def describe(self) -> str:
        tail = f" ({self.skipped} bytes skipped)" if self.skipped > 0 else ""
        return f"{self.path}: at byte {self.offset}: {self.reason}{tail}"


class Reset(NamedTuple):
    """One RST segment, with who sent it and what kind it is."""

    ts: float
    src: str
    sport: int
    dst: str
    dport: int
    kind: ResetKind
    sent_by: str  # "orig" or "resp": the side of the connection that sent it
    flags: int
    seq: int
    ack: int
    ttl: int
    iface: str | None
    uid: str
    why: str  # evidence in words, e.g. "answers a SYN; nothing ever answered"


class Conn(NamedTuple):
    """One TCP connection as Zeek's conn.log would have it, plus rsthound's verdict.

    (Named tuples: hundreds of thousands are made per second of capture read.)
    """

    ts: float
    uid: str
    orig_h: str
    orig_p: int
    resp_h: str
    resp_p: int
    duration: float
    orig_bytes: int
    resp_bytes: int
    conn_state: str
    history: str
    orig_pkts: int
    resp_pkts: int
    orig_ip_bytes: int
    resp_ip_bytes: int
    failure: ResetKind | None  # why it failed, when it did
    syn_retrans: int  # SYNs the originator sent again
    resets: int
    iface: str | None
    end: float = 0.0

    @property
    def service(self) -> str:
        return join_hostport(self.resp_h, self.resp_p)


def join_hostport(host: str, port: int) -> str:
    """"10.0.0.1", 80 -> "10.0.0.1:80"; "::1", 80 -> "[::1]:80"."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7f, 0xa0))}


def printable(text: str) -> str:
    r"""Text from anyone on the host (process names, command lines), made inert for a
    terminal: control characters (escape sequences, carriage returns) become \xNN.

    >>> printable("evil\x1b[2Jname\r")
    'evil\\x1b[2Jname\\x0d'
    """
    return text.translate(_CONTROLS)
