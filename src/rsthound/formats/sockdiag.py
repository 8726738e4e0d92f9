"""Listening sockets from the kernel's two ways of telling: sock_diag netlink replies
(`inet_diag_msg` plus its rtattrs, as `ss -ltnm` reads them) and the text of
/proc/net/tcp{,6}.

For a listener the kernel reports the accept queue's length (`rqueue`) and its limit, the
backlog (`wqueue`); `sk_drops` (SK_MEMINFO_DROPS) counts the connections it dropped, as
`TcpExt.ListenDrops` does for the whole host.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct

from rsthound.model import Listener

SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR, NLMSG_DONE = 2, 3
INET_DIAG_SKMEMINFO = 7
SK_MEMINFO_DROPS = 8
TCP_LISTEN_HEX = "0A"
_MSG = struct.Struct("=BBBBHH16s16sIQIIIII")  # inet_diag_msg (ports big-endian: fixed below)


def parse_replies(data: bytes, family: int, found: list[Listener]) -> bool:
    """One recv() of sock_diag netlink messages: its listeners appended to `found`; True
    when the dump is done. A message too short for what it claims ends the dump."""
    off = 0
    while off + 16 <= len(data):
        length, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, off)
        if length < 16 or off + length > len(data):
            return True
        if kind == NLMSG_DONE:
            return True
        if kind == NLMSG_ERROR:
            err = -struct.unpack_from("=i", data, off + 16)[0] if length >= 20 else 0
            raise OSError(err, os.strerror(err))
        if kind == SOCK_DIAG_BY_FAMILY and length - 16 >= _MSG.size:
            found.append(parse_listener(data[off + 16: off + length], family))
        off += (length + 3) & ~3
    return False


def parse_listener(msg: bytes, family: int) -> Listener:
    """One `inet_diag_msg` and its rtattrs (the drops come in INET_DIAG_SKMEMINFO)."""
    (_fam, _state, _timer, _retrans, sport, _dport, src, _dst, _if, _cookie, _expires,
     rqueue, wqueue, uid, inode) = _MSG.unpack_from(msg)
    raw = src[:4] if family == socket.AF_INET else src
    drops = None
    off = (_MSG.size + 3) & ~3
    while off + 4 <= len(msg):  # rtattrs
        alen, atype = struct.unpack_from("=HH", msg, off)
        if alen < 4:
            break
        if atype == INET_DIAG_SKMEMINFO and alen >= 4 + 4 * (SK_MEMINFO_DROPS + 1):
            drops = struct.unpack_from("=I", msg, off + 4 + 4 * SK_MEMINFO_DROPS)[0]
        off += (alen + 3) & ~3
    return Listener(str(ipaddress.ip_address(raw)), socket.ntohs(sport), rqueue, wqueue,
                    drops, uid, inode)


def parse_proc_tcp(text: str, ipv6: bool) -> list[Listener]:
    """The listeners of /proc/net/tcp (or tcp6): addresses, queue length and owner; the
    text has no backlog and no drops.

    >>> head = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\\n"
    >>> x = parse_proc_tcp(head + "   0: 0100007F:1C2B 00000000:0000 0A 00000000:00000002 00:00000000 00000000  1000        0 4242\\n", False)[0]
    >>> x.addr, x.port, x.queue, x.uid, x.inode
    ('127.0.0.1', 7211, 2, 1000, 4242)
    """  # noqa: E501
    out = []
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 10 or cols[3] != TCP_LISTEN_HEX:
            continue
        addr, port = cols[1].split(":")
        raw = bytes.fromhex(addr)
        # the kernel prints each 32-bit word in host (little-endian) order
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
        queue = int(cols[4].split(":")[1], 16)
        out.append(Listener(str(ipaddress.ip_address(raw if ipv6 else raw[:4])),
                            int(port, 16), queue, None, None, int(cols[7]), int(cols[9])))
    return out
