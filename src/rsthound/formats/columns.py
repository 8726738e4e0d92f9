"""Vectorised decoding: a RecordBatch in, the TCP fields of all its packets out, as columns.

Common shapes (Ethernet with up to two VLAN tags, Linux SLL/SLL2, raw IP, BSD loopback;
IPv4 with options; IPv6 without extension headers) are decoded with numpy for the whole batch
at once. Rarer shapes go through the reference decoder in `inet.py`, one packet at a time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from rsthound.formats import linktypes as lt
from rsthound.formats.icmp import PROTO_ICMP, PROTO_ICMP6, IcmpError, parse_icmp_error
from rsthound.formats.inet import ACK, FIN, PROTO_TCP, RST, SYN, NotTcp, parse_ip_tcp
from rsthound.formats.records import RecordBatch, u16_at, u32_at

KEY_LEN = 36  # address A (16) port A (2) address B (16) port B (2); A sorts first
_KEY_DTYPE = np.dtype([("a_hi", ">u8"), ("a_lo", ">u8"), ("a_port", ">u2"),
                       ("b_hi", ">u8"), ("b_lo", ">u8"), ("b_port", ">u2")])
V4_MAPPED = np.uint64(0xFFFF00000000)
_V6_EXT = np.array([0, 43, 44, 60, 51, 135, 139, 140], dtype=np.uint8)


@dataclass
class DecodeStats:
    """What the decoder saw that was not a usable TCP packet, by reason."""

    packets: int = 0
    tcp: int = 0
    icmp: int = 0  # ICMP errors about TCP, read for the connections they end
    skipped: Counter[str] = field(default_factory=Counter)
    links: Counter[str] = field(default_factory=Counter)
    flags: Counter[str] = field(default_factory=Counter)  # syn, syn-ack, fin, rst packets

    def merge(self, other: DecodeStats) -> None:
        self.packets += other.packets
        self.tcp += other.tcp
        self.icmp += other.icmp
        self.skipped.update(other.skipped)
        self.links.update(other.links)
        self.flags.update(other.flags)


@dataclass(slots=True)
class TcpColumns:
    """One row per TCP packet; `rec` is the row's index in its RecordBatch."""

    rec: np.ndarray
    ts: np.ndarray
    # The canonical connection key, endpoint A (the one that sorts first) then B: each
    # address as two 64-bit halves of its 16 bytes (IPv4 mapped into ::ffff:0:0/96).
    a_hi: np.ndarray
    a_lo: np.ndarray
    a_port: np.ndarray
    b_hi: np.ndarray
    b_lo: np.ndarray
    b_port: np.ndarray
    flow: np.ndarray  # int64: rows with the same key share a flow number (per batch)
    a_is_src: np.ndarray  # bool: the sender is endpoint A of the key
    flags: np.ndarray
    seq: np.ndarray
    ack: np.ndarray
    payload: np.ndarray
    ip_len: np.ndarray
    ttl: np.ndarray
    ipid: np.ndarray  # -1 for IPv6
    iface: np.ndarray  # interface index in the file, -1 when the file does not say
    ifindex: np.ndarray  # Linux ifindex from SLL2, -1 otherwise

    def __len__(self) -> int:
        return len(self.rec)

    def key_bytes(self, rows: np.ndarray) -> list[bytes]:
        """The 36-byte keys (address A, port A, address B, port B) of the given rows."""
        packed = np.empty(len(rows), dtype=_KEY_DTYPE)
        for name in ("a_hi", "a_lo", "a_port", "b_hi", "b_lo", "b_port"):
            packed[name] = getattr(self, name)[rows]
        raw = packed.tobytes()
        return [raw[i : i + KEY_LEN] for i in range(0, len(raw), KEY_LEN)]

    def take(self, rows: np.ndarray) -> TcpColumns:
        """The given rows only (flow numbers renumbered)."""
        _, flow = np.unique(self.flow[rows], return_inverse=True)
        cols = TcpColumns(**{f: getattr(self, f)[rows] for f in _FIELDS})
        cols.flow = flow.ravel()
        return cols


