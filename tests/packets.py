"""Build packets for unit tests (the golden captures in data/ are the real thing)."""

from __future__ import annotations

import ipaddress
import struct

from rsthound.formats.inet import ACK, FIN, RST, SYN  # noqa: F401  (re-exported for tests)
from rsthound.formats.pcap import pcap_file_header, pcap_record


def tcp_packet(src: str, sport: int, dst: str, dport: int, flags: int, seq: int = 0,
               ack: int = 0, payload: bytes = b"", ttl: int = 64, ipid: int = 1,
               ether: bool = True) -> bytes:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4,
                      flags, 65535, 0, 0) + payload
    if s.version == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), ipid, 0x4000, ttl, 6, 0,
                         s.packed, d.packed)
        etype = 0x0800
    else:
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(tcp), 6, ttl, s.packed, d.packed)
        etype = 0x86DD
    frame = ip + tcp
    if ether:
        frame = b"\x02" * 6 + b"\x04" * 6 + struct.pack("!H", etype) + frame
    return frame


def pcap_bytes(packets: list[tuple[float, bytes]], linktype: int = 1) -> bytes:
    return pcap_file_header(linktype) + b"".join(pcap_record(t, p) for t, p in packets)


class Talk:
    """A scripted TCP conversation between a client C and a server S, with sane seq/ack."""

    def __init__(self, c: str = "10.0.0.1", cport: int = 40000, s: str = "10.0.0.2",
                 sport: int = 80, t0: float = 1_700_000_000.0, step: float = 0.01):
        self.c, self.cport, self.s, self.sport = c, cport, s, sport
        self.t = t0
        self.step = step
        self.cseq, self.sseq = 1000, 5000
        self.packets: list[tuple[float, bytes]] = []

    def _emit(self, from_client: bool, flags: int, data: bytes = b"", ttl: int = 64,
              seq: int | None = None) -> Talk:
        if from_client:
            pkt = tcp_packet(self.c, self.cport, self.s, self.sport, flags,
                             self.cseq if seq is None else seq,
                             self.sseq if flags & ACK else 0, data, ttl)
            self.cseq += len(data) + bool(flags & SYN) + bool(flags & FIN)
        else:
            pkt = tcp_packet(self.s, self.sport, self.c, self.cport, flags,
                             self.sseq if seq is None else seq,
                             self.cseq if flags & ACK else 0, data, ttl)
            self.sseq += len(data) + bool(flags & SYN) + bool(flags & FIN)
        self.packets.append((self.t, pkt))
        self.t += self.step
        return self

    def c_(self, flags: int, data: bytes = b"", **kw: int) -> Talk:
        return self._emit(True, flags, data, **kw)

    def s_(self, flags: int, data: bytes = b"", **kw: int) -> Talk:
        return self._emit(False, flags, data, **kw)

    def handshake(self) -> Talk:
        return self.c_(SYN).s_(SYN | ACK).c_(ACK)
