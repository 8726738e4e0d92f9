"""Run captures through both paths of the flow tracker and insist they agree."""

from __future__ import annotations

from pathlib import Path

from rsthound.analyze.flows import FlowTable
from rsthound.analyze.session import Analysis, interface_label
from rsthound.formats import linktypes as lt
from rsthound.formats.icmp import parse_icmp_error
from rsthound.formats.inet import NotTcp, parse_ip_tcp
from rsthound.model import Conn, Reset
from rsthound.sources.capfile import read_capture


def run_batches(path: Path) -> tuple[list[Conn], list[Reset], Analysis]:
    conns: list[Conn] = []
    resets: list[Reset] = []
    a = Analysis(on_conn=conns.append, on_reset=resets.append)
    damages = a.summary.damages
    for batch in read_capture(str(path), damages):
        a.feed(batch)
    a.finish([str(path)])
    return conns, resets, a


def run_packets(path: Path) -> tuple[list[Conn], list[Reset]]:
    """The slow path: the reference decoder and FlowTable.packet, one packet at a time."""
    conns: list[Conn] = []
    resets: list[Reset] = []
    table = FlowTable(conns.append, resets.append)
    for batch in read_capture(str(path), []):
        for i in range(len(batch)):
            pkt = batch.packet(i)
            ifc = batch.interfaces[int(batch.iface[i])]
            where = lt.parse_link(ifc.linktype, pkt)
            if where is None:
                continue
            # the file's interface index only counts where it has several, as in the batch path
            iface = int(batch.iface[i]) if len(batch.interfaces) > 1 else -1
            name = interface_label([x.name for x in batch.interfaces], iface, where[2])
            try:
                s = parse_ip_tcp(pkt, where[0], where[1])
            except NotTcp:
                err = parse_icmp_error(pkt, where[0])
                if err is not None:
                    table.icmp(float(batch.ts[i]), err, name)
                continue
            a_is_src = (s.src_raw, s.sport) <= (s.dst_raw, s.dport)
            a = (s.src_raw + s.sport.to_bytes(2, "big"))
            b = (s.dst_raw + s.dport.to_bytes(2, "big"))
            key = a + b if a_is_src else b + a
            table.packet(key, a_is_src, float(batch.ts[i]), s.flags, s.seq, s.ack, s.payload,
                         s.ip_len, s.ttl, s.ipid, name)
    table.close()
    return conns, resets


def analyse(path: Path) -> tuple[list[Conn], list[Reset], Analysis]:
    """Both paths; they must give the same connections and resets."""
    conns, resets, a = run_batches(path)
    conns2, resets2 = run_packets(path)
    key = lambda c: (c.ts, c.uid)  # noqa: E731
    assert sorted(conns, key=key) == sorted(conns2, key=key)
    assert resets == resets2
    return conns, resets, a
