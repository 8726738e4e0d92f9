"""The connection tracker: packets in, finished connections and classified resets out.

`FlowTable.packet` takes one TCP packet at a time (live capture, the slow path).
For a decoded batch, `plan_batch` (numpy only, so it can run in another process) picks the
packets that can change a connection's state and folds the rest (plain data and ACKs) into
per-connection counts; `FlowTable.apply` then runs the per-packet code on the picked ones.
When only a summary is wanted, `FlowTable.apply` first sets aside the connections whose
rows have a plain shape (`Quick`, `_shapes`), carrying unfinished ones to the next batch:
those are counted together, with numpy, and the per-packet code never sees them unless the
same four-tuple shows up again while the table would still hold them, or an ICMP error is
about one (then they are replayed through it, and counted as it says).
Memory is bounded: connections idle longer than
`idle_timeout` are finished, closed ones after `close_delay`, and past `max_conns` the
least recently seen are evicted (and counted).
"""

from __future__ import annotations

import hashlib
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from rsthound.analyze import zeek
from rsthound.analyze.zeek import CLOSED, ESTABLISHED, INACTIVE, RESET, SYN_ACK_SENT, SYN_SENT
from rsthound.formats.columns import KEY_DTYPE, KEY_LEN, TcpColumns, by_flow
from rsthound.formats.icmp import IcmpError
from rsthound.formats.inet import ACK, FIN, RST, SYN, addr_bytes, format_addr
from rsthound.model import Conn, Icmp, Reset, ResetKind

CTL = SYN | FIN | RST
TIMEOUT_AFTER = 3.0  # seconds: a live capture's unanswered SYN this old is a timeout


_WHY = {
    ResetKind.REFUSED: "answers a SYN: nothing accepted the connection",
    ResetKind.ABORT: "aborts an open connection",
    ResetKind.AFTER_CLOSE: "follows a FIN: data arrived or was unread after close",
    ResetKind.STRAY: "for a connection never seen opening",
    ResetKind.INJECTED: "TTL or IP ID does not fit the sender's other packets",
}


def key_endpoints(key: bytes, a_is_orig: bool, addr: Callable[[bytes], str] = format_addr,
                  ) -> tuple[str, int, str, int]:
    """(orig_h, orig_p, resp_h, resp_p) of a 36-byte connection key."""
    a = (addr(key[0:16]), int.from_bytes(key[16:18], "big"))
    b = (addr(key[18:34]), int.from_bytes(key[34:36], "big"))
    o, r = (a, b) if a_is_orig else (b, a)
    return o[0], o[1], r[0], r[1]


def flow_uid(key: bytes, start: float) -> str:
    """Stable for the same capture (unlike Zeek's random ones), so outputs compare."""
    return "C" + hashlib.blake2b(key + repr(start).encode(), digest_size=9).hexdigest()[:17]


class Flow:
    """A connection being tracked."""

    __slots__ = (
        "a_is_orig", "first_kind", "hist", "icmp", "iface", "key", "last", "nresets",
        "orig", "resp", "start",
    )

    def __init__(self, key: bytes, a_is_orig: bool, ts: float, iface: str | None) -> None:
        self.key = key
        self.a_is_orig = a_is_orig
        self.start = ts
        self.last = ts
        self.orig = zeek.Side()
        self.resp = zeek.Side()
        self.hist: list[str] = []
        self.iface = iface
        self.nresets = 0
        self.first_kind: ResetKind | None = None
        self.icmp: str | None = None

    @property
    def uid(self) -> str:
        return flow_uid(self.key, self.start)

    def endpoints(self, addr: Callable[[bytes], str] = format_addr) -> tuple[str, int, str, int]:
        """(orig_h, orig_p, resp_h, resp_p)."""
        return key_endpoints(self.key, self.a_is_orig, addr)

    def done(self) -> bool:
        return self.orig.state in (CLOSED, RESET) or self.resp.state in (CLOSED, RESET)


_ROWS = ("flow", "epoch", "ctl", "a_is_src", "ts", "flags", "seq", "ack", "payload", "ip_len",
         "ttl", "ipid", "iface", "ifindex")
_BULK = ("flow", "epoch", "a_is_src", "count", "ip_bytes", "seq_end", "ts")
# What a Quick connection ended as: its conn_state, and its failure (None, or a kind)
STATES = ("SF", "REJ", "RSTO", "RSTR")
FAILURE = (None, ResetKind.REFUSED, ResetKind.ABORT, ResetKind.AFTER_CLOSE, ResetKind.INJECTED)
SF, REJ, RSTO, RSTR = range(4)


