"""conn_state and history per Zeek's definitions, on scripted conversations.

Expected values are written from Zeek's documented meanings (base/protocols/conn), not
from rsthound's output.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flowrun import analyse
from packets import ACK, FIN, RST, SYN, Talk, pcap_bytes


def one(tmp_path: Path, talk: Talk):
    f = tmp_path / "t.pcap"
    f.write_bytes(pcap_bytes(talk.packets))
    conns, resets, _ = analyse(f)
    assert len(conns) == 1, conns
    return conns[0], resets


def test_s0_attempt_no_reply(tmp_path):
    t = Talk()
    t.c_(SYN)
    t.t += 1.0
    t.c_(SYN, seq=1000)
    t.t += 2.0
    t.c_(SYN, seq=1000)
    c, resets = one(tmp_path, t)
    assert (c.conn_state, c.history) == ("S0", "S")
    assert c.failure == "timeout" and c.syn_retrans == 2 and not resets


def test_rej_refused(tmp_path):
    t = Talk().c_(SYN).s_(RST | ACK, seq=0)
    c, resets = one(tmp_path, t)
    assert (c.conn_state, c.history) == ("REJ", "Sr")
    assert c.failure == "refused"
    assert [(r.kind, r.sent_by) for r in resets] == [("refused", "resp")]


def test_sf_normal(tmp_path):
    t = Talk().handshake().c_(ACK, b"GET /").s_(ACK, b"x" * 100).c_(FIN | ACK).s_(FIN | ACK)
    t.c_(ACK)
    c, resets = one(tmp_path, t)
    assert (c.conn_state, c.history) == ("SF", "ShADdFf")
    assert (c.orig_bytes, c.resp_bytes) == (5, 100)
    assert (c.orig_pkts, c.resp_pkts) == (5, 3)
    assert c.failure is None and not resets


def test_rsto_client_abort(tmp_path):
    t = Talk().handshake().c_(ACK, b"hi").c_(RST | ACK)
    c, resets = one(tmp_path, t)
    assert (c.conn_state, c.history) == ("RSTO", "ShADR")
    assert [(r.kind, r.sent_by) for r in resets] == [("abort", "orig")]


def test_rstr_server_abort(tmp_path):
    t = Talk().handshake().s_(ACK, b"hello").s_(RST | ACK)
    c, resets = one(tmp_path, t)
    assert (c.conn_state, c.history) == ("RSTR", "ShAdr")
    assert [(r.kind, r.sent_by) for r in resets] == [("abort", "resp")]


def test_rstos0_originator_gives_up(tmp_path):
    t = Talk().c_(SYN).c_(RST, seq=1001)
    c, _ = one(tmp_path, t)
    assert (c.conn_state, c.history) == ("RSTOS0", "SR")


def test_rstrh_synack_then_reset(tmp_path):
    t = Talk().s_(SYN | ACK).s_(RST | ACK)
    c, resets = one(tmp_path, t)
    # Only a SYN-ACK seen: the roles flip so the server is the responder ('^').
    assert (c.conn_state, c.history) == ("RSTRH", "^hr")
    assert (c.resp_h, c.resp_p) == ("10.0.0.2", 80)
    assert resets[0].kind == "stray"


def test_sh_syn_then_fin(tmp_path):
    t = Talk().c_(SYN).c_(FIN)
    c, _ = one(tmp_path, t)
    assert (c.conn_state, c.history) == ("SH", "SF")


def test_shr_synack_then_fin(tmp_path):
    t = Talk().s_(SYN | ACK).s_(FIN | ACK)
    c, _ = one(tmp_path, t)
    assert (c.conn_state, c.history) == ("SHR", "^hf")


def test_s1_established_open(tmp_path):
    c, _ = one(tmp_path, Talk().handshake().c_(ACK, b"x"))
    assert (c.conn_state, c.history) == ("S1", "ShAD")


@pytest.mark.parametrize(("closer", "state"), [("c", "S2"), ("s", "S3")])
def test_s2_s3_one_sided_close(tmp_path, closer, state):
    t = Talk().handshake()
    (t.c_ if closer == "c" else t.s_)(FIN | ACK)
    c, _ = one(tmp_path, t)
    assert c.conn_state == state


def test_oth_midstream(tmp_path):
    t = Talk().c_(ACK, b"data").s_(ACK)
    c, _ = one(tmp_path, t)
    assert c.conn_state == "OTH"
    assert c.history == "Da"


def test_fin_then_rst_is_after_close(tmp_path):
    t = Talk().handshake().c_(ACK, b"req").s_(FIN | ACK).c_(ACK, b"more").s_(RST)
    c, resets = one(tmp_path, t)
    assert [(r.kind, r.sent_by) for r in resets] == [("after-close", "resp")]
    assert c.failure == "after-close"


def test_stray_reset_never_opened(tmp_path):
    t = Talk().c_(RST | ACK, seq=777)
    _, resets = one(tmp_path, t)
    assert resets[0].kind == "stray"


def test_injected_reset_ttl_mismatch(tmp_path):
    t = Talk().handshake().s_(ACK, b"x" * 10).s_(RST, ttl=250)
    _, resets = one(tmp_path, t)
    assert resets[0].kind == "injected?"


def test_port_reuse_makes_two_connections(tmp_path):
    t = Talk().c_(SYN).s_(RST | ACK, seq=0)
    t.cseq += 100000
    t.c_(SYN).s_(SYN | ACK).c_(ACK).c_(FIN | ACK).s_(FIN | ACK).c_(ACK)
    f = tmp_path / "t.pcap"
    f.write_bytes(pcap_bytes(t.packets))
    conns, _, _ = analyse(f)
    assert [c.conn_state for c in conns] == ["REJ", "SF"]


def test_bulk_counts_match_packet_path(tmp_path):
    # Thousands of data packets go through the vectorised fold; counts and bytes must
    # match what one-at-a-time processing gives (analyse() checks both agree).
    t = Talk().handshake()
    for i in range(3000):
        t.s_(ACK, b"y" * 1000)
        if i % 2:
            t.c_(ACK)
    t.s_(FIN | ACK).c_(FIN | ACK).s_(ACK)
    c, _ = one(tmp_path, t)
    assert c.conn_state == "SF"
    assert c.resp_bytes == 3_000_000
    assert c.resp_pkts == 1 + 3000 + 2
    assert c.history == "ShAdfFa"
