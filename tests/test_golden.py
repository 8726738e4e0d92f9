"""The golden captures (real traffic, real tcpdump/dumpcap; see data/README.md):
rsthound's reading of each against facts written down when it was made, and against
tcpdump and tshark reading the same file."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import DATA
from flowrun import analyse

FILES = sorted(p.name for p in DATA.glob("*.pcap*"))

# What each outcome in expected.json means in Zeek's and rsthound's words:
# (conn_state, failure, [(reset kind, sent by)])
OUTCOME = {
    "refused": ("REJ", "refused", [("refused", "resp")]),
    "abort-by-client": ("RSTO", "abort", [("abort", "orig")]),
    "abort-by-server": ("RSTR", "abort", [("abort", "resp")]),
    "unread-close-reset": ("RSTR", "abort", [("abort", "resp")]),
    "normal": ("SF", None, []),
    "timeout": ("S0", "timeout", []),
    "icmp-rejected": ("S0", "icmp-rejected", []),
}


def test_every_golden_file_is_listed(expected):
    assert set(FILES) == set(expected)


@pytest.mark.parametrize("name", FILES)
def test_counts_match_expected(cli, expected, name):
    exp = expected[name]
    r = cli("analyze", "--json", DATA / name)
    assert r.code == 0, r.err
    got = r.json()
    assert got["packets"] == exp["packets"]
    assert got["tcp_flags"]["syn"] == exp["syn"]
    assert got["tcp_flags"]["rst"] == exp["rst"]
    assert got["connections"] == exp["connections"]
    assert got["resets"]["total"] == exp["rst"]
    assert got["damage"] == []


@pytest.mark.parametrize("name", FILES)
def test_each_connection_outcome(expected, name):
    conns, resets, _ = analyse(DATA / name)  # also: batch and one-by-one paths agree
    by_uid = {}
    for r in resets:
        by_uid.setdefault(r.uid, []).append((r.kind.value, r.sent_by))
    ports = expected[name]["ports"]
    assert {str(c.resp_p) for c in conns} == set(ports)
    for c in conns:
        state, failure, kinds = OUTCOME[ports[str(c.resp_p)]]
        assert (c.conn_state, c.failure, by_uid.get(c.uid, [])) == (state, failure, kinds), c


def test_refused_seed_case(cli):
    r = cli("analyze", DATA / "refused.pcap")
    assert r.code == 0
    assert ("- 127.0.0.1:7211 refused 16 connections (2.0/s over 8 s) from 1 client; nothing"
            in r.out)
    svc = cli("analyze", "--json", DATA / "refused.pcap").json()["services"][0]
    assert svc["service"] == "127.0.0.1:7211"
    assert (svc["refused"], svc["answered"], svc["clients"]) == (16, 0, 1)
    assert svc["rate_per_s"] == pytest.approx(2.0, abs=0.05)


def test_timeouts_count_retransmissions(cli):
    for name, syns in (("nft_drop.pcap", 3), ("nft_drop_linear.pcap", 4)):
        svc = cli("analyze", "--json", DATA / name).json()["services"][0]
        assert (svc["timeout"], svc["syn_retrans"]) == (1, syns - 1)
        assert "timed out" in cli("analyze", DATA / name).out


def test_interfaces_are_named(cli):
    lines = cli("analyze", "--resets", "--json", DATA / "multi_if.pcapng").lines()
    assert sorted(x["iface"] for x in lines) == ["lo", "rh-c0"]
    lines = cli("analyze", "--resets", "--json", DATA / "any_sll2.pcap").lines()
    assert [x["iface"] for x in lines] == ["ifindex 1"]  # SLL2 keeps the interface index
    conns = cli("analyze", "--conns", "--json", DATA / "multi_link.pcapng").lines()
    # "any" names no interface: the SLL2 header's index does
    assert sorted(c["iface"] for c in conns) == ["ifindex 1", "rh-c0", "rh-tunc"]


def test_nanosecond_timestamps(cli):
    micro = cli("analyze", "--resets", "--json", DATA / "nanosec.pcap").lines()
    raw = (DATA / "nanosec.pcap").read_bytes()
    import struct

    # second record of the file is the first RST: its own header says when
    sec, nsec = struct.unpack_from("<II", raw, 24 + 16 + struct.unpack_from("<I", raw, 32)[0])
    assert micro[0]["ts"] == pytest.approx(sec + nsec / 1e9, abs=1e-6)


def test_fragments_are_counted_not_misread(cli):
    got = cli("analyze", "--json", DATA / "fragments.pcap").json()
    assert got["skipped"] == {"not IP": 2, "fragment": 2}
    assert got["conn_states"] == {"SF": 1}


def test_filters(cli):
    f = DATA / "ipv6.pcap"
    assert cli("analyze", "--json", "--port", "9002", f).json()["connections"] == 1
    assert cli("analyze", "--json", "--host", "fd00:200::2", f).json()["connections"] == 3
    assert cli("analyze", "--json", "--host", "10.9.9.9", f).json()["connections"] == 0
    first = cli("analyze", "--conns", "--json", f).lines()
    later = cli("analyze", "--json", "--since", str(first[1]["ts"]), f).json()
    assert later["connections"] == 2
    bad = cli("analyze", "--port", "http", f)
    assert bad.code == 2 and "is not a port number" in bad.err


def test_conn_json_uses_zeek_names(cli):
    lines = cli("analyze", "--conns", "--json", DATA / "normal.pcap").lines()
    assert len(lines) == 4
    for c in lines:
        for k in ("ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "duration",
                  "orig_bytes", "resp_bytes", "conn_state", "history", "orig_pkts",
                  "resp_pkts"):
            assert k in c
        assert (c["conn_state"], c["orig_pkts"], c["resp_pkts"]) == ("SF", 6, 5)
        assert c["resp_bytes"] == 100


# -- the same files read by the real tools ----------------------------------------------------

def _tshark_flags(path) -> list[int]:
    """tcp.flags of every TCP segment tshark finds in the file."""
    out = subprocess.run(["tshark", "-n", "-r", str(path), "-Y", "tcp && !icmp && !icmpv6",
                          "-T", "fields", "-e", "tcp.flags"],  # (not segments ICMP quotes)
                         capture_output=True, text=True, check=True).stdout
    return [int(x, 16) for x in out.split()]


@pytest.mark.parametrize("name", FILES)
def test_cross_check_with_tshark(cli, name):
    if shutil.which("tshark") is None:
        pytest.skip("tshark not installed (make test installs it as root)")
    got = cli("analyze", "--json", DATA / name).json()
    path = DATA / name
    flags = _tshark_flags(path)
    assert got["tcp_packets"] == len(flags)
    assert got["tcp_flags"]["syn"] == sum(f & 0x12 == 0x02 for f in flags)
    assert got["tcp_flags"]["syn-ack"] == sum(f & 0x12 == 0x12 for f in flags)
    assert got["tcp_flags"]["rst"] == sum(bool(f & 0x04) for f in flags)
    assert got["tcp_flags"]["fin"] == sum(bool(f & 0x01) for f in flags)
    convs = subprocess.run(["tshark", "-n", "-r", str(path), "-q", "-z", "conv,tcp"],
                           capture_output=True, text=True, check=True).stdout
    assert got["connections"] == sum("<->" in line for line in convs.splitlines())


def _tcpdump_count(path, expr: str) -> int:
    out = subprocess.run(["tcpdump", "-n", "-r", str(path), expr],
                         capture_output=True, text=True, check=True).stdout
    return len(out.splitlines())


@pytest.mark.parametrize("name", [n for n in FILES if n.endswith(".pcap")])
def test_cross_check_syn_and_rst_with_tcpdump(cli, expected, name):
    if shutil.which("tcpdump") is None:
        pytest.skip("tcpdump not installed (make test installs it as root)")
    vlan = {"vlan.pcap": "vlan and ", "qinq.pcap": "vlan and vlan and "}.get(name, "")
    # tcpdump's tcp[] does not reach into IPv6: its TCP header, where there are no
    # extension headers, is at 40
    rst = vlan + ("(tcp[tcpflags] & tcp-rst != 0 or "
                  "(ip6 and ip6[6] == 6 and ip6[40+13] & 4 != 0))")
    syn = vlan + ("(tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn or "
                  "(ip6 and ip6[6] == 6 and ip6[40+13] & 0x12 == 2))")
    path = DATA / name
    got = cli("analyze", "--json", path).json()["tcp_flags"]
    assert got["rst"] == _tcpdump_count(path, rst)
    assert got["syn"] == _tcpdump_count(path, syn)
    assert len(cli("analyze", "--resets", "--json", path).lines()) == got["rst"]


@pytest.mark.parametrize("name", FILES)
def test_summary_fits_80_columns(cli, name):
    """On an 80-column terminal; off one, only long service names may make it wider."""
    from rsthound.report.text import render_summary

    _conns, _resets, a = analyse(DATA / name)
    out = render_summary(a.summary, columns=80)
    assert all(len(line) <= 80 for line in out.splitlines()), out
    assert "\xa0" not in out and "\xa0" not in cli("analyze", DATA / name).out


def test_icmp_rejects_are_failed_connections(cli):
    """A plain REJECT answers with ICMP (and ICMPv6) port unreachable, no RST: each connect
    is a failure with its ICMP as the reason, Zeek's conn_state kept (S0)."""
    f = DATA / "icmp_reject.pcap"
    got = cli("analyze", "--json", f).json()
    assert (got["icmp_packets"], got["skipped"]) == (7, {})
    conns = cli("analyze", "--conns", "--json", f).lines()
    assert [(c["conn_state"], c["failure"]) for c in conns] == [("S0", "icmp-rejected")] * 5
    assert {c["icmp"] for c in conns} == {"port unreachable from 10.200.0.2",
                                          "port unreachable from fd00:200::2"}
    text = cli("analyze", f).out
    assert "5 ended by ICMP" in text and "7 ICMP" in text
    assert "10.200.0.2:9005: 3 connection attempts rejected by an ICMP error" in text