def decode_tcp(batch: RecordBatch, stats: DecodeStats,
               icmp: list[tuple[int, IcmpError]] | None = None) -> TcpColumns:
    """Decode every packet of `batch`; non-TCP packets are counted in `stats` and dropped.
    With `icmp`, the ICMP destination-unreachable messages about TCP are appended to it
    (record index, message): they are rare, and read one at a time."""
    n = len(batch)
    stats.packets += n
    buf = batch.buf
    last = len(buf) - 1
    d = batch.data_off
    cap = batch.caplen
    link_of_iface = np.array([i.linktype for i in batch.interfaces] or [lt.EN10MB])
    link = link_of_iface[batch.iface] if len(batch.interfaces) > 1 else np.full(
        n, link_of_iface[0]
    )

    # Every gather is clamped index by index, so a read past the end of the buffer (only
    # ever for rows already known to be too short) cannot fault, and valid reads never move.
    def at8(off: np.ndarray) -> np.ndarray:
        return buf[np.minimum(off, last)]

    def at16(off: np.ndarray) -> np.ndarray:
        return u16_at(buf, np.minimum(off, last - 1))

    def at32(off: np.ndarray) -> np.ndarray:
        return u32_at(buf, np.minimum(off, last - 3), False)

    l3 = np.full(n, -1, dtype=np.int64)  # offset of the IP header inside the packet
    ver = np.zeros(n, dtype=np.int64)
    ifindex = np.full(n, -1, dtype=np.int64)
    slow = np.zeros(n, dtype=bool)
    counted = np.zeros(n, dtype=bool)  # skipped already for their link type
    for code in np.unique(link).tolist():
        m = link == code
        stats.links[lt.link_name(code)] += int(m.sum())
        dm, cm = d[m], cap[m]
        if code == lt.EN10MB:
            pos = np.full(len(dm), 12, dtype=np.int64)
            et = at16(dm + pos)
            for _ in range(2):
                tagged = np.isin(et, lt.ETH_VLAN) & (cm >= pos + 6)
                pos = np.where(tagged, pos + 4, pos)
                et = np.where(tagged, at16(dm + pos), et)
            slow[np.flatnonzero(m)[np.isin(et, lt.ETH_VLAN)]] = True  # more than two tags
            ok = cm >= pos + 2
            l3[m] = np.where(ok, pos + 2, -1)
        elif code in (lt.LINUX_SLL, lt.LINUX_SLL2):
            hl = 16 if code == lt.LINUX_SLL else 20
            et = at16(dm + (14 if code == lt.LINUX_SLL else 0))
            l3[m] = np.where(cm >= hl, hl, -1)
            if code == lt.LINUX_SLL2:
                ifindex[m] = at32(dm + 4)
        elif code in (lt.RAW, lt.IPV4, lt.IPV6):
            nib = at8(dm) >> 4
            et = np.where(nib == 4, lt.ETH_IPV4, np.where(nib == 6, lt.ETH_IPV6, 0))
            l3[m] = np.where(cm >= 1, 0, -1)
        elif code in (lt.NULL, lt.LOOP):
            slow[m] = True  # the family's byte order is per file; rare enough to go slow
            continue
        else:
            stats.skipped[f"link type {lt.link_name(code)}"] += int(m.sum())
            counted |= m
            continue
        ver[m] = np.where(et == lt.ETH_IPV4, 4, np.where(et == lt.ETH_IPV6, 6, 0))

    p = d + l3  # absolute offset of the IP header
    have = (l3 >= 0) & ~slow
    # shorter than their link header (an empty frame, say): every packet has a reason
    stats.skipped["truncated"] += int(((l3 < 0) & ~slow & ~counted).sum())
    stats.skipped["not IP"] += int((have & (ver == 0)).sum())
    long4 = have & (ver == 4) & (cap >= l3 + 20)
    long6 = have & (ver == 6) & (cap >= l3 + 40)
    stats.skipped["truncated"] += int((have & (ver != 0) & ~long4 & ~long6).sum())

    # Each packet gets exactly one reason: the masks below only ever narrow.
    vihl = at8(p)
    ihl = (vihl & 15).astype(np.int64) * 4
    v4 = long4 & (vihl >> 4 == 4) & (ihl >= 20)
    v6 = long6 & (vihl >> 4 == 6)
    stats.skipped["bad IP header"] += int(((long4 & ~v4) | (long6 & ~v6)).sum())
    proto4 = at8(p + 9)
    frag = at16(p + 6) & 0x1FFF
    nxt6 = at8(p + 6)
    ext6 = v6 & np.isin(nxt6, _V6_EXT)
    slow |= ext6
    stats.skipped["fragment"] += int((v4 & (proto4 == PROTO_TCP) & (frag != 0)).sum())
    other4 = v4 & (proto4 != PROTO_TCP)
    other6 = v6 & ~ext6 & (nxt6 != PROTO_TCP)
    v6 &= nxt6 == PROTO_TCP
    found = 0
    if icmp is not None:
        for r in np.flatnonzero((other4 & (proto4 == PROTO_ICMP) & (frag == 0))
                                | (other6 & (nxt6 == PROTO_ICMP6))).tolist():
            start = int(d[r])
            got = parse_icmp_error(buf[start:start + int(cap[r])].tobytes(), int(l3[r]))
            if got is not None:
                icmp.append((r, got))
                found += 1
    stats.icmp += found
    stats.skipped["not TCP"] += int((other4 | other6).sum()) - found
    v4 &= (proto4 == PROTO_TCP) & (frag == 0)
    l4 = np.where(v4, p + ihl, p + 40)
    tcp = (v4 | v6) & (cap >= (l4 - d) + 16)
    stats.skipped["truncated"] += int(((v4 | v6) & ~tcp).sum())

    rows = np.flatnonzero(tcp)
    doff = (at8(l4[rows] + 12) >> 4).astype(np.int64) * 4
    good = doff >= 20
    stats.skipped["bad TCP header"] += int((~good).sum())
    rows, doff = rows[good], doff[good]
    ip, tl, is4 = p[rows], l4[rows], v4[rows]  # IP header, TCP header, IPv4 or not
    ip_len = np.where(is4, at16(ip + 2), at16(ip + 4) + 40).astype(np.int64)
    payload = np.maximum(ip_len - (tl - ip) - doff, 0)
    sport = at16(tl)
    dport = at16(tl + 2)
    src = _addr64(ip, is4, 12, 8, at32)
    dst = _addr64(ip, is4, 16, 24, at32)
    fast = TcpColumns(
        rec=rows,
        ts=batch.ts[rows],
        **{f: np.empty(0, dtype=np.uint64) for f in ("a_hi", "a_lo", "b_hi", "b_lo")},
        a_port=np.empty(0, dtype=np.int64),
        b_port=np.empty(0, dtype=np.int64),
        flow=np.empty(0, dtype=np.int64),
        a_is_src=np.empty(0, dtype=bool),
        flags=at8(tl + 13).astype(np.int64),
        seq=at32(tl + 4).astype(np.int64),
        ack=at32(tl + 8).astype(np.int64),
        payload=payload,
        ip_len=ip_len,
        ttl=at8(np.where(is4, ip + 8, ip + 7)).astype(np.int64),
        ipid=np.where(is4, at16(ip + 4), -1).astype(np.int64),
        iface=_iface(batch, rows),
        ifindex=ifindex[rows],
    )
    src, dst, sport, dport = _merge_slow(batch, np.flatnonzero(slow), link, fast, src, dst,
                                         sport, dport, stats)
    _keys(fast, src, dst, sport, dport)
    stats.tcp += len(fast)
    f = fast.flags
    syn = (f & SYN) != 0
    ack = (f & ACK) != 0
    stats.flags["syn"] += int((syn & ~ack).sum())
    stats.flags["syn-ack"] += int((syn & ack).sum())
    stats.flags["fin"] += int(((f & FIN) != 0).sum())
    stats.flags["rst"] += int(((f & RST) != 0).sum())
    return fast


