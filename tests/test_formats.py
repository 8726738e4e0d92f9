"""Capture formats and link layers beyond what the golden files cover, each derived from a
real golden capture by a documented transformation (byte order, link header, block type)."""

from __future__ import annotations

import struct

from conftest import DATA
from packets import ACK, SYN, Talk, pcap_bytes, tcp_packet
from rsthound.formats.pcap import pcap_file_header, pcap_record


def pcap_records(raw: bytes) -> list[tuple[int, int, bytes]]:
    """(sec, usec, packet) of each record of a little-endian classic pcap."""
    out, off = [], 24
    while off + 16 <= len(raw):
        sec, usec, incl, _orig = struct.unpack_from("<IIII", raw, off)
        out.append((sec, usec, raw[off + 16 : off + 16 + incl]))
        off += 16 + incl
    return out


def summary(cli, path) -> dict:
    r = cli("analyze", "--json", path)
    assert r.code == 0, r.err
    got = r.json()
    return {k: got[k] for k in ("packets", "tcp_flags", "connections", "conn_states", "resets")}


def test_big_endian_pcap_reads_the_same(cli, tmp_path):
    raw = (DATA / "refused.pcap").read_bytes()
    magic, major, minor, zone, sig, snap, link = struct.unpack_from("<IHHiIII", raw, 0)
    out = [struct.pack(">IHHiIII", magic, major, minor, zone, sig, snap, link)]
    for sec, usec, pkt in pcap_records(raw):
        out.append(struct.pack(">IIII", sec, usec, len(pkt), len(pkt)) + pkt)
    f = tmp_path / "be.pcap"
    f.write_bytes(b"".join(out))
    assert summary(cli, f) == summary(cli, DATA / "refused.pcap")


def test_bsd_null_loopback(cli, tmp_path):
    # raw_ip.pcap starts at the IP header; BSD loopback puts a 4-byte address family first,
    # in the capturing host's byte order (2 = AF_INET).
    raw = (DATA / "raw_ip.pcap").read_bytes()
    out = [pcap_file_header(0)]
    for sec, usec, pkt in pcap_records(raw):
        out.append(pcap_record(sec + usec / 1e6, struct.pack("<I", 2) + pkt))
    f = tmp_path / "null.pcap"
    f.write_bytes(b"".join(out))
    got = summary(cli, f)
    assert got == summary(cli, DATA / "raw_ip.pcap")
    assert cli("analyze", "--json", f).json()["link_types"] == {"NULL": 13}


