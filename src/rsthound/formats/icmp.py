"""ICMP and ICMPv6 destination-unreachable messages about TCP (RFC 792, RFC 4443): who
sent it, why (its code), and the connection it is about, from the start of the segment it
quotes (the quoted IP header, then the TCP ports).

A connect refused this way (the default of `iptables -j REJECT` and of nft `reject` for
IPv4) sends no RST at all: without these, it would look like a timeout.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple

PROTO_ICMP, PROTO_ICMP6, PROTO_TCP = 1, 58, 6
UNREACH4, UNREACH6 = 3, 1

# code -> (words, a refusal by policy or a port nobody serves?, what connect() then gets)
CODES4 = {0: ("net unreachable", False, "ENETUNREACH"),
          1: ("host unreachable", False, "EHOSTUNREACH"),
          3: ("port unreachable", True, "ECONNREFUSED"),
          6: ("destination net unknown", False, "ENETUNREACH"),
          7: ("destination host unknown", False, "EHOSTUNREACH"),
          9: ("net administratively prohibited", True, "ENETUNREACH"),
          10: ("host administratively prohibited", True, "EHOSTUNREACH"),
          11: ("net unreachable for TOS", False, "ENETUNREACH"),
          12: ("host unreachable for TOS", False, "EHOSTUNREACH"),
          13: ("communication administratively prohibited", True, "EHOSTUNREACH")}
CODES6 = {0: ("no route to destination", False, "ENETUNREACH"),
          1: ("communication administratively prohibited", True, "EACCES"),
          2: ("beyond scope of source address", False, "EHOSTUNREACH"),
          3: ("address unreachable", False, "EHOSTUNREACH"),
          4: ("port unreachable", True, "ECONNREFUSED"),
          5: ("source address failed policy", True, "EACCES"),
          6: ("reject route to destination", True, "EACCES")}


class IcmpError(NamedTuple):
    """A destination-unreachable message about a TCP segment."""

    sender: str  # who sent the ICMP: the target itself, or a router on the way
    rejected: bool  # a port unreachable or a prohibition (else: host or net unreachable)
    code: str  # the code in words: "port unreachable", "administratively prohibited", ...
    errno: str  # what the connect gets from it: "ECONNREFUSED", "EHOSTUNREACH", ...
    src: str  # the quoted segment's source and destination: the connecting side first
    sport: int
    dst: str
    dport: int
    ttl: int  # of the ICMP's own IP header (hop limit for IPv6)


def parse_icmp_error(pkt: bytes, off: int = 0) -> IcmpError | None:
    """The ICMP destination-unreachable at `off` (its IP header) about a TCP segment; None
    for any other packet, or one too short to quote the ports.

    >>> ip = bytes.fromhex("4500003800004000400100000a0000020a000001")
    >>> quoted = bytes.fromhex("4500003c1234400040060000" "0a0000010a000002" "a1b21c6b")
    >>> parse_icmp_error(ip + bytes([3, 3, 0, 0, 0, 0, 0, 0]) + quoted)
    IcmpError(sender='10.0.0.2', rejected=True, code='port unreachable', errno='ECONNREFUSED', src='10.0.0.1', sport=41394, dst='10.0.0.2', dport=7275, ttl=64)
    """  # noqa: E501
    if len(pkt) < off + 20:
        return None
    version = pkt[off] >> 4
    if version == 4:
        ihl = (pkt[off] & 15) * 4
        if ihl < 20 or pkt[off + 9] != PROTO_ICMP or struct.unpack_from(
                "!H", pkt, off + 6)[0] & 0x1FFF:
            return None
        sender, ttl, icmp = _addr(pkt[off + 12:off + 16]), pkt[off + 8], off + ihl
        codes, unreach = CODES4, UNREACH4
    elif version == 6:
        if len(pkt) < off + 40 or pkt[off + 6] != PROTO_ICMP6:
            return None
        sender, ttl, icmp = _addr(pkt[off + 8:off + 24]), pkt[off + 7], off + 40
        codes, unreach = CODES6, UNREACH6
    else:
        return None
    if len(pkt) < icmp + 8 or pkt[icmp] != unreach or pkt[icmp + 1] not in codes:
        return None
    words, rejected, errno = codes[pkt[icmp + 1]]
    quoted = _quoted_tcp(pkt, icmp + 8)
    if quoted is None:
        return None
    return IcmpError(sender, rejected, words, errno, *quoted, ttl)


def _quoted_tcp(pkt: bytes, q: int) -> tuple[str, int, str, int] | None:
    """(src, sport, dst, dport) of the IP packet quoted at `q`, if it is TCP."""
    if len(pkt) < q + 20:
        return None
    if pkt[q] >> 4 == 4:
        ihl = (pkt[q] & 15) * 4
        if ihl < 20 or pkt[q + 9] != PROTO_TCP or len(pkt) < q + ihl + 4:
            return None
        src, dst, tcp = pkt[q + 12:q + 16], pkt[q + 16:q + 20], q + ihl
    elif pkt[q] >> 4 == 6:
        if len(pkt) < q + 44 or pkt[q + 6] != PROTO_TCP:
            return None
        src, dst, tcp = pkt[q + 8:q + 24], pkt[q + 24:q + 40], q + 40
    else:
        return None
    sport, dport = struct.unpack_from("!HH", pkt, tcp)
    return _addr(src), sport, _addr(dst), dport


def _addr(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))