@dataclass
class Quick:
    """Connections whose life is a plain shape, told apart from the rest with numpy
    (`_shapes`). In summary-only mode, as `packet` would see them (only control packets
    and each side's first packet of a batch count there):

    - SF: a SYN alone, a SYN-ACK from the other side, then one FIN from each side (in
      either order) and plain packets only: both sides close, conn_state SF.
    - REJ: a SYN alone, then a RST (no SYN, no FIN) from the other side as its first
      packet: refused, conn_state REJ, and one reset of kind refused.
    - aborted: a SYN, the SYN-ACK, plain packets and at most one FIN each way, then one
      or two RSTs from one side and nothing after: RSTO or RSTR (SF when both sides had
      closed), each reset an abort, after-close or injected? as `packet` would judge it.

    Every other shape, even a retransmitted FIN, goes through `packet`.
    """

    state: np.ndarray  # index of STATES
    failure: np.ndarray  # index of FAILURE
    start: np.ndarray  # time of the SYN
    end: np.ndarray  # time of the last packet (the RST of a REJ)
    orig_hi: np.ndarray  # the originator's address (the SYN's sender), as columns halves
    orig_lo: np.ndarray
    resp_hi: np.ndarray
    resp_lo: np.ndarray
    resp_port: np.ndarray
    # the resets: which connection (index of the above), its kind (index of FAILURE),
    # sent by the originator or not
    reset_of: np.ndarray
    reset_kind: np.ndarray
    reset_by_orig: np.ndarray

    _CONN = ("state", "failure", "start", "end", "orig_hi", "orig_lo", "resp_hi", "resp_lo",
             "resp_port")

    def __len__(self) -> int:
        return len(self.state)

    def take(self, rows: np.ndarray) -> Quick:
        """The connections at `rows` (sorted), and their resets."""
        new = np.full(len(self), -1)
        new[rows] = np.arange(len(rows))
        r = new[self.reset_of] >= 0
        return Quick(**{k: getattr(self, k)[rows] for k in self._CONN},
                     reset_of=new[self.reset_of[r]], reset_kind=self.reset_kind[r],
                     reset_by_orig=self.reset_by_orig[r])

    @staticmethod
    def join(parts: list[Quick]) -> Quick:
        base = np.cumsum([0] + [len(p) for p in parts[:-1]])
        return Quick(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in Quick._CONN},
                     reset_of=np.concatenate([p.reset_of + b for p, b in zip(parts, base,
                                                                             strict=True)]),
                     reset_kind=np.concatenate([p.reset_kind for p in parts]),
                     reset_by_orig=np.concatenate([p.reset_by_orig for p in parts]))


@dataclass
class Plan:
    """What `FlowTable.apply` needs from one batch, worked out with numpy alone (so it can
    be made in another process): the packets that can change a connection's state, in
    order, and, when counts are wanted, the rest folded into groups per connection side."""

    rows: dict[str, np.ndarray]  # columns named in _ROWS
    packed: bytes  # the connection keys of the flow numbers, one after the other
    bulk: dict[str, np.ndarray] | None  # columns named in _BULK

    @cached_property
    def keys(self) -> list[bytes]:
        """The connection key of each flow number (made where the plan is used: one
        bytes object travels between processes faster than a list of them)."""
        return np.frombuffer(self.packed, dtype=f"V{KEY_LEN}").tolist()


def plan_batch(cols: TcpColumns, counts: bool) -> Plan:
    """Split a batch into the packets the state machine must see and foldable bulk."""
    n = len(cols)
    flow = cols.flow
    ctl = (cols.flags & CTL) != 0
    flow_first = cols.flow_first
    assert flow_first is not None  # (decode_tcp and TcpColumns.take number the flows)
    epoch = np.zeros(n, dtype=np.int64)
    if counts:
        order = by_flow(flow)
        fs = flow[order]
        starts = np.r_[True, fs[1:] != fs[:-1]] if n else np.zeros(0, dtype=bool)
        # epoch: how many control packets of the same flow came before, in this batch
        cs = np.cumsum(ctl[order])
        before = cs - ctl[order]
        first_of_group = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
        epoch[order] = before - before[first_of_group]
        group = (flow * (int(epoch.max(initial=0)) + 1) + epoch) * 2 + cols.a_is_src
        # the first pure ACK and first data each way write history letters
        _, first = np.unique(group * 2 + (cols.payload > 0), return_index=True)
    else:  # only an endpoint's first packet can move it out of INACTIVE
        side_first = np.full(2 * len(flow_first), n, dtype=np.int64)
        np.minimum.at(side_first, flow * 2 + cols.a_is_src, np.arange(n))
        first = side_first[side_first < n]
    keep = ctl.copy()
    keep[first] = True
    bulk = None
    rest = np.flatnonzero(~keep)
    if counts and len(rest):
        g, inv = np.unique(group[rest], return_inverse=True)
        inv = inv.ravel()
        lastrow = np.zeros(len(g), dtype=np.int64)
        np.maximum.at(lastrow, inv, rest)
        bulk = {
            "flow": flow[lastrow], "epoch": epoch[lastrow], "a_is_src": cols.a_is_src[lastrow],
            "count": np.bincount(inv),
            "ip_bytes": np.bincount(inv, weights=cols.ip_len[rest]).astype(np.int64),
            "seq_end": (cols.seq[lastrow] + cols.payload[lastrow]) & 0xFFFFFFFF,
            "ts": cols.ts[lastrow],
        }
    rows = np.flatnonzero(keep)
    cols_kept = {
        "flow": flow[rows], "epoch": epoch[rows], "ctl": ctl[rows],
        **cols.fields(_ROWS[3:], rows),
    }
    return Plan(cols_kept, cols.packed_keys(flow_first), bulk)


OTHER, DONE, OPEN = range(3)  # what `_shapes` makes of a connection's rows
_KEEP = ("a_is_src", "ts", "flags", "seq", "ack", "payload", "ip_len", "ttl", "ipid")


