"""Live capture through libpcap (cypcap): every interface by default, a BPF filter compiled
into the kernel so that only control packets (SYN, FIN, RST) reach Python.

Packets come out as the same RecordBatch that capture files give, so `capture` and `analyze`
share everything after this module. On `any`, the link type is Linux SLL2, which carries
each packet's interface index.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from rsthound.errors import BadInput, NeedPrivilege, NotSupported, RstHoundError
from rsthound.formats.inet import syn_segment
from rsthound.formats.linktypes import RAW as LINKTYPE_RAW
from rsthound.formats.records import Interface, RecordBatch
from rsthound.sources.capfile import PacketFilter
from rsthound.sources.procfs import in_netns
from rsthound.textforms import printable

LINUX_SLL2 = 276
# What the classification needs: the packets that open, close and reset connections. TCP
# flags sit at byte 13 of the TCP header; for IPv6 without extension headers, at 40 + 13.
# ICMP destination unreachable too: a connect refused by ICMP (the default of REJECT rules)
# or ended by an unreachable host sends no RST at all.
CONTROL = ("(tcp[tcpflags] & (tcp-syn|tcp-fin|tcp-rst) != 0) or "
           "(ip6 and ip6[6] == 6 and ip6[53] & 7 != 0) or "
           "(icmp[icmptype] == icmp-unreach) or (ip6 and ip6[6] == 58 and ip6[40] == 1)")
DEFAULT_SNAPLEN = 256  # SLL2 + IPv6 + TCP with options, and then some
BATCH_SECONDS = 0.1
BATCH_MAX = 4096
# While packets flow, wait this long between reads instead of polling: in immediate mode a
# reader asleep in poll() is woken for each packet, which costs the sending CPU most of all
GATHER_SECONDS = 0.002

PRIVILEGE_HINT = ("capturing needs CAP_NET_RAW (and CAP_NET_ADMIN on 'any'): run it as "
                  "root (sudo), or give the service AmbientCapabilities=CAP_NET_RAW "
                  "CAP_NET_ADMIN")


@dataclass
class CaptureStats:
    """libpcap's counts, as tcpdump prints them on exit."""

    captured: int  # packets handed to rsthound
    received: int  # packets the kernel's filter passed
    dropped: int  # by the kernel: the buffer was full
    ifdropped: int  # by the interface or its driver


