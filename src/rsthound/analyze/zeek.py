"""Zeek's TCP endpoint state machine, history letters and conn_state, as plain functions.

Zeek's definitions (base/protocols/conn, the TCP analyzer) are the field's common language;
these follow them so that `conn_state` and `history` mean what Zeek users expect.
"""

from __future__ import annotations

import re

from rsthound.formats.inet import ACK, FIN, RST, SYN

INACTIVE, SYN_SENT, SYN_ACK_SENT, PARTIAL, ESTABLISHED, CLOSED, RESET = range(7)

# history bits: one letter is written the first time each kind of packet is seen per side
H_SYN, H_FIN, H_RST, H_DATA, H_ACK, H_MULTI, H_FIN_RST = (1 << i for i in range(7))
_RSTOS0 = re.compile(r"\^?S[^HAFGIQ]*R.*")


class Side:
    """One endpoint of a connection (Zeek's TCP_Endpoint, reduced to what we report)."""

    __slots__ = (
        "fins",
        "hist",
        "ip_bytes",
        "ipid",
        "last_fin",
        "last_rst",
        "last_seq",
        "last_syn",
        "pkts",
        "prev",
        "start_seq",
        "state",
        "syns",
        "ttls",
    )

    def __init__(self) -> None:
        self.state = INACTIVE
        self.prev = INACTIVE
        self.start_seq = -1
        self.last_seq = -1
        self.fins = 0
        self.syns = 0
        self.pkts = 0
        self.ip_bytes = 0
        self.hist = 0
        self.last_syn = -1
        self.last_fin = -1
        self.last_rst = -1
        self.ttls: tuple[int, ...] = ()  # one or two values: a set would cost 216 bytes
        self.ipid = -1

    def set(self, state: int) -> None:
        self.prev = self.state
        self.state = state

    def size(self) -> int:
        """Payload bytes from the sequence space, as Zeek's TCP_Endpoint::Size()."""
        if self.start_seq < 0:
            return 0
        size = (self.last_seq - self.start_seq) & 0xFFFFFFFF
        if size:
            size -= 1  # the SYN's octet (or the one assumed before a midstream start)
        if self.fins and size:
            size -= 1
        return size


def seq_delta(a: int, b: int) -> int:
    """a - b in 32-bit sequence space, signed."""
    d = (a - b) & 0xFFFFFFFF
    return d - 0x100000000 if d & 0x80000000 else d


def history_letter(side: Side, is_orig: bool, flags: int, seq: int, payload: int) -> str:
    """The history letter this packet adds, or '' (Zeek's update_history)."""
    ctl = (flags & SYN and 1) + (flags & FIN and 1) + (flags & RST and 1)
    code = ""
    if ctl > 1:
        if flags & FIN and flags & RST:
            code = _first(side, H_FIN_RST, "I")
        else:
            code = _first(side, H_MULTI, "Q")
    elif ctl == 1:
        if flags & SYN:
            letter = "H" if flags & ACK else "S"
            code = _first(side, H_SYN, letter) or (letter if seq != side.last_syn else "")
            side.last_syn = seq
        elif flags & FIN:
            end = (seq + payload) & 0xFFFFFFFF
            code = _first(side, H_FIN, "F") or ("F" if end != side.last_fin else "")
            side.last_fin = end
        else:
            code = _first(side, H_RST, "R") or ("R" if seq != side.last_rst else "")
            side.last_rst = seq
    elif payload:
        code = _first(side, H_DATA, "D")
    elif flags & ACK:
        code = _first(side, H_ACK, "A")
    return code if is_orig else code.lower()


def _first(side: Side, bit: int, letter: str) -> str:
    if side.hist & bit:
        return ""
    side.hist |= bit
    return letter


def update_state(end: Side, peer: Side, orig: Side, is_orig: bool, flags: int, payload: int,
                 ) -> bool:
    """Advance Zeek's endpoint state machine for one packet; True if the roles must flip."""
    flip = False
    st = end.state
    if st == INACTIVE:
        if flags & SYN:
            if is_orig:
                end.set(SYN_ACK_SENT if flags & ACK else SYN_SENT)
            else:
                if not flags & ACK and peer.state == SYN_ACK_SENT:
                    flip = True  # SYN / SYN-ACK seen in reverse order
                    peer.set(ESTABLISHED)
                if peer.state == SYN_SENT:
                    peer.set(ESTABLISHED)
                end.set(ESTABLISHED)
        if flags & FIN:
            end.set(CLOSED)
        if flags & RST:
            end.set(RESET)
        if end.state == INACTIVE:
            if not is_orig and payload == 0 and orig.state == SYN_SENT:
                pass  # an ACK of the SYN before the SYN-ACK: not a partial connection
            elif flags & ACK and peer.state == ESTABLISHED:
                end.set(ESTABLISHED)
            else:
                end.set(PARTIAL)
    elif st in (SYN_SENT, SYN_ACK_SENT):
        if flags & FIN:
            end.set(CLOSED)
        if flags & RST:
            end.set(RESET)
    elif st in (ESTABLISHED, PARTIAL):
        if flags & SYN and st == PARTIAL and peer.state == INACTIVE and not flags & ACK:
            end.set(SYN_SENT)
        if flags & FIN and not flags & RST:
            end.set(CLOSED)
            if peer.state == RESET and peer.prev == CLOSED:
                peer.set(CLOSED)  # the peer's FIN then RST was a normal close after all
        if flags & RST:
            end.set(RESET)
    elif st == CLOSED and flags & RST and peer.state != CLOSED:
        end.set(RESET)
    return flip


def conn_state(orig: Side, resp: Side, history: str) -> str:
    """Zeek's conn_state from the two endpoints' final states."""
    os_, rs = orig.state, resp.state
    o_inactive = os_ in (INACTIVE, PARTIAL)
    r_inactive = rs in (INACTIVE, PARTIAL)
    if rs == RESET:
        if os_ in (SYN_SENT, SYN_ACK_SENT) or (
            os_ == RESET and orig.size() == 0 and resp.size() == 0
        ):
            return "REJ"
        return "RSTRH" if o_inactive else "RSTR"
    if os_ == RESET:
        if r_inactive:
            return "RSTOS0" if _RSTOS0.fullmatch(history) else "OTH"
        return "RSTO"
    if rs == CLOSED and os_ == CLOSED:
        return "SF"
    if os_ == CLOSED:
        return "SH" if r_inactive else "S2"
    if rs == CLOSED:
        return "SHR" if o_inactive else "S3"
    if os_ == SYN_SENT and rs == INACTIVE:
        return "S0"
    if os_ == ESTABLISHED and rs == ESTABLISHED:
        return "S1"
    return "OTH"