@dataclass
class _Shapes:
    """What `_shapes` made of connections' rows: by connection, its first and last row
    and shape; for the DONE ones, their state and failure (Quick's codes); and the rows
    that are resets, with their kinds."""

    head: np.ndarray
    last: np.ndarray
    shape: np.ndarray
    state: np.ndarray
    failure: np.ndarray
    rst: np.ndarray  # rows
    rst_kind: np.ndarray


def _shapes(rows: dict[str, np.ndarray]) -> _Shapes:
    """Each connection's shape, from its rows as `packet` would see them in summary-only
    mode (control packets, and each side's first packet of a batch), given sorted by
    connection and in order: DONE (one of Quick's shapes), OPEN (so far one of those,
    unfinished: a bare SYN, or a SYN, the SYN-ACK and then only plain packets and at most
    one FIN each way), or OTHER."""
    flow, flags, src = rows["flow"], rows["flags"], rows["a_is_src"]
    n = len(flow)
    starts = np.r_[True, flow[1:] != flow[:-1]] if n else np.zeros(0, dtype=bool)
    head = np.flatnonzero(starts)
    ng = len(head)
    size = np.diff(np.r_[head, n])
    last = head + size - 1
    group = np.cumsum(starts) - 1
    fl = flags & (SYN | ACK | FIN | RST)
    ctl = fl & CTL
    syn = fl[head] == SYN
    second = np.minimum(head + 1, max(n - 1, 0))
    other_side = src[second] != src[head]
    rej = syn & (size == 2) & (ctl[second] == RST) & other_side
    answered = syn & (size >= 2) & (fl[second] == SYN | ACK) & other_side
    # after the SYN-ACK: plain packets and FINs, one FIN from each side at most, then
    # perhaps one or two RSTs from one side, and nothing after them
    later = np.arange(n) >= head[group] + 2
    fin = later & (ctl == FIN)
    rst = later & (ctl == RST)
    odd = later & (ctl != 0) & (ctl != FIN) & (ctl != RST)
    from_orig = src == src[head][group]

    def count(m: np.ndarray) -> np.ndarray:
        return np.bincount(group, weights=m, minlength=ng).astype(np.int64)

    fins_o, fins_r = count(fin & from_orig), count(fin & ~from_orig)
    rsts, rsts_o = count(rst), count(rst & from_orig)
    first_rst = np.full(ng, n)
    np.minimum.at(first_rst, group[rst], np.flatnonzero(rst))
    fits = answered & (count(odd) == 0) & (fins_o <= 1) & (fins_r <= 1)
    plain = fits & (rsts == 0)
    sf = plain & (fins_o == 1) & (fins_r == 1)
    aborted = fits & (rsts >= 1) & (rsts <= 2) & ((rsts_o == 0) | (rsts_o == rsts)) & (
        last - first_rst + 1 == rsts)
    shape = np.full(ng, OTHER)
    shape[(syn & (size == 1)) | (plain & ~sf)] = OPEN
    shape[sf | rej | aborted] = DONE
    state = np.where(rej, REJ, SF)
    failure = np.where(rej, 1, 0)
    # the resets of the aborted, judged as `packet` judges them: on the sender's earlier
    # rows of the connection (their TTLs, their last IP ID) and the FINs before
    rr = np.flatnonzero(rst & aborted[group])
    kinds = np.zeros(len(rr), dtype=np.int64)
    if len(rr):
        g = group[rr]
        idx, span = _spans_of(head[g], rr - 1)
        owner = np.repeat(np.arange(len(rr)), span)
        same = src[idx] == src[rr][owner]
        ttl, ipid = rows["ttl"], rows["ipid"]
        seen = np.bincount(owner, weights=same & (ttl[idx] == ttl[rr][owner]),
                           minlength=len(rr)) > 0
        where = np.where(same & (ipid[idx] >= 0), idx, -1)
        prev = np.maximum.reduceat(where, np.r_[0, np.cumsum(span)[:-1]])
        prev_id = np.where(prev >= 0, ipid[np.maximum(prev, 0)], -1)
        back = (prev_id - ipid[rr]) & 0xFFFF
        injected = ~seen | ((prev_id > 0) & (ipid[rr] > 0) & (back > 64) & (back < 0x8000))
        fins = np.bincount(owner, weights=ctl[idx] == FIN, minlength=len(rr)) > 0
        kinds = np.where(injected, 4, np.where(fins, 3, 2))
        first = rr == first_rst[g]
        gf = g[first]
        failure[gf] = kinds[first]
        # the sender's state before its first RST: closed if it sent a FIN; both closed,
        # and a RST changes nothing (SF), otherwise RSTO or RSTR
        by_orig = from_orig[rr[first]]
        own_fin = np.where(by_orig, fins_o[gf], fins_r[gf]) > 0
        peer_fin = np.where(by_orig, fins_r[gf], fins_o[gf]) > 0
        state[gf] = np.where(own_fin & peer_fin, SF, np.where(by_orig, RSTO, RSTR))
    refused = second[rej]  # a REJ's RST: a refusal
    return _Shapes(head, last, shape, state, failure, np.r_[rr, refused],
                   np.r_[kinds, np.ones(len(refused), dtype=np.int64)])


