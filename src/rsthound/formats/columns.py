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
from rsthound.formats.records import RecordBatch, rows_at, unaligned

KEY_LEN = 36  # address A (16) port A (2) address B (16) port B (2); A sorts first
KEY_DTYPE = np.dtype([("a_hi", ">u8"), ("a_lo", ">u8"), ("a_port", ">u2"),
                       ("b_hi", ">u8"), ("b_lo", ">u8"), ("b_port", ">u2")])
V4_MAPPED = np.uint64(0xFFFF00000000)
_V6_EXT = np.array([0, 43, 44, 60, 51, 135, 139, 140], dtype=np.uint8)
# The first HEAD bytes from the IP header are gathered once a packet, then read through
# these layouts: IPv4 (its TCP fields where the header has no options) and IPv6.
HEAD = 64
_IP4 = np.dtype({"names": ["vihl", "ip_len", "ipid", "frag", "ttl", "proto", "src", "dst",
                           "sport", "dport", "seq", "ack", "doff", "flags"],
                 "formats": ["u1", ">u2", ">u2", ">u2", "u1", "u1", ">u4", ">u4",
                             ">u2", ">u2", ">u4", ">u4", "u1", "u1"],
                 "offsets": [0, 2, 4, 6, 8, 9, 12, 16, 20, 22, 24, 28, 32, 33],
                 "itemsize": HEAD})
_IP6 = np.dtype({"names": ["plen", "nxt", "hlim", "src_hi", "src_lo", "dst_hi", "dst_lo",
                           "sport", "dport", "seq", "ack", "doff", "flags"],
                 "formats": [">u2", "u1", "u1", ">u8", ">u8", ">u8", ">u8",
                             ">u2", ">u2", ">u4", ">u4", "u1", "u1"],
                 "offsets": [4, 6, 7, 8, 16, 24, 32, 40, 42, 44, 48, 52, 53],
                 "itemsize": HEAD})


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
    # The source and destination: each address as two 64-bit halves of its 16 bytes
    # (IPv4 mapped into ::ffff:0:0/96). The connection key puts first (as endpoint A) the
    # one that sorts first: the source where a_is_src.
    s_hi: np.ndarray
    s_lo: np.ndarray
    sport: np.ndarray
    d_hi: np.ndarray
    d_lo: np.ndarray
    dport: np.ndarray
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
    flow_first: np.ndarray | None = None  # the first row of each flow, by flow number
    # decoded lean: the LATE fields are None, and made for the rows asked for by this
    late: Callable[[np.ndarray | None], dict[str, np.ndarray]] | None = None

    def fields(self, names: tuple[str, ...], rows: np.ndarray) -> dict[str, np.ndarray]:
        """The named columns at `rows` (the LATE ones made for those rows alone)."""
        made = self.late(rows) if self.late is not None else {}
        return {k: made[k] if k in made else getattr(self, k)[rows] for k in names}

    def complete(self) -> TcpColumns:
        """Every column made (after a lean decode)."""
        if self.late is not None:
            for k, v in self.late(None).items():
                setattr(self, k, v)
            self.late = None
        return self

    def __len__(self) -> int:
        return len(self.rec)

    def packed_keys(self, rows: np.ndarray) -> bytes:
        """The 36-byte keys (address A, port A, address B, port B) of the given rows, one
        after the other."""
        packed = np.empty(len(rows), dtype=KEY_DTYPE)
        a = self.a_is_src[rows]
        for name, s, d in (("hi", self.s_hi, self.d_hi), ("lo", self.s_lo, self.d_lo),
                           ("port", self.sport, self.dport)):
            packed["a_" + name] = np.where(a, s[rows], d[rows])
            packed["b_" + name] = np.where(a, d[rows], s[rows])
        return packed.tobytes()

    def take(self, rows: np.ndarray) -> TcpColumns:
        """The given rows only (flow numbers renumbered)."""
        self.complete()
        _, first, flow = np.unique(self.flow[rows], return_index=True, return_inverse=True)
        cols = TcpColumns(**{f: getattr(self, f)[rows] for f in _FIELDS
                             if f not in ("flow_first", "late")})
        cols.flow = flow.ravel()
        cols.flow_first = first
        return cols


