"""Property-based fuzzing (hypothesis) of every parser rsthound feeds untrusted bytes to.

Captures: the golden captures, damaged at random (bytes flipped, runs overwritten,
garbage inserted, cut short), go through `rsthound analyze` whole. It must exit 0 or 3
(results, some input skipped) or 2 (nothing readable), always with one `rsthound:` line
per problem, the file and byte offset of the damage, valid JSON on stdout, and no
traceback. Then each text or binary parser on its own: /proc/net files, tracefs binary
pages and event formats, the TOML config, nft's output, sock_diag's netlink replies.

`make test` runs a bounded number of examples (about a minute); `make fuzz` runs the
"long" profile (RSTHOUND_FUZZ=long). The counts go to test-output/fuzz-counts.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import DATA

settings.register_profile("bounded", max_examples=400, deadline=5000, derandomize=False,
                          suppress_health_check=[HealthCheck.too_slow,
                                                HealthCheck.function_scoped_fixture])
settings.register_profile("long", max_examples=5000, deadline=10000,
                          suppress_health_check=[HealthCheck.too_slow,
                                                HealthCheck.function_scoped_fixture])
settings.load_profile("long" if os.environ.get("RSTHOUND_FUZZ") == "long" else "bounded")

GOLDEN = sorted(p for p in DATA.iterdir() if p.suffix in (".pcap", ".pcapng"))
COUNTS: Counter[str] = Counter()
OUT = Path(__file__).parent.parent.parent / "test-output"


@pytest.fixture(scope="module", autouse=True)
def _counts():
    yield
    OUT.mkdir(exist_ok=True)
    path = OUT / "fuzz-counts.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps(old | dict(COUNTS), indent=1) + "\n")
    print(f"inputs fuzzed: {dict(COUNTS)}")


@st.composite
def damaged(draw) -> tuple[str, bytes]:
    """A golden capture with one to four kinds of damage."""
    path = draw(st.sampled_from(GOLDEN))
    data = bytearray(path.read_bytes())
    for _ in range(draw(st.integers(1, 4))):
        how = draw(st.sampled_from(["flip", "overwrite", "insert", "cut", "zero-length"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if how == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif how == "overwrite":
            run = draw(st.binary(min_size=1, max_size=64))
            data[at:at + len(run)] = run
        elif how == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif how == "cut":
            del data[at:]
        else:  # a record or block length field made 0 or huge
            if at + 4 <= len(data):
                data[at:at + 4] = struct.pack("<I", draw(st.sampled_from(
                    [0, 1, 0xFFFFFFFF, 0x7FFFFFFF, 65535])))
    return path.name, bytes(data)


@given(damaged())
def test_damaged_captures_never_crash_analyze(cli, tmp_path_factory, sample):
    name, data = sample
    f = tmp_path_factory.mktemp("fuzz") / ("x" + Path(name).suffix)
    f.write_bytes(data)
    r = cli("analyze", "--json", "--no-progress", f)
    COUNTS["captures"] += 1
    assert "Traceback" not in r.err, r.err
    assert r.code in (0, 2, 3), (r.code, r.err)
    assert all(ln.startswith("rsthound: ") for ln in r.err.splitlines()), r.err
    if r.code == 3:
        assert str(f) in r.err and "at byte" in r.err, r.err
    if r.code in (0, 3):
        assert isinstance(r.json(), dict)


@given(st.text(max_size=2000))
def test_proc_net_text(text):
    from rsthound.formats.procnet import parse_proc_net

    problems: list[str] = []
    got = parse_proc_net(text, "/proc/net/snmp", problems)
    COUNTS["proc_net"] += 1
    assert all(isinstance(v, int) for v in got.values())
    assert all(isinstance(p, str) and "/proc/net/snmp" in p for p in problems)


@given(st.lists(st.sampled_from(["Tcp:", "TcpExt:", "Ip:", " ", "1", "-1", "x", "\n",
                                 "RtoAlgorithm", "AttemptFails", "99999999999999999999"]),
                max_size=60))
def test_proc_net_shaped_text(parts):
    """Text that looks like the real file, in pieces, in any order."""
    from rsthound.formats.procnet import parse_proc_net

    problems: list[str] = []
    parse_proc_net(" ".join(parts), "/proc/net/netstat", problems)
    COUNTS["proc_net"] += 1


@given(st.binary(max_size=4096))
def test_trace_pages(page):
    from rsthound.formats.traceraw import page_records

    for rec in page_records(page):
        assert 0 <= len(rec) <= len(page)
    COUNTS["trace_pages"] += 1


@given(st.binary(min_size=16, max_size=256), st.integers(0, 2**20))
def test_trace_pages_with_a_plausible_header(body, size):
    from rsthound.formats.traceraw import page_records

    page = struct.pack("=QQ", 0, size) + body
    list(page_records(page))
    COUNTS["trace_pages"] += 1


@given(st.text(max_size=1500))
def test_trace_event_formats(text):
    from rsthound.formats.traceraw import parse_format

    with contextlib.suppress(ValueError):
        parse_format(text)
    COUNTS["trace_formats"] += 1


@given(st.text(max_size=800))
def test_config_files(tmp_path_factory, text):
    from rsthound.config import load_config
    from rsthound.errors import RstHoundError

    f = tmp_path_factory.mktemp("cfg") / "watch.toml"
    f.write_text(text)
    try:
        load_config(str(f))
    except RstHoundError as e:
        assert str(f) in str(e)
    COUNTS["config"] += 1


toml_values = st.one_of(st.integers(-10, 10**6), st.floats(allow_nan=True), st.text(max_size=8),
                        st.booleans(), st.lists(st.integers(), max_size=3))


@given(st.dictionaries(st.sampled_from(["warn", "error", "critical", "metric", "for_samples",
                                        "window", "factor", "wran", "title"]), toml_values,
                       max_size=5),
       st.sampled_from(["rules.failed-connections", "rules.new-one", "baselines.x", "notify"]))
def test_config_shaped_files(tmp_path_factory, table, section):
    """Real section names with wrong, odd or missing values."""
    from rsthound.config import load_config
    from rsthound.errors import RstHoundError

    def toml(v: object) -> str:
        return json.dumps(v) if not isinstance(v, float) or (v == v and abs(v) != float(
            "inf")) else "nan"

    f = tmp_path_factory.mktemp("cfg") / "watch.toml"
    f.write_text(f"[{section}]\n" + "".join(f"{k} = {toml(v)}\n" for k, v in table.items()))
    try:
        load_config(str(f))
    except RstHoundError as e:
        assert str(f) in str(e)
    COUNTS["config"] += 1


@given(st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=6)),
                    lambda c: st.one_of(st.lists(c, max_size=4),
                                        st.dictionaries(st.sampled_from(
                                            ["nftables", "rule", "chain", "expr", "match",
                                             "left", "right", "payload", "protocol", "field",
                                             "set", "range", "reject", "drop", "family",
                                             "table", "handle", "op", "hook", "name"]),
                                            c, max_size=5)), max_leaves=30))
def test_nft_json(tree):
    from rsthound.formats.nft import parse_nft_json

    try:
        rules = parse_nft_json(json.dumps(tree), {})
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        pytest.fail(f"nft output made the parser raise {e!r}")
    assert isinstance(rules, list)
    COUNTS["nft"] += 1


@given(st.text(max_size=1000))
def test_nft_text(text):
    from rsthound.formats.nft import parse_nft_text

    parse_nft_text(text)
    COUNTS["nft"] += 1


@given(st.binary(max_size=600), st.sampled_from([socket.AF_INET, socket.AF_INET6]))
def test_sock_diag_replies(data, family):
    from rsthound.formats.sockdiag import parse_replies

    found: list = []
    with contextlib.suppress(OSError):  # an NLMSG_ERROR message: the kernel's error, raised
        parse_replies(data, family, found)
    COUNTS["sock_diag"] += 1


CLASSIC = [p for p in GOLDEN if p.suffix == ".pcap" and p.read_bytes()[:4] == b"\xd4\xc3\xb2\xa1"]


@given(st.sampled_from(CLASSIC), st.floats(0.0, 1.0))
def test_a_cut_capture_keeps_every_whole_record(cli, tmp_path_factory, path, where):
    """Nothing readable is lost: a pcap cut anywhere after its header gives exactly the
    packets of the records that are whole, and says where the cut is unless it falls
    between records."""
    raw = path.read_bytes()
    cut = 24 + int((len(raw) - 24) * where)
    whole, off = 0, 24
    while off + 16 <= cut and off + 16 + struct.unpack_from("<I", raw, off + 8)[0] <= cut:
        off += 16 + struct.unpack_from("<I", raw, off + 8)[0]
        whole += 1
    f = tmp_path_factory.mktemp("cut") / "cut.pcap"
    f.write_bytes(raw[:cut])
    r = cli("analyze", "--json", "--no-progress", f)
    COUNTS["captures"] += 1
    if off == cut:  # cut between two records: a shorter capture, nothing damaged
        assert r.code == 0, r.err
    else:
        assert r.code == 3 and f"at byte {off}" in r.err, (r.code, r.err, off)
    assert r.json()["packets"] == whole


@st.composite
def frames(draw) -> tuple[int, list[bytes]]:
    """A link type rsthound reads, and frames for it: real ones from the golden captures
    with bytes changed, and random ones, so the link layers and IP/TCP decoders see
    headers that lie (lengths, versions, options, VLAN stacks, IPv6 next headers)."""
    from rsthound.formats.linktypes import SUPPORTED
    from rsthound.formats.pcap import parse_pcap_header

    linktype = draw(st.sampled_from(sorted(SUPPORTED)))
    real = []
    for p in CLASSIC:
        raw = p.read_bytes()
        if parse_pcap_header(raw[:24]).linktype != linktype:
            continue
        off = 24
        while off + 16 <= len(raw):
            n = struct.unpack_from("<I", raw, off + 8)[0]
            real.append(raw[off + 16:off + 16 + n])
            off += 16 + n
    out = []
    for _ in range(draw(st.integers(1, 40))):
        if real and draw(st.booleans()):
            f = bytearray(draw(st.sampled_from(real)))
            for _ in range(draw(st.integers(1, 6))):
                if f:
                    f[draw(st.integers(0, len(f) - 1))] = draw(st.integers(0, 255))
            out.append(bytes(f[:draw(st.integers(0, len(f)))]))
        else:
            out.append(draw(st.binary(max_size=120)))
    return linktype, out


@given(frames())
def test_link_layers_and_ip_tcp_decoders(cli, tmp_path_factory, sample):
    from rsthound.formats.pcap import pcap_file_header, pcap_record

    linktype, packets = sample
    f = tmp_path_factory.mktemp("frames") / "frames.pcap"
    f.write_bytes(pcap_file_header(linktype) + b"".join(
        pcap_record(1_700_000_000 + i / 1000, p) for i, p in enumerate(packets)))
    r = cli("analyze", "--json", "--no-progress", f)
    COUNTS["frames"] += 1
    assert r.code == 0 and "Traceback" not in r.err, (r.code, r.err)
    got = r.json()
    assert got["packets"] == len(packets)  # every frame counted, decoded or skipped
    assert (got["tcp_packets"] + got["icmp_packets"] + sum(got["skipped"].values())
            == len(packets)), got