def _iface(batch: RecordBatch, rows: np.ndarray) -> np.ndarray:
    """Interface index per row; -1 when the file has only one interface (nothing to tell)."""
    if len(batch.interfaces) > 1:
        return batch.iface[rows].astype(np.int64)
    return np.full(len(rows), -1, dtype=np.int64)


def _addr64(p: np.ndarray, is4: np.ndarray, off4: int, off6: int,
            at32: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Each row's address as (high, low) 64-bit halves of its 16-byte form."""
    n = len(p)
    hi = np.zeros(n, dtype=np.uint64)
    lo = np.zeros(n, dtype=np.uint64)
    r4 = p[is4]
    lo[is4] = V4_MAPPED | at32(r4 + off4).astype(np.uint64)
    six = ~is4
    if six.any():
        r6 = p[six] + off6
        w = [at32(r6 + k).astype(np.uint64) for k in (0, 4, 8, 12)]
        hi[six] = (w[0] << np.uint64(32)) | w[1]
        lo[six] = (w[2] << np.uint64(32)) | w[3]
    return hi, lo


def _merge_slow(
    batch: RecordBatch,
    rows: np.ndarray,
    link: np.ndarray,
    cols: TcpColumns,
    src: tuple[np.ndarray, np.ndarray],
    dst: tuple[np.ndarray, np.ndarray],
    sport: np.ndarray,
    dport: np.ndarray,
    stats: DecodeStats,
) -> tuple[tuple, tuple, np.ndarray, np.ndarray]:
    """Decode the rare rows one by one with the reference decoder and merge them in order."""
    if not len(rows):
        return src, dst, sport, dport
    got: list[tuple] = []
    for i in rows.tolist():
        pkt = batch.packet(i)
        where = lt.parse_link(int(link[i]), pkt)
        if where is None:
            stats.skipped["not IP"] += 1
            continue
        try:
            s = parse_ip_tcp(pkt, where[0], where[1])
        except NotTcp as e:
            stats.skipped[{"not-tcp": "not TCP", "bad-ip": "bad IP header"}.get(e.reason,
                                                                         e.reason)] += 1
            continue
        got.append((i, s, where[2]))
    if not got:
        return src, dst, sport, dport
    ii = np.array([g[0] for g in got], dtype=np.int64)
    segs = [g[1] for g in got]
    extra = {
        "rec": ii,
        "ts": batch.ts[ii],
        "flags": np.array([s.flags for s in segs], dtype=np.int64),
        "seq": np.array([s.seq for s in segs], dtype=np.int64),
        "ack": np.array([s.ack for s in segs], dtype=np.int64),
        "payload": np.array([s.payload for s in segs], dtype=np.int64),
        "ip_len": np.array([s.ip_len for s in segs], dtype=np.int64),
        "ttl": np.array([s.ttl for s in segs], dtype=np.int64),
        "ipid": np.array([s.ipid for s in segs], dtype=np.int64),
        "iface": _iface(batch, ii),
        "ifindex": np.array([g[2] for g in got], dtype=np.int64),
    }
    order = np.argsort(np.concatenate([cols.rec, ii]), kind="stable")
    for name, arr in extra.items():
        setattr(cols, name, np.concatenate([getattr(cols, name), arr])[order])
    def halves(attr: str) -> tuple[np.ndarray, np.ndarray]:
        raw = [getattr(s, attr) for s in segs]
        return (np.array([int.from_bytes(r[:8], "big") for r in raw], dtype=np.uint64),
                np.array([int.from_bytes(r[8:], "big") for r in raw], dtype=np.uint64))

    src = tuple(np.concatenate([a, b])[order] for a, b in zip(src, halves("src_raw"),
                                                               strict=True))
    dst = tuple(np.concatenate([a, b])[order] for a, b in zip(dst, halves("dst_raw"),
                                                               strict=True))
    sport = np.concatenate([sport, np.array([s.sport for s in segs], dtype=sport.dtype)])[order]
    dport = np.concatenate([dport, np.array([s.dport for s in segs], dtype=dport.dtype)])[order]
    return src, dst, sport, dport


_K = [np.uint64(k) for k in (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9,
                             0xD6E8FEB86659FD93, 0xFF51AFD7ED558CCD)]


def _keys(cols: TcpColumns, src: tuple[np.ndarray, np.ndarray],
          dst: tuple[np.ndarray, np.ndarray], sport: np.ndarray, dport: np.ndarray) -> None:
    """Canonical connection keys and per-batch flow numbers for every row."""
    s_hi, s_lo = src
    d_hi, d_lo = dst
    sp = sport.astype(np.int64)
    dp = dport.astype(np.int64)
    a_is_src = (s_hi < d_hi) | (
        (s_hi == d_hi) & ((s_lo < d_lo) | ((s_lo == d_lo) & (sp <= dp)))
    )
    cols.a_hi = np.where(a_is_src, s_hi, d_hi)
    cols.a_lo = np.where(a_is_src, s_lo, d_lo)
    cols.a_port = np.where(a_is_src, sp, dp)
    cols.b_hi = np.where(a_is_src, d_hi, s_hi)
    cols.b_lo = np.where(a_is_src, d_lo, s_lo)
    cols.b_port = np.where(a_is_src, dp, sp)
    cols.a_is_src = a_is_src
    ports = (cols.a_port.astype(np.uint64) << np.uint64(16)) | cols.b_port.astype(np.uint64)
    with np.errstate(over="ignore"):
        h = (cols.a_hi * _K[0]) ^ (cols.a_lo * _K[1]) ^ (cols.b_hi * _K[2])
        h ^= (cols.b_lo * _K[3]) ^ (ports * _K[4])
        h ^= h >> np.uint64(31)
    _, first, flow = np.unique(h, return_index=True, return_inverse=True)
    flow = flow.ravel()
    rep = first[flow]
    if len(h) and not all((getattr(cols, f) == getattr(cols, f)[rep]).all()
                          for f in ("a_hi", "a_lo", "a_port", "b_hi", "b_lo", "b_port")):
        # A 64-bit hash collision inside one batch: fall back to exact keys.
        packed = np.empty(len(h), dtype=_KEY_DTYPE)
        for f in _KEY_DTYPE.names:
            packed[f] = getattr(cols, f)
        _, flow = np.unique(packed.view(f"V{KEY_LEN}"), return_inverse=True)
    cols.flow = flow.ravel().astype(np.int64)


_FIELDS = [f for f in TcpColumns.__dataclass_fields__]