def _block(fmt: str, btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = 12 + len(body)
    return struct.pack(fmt + "II", btype, n) + body + struct.pack(fmt + "I", n)


def test_pcapng_big_endian_simple_packets_and_unknown_blocks(cli, tmp_path):
    # The packets of refused.pcap, written as a big-endian pcapng: SPBs (which carry no
    # time), one EPB, and an unknown block type in between that must be skipped.
    recs = pcap_records((DATA / "refused.pcap").read_bytes())
    fmt = ">"
    shb = _block(fmt, 0x0A0D0D0A, struct.pack(fmt + "IHHq", 0x1A2B3C4D, 1, 0, -1))
    idb = _block(fmt, 1, struct.pack(fmt + "HHI", 1, 0, 262144))
    blocks = [shb, idb, _block(fmt, 0x0000_0BAD + 0x4000_0000, b"custom stuff")]
    sec, usec, first = recs[0]
    ts = sec * 1_000_000 + usec
    blocks.append(_block(fmt, 6, struct.pack(fmt + "IIIII", 0, ts >> 32, ts & 0xFFFFFFFF,
                                             len(first), len(first)) + first))
    for _s, _u, pkt in recs[1:]:
        blocks.append(_block(fmt, 3, struct.pack(fmt + "I", len(pkt)) + pkt))
    f = tmp_path / "be.pcapng"
    f.write_bytes(b"".join(blocks))
    got = cli("analyze", "--json", f).json()
    assert got["packets"] == len(recs)
    assert got["failed"]["refused"] == 16
    assert got["damage"] == []


def test_ipv6_extension_headers_take_the_slow_path(cli, tmp_path):
    t = Talk(c="2001:db8::1", s="2001:db8::2", sport=443).c_(SYN).s_(0x14, seq=0)
    pkts = []
    for ts, pkt in t.packets:
        eth, ip6, tcp = pkt[:14], pkt[14:54], pkt[54:]
        # insert a destination-options header (next header 60) carrying PadN
        ext = bytes([6, 0, 1, 4, 0, 0, 0, 0])
        plen = struct.unpack_from("!H", ip6, 4)[0] + len(ext)
        ip6 = ip6[:4] + struct.pack("!HB", plen, 60) + ip6[7:]
        pkts.append((ts, eth + ip6 + ext + tcp))
    f = tmp_path / "ext.pcap"
    f.write_bytes(pcap_bytes(pkts))
    got = cli("analyze", "--json", f).json()
    assert got["conn_states"] == {"REJ": 1}
    assert got["services"][0]["service"] == "[2001:db8::2]:443"


def test_memory_cap_evicts_and_says_so(cli, tmp_path):
    pkts = []
    for i in range(300):  # 300 connections open at once, none closing
        pkts.append((1_700_000_000 + i * 0.001,
                     tcp_packet("10.0.0.1", 20000 + i, "10.0.0.2", 80, SYN, seq=i)))
        pkts.append((1_700_000_000 + i * 0.001 + 0.0005,
                     tcp_packet("10.0.0.2", 80, "10.0.0.1", 20000 + i, SYN | ACK, ack=i + 1)))
    f = tmp_path / "many.pcap"
    f.write_bytes(pcap_bytes(pkts))
    r = cli("analyze", "--json", "--max-conns", "100", f)
    got = r.json()
    assert got["evicted"] > 0
    assert got["connections"] == 300  # evicted ones are still reported, ended early
    assert "memory cap:" in cli("analyze", "--max-conns", "100", f).out


def test_rows_grouped_by_hash_as_np_unique_groups_them():
    """by_hash groups rows as np.unique does (groups in the order of their hashes, the
    first row of each), also where different hashes share a slot of its table (the same
    top bits) and where most rows do."""
    import numpy as np

    from rsthound.formats.columns import by_hash

    rng = np.random.default_rng(7)
    top = np.uint64(0xFFFF) << np.uint64(48)
    cases = [np.zeros(0, dtype=np.uint64), np.array([5], dtype=np.uint64)]
    for n, distinct in ((1000, 40), (5000, 4500), (300, 300)):
        pool = rng.integers(0, 1 << 63, size=distinct, dtype=np.uint64)
        cases.append(pool[rng.integers(0, distinct, size=n)])
        same_top = (pool & ~top) | (pool[0] & top)  # every hash in one slot
        cases.append(same_top[rng.integers(0, distinct, size=n)])
    for h in cases:
        group, first = by_hash(h)
        _, want_first, want_group = np.unique(h, return_index=True, return_inverse=True)
        assert group.tolist() == want_group.ravel().tolist()
        assert first.tolist() == want_first.tolist()


def test_flow_numbers_stay_exact_when_keys_hashes_collide(monkeypatch):
    """Rows are grouped into connections by a hash of their keys, then checked: with a
    hash that makes every key collide, the groups are still exactly the connections
    (IPv4 and IPv6 alike)."""
    import numpy as np

    from rsthound.formats import columns
    from rsthound.formats.columns import DecodeStats, decode_tcp
    from rsthound.sources.capfile import read_capture

    def groups(cols: columns.TcpColumns) -> set[frozenset[int]]:
        out: dict[int, set[int]] = {}
        for row, flow in enumerate(cols.flow.tolist()):
            out.setdefault(flow, set()).add(row)
        return {frozenset(g) for g in out.values()}

    batches = [b for p in sorted(DATA.glob("*.pcap*")) for b in read_capture(str(p), [])]
    assert any(len(b) > 20 for b in batches)
    want = [groups(decode_tcp(b, DecodeStats())) for b in batches]
    monkeypatch.setattr(columns, "HASH_MIX", [np.uint64(0)] * 5)
    got = [decode_tcp(b, DecodeStats()) for b in batches]
    assert [groups(c) for c in got] == want
    # and the keys read back are each connection's, whichever way its packets went
    for cols in got:
        rows = np.arange(len(cols))
        keys = cols.packed_keys(rows)
        for flow in set(cols.flow.tolist()):
            mine = [keys[36 * r:36 * r + 36] for r in rows[cols.flow == flow].tolist()]
            assert len(set(mine)) == 1