class LiveCapture:
    """One live capture: `batches()` until stopped, then `stats()` and `close()`."""

    def __init__(self, iface: str = "any", expression: str | None = None,
                 snaplen: int = DEFAULT_SNAPLEN, buffer_mb: int = 32,
                 write: str | None = None, ns_path: str | None = None) -> None:
        try:
            import cypcap
        except ImportError as e:  # pragma: no cover - the wheel is a dependency
            raise NotSupported(f"live capture needs libpcap through cypcap ({e})") from None
        self._cypcap = cypcap
        self.iface = iface
        self.ns_path = ns_path  # the namespace it captures in, for interface names
        self.captured = 0
        self._dumper = None
        self.filter = CONTROL if not expression else f"({CONTROL}) and ({expression})"
        try:
            pcap = cypcap.create(iface)
            pcap.set_snaplen(snaplen)
            pcap.set_timeout(int(BATCH_SECONDS * 1000))
            # immediate: packets are readable when they arrive (without it, a non-blocking
            # TPACKET_V3 capture here saw nothing until its buffer block filled)
            pcap.set_immediate_mode(True)
            pcap.set_buffer_size(buffer_mb << 20)
            pcap.activate()
        except cypcap.Error as e:
            raise self._explain(e) from None
        self.pcap = pcap
        try:
            if LINUX_SLL2 in pcap.list_datalinks():
                pcap.set_datalink(LINUX_SLL2)
            # an explicit netmask: cypcap prints a stray line while it looks one up
            program = pcap.compile(self.filter, True, cypcap.NETMASK_UNKNOWN)
        except cypcap.Error as e:
            self.close()
            raise BadInput(f"not a filter expression libpcap accepts: {_message(e)}",
                           expression) from None
        try:
            pcap.setfilter(program)
        except cypcap.Error as e:
            self.close()
            raise self._explain(e) from None
        self.linktype = int(pcap.datalink())
        pcap.setnonblock(True)
        self._poll = select.poll()
        self._poll.register(pcap.get_selectable_fd(), select.POLLIN)
        if write:
            folder = os.path.dirname(write) or "."
            if not os.path.isdir(folder):
                self.close()
                raise BadInput(f"cannot write the capture: no such folder {folder}", write)
            try:
                self._dumper = pcap.dump_open(write)
            except cypcap.Error as e:
                self.close()
                raise BadInput(f"cannot write the capture: {_message(e)}", write) from None
        self._names: dict[int, str | None] = {}
        # the expression alone, for packets that start at IP (compiled when first asked)
        self._select = PacketFilter(expression, check=False) if expression else None

    def _explain(self, e: Exception) -> Exception:
        code = getattr(e, "code", None)
        codes = self._cypcap.ErrorCode
        if code in (codes.PERM_DENIED, codes.PROMISC_PERM_DENIED) or "ermission" in str(e):
            return NeedPrivilege(PRIVILEGE_HINT)
        if code == codes.NO_SUCH_DEVICE or "No such device" in str(e):
            return BadInput("no such interface ('ip link' lists them; 'any' is all of them)",
                            self.iface)
        return BadInput(f"cannot capture: {_message(e)}", self.iface)

    def selects(self, src: str, sport: int, dst: str, dport: int) -> bool:
        """Whether the user's filter expression takes a SYN from src:sport to dst:dport:
        for a connect the trace saw and the wire did not. True without an expression."""
        if self._select is None:
            return True
        try:
            return self._select.takes(LINKTYPE_RAW, syn_segment(src, sport, dst, dport))
        except BadInput:  # an expression only a link layer gives a meaning: all of them
            self._select = None
            return True

    def ifname(self, ifindex: int) -> str | None:
        """The name of an interface index (SLL2 carries the index) in the namespace
        captured (`ns_path`), where the same index may name another interface than here."""
        if ifindex not in self._names:
            def name() -> str | None:
                try:
                    return printable(socket.if_indextoname(ifindex))
                except OSError:
                    return None
            try:
                self._names[ifindex] = in_netns(self.ns_path, name) if self.ns_path else name()
            except RstHoundError:  # the namespace is gone
                self._names[ifindex] = None
        return self._names[ifindex]

    def batches(self, should_stop: Callable[[], bool]) -> Iterator[RecordBatch]:
        """Batches of what arrived in about BATCH_SECONDS (possibly none: still yielded, so
        the caller can keep time), until `should_stop()`."""
        iface = [Interface(self.linktype, self.iface)]
        while not should_stop():
            ts: list[float] = []
            wire: list[int] = []
            data: list[bytes] = []
            dump = self._dumper.dump if self._dumper is not None else None

            def take(hdr, pkt, ts=ts, wire=wire, data=data, dump=dump) -> None:
                ts.append(hdr.ts)
                wire.append(hdr.len)
                data.append(bytes(pkt))
                if dump is not None:
                    dump(hdr, pkt)

            deadline = time.monotonic() + BATCH_SECONDS
            try:
                while len(ts) < BATCH_MAX and not should_stop():
                    # non-blocking: with TPACKET_V3 a blocking read never times out when
                    # nothing arrives, so wait on the descriptor with a timeout of our own
                    before = len(ts)
                    self.pcap.dispatch(BATCH_MAX - before, take)  # bounded: batches stay small
                    if len(ts) > before:
                        continue
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    if ts:
                        time.sleep(min(left, GATHER_SECONDS))
                    else:
                        self._poll.poll(left * 1000)
            except self._cypcap.Error as e:
                raise BadInput(f"the capture stopped: {e}", self.iface) from None
            self.captured += len(ts)
            if self._dumper is not None and ts:
                self._dumper.flush()
            yield _batch(ts, wire, data, iface)

    def stats(self) -> CaptureStats:
        s = self.pcap.stats()
        return CaptureStats(self.captured, s.recv, s.drop, s.ifdrop)

    def close(self) -> None:
        if self._dumper is not None:
            with contextlib.suppress(Exception):
                self._dumper.close()
            self._dumper = None
        pcap = getattr(self, "pcap", None)
        if pcap is not None:
            with contextlib.suppress(Exception):
                pcap.close()
            self.pcap = None

    def __enter__(self) -> LiveCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _message(e: Exception) -> str:
    """cypcap's errors carry (code, text): the text."""
    return str(e.args[-1]) if e.args else str(e)


def _batch(ts: list[float], wire: list[int], data: list[bytes],
           interfaces: list[Interface]) -> RecordBatch:
    caplen = np.fromiter((len(d) for d in data), dtype=np.int64, count=len(data))
    off = np.zeros(len(data), dtype=np.int64)
    if len(data) > 1:
        np.cumsum(caplen[:-1], out=off[1:])
    buf = np.frombuffer(b"".join(data), dtype=np.uint8) if data else np.zeros(0, np.uint8)
    return RecordBatch(buf, off, caplen, np.array(wire, dtype=np.int64),
                       np.array(ts, dtype=np.float64), np.zeros(len(data), dtype=np.int32),
                       interfaces, np.zeros(len(data), dtype=np.int64))
