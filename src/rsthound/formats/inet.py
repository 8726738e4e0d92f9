"""IPv4, IPv6 and TCP headers, one packet at a time: the reference decoder.

The vectorised decoder (`columns.py`) handles the common shapes of millions of packets at
once; this one handles every shape (IPv6 extension headers, odd link types) and is what the
tests hold the fast one against.

    >>> ip = bytes.fromhex("4500002800010000400600007f0000017f000001")
    >>> tcp = bytes.fromhex("1c2b1f4b0000000100000000500200000000000000")[:20]
    >>> seg = parse_ip_tcp(ip + tcp, 0, 4)
    >>> (seg.src, seg.sport, seg.dst, seg.dport, seg.flags, seg.payload)
    ('127.0.0.1', 7211, '127.0.0.1', 8011, 2, 0)
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

PROTO_TCP = 6
IPV6_EXT = {0, 43, 60, 51, 135, 139, 140}  # hop-by-hop, routing, dst opts, AH, mobility, HIP, shim6
IPV6_FRAG = 44

FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80


@dataclass(frozen=True, slots=True)
class TcpSegment:
    """The fields of one IP+TCP packet that rsthound uses."""

    version: int
    src: str
    dst: str
    src_raw: bytes  # 16 bytes (IPv4 mapped into ::ffff:0:0/96)
    dst_raw: bytes
    ttl: int  # hop limit for IPv6
    ipid: int  # -1 for IPv6
    ip_len: int  # bytes on the wire from the IP header on
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    payload: int  # TCP payload bytes (from the IP length, not the captured length)


class NotTcp(Exception):
    """The packet is IP but carries no TCP header we can use; `reason` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


V4_PREFIX = b"\0" * 10 + b"\xff\xff"


def parse_ip_tcp(pkt: bytes, off: int, version: int) -> TcpSegment:
    """Decode the IP header at `off` and the TCP header after it; NotTcp otherwise."""
    n = len(pkt)
    if version == 4:
        if n < off + 20:
            raise NotTcp("truncated")
        vihl, _tos, total, ipid, frag, ttl, proto = struct.unpack_from("!BBHHHBB", pkt, off)
        if vihl >> 4 != 4 or (vihl & 15) < 5:
            raise NotTcp("bad-ip")
        if proto != PROTO_TCP:
            raise NotTcp("not-tcp")
        if frag & 0x1FFF:
            raise NotTcp("fragment")
        src_raw = V4_PREFIX + pkt[off + 12 : off + 16]
        dst_raw = V4_PREFIX + pkt[off + 16 : off + 20]
        l4 = off + (vihl & 15) * 4
        ip_len = total
        l4_len = total - (vihl & 15) * 4
    elif version == 6:
        if n < off + 40:
            raise NotTcp("truncated")
        if pkt[off] >> 4 != 6:
            raise NotTcp("bad-ip")
        plen, nxt, ttl = struct.unpack_from("!HBB", pkt, off + 4)
        src_raw = pkt[off + 8 : off + 24]
        dst_raw = pkt[off + 24 : off + 40]
        ipid = -1
        l4 = off + 40
        ip_len = plen + 40
        while nxt != PROTO_TCP:
            if nxt == IPV6_FRAG:
                if n < l4 + 8:
                    raise NotTcp("truncated")
                if struct.unpack_from("!H", pkt, l4 + 2)[0] & 0xFFF8:
                    raise NotTcp("fragment")
                nxt, l4 = pkt[l4], l4 + 8
            elif nxt in IPV6_EXT:
                if n < l4 + 2:
                    raise NotTcp("truncated")
                size = (pkt[l4 + 1] + 2) * 4 if nxt == 51 else (pkt[l4 + 1] + 1) * 8
                nxt, l4 = pkt[l4], l4 + size
            else:
                raise NotTcp("not-tcp")
        l4_len = ip_len - (l4 - off)
    else:
        raise NotTcp("bad-ip")
    if n < l4 + 14:
        raise NotTcp("truncated")
    sport, dport, seq, ack, doff, flags = struct.unpack_from("!HHIIBB", pkt, l4)
    window = struct.unpack_from("!H", pkt, l4 + 14)[0] if n >= l4 + 16 else 0
    doff = (doff >> 4) * 4
    if doff < 20:
        raise NotTcp("bad-tcp")
    return TcpSegment(
        version=version,
        src=format_addr(src_raw),
        dst=format_addr(dst_raw),
        src_raw=src_raw,
        dst_raw=dst_raw,
        ttl=ttl,
        ipid=ipid if version == 4 else -1,
        ip_len=ip_len,
        sport=sport,
        dport=dport,
        seq=seq,
        ack=ack,
        flags=flags,
        window=window,
        payload=max(0, l4_len - doff),
    )


def addr_bytes(text: str) -> bytes:
    """'10.0.0.1' -> its 16-byte form (IPv4 mapped into ::ffff:0:0/96), as packets are keyed."""
    addr = ipaddress.ip_address(text)
    return V4_PREFIX + addr.packed if addr.version == 4 else addr.packed


def format_addr(raw: bytes) -> str:
    """16 raw bytes -> text; IPv4-mapped addresses print as plain IPv4."""
    if raw[:12] == V4_PREFIX:
        return ".".join(str(b) for b in raw[12:])
    return str(ipaddress.IPv6Address(raw))


def flag_text(flags: int) -> str:
    """tcpdump's flag letters: 0x14 -> 'R.', 0x12 -> 'S.', 0x02 -> 'S'."""
    out = "".join(c for bit, c in ((SYN, "S"), (FIN, "F"), (PSH, "P"), (RST, "R"), (URG, "U"),
                                    (ECE, "E"), (CWR, "W")) if flags & bit)
    if flags & ACK:
        out += "."
    return out or "none"


def syn_segment(src: str, sport: int, dst: str, dport: int) -> bytes:
    """An IPv4 or IPv6 packet carrying a bare SYN from src:sport to dst:dport (checksums
    left 0): what a connect would have sent, for a filter to be asked about it.

    >>> len(syn_segment("10.0.0.1", 5000, "10.0.0.2", 80)), len(syn_segment("::1", 1, "::1", 2))
    (40, 60)
    """
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 0x50, SYN, 65535, 0, 0)
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if a.version == 4 and b.version == 4:
        return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0x4000, 64, PROTO_TCP, 0,
                           a.packed, b.packed) + tcp
    a6 = a if a.version == 6 else ipaddress.IPv6Address(f"::ffff:{a}")
    b6 = b if b.version == 6 else ipaddress.IPv6Address(f"::ffff:{b}")
    return struct.pack("!IHBB16s16s", 6 << 28, 20, PROTO_TCP, 64, a6.packed, b6.packed) + tcp