def _spans_of(first: np.ndarray, last: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The indexes from each first to its last, one after the other, and how many each."""
    size = last - first + 1
    if not len(size):
        return np.zeros(0, dtype=np.int64), size
    ends = np.cumsum(size)
    return np.arange(ends[-1]) + np.repeat(first - (ends - size), size), size


def _quick_of(keys: list[bytes], rows: dict[str, np.ndarray], sh: _Shapes, done: np.ndarray,
              ) -> Quick:
    """Quick records of the connections `done` (of `sh`), from their keys and rows."""
    k = np.frombuffer(b"".join(keys), dtype=KEY_DTYPE)
    a_hi, a_lo, b_hi, b_lo = (k[f].astype(np.uint64) for f in ("a_hi", "a_lo", "b_hi",
                                                                 "b_lo"))
    a_orig = rows["a_is_src"][sh.head[done]]
    at = np.full(len(sh.head), -1)
    at[done] = np.arange(len(done))
    group = np.searchsorted(sh.head, sh.rst, side="right") - 1
    mine = at[group] >= 0
    reset_of = at[group[mine]]
    return Quick(
        state=sh.state[done], failure=sh.failure[done],
        start=rows["ts"][sh.head[done]], end=rows["ts"][sh.last[done]],
        orig_hi=np.where(a_orig, a_hi, b_hi), orig_lo=np.where(a_orig, a_lo, b_lo),
        resp_hi=np.where(a_orig, b_hi, a_hi), resp_lo=np.where(a_orig, b_lo, a_lo),
        resp_port=np.where(a_orig, k["b_port"], k["a_port"]).astype(np.int64),
        reset_of=reset_of, reset_kind=sh.rst_kind[mine],
        reset_by_orig=rows["a_is_src"][sh.rst[mine]] == a_orig[reset_of],
    )


@dataclass(eq=False)
class _Rows:
    """Connections kept aside from `packet` (held closed, or carried open), with their
    rows to replay them from: columns named in _KEEP and "label", sorted by connection;
    connection i is keys[i], its rows first[i] to last[i]."""

    keys: list[bytes]
    rows: dict[str, np.ndarray]
    first: np.ndarray
    last: np.ndarray
    quick: Quick | None = None  # held: what they are
    live: np.ndarray = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.live = np.ones(len(self.keys), dtype=bool)

    @cached_property
    def index(self) -> dict[bytes, int]:
        """Each connection's index by its key (made when one is first looked for)."""
        return dict(zip(self.keys, itertools.count()))


class FlowTable:
    """Tracks connections and reports each finished one and each reset through callbacks."""

    def __init__(
        self,
        on_conn: Callable[[Conn], None],
        on_reset: Callable[[Reset], None],
        idle_timeout: float = 300.0,
        close_delay: float = 5.0,
        max_conns: int = 200_000,
        timeout_after: float = TIMEOUT_AFTER,
        counts: bool = True,
        unanswered_only: bool = False,
        on_icmp: Callable[[Icmp], None] = lambda _i: None,
        on_quick: Callable[[Quick], None] | None = None,
    ) -> None:
        """`on_quick`: the plain connections set aside by `apply`, counted together, in
        place of `on_conn` and `on_reset` one at a time (summary only: for each, `on_conn`
        would have been told a Conn with uid "", `on_reset` each of its resets)."""
        self.on_conn = on_conn
        self.on_reset = on_reset
        self.on_icmp = on_icmp
        self.idle_timeout = idle_timeout
        self.close_delay = close_delay
        self.max_conns = max_conns
        self.timeout_after = timeout_after  # an unanswered SYN this old is a timeout
        # counts=False: a summary needs states and resets, not packet and byte counts or
        # the first-ACK/first-data history letters, so `plan_batch` keeps far fewer packets.
        self.counts = counts
        # live capture: resets are told as they come, so only connections that failed
        # without one (unanswered SYNs) are worth a Conn record
        self.unanswered_only = unanswered_only
        self.flows: dict[bytes, Flow] = {}
        self.evicted = 0
        self.pending = 0  # connections ended with a young SYN unanswered, neither way yet
        self.now = 0.0
        self._next_sweep = 0.0
        self._addrs: dict[bytes, str] = {}
        self.on_quick = on_quick
        # plain connections kept from `packet`: closed ones held as the table would hold
        # them (until a sweep finds them closed for close_delay), key -> their _Rows; open
        # ones carried to the next batch, key -> their index in `_carried`
        self._held: dict[bytes, _Rows] = {}
        self._blocks: list[_Rows] = []
        self._open: dict[bytes, int] = {}
        self._carried: _Rows | None = None

    def _addr(self, raw: bytes) -> str:
        text = self._addrs.get(raw)
        if text is None:
            if len(self._addrs) > 65536:  # a scan: do not let the cache grow with it
                self._addrs.clear()
            text = self._addrs[raw] = format_addr(raw)
        return text

    # -- one packet at a time ------------------------------------------------------------
    def packet(
        self, key: bytes, a_is_src: bool, ts: float, flags: int, seq: int, ack: int,
        payload: int, ip_len: int, ttl: int, ipid: int, iface: str | None = None,
    ) -> None:
        """Account one TCP packet; `key` is the canonical 36-byte connection key."""
        if ts > self.now:
            self.now = ts
        flow = self.flows.get(key)
        if flow is not None and flags & (SYN | ACK) == SYN and (
            flow.done() or ts - flow.last > self.idle_timeout
        ):
            self._finish(flow)  # a new connection on the same four-tuple
            flow = None
        if flow is None:
            if len(self.flows) >= self.max_conns:
                self._evict()
            sport = int.from_bytes(key[16:18] if a_is_src else key[34:36], "big")
            dport = int.from_bytes(key[34:36] if a_is_src else key[16:18], "big")
            # The sender is the originator unless it answers (SYN-ACK) or, seen midstream,
            # it speaks from a well-known port to an ephemeral one.
            sender_orig = not (
                flags & (SYN | ACK) == SYN | ACK
                or (not flags & SYN and sport < 1024 <= dport)
            )
            flow = Flow(key, a_is_src == sender_orig, ts, iface)
            if not sender_orig:
                flow.hist.append("^")
            self.flows[key] = flow
        flow.last = ts
        is_orig = a_is_src == flow.a_is_orig
        end, peer = (flow.orig, flow.resp) if is_orig else (flow.resp, flow.orig)
        end.pkts += 1
        end.ip_bytes += ip_len
        if end.start_seq < 0:
            end.start_seq = seq if flags & SYN else (seq - 1) & 0xFFFFFFFF
            end.last_seq = end.start_seq
        elif (flags & SYN and end.state in (INACTIVE, zeek.PARTIAL, ESTABLISHED, RESET)
              and (end.state != ESTABLISHED or end.size() == 0)):
            end.start_seq = end.last_seq = seq  # a new SYN restarts the sequence space
        seg = payload + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
        if flags & RST:
            seg -= payload
        seg_end = (seq + seg) & 0xFFFFFFFF
        delta = zeek.seq_delta(seg_end, end.last_seq)
        if delta > 0 and not (flags & (SYN | RST) and delta > 0x1000000):
            end.last_seq = seg_end
        if flags & SYN:
            end.syns += 1
        if flags & FIN:
            end.fins += 1
        kind = self._reset_kind(flow, end, peer, ttl, ipid) if flags & RST else None
        letter = zeek.history_letter(end, is_orig, flags, seq, payload)
        if letter:
            flow.hist.append(letter)
        if zeek.update_state(end, peer, flow.orig, is_orig, flags, payload):
            flow.a_is_orig = not flow.a_is_orig
            flow.orig, flow.resp = flow.resp, flow.orig
            flow.hist.append("^")
            is_orig = not is_orig
        if ttl not in end.ttls:
            end.ttls = (*end.ttls, ttl)
        if ipid >= 0:
            end.ipid = ipid
        if kind is not None:
            flow.nresets += 1
            if flow.first_kind is None or flow.first_kind is ResetKind.REFUSED:
                flow.first_kind = kind
            self._report_reset(flow, is_orig, ts, kind, flags, seq, ack, ttl)

    def _reset_kind(self, flow: Flow, end: zeek.Side, peer: zeek.Side, ttl: int, ipid: int,
                    ) -> ResetKind:
        """What a RST from `end` means, judged on the state before it."""
        if end.ttls and ttl not in end.ttls:
            return ResetKind.INJECTED
        if end.ipid > 0 and ipid > 0:
            # A sender's IP IDs only move forward (packets missing from the capture, or
            # other connections sharing a counter, make gaps); one that jumps back does
            # not come from the same stack.
            back = (end.ipid - ipid) & 0xFFFF
            if 64 < back < 0x8000:
                return ResetKind.INJECTED
        if peer.state in (SYN_SENT, SYN_ACK_SENT) and end.state in (INACTIVE, RESET):
            return ResetKind.REFUSED
        if end.fins or peer.fins:
            return ResetKind.AFTER_CLOSE
        if not flow.orig.syns:  # the client's SYN was never seen
            return ResetKind.STRAY
        return ResetKind.ABORT

    def _report_reset(self, flow: Flow, is_orig: bool, ts: float, kind: ResetKind,
                      flags: int, seq: int, ack: int, ttl: int) -> None:
        oh, op, rh, rp = flow.endpoints(self._addr)
        src, sport, dst, dport = (oh, op, rh, rp) if is_orig else (rh, rp, oh, op)
        self.on_reset(Reset(ts, src, sport, dst, dport, kind, "orig" if is_orig else "resp",
                            flags, seq, ack, ttl, flow.iface, flow.uid, _WHY[kind]))

    # -- a batch of columns ----------------------------------------------------------------
    def apply(self, plan: Plan, iface_label: Callable[[int, int], str | None]) -> None:
        """Account a batch planned by `plan_batch` (which may have run in another process)."""
        keys = plan.keys
        c = plan.rows
        nows = None
        if self.on_quick is not None and plan.bulk is None and len(c["flow"]):
            # `packet` reads the time of the latest packet seen (self.now): keep it what it
            # would have been had the rows set aside gone through it
            cummax = np.maximum.accumulate(np.maximum(c["ts"], self.now))
            slow = self._set_aside(plan, iface_label)
            c = {k: v[slow] for k, v in c.items()}
            nows = cummax[slow].tolist()
            last_now = float(cummax[-1])
        pending: dict[tuple[int, int], list[tuple]] = {}
        if plan.bulk is not None:
            b = plan.bulk
            for f, e, *group in zip(*(b[k].tolist() for k in _BULK), strict=True):
                pending.setdefault((f, e), []).append(group)
        labels: dict[tuple[int, int], str | None] = {}
        packet = self.packet
        for i, (f, e, ctl, src, ts, fl, sq, ak, pl, il, tt, ii, ifc, ifx) in enumerate(zip(
            *(c[k].tolist() for k in _ROWS), strict=True
        )):
            if ctl and pending:
                self._apply_bulk(keys[f], pending.pop((f, e), ()))
            lk = (ifc, ifx)
            if lk not in labels:
                labels[lk] = iface_label(ifc, ifx)
            if nows is not None:
                self.now = nows[i]
            packet(keys[f], src, ts, fl, sq, ak, pl, il, tt, ii, labels[lk])
        for (f, _e), groups in sorted(pending.items(), key=lambda kv: kv[0][1]):
            self._apply_bulk(keys[f], groups)
        if nows is not None:
            self.now = max(self.now, last_now)
        if self.now >= self._next_sweep:
            self.sweep(self.now)

    def _set_aside(self, plan: Plan, iface_label: Callable[[int, int], str | None],
                   ) -> np.ndarray:
        """Summary only: take the plain connections of a batch (with the rows carried
        open from earlier batches) away from `packet`, holding the closed ones and carrying
        the open ones; replay what turns out not to be plain. The rows left to `packet`."""
        keys = plan.keys
        c = plan.rows
        n = len(c["flow"])
        if self._held:  # connections the table would still hold: they go on there
            for key in self._held.keys() & keys:
                self._replay_held(key)
        if len(self.flows) + len(self._held) + len(self._open) + len(keys) >= self.max_conns:
            # near the cap, the table evicts: let it hold everything, as without this
            for key in list(self._held):
                self._replay_held(key)
            for key in list(self._open):
                self._replay_open(key)
            self._carried = None
            return np.ones(n, dtype=bool)
        flows, opened = self.flows, self._open
        # each connection of the batch: in the table (1), carried open (2), or new (0)
        where = np.fromiter(map(flows.__contains__, keys), dtype=np.int8, count=len(keys))
        if opened:
            where[np.fromiter(map(opened.__contains__, keys), dtype=bool, count=len(keys))] = 2
        carried = self._carried
        old = None  # the carried rows of connections this batch goes on with
        if carried is not None:
            go_on = [opened.pop(keys[f]) for f in np.flatnonzero(where == 2).tolist()]
            if go_on:
                at = np.flatnonzero(where == 2)
                ids = np.asarray(go_on)
                idx, lens = _spans_of(carried.first[ids], carried.last[ids])
                old = {k: carried.rows[k][idx] for k in carried.rows}
                old["flow"] = np.repeat(at, lens)
                carried.live[ids] = False
        cand = np.flatnonzero(where[c["flow"]] != 1)  # rows of new and carried connections
        new = {k: c[k][cand] for k in _KEEP}
        new["flow"] = c["flow"][cand]
        # each row's interface label, kept for a replay (most files have one interface)
        pair = (c["iface"][cand] + 1) << 32 | (c["ifindex"][cand] + 1)
        if len(pair) and (pair == pair[0]).all():  # one interface, as in most files
            pairs, which = pair[:1], np.zeros(len(pair), dtype=np.int64)
        else:
            pairs, which = np.unique(pair, return_inverse=True)
        names = np.empty(len(pairs), dtype=object)
        names[:] = [iface_label((p >> 32) - 1, (p & 0xFFFFFFFF) - 1) for p in pairs.tolist()]
        new["label"] = names[which.ravel()]
        rows = new if old is None else {k: np.concatenate([old[k], new[k]]) for k in new}
        # by connection, in order: a stable sort keeps the carried rows (first, in their
        # order) before the batch's
        seq = np.r_[np.arange(-len(old["flow"]), 0) if old is not None else [], cand]
        order = by_flow(rows["flow"])
        rows = {k: v[order] for k, v in rows.items()}
        sh = _shapes(rows)
        head, last, shape = sh.head, sh.last, sh.shape
        flow_of = rows["flow"][head]
        # not plain after all: the carried rows through `packet` now (they are older than
        # anything in this batch), the batch's own rows in their turn
        for g in np.flatnonzero((shape == OTHER) & (where[flow_of] == 2)).tolist():
            for r in range(int(head[g]), int(last[g]) + 1):
                if seq[order[r]] >= 0:
                    break
                self._packet_row(keys[int(flow_of[g])], rows, r)
        done = np.flatnonzero(shape == DONE)
        if len(done):
            # (their rows where they are: a held block lives a sweep or two, and few come
            # back, so copying them out would cost more than the batch's rows kept alive)
            block = _Rows([keys[f] for f in flow_of[done].tolist()], rows, head[done],
                          last[done])
            block.quick = _quick_of(block.keys, rows, sh, done)
            self._blocks.append(block)
            self._held.update(dict.fromkeys(block.keys, block))
        opening = np.flatnonzero(shape == OPEN)
        fresh = self._keep(keys, rows, flow_of[opening], head[opening], last[opening])
        self._carried = self._merge_open(fresh)
        aside = np.zeros(len(keys), dtype=bool)
        aside[flow_of[shape != OTHER]] = True
        return ~aside[c["flow"]]

    @staticmethod
    def _keep(keys: list[bytes], rows: dict[str, np.ndarray], flows: np.ndarray,
              head: np.ndarray, last: np.ndarray) -> _Rows:
        idx, size = _spans_of(head, last)
        first = np.r_[0, np.cumsum(size)[:-1]] if len(size) else size
        return _Rows([keys[f] for f in flows.tolist()],
                     {k: v[idx] for k, v in rows.items() if k != "flow"},
                     first, first + size - 1)

    def _merge_open(self, fresh: _Rows) -> _Rows | None:
        """The connections still open: those carried and not seen again, and `fresh`."""
        parts = [fresh]
        old = self._carried
        if old is not None and old.live.any():
            ids = np.flatnonzero(old.live)
            parts.insert(0, self._keep(old.keys, {**old.rows, "flow": None},
                                       ids, old.first[ids], old.last[ids]))
        keys = [k for p in parts for k in p.keys]
        if not keys:
            self._open = {}
            return None
        sizes = np.concatenate([p.last - p.first + 1 for p in parts])
        first = np.r_[0, np.cumsum(sizes)[:-1]]
        merged = _Rows(keys, {k: np.concatenate([p.rows[k] for p in parts])
                              for k in parts[0].rows}, first, first + sizes - 1)
        self._open = dict(zip(keys, itertools.count()))
        return merged

    def _packet_row(self, key: bytes, rows: dict[str, np.ndarray], r: int) -> None:
        self.packet(key, bool(rows["a_is_src"][r]), float(rows["ts"][r]),
                    int(rows["flags"][r]), int(rows["seq"][r]), int(rows["ack"][r]),
                    int(rows["payload"][r]), int(rows["ip_len"][r]), int(rows["ttl"][r]),
                    int(rows["ipid"][r]), rows["label"][r])

    def _replay_held(self, key: bytes) -> None:
        """A held connection through `packet`."""
        block = self._held.pop(key)
        self._replay(key, block, block.index[key])

    def _replay_open(self, key: bytes) -> None:
        """A carried connection through `packet`."""
        assert self._carried is not None
        self._replay(key, self._carried, self._open.pop(key))

    def _replay(self, key: bytes, block: _Rows, i: int) -> None:
        """A connection set aside (held or carried), connection `i` of `block`, through
        `packet`, as it would have gone in its batch."""
        block.live[i] = False
        for r in range(int(block.first[i]), int(block.last[i]) + 1):
            self._packet_row(key, block.rows, r)

    def _release(self, now: float | None) -> None:
        """Count the held connections closed for close_delay at `now` (None: all)."""
        parts = []
        keep = []
        for block in self._blocks:
            assert block.quick is not None
            done = block.live.copy()
            if now is not None:
                done &= now - block.quick.end > self.close_delay
            if done.any():
                rows = np.flatnonzero(done)
                parts.append(block.quick.take(rows))
                deque(map(self._held.pop, map(block.keys.__getitem__, rows.tolist())), 0)
                block.live[rows] = False
            if block.live.any():
                keep.append(block)
        self._blocks = keep
        if parts and self.on_quick is not None:
            self.on_quick(Quick.join(parts))

    def _reopen_idle(self, now: float | None) -> None:
        """Carried connections idle past idle_timeout at `now` (None: all) go to the table,
        which finishes them as it finishes its own."""
        carried = self._carried
        if carried is None:
            return
        for key, i in list(self._open.items()):
            if now is None or now - float(carried.rows["ts"][carried.last[i]]) > \
                    self.idle_timeout:
                self._replay_open(key)
        if not self._open:
            self._carried = None

    def take_refusals(self, plan: Plan, iface_label: Callable[[int, int], str | None]) -> Plan:
        """Live capture's fast path: report the refused connects that open and end inside
        this batch (a bare SYN, then the other side's RST as its first packet: what
        `packet` would call REFUSED) without a Flow each, and return the plan without them.

        Only for `unanswered_only` tables: these connections need no Conn record.
        """
        c = plan.rows
        n = len(c["flow"])
        if n < 2 or plan.bulk is not None:
            return plan
        flow = c["flow"]
        counts = np.bincount(flow)
        order = np.argsort(flow, kind="stable")
        firsts = order[np.r_[True, flow[order][1:] != flow[order][:-1]]]
        pairs = firsts[counts[flow[firsts]] == 2]
        if not len(pairs):
            return plan
        second = order[np.searchsorted(flow[order], flow[pairs]) + 1]
        fl = c["flags"]
        ok = ((fl[pairs] & (SYN | ACK | RST | FIN)) == SYN) & ((fl[second] & RST) != 0) & (
            (fl[second] & SYN) == 0) & (c["a_is_src"][pairs] != c["a_is_src"][second])
        pairs, second = pairs[ok], second[ok]
        taken = np.zeros(n, dtype=bool)
        why = _WHY[ResetKind.REFUSED]
        keys = plan.keys
        flows = self.flows
        addr = self._addr
        columns = zip(pairs.tolist(), second.tolist(), flow[pairs].tolist(),
                      c["a_is_src"][pairs].tolist(), c["ts"][pairs].tolist(),
                      c["ts"][second].tolist(), fl[second].tolist(), c["seq"][second].tolist(),
                      c["ack"][second].tolist(), c["ttl"][second].tolist(),
                      c["iface"][pairs].tolist(), c["ifindex"][pairs].tolist(), strict=True)
        labels: dict[tuple[int, int], str | None] = {}
        for i, j, f, a_src, start, ts, flags, seq, ack, ttl, ifc, ifx in columns:
            key = keys[f]
            old = flows.get(key)
            if old is not None:  # this four-tuple is still tracked
                if not old.done():
                    continue  # the full path decides
                self._finish(old)  # ended: this SYN starts anew, as in `packet`
            taken[i] = taken[j] = True
            oh, op, rh, rp = key_endpoints(key, a_src, addr)
            if ts > self.now:
                self.now = ts
            label = labels.get((ifc, ifx), "?")
            if label == "?":
                label = labels[(ifc, ifx)] = iface_label(ifc, ifx)
            self.on_reset(Reset(ts, rh, rp, oh, op, ResetKind.REFUSED, "resp", flags, seq, ack,
                                ttl, label, flow_uid(key, start), why))
        if not taken.any():
            return plan
        keep = ~taken
        return Plan({k: v[keep] for k, v in c.items()}, plan.packed, None)

    def _apply_bulk(self, key: bytes, groups: list[tuple] | tuple) -> None:
        flow = self.flows.get(key)
        if flow is None:
            return
        for a_is_src, count, ip_bytes, seq_end, ts in groups:
            end = flow.orig if a_is_src == flow.a_is_orig else flow.resp
            end.pkts += count
            end.ip_bytes += ip_bytes
            if end.start_seq >= 0 and zeek.seq_delta(seq_end, end.last_seq) > 0:
                end.last_seq = seq_end
            if ts > flow.last:
                flow.last = ts

    # -- ending connections ----------------------------------------------------------------
    def icmp(self, ts: float, err: IcmpError, iface: str | None) -> None:
        """An ICMP error about a segment: told, and when it answers a connection's SYN that
        nothing else answered, that is how the connection failed. It is not ended here: a
        first error can come while connect() holds the socket, and the kernel then keeps it
        as a soft error and sends the SYN again."""
        kind = ResetKind.REJECTED if err.rejected else ResetKind.UNREACHABLE
        self.on_icmp(Icmp(ts, err.sender, err.src, err.sport, err.dst, err.dport, kind,
                          err.code, err.ttl, iface, err.errno))
        a, b = addr_bytes(err.src), addr_bytes(err.dst)
        ka, kb = a + err.sport.to_bytes(2, "big"), b + err.dport.to_bytes(2, "big")
        key = ka + kb if ka <= kb else kb + ka
        if key in self._open:  # carried open (a SYN, say): the table decides from here on
            self._replay_open(key)
        flow = self.flows.get(key)
        if flow is None or flow.resp.pkts or flow.a_is_orig != (ka <= kb):
            return
        if flow.first_kind is None:
            flow.first_kind = kind
            flow.icmp = f"{err.code} from {err.sender}"

    def sweep(self, now: float) -> None:
        """Finish connections idle past their timeout (closed ones sooner)."""
        self._next_sweep = now + 10.0
        self._reopen_idle(now)
        if self._blocks:
            self._release(now)
        stale = [
            f for f in self.flows.values()
            if now - f.last > (self.close_delay if f.done() else self.idle_timeout)
        ]
        for f in stale:
            self._finish(f)

    def expire_unanswered(self, now: float) -> None:
        """Live capture: finish connections whose SYN went unanswered for `timeout_after`
        seconds, so that a timeout is told while the client still retries, or once it gave
        up (one that gave up before its first SYN was sent again sent only one)."""
        if now > self.now:
            self.now = now
        stale = [f for f in self.flows.values()
                 if f.resp.pkts == 0 and f.orig.syns and now - f.start >= self.timeout_after]
        for f in stale:
            self._finish(f)

    def _evict(self) -> None:
        """Over the cap: finish the least recently seen tenth of the table."""
        victims = sorted(self.flows.values(), key=lambda f: f.last)[: max(1, self.max_conns // 10)]
        self.evicted += len(victims)
        for f in victims:
            self._finish(f)

    def close(self) -> None:
        """End of input: finish everything still open."""
        self._reopen_idle(None)
        self._release(None)
        for f in list(self.flows.values()):
            self._finish(f)

    def _finish(self, flow: Flow) -> None:
        del self.flows[flow.key]
        history = "".join(flow.hist)
        state = zeek.conn_state(flow.orig, flow.resp, history)
        failure = flow.first_kind
        if failure is None and state == "S0" and (
            flow.orig.syns > 1 or self.now - flow.start >= self.timeout_after
        ):
            failure = ResetKind.TIMEOUT
        if state == "REJ":
            failure = ResetKind.REFUSED
        if failure is None and state == "S0":
            self.pending += 1  # a SYN still waiting for an answer: not a failure (yet)
        if self.unanswered_only and failure is not ResetKind.TIMEOUT:
            return  # (ICMP errors are told as they come)
        oh, op, rh, rp = flow.endpoints(self._addr)
        self.on_conn(Conn(
            # summary-only: connection records are never shown, so no uid is made for them
            ts=flow.start, uid=flow.uid if self.counts else "",
            orig_h=oh, orig_p=op, resp_h=rh, resp_p=rp,
            duration=flow.last - flow.start, orig_bytes=flow.orig.size(),
            resp_bytes=flow.resp.size(), conn_state=state, history=history,
            orig_pkts=flow.orig.pkts, resp_pkts=flow.resp.pkts,
            orig_ip_bytes=flow.orig.ip_bytes, resp_ip_bytes=flow.resp.ip_bytes,
            failure=failure, syn_retrans=max(0, flow.orig.syns - 1), resets=flow.nresets,
            iface=flow.iface, end=flow.last, icmp=flow.icmp,
        ))
