"""Link-layer types (LINKTYPE_* values as stored in pcap and pcapng files) and their headers.

    >>> link_name(276)
    'LINUX_SLL2'
"""

from __future__ import annotations

import struct

NULL = 0  # BSD loopback: 4-byte address family in the capturing host's byte order
EN10MB = 1  # Ethernet, with 802.1Q / 802.1ad tags
RAW = 101  # raw IPv4 or IPv6, no link header
LOOP = 108  # OpenBSD loopback: address family in network byte order
LINUX_SLL = 113  # Linux "cooked" v1 (tcpdump -i any, older libpcap)
IPV4 = 228
IPV6 = 229
LINUX_SLL2 = 276  # Linux "cooked" v2 (tcpdump -i any): carries the interface index

NAMES = {
    NULL: "NULL",
    EN10MB: "EN10MB",
    RAW: "RAW",
    LOOP: "LOOP",
    LINUX_SLL: "LINUX_SLL",
    IPV4: "IPV4",
    IPV6: "IPV6",
    LINUX_SLL2: "LINUX_SLL2",
}
SUPPORTED = frozenset(NAMES)

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_VLAN = (0x8100, 0x88A8, 0x9100)
# BSD address family values for IPv6 differ by OS (NetBSD/OpenBSD 24, FreeBSD 28, macOS 30).
AF_INET = 2
AF_INET6 = (10, 24, 28, 30)


def supported_names() -> str:
    return ", ".join(NAMES[k] for k in sorted(NAMES))


def link_name(linktype: int) -> str:
    return NAMES.get(linktype, f"LINKTYPE_{linktype}")


def parse_link(linktype: int, pkt: bytes) -> tuple[int, int, int] | None:
    """Find the network layer: -> (offset of the IP header, IP version 4 or 6, ifindex or -1).

    None when the packet is not IP or the link header is cut short.

    >>> parse_link(EN10MB, bytes(12) + b"\\x81\\x00\\x00\\x64\\x08\\x00" + bytes(20))
    (18, 4, -1)
    """
    n = len(pkt)
    if linktype == EN10MB:
        off = 12
        while n >= off + 2:
            etype = struct.unpack_from("!H", pkt, off)[0]
            if etype in ETH_VLAN:
                off += 4
                continue
            return _by_ethertype(etype, off + 2, -1)
        return None
    if linktype == LINUX_SLL:
        if n < 16:
            return None
        return _by_ethertype(struct.unpack_from("!H", pkt, 14)[0], 16, -1)
    if linktype == LINUX_SLL2:
        if n < 20:
            return None
        proto, _res, ifindex = struct.unpack_from("!HHI", pkt, 0)
        return _by_ethertype(proto, 20, ifindex)
    if linktype in (RAW, IPV4, IPV6):
        if n < 1:
            return None
        version = pkt[0] >> 4
        return (0, version, -1) if version in (4, 6) else None
    if linktype in (NULL, LOOP):
        if n < 4:
            return None
        fam = struct.unpack_from("!I" if linktype == LOOP else "<I", pkt, 0)[0]
        if fam > 0xFFFF:  # written on a big-endian host
            fam = struct.unpack_from(">I", pkt, 0)[0]
        if fam == AF_INET:
            return (4, 4, -1)
        if fam in AF_INET6:
            return (4, 6, -1)
        return None
    return None


def _by_ethertype(etype: int, off: int, ifindex: int) -> tuple[int, int, int] | None:
    if etype == ETH_IPV4:
        return (off, 4, ifindex)
    if etype == ETH_IPV6:
        return (off, 6, ifindex)
    return None