LATE = ("seq", "ack", "payload", "ip_len", "ttl", "ipid")  # what a lean decode puts off


def decode_tcp(batch: RecordBatch, stats: DecodeStats,
               icmp: list[tuple[int, IcmpError]] | None = None,
               lean: bool = False) -> TcpColumns:
    """Decode every packet of `batch`; non-TCP packets are counted in `stats` and dropped.
    With `icmp`, the ICMP destination-unreachable messages about TCP are appended to it
    (record index, message): they are rare, and read one at a time. `lean`: the LATE
    columns are made only for the rows asked for (`TcpColumns.fields`), as a summary
    needs them for a fifth of the packets."""
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
    u16, u32 = unaligned(buf, ">u2"), unaligned(buf, ">u4")

    def at8(off: np.ndarray) -> np.ndarray:
        return buf[np.minimum(off, last)]

    def at16(off: np.ndarray) -> np.ndarray:
        return u16[np.clip(off, 0, last - 1)].astype(np.uint32)

    def at32(off: np.ndarray) -> np.ndarray:
        return u32[np.clip(off, 0, last - 3)]

    hb = batch.head  # record headers and the packets' first bytes, when the reader has them

    def front16(rows: np.ndarray, rel: np.ndarray | int) -> np.ndarray:
        """The 16 bits at `rel` bytes into each packet of `rows` (big-endian)."""
        if hb is None:
            return at16(d[rows] + rel)
        at = np.add(rel, 16)
        return (hb[rows, at].astype(np.uint32) << 8) | hb[rows, at + 1]

    l3 = np.full(n, -1, dtype=np.int64)  # offset of the IP header inside the packet
    ver = np.zeros(n, dtype=np.int64)
    ifindex = np.full(n, -1, dtype=np.int64)
    slow = np.zeros(n, dtype=bool)
    counted = np.zeros(n, dtype=bool)  # skipped already for their link type
    for code in (np.unique(link).tolist() if len(batch.interfaces) > 1 else link[:1].tolist()):
        m = link == code if len(batch.interfaces) > 1 else np.ones(n, dtype=bool)
        stats.links[lt.link_name(code)] += int(m.sum())
        dm, cm = d[m], cap[m]
        mi = np.flatnonzero(m)
        if code == lt.EN10MB:
            pos = np.full(len(dm), 12, dtype=np.int64)
            et = front16(mi, 12)
            for _ in range(2):
                tagged = np.isin(et, lt.ETH_VLAN) & (cm >= pos + 6)
                if not tagged.any():
                    break
                pos = np.where(tagged, pos + 4, pos)
                et = np.where(tagged, front16(mi, pos), et)
            slow[np.flatnonzero(m)[np.isin(et, lt.ETH_VLAN)]] = True  # more than two tags
            ok = cm >= pos + 2
            l3[m] = np.where(ok, pos + 2, -1)
        elif code in (lt.LINUX_SLL, lt.LINUX_SLL2):
            hl = 16 if code == lt.LINUX_SLL else 20
            et = front16(mi, 14 if code == lt.LINUX_SLL else 0)
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

    # Each packet's first HEAD bytes from its IP header, read as IPv4 and as IPv6 (each row
    # is one or the other; the masks below say which): from the bytes the reader gathered
    # where they reach that far, else one gather from the input.
    if hb is None:
        head = rows_at(buf, p, HEAD)
    else:  # from the reader's rows (in the caches): row i, 16 + l3 bytes in
        width = hb.shape[1]
        near = (l3 >= 0) & (16 + l3 + HEAD <= width)
        if n and near.all() and (l3 == l3[0]).all():  # one link header length: as they are
            head = hb[:, 16 + int(l3[0]):16 + int(l3[0]) + HEAD]
        else:  # one gather
            head = rows_at(hb.reshape(-1), np.arange(n) * width + 16 + np.maximum(l3, 0),
                           HEAD)
            far = np.flatnonzero(~near)
            if len(far):
                head[far] = rows_at(buf, p[far], HEAD)
    h4 = head.view(_IP4)[:, 0]
    h6 = head.view(_IP6)[:, 0]

    # Each packet gets exactly one reason: the masks below only ever narrow.
    vihl = h4["vihl"]
    ihl = (vihl & 15).astype(np.int64) * 4
    v4 = long4 & (vihl >> 4 == 4) & (ihl >= 20)
    v6 = long6 & (vihl >> 4 == 6)
    stats.skipped["bad IP header"] += int(((long4 & ~v4) | (long6 & ~v6)).sum())
    proto4 = h4["proto"]
    frag = h4["frag"] & 0x1FFF
    nxt6 = h6["nxt"]
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
    is4 = v4[rows]
    kept = head if len(rows) == n else head[rows]  # (rows of bytes gather fast; records do not)
    a4, a6 = kept.view(_IP4)[:, 0], kept.view(_IP6)[:, 0]
    six_all = np.flatnonzero(~is4)  # the IPv6 rows

    def pick(f4: str, f6: str | None = None, v6: int | None = None,
             dtype: type = np.int64, sel: np.ndarray | None = None) -> np.ndarray:
        """A field of each row (of `sel`): from its IPv4 layout, then its IPv6 one where
        it is IPv6 (`f6`; or the constant `v6`)."""
        out = (a4[f4] if sel is None else a4[f4][sel]).astype(dtype)
        six = six_all if sel is None else np.flatnonzero(~is4[sel])
        if len(six):
            rows6 = six if sel is None else sel[six]
            out[six] = v6 if f6 is None else a6[f6][rows6]
        return out

    # the TCP fields: from the rows gathered above, but for IPv4 with options
    tf = {k: pick(k, k) for k in ("sport", "dport", "doff", "flags")}
    opts = np.flatnonzero(is4 & (ihl[rows] != 20))
    late_opts = {}
    if len(opts):
        tl = l4[rows[opts]]
        for k, off, at in (("sport", 0, at16), ("dport", 2, at16), ("doff", 12, at8),
                           ("flags", 13, at8)):
            tf[k][opts] = at(tl + off)
        late_opts = {"seq": at32(tl + 4).astype(np.int64), "ack": at32(tl + 8).astype(np.int64)}
    doff = (tf["doff"] >> 4).astype(np.int64) * 4
    good = doff >= 20
    stats.skipped["bad TCP header"] += int((~good).sum())
    if not good.all():
        keep = np.flatnonzero(good)
        rows, doff, is4, a4, a6 = rows[good], doff[good], is4[good], a4[good], a6[good]
        six_all = np.flatnonzero(~is4)
        tf = {k: v[good] for k, v in tf.items()}
        if len(opts):
            still = good[opts]
            opts = np.searchsorted(keep, opts[still])
            late_opts = {k: v[still] for k, v in late_opts.items()}
    ip, tl = p[rows], l4[rows]  # IP header, TCP header

    def late(sel: np.ndarray | None) -> dict[str, np.ndarray]:
        """The LATE columns of the rows `sel` (None: all)."""
        got = {k: pick(k, k, sel=sel) for k in ("seq", "ack")}
        if len(opts):
            if sel is None:
                for k, v in late_opts.items():
                    got[k][opts] = v
            else:
                at = np.searchsorted(opts, sel)
                hit = (at < len(opts)) & (opts[np.minimum(at, len(opts) - 1)] == sel)
                for k, v in late_opts.items():
                    got[k][hit] = v[at[hit]]
        ip_len = pick("ip_len", "plen", sel=sel)
        four = is4 if sel is None else is4[sel]
        ip_len[~four] += 40
        i, t, o = (ip, tl, doff) if sel is None else (ip[sel], tl[sel], doff[sel])
        return {**got, "payload": np.maximum(ip_len - (t - i) - o, 0), "ip_len": ip_len,
                "ttl": pick("ttl", "hlim", sel=sel), "ipid": pick("ipid", v6=-1, sel=sel)}

    sport, dport = tf["sport"], tf["dport"]
    src, dst = (_addresses(a4[k], a6[k + "_hi"], a6[k + "_lo"], six_all) for k in ("src", "dst"))
    slow_rows = np.flatnonzero(slow)
    eager = late(None) if not lean or len(slow_rows) else dict.fromkeys(LATE)
    fast = TcpColumns(
        rec=rows,
        ts=batch.ts[rows],
        **{f: np.empty(0, dtype=np.uint64) for f in ("s_hi", "s_lo", "d_hi", "d_lo")},
        sport=np.empty(0, dtype=np.int64),
        dport=np.empty(0, dtype=np.int64),
        flow=np.empty(0, dtype=np.int64),
        a_is_src=np.empty(0, dtype=bool),
        flags=tf["flags"].astype(np.int64),
        iface=_iface(batch, rows),
        ifindex=ifindex[rows],
        **eager,  # type: ignore[arg-type]
    )
    if eager["seq"] is None:
        fast.late = late
    src, dst, sport, dport = _merge_slow(batch, slow_rows, link, fast, src, dst, sport, dport,
                                         stats)
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


def _addresses(v4: np.ndarray, hi6: np.ndarray, lo6: np.ndarray, six: np.ndarray,
               ) -> tuple[np.ndarray, np.ndarray]:
    """Each row's address as two 64-bit halves: IPv4 ones mapped into ::ffff:0:0/96, the
    IPv6 ones (rows `six`) as they are."""
    lo = v4.astype(np.uint64) | V4_MAPPED
    hi = np.zeros(len(v4), dtype=np.uint64)
    if len(six):
        lo[six] = lo6[six]
        hi[six] = hi6[six]
    return hi, lo


def _iface(batch: RecordBatch, rows: np.ndarray) -> np.ndarray:
    """Interface index per row; -1 when the file has only one interface (nothing to tell)."""
    if len(batch.interfaces) > 1:
        return batch.iface[rows].astype(np.int64)
    return np.full(len(rows), -1, dtype=np.int64)


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


HASH_MIX = [np.uint64(k) for k in (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9,
                             0xD6E8FEB86659FD93, 0xFF51AFD7ED558CCD)]


def _keys(cols: TcpColumns, src: tuple[np.ndarray, np.ndarray],
          dst: tuple[np.ndarray, np.ndarray], sport: np.ndarray, dport: np.ndarray) -> None:
    """Each row's source and destination, which of them is endpoint A of the connection
    key, and per-batch flow numbers.

    An IPv4 endpoint (address and port) fits in 48 bits: there the key is the smaller and
    the larger of two integers, compared and hashed in a few steps. IPv6 rows take the
    general way."""
    cols.s_hi, cols.s_lo = src
    cols.d_hi, cols.d_lo = dst
    cols.sport = sport = sport.astype(np.int64, copy=False)
    cols.dport = dport = dport.astype(np.int64, copy=False)
    s_hi, s_lo = src
    d_hi, d_lo = dst
    low32, sixteen = np.uint64(0xFFFFFFFF), np.uint64(16)
    v4 = ((s_hi | d_hi) == 0) & ((s_lo >> np.uint64(32)) == 0xFFFF) & (
        (d_lo >> np.uint64(32)) == 0xFFFF)
    ks = ((s_lo & low32) << sixteen) | sport.astype(np.uint64)
    kd = ((d_lo & low32) << sixteen) | dport.astype(np.uint64)
    a_is_src = ks <= kd
    lo, hi = np.minimum(ks, kd), np.maximum(ks, kd)
    with np.errstate(over="ignore"):
        h = (lo * HASH_MIX[0]) ^ (hi * HASH_MIX[1])
    six = np.flatnonzero(~v4)
    canon6 = None
    if len(six):  # IPv6: the whole key
        sh, sl, dh, dl, sp, dp = (x[six] for x in (s_hi, s_lo, d_hi, d_lo, sport, dport))
        a = (sh < dh) | ((sh == dh) & ((sl < dl) | ((sl == dl) & (sp <= dp))))
        a_is_src[six] = a
        canon6 = [np.where(a, sh, dh), np.where(a, sl, dl), np.where(a, sp, dp),
                  np.where(a, dh, sh), np.where(a, dl, sl), np.where(a, dp, sp)]
        ports = (canon6[2].astype(np.uint64) << sixteen) | canon6[5].astype(np.uint64)
        with np.errstate(over="ignore"):
            k = HASH_MIX
            h[six] = ((canon6[0] * k[0]) ^ (canon6[1] * k[1]) ^ (canon6[3] * k[2])
                      ^ (canon6[4] * k[3]) ^ (ports * k[4]))
    h ^= h >> np.uint64(31)
    cols.a_is_src = a_is_src
    # the hash's top bits (as many as leave the low ones for a row number; the check
    # below stands), equal ones taken for one flow
    bits = np.uint64(max(1, len(h).bit_length()))
    flow, first = by_hash(h >> bits << bits)
    rep = first[flow]  # each row's flow's first row
    # the check: every row has its flow's first row's key (for IPv6, all of it)
    same = (lo == lo[rep]).all() and (hi == hi[rep]).all() and (v4 == v4[rep]).all()
    if same and canon6 is not None:
        at6 = np.full(len(h), -1)
        at6[six] = np.arange(len(six))
        r6 = at6[rep[six]]
        same = bool((r6 >= 0).all()) and all((c == c[r6]).all() for c in canon6)
    if not same:  # a hash collision inside one batch: exact keys
        packed = np.frombuffer(cols.packed_keys(np.arange(len(h))), dtype=f"V{KEY_LEN}")
        _, first, flow = np.unique(packed, return_index=True, return_inverse=True)
        flow = flow.ravel().astype(np.int64)
    cols.flow = flow
    cols.flow_first = first


def by_hash(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows grouped by their hashes `h` (uint64, mixed in their top bits): each row's
    group, groups numbered in the order of their hashes (as np.unique numbers them), and
    the first row of each group.

    No sort of every row: each row goes to a slot of a table by its hash's top bits, and
    the first row of each slot speaks for it; only the rows whose slot a different hash
    took (a few in a hundred) and the distinct hashes themselves are sorted."""
    n = len(h)
    if not n:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    width = (2 * n - 1).bit_length()  # at least two slots a row
    slot = (h >> np.uint64(64 - width)).astype(np.int64)
    owner = np.full(1 << width, n, dtype=np.int64)
    np.minimum.at(owner, slot, np.arange(n))
    rep = owner[slot]
    firsts = np.flatnonzero(rep == np.arange(n))  # the first row of each slot's hash
    miss = np.flatnonzero(h != h[rep])  # rows whose slot went to a different hash
    at = np.empty(n, dtype=np.int64)
    at[firsts] = np.arange(len(firsts))
    which = at[rep]  # each row's distinct hash, as an index of `firsts` (then of `more`)
    if len(miss):
        # (a hash here is in no slot of its own: none of the firsts has it)
        _, more, inv = np.unique(h[miss], return_index=True, return_inverse=True)
        which[miss] = len(firsts) + inv.ravel()
        firsts = np.r_[firsts, miss[more]]
    in_order = np.argsort(h[firsts])  # distinct hashes: no ties
    number = np.empty(len(firsts), dtype=np.int64)
    number[in_order] = np.arange(len(firsts))
    return number[which], firsts[in_order]


def by_flow(flow: np.ndarray) -> np.ndarray:
    """The rows sorted by flow number (below 2**40), stable: one sort of (flow, row) in
    one word, faster than a stable argsort."""
    bits = np.uint64(max(1, len(flow).bit_length()))
    comp = np.sort((flow.astype(np.uint64) << bits) | np.arange(len(flow), dtype=np.uint64))
    return (comp & ((np.uint64(1) << bits) - np.uint64(1))).astype(np.int64)


_FIELDS = [f for f in TcpColumns.__dataclass_fields__]
