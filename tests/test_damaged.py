"""Bad input: one clear line with file and byte offset, the right exit code, no traceback,
and everything readable before (and after) the damage still reported.

The damaged files are derived from the real golden captures in data/.
"""

from __future__ import annotations

import struct
from pathlib import Path

from conftest import DATA
from packets import Talk, pcap_bytes
from rsthound.cli import Exit

REFUSED = DATA / "refused.pcap"


def records(raw: bytes) -> list[int]:
    """Offsets of the records of a little-endian classic pcap."""
    offs, off = [], 24
    while off + 16 <= len(raw):
        offs.append(off)
        off += 16 + struct.unpack_from("<I", raw, off + 8)[0]
    return offs


def refused_count(result) -> int:
    return result.json()["failed"]["refused"]


def no_traceback(err: str) -> None:
    assert "Traceback" not in err
    assert all(line.startswith("rsthound: ") for line in err.splitlines()), err


def test_not_a_capture(cli, tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("hello, this is not a capture\n" * 10)
    r = cli("analyze", f)
    assert r.code == Exit.ERROR
    assert r.err == f"rsthound: {f}: at byte 0: not a capture: neither pcap nor pcapng " \
        "(expected a file from tcpdump -w, dumpcap or Wireshark)\n"
    assert r.out == ""


def test_missing_and_empty_and_directory(cli, tmp_path):
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    # every input is checked before any is read: the first that cannot be is said
    r = cli("analyze", empty, tmp_path / "nope.pcap", tmp_path)
    assert r.code == Exit.ERROR and r.out == ""
    assert r.err.endswith("nope.pcap: no such file\n") and r.err.count("\n") == 1, r.err
    r = cli("analyze", empty, tmp_path)
    assert r.code == Exit.ERROR and r.out == "" and "a directory" in r.err
    r = cli("analyze", empty)
    assert r.code == Exit.ERROR
    assert "empty.pcap: at byte 0: empty file" in r.err
    no_traceback(r.err)


def test_truncated_file_header(cli, tmp_path):
    f = tmp_path / "short.pcap"
    f.write_bytes(REFUSED.read_bytes()[:10])
    r = cli("analyze", f)
    assert r.code == Exit.ERROR
    assert r.err == f"rsthound: {f}: at byte 10: truncated pcap file header (10 of 24 bytes)\n"


def test_absurd_snaplen(cli, tmp_path):
    raw = bytearray(REFUSED.read_bytes())
    struct.pack_into("<I", raw, 16, 0xFFFFFFF0)
    f = tmp_path / "snap.pcap"
    f.write_bytes(raw)
    r = cli("analyze", f)
    assert r.code == Exit.ERROR
    assert "at byte 16: absurd snapshot length 4294967280" in r.err


def test_unknown_link_type(cli, tmp_path):
    raw = bytearray(REFUSED.read_bytes())
    struct.pack_into("<I", raw, 20, 147)
    f = tmp_path / "user0.pcap"
    f.write_bytes(raw)
    r = cli("analyze", f)
    assert r.code == Exit.ERROR
    assert "at byte 20: link type 147 (LINKTYPE_147) is not one rsthound reads" in r.err


def test_truncated_last_record_keeps_the_rest(cli, tmp_path):
    raw = REFUSED.read_bytes()
    whole = cli("analyze", "--json", REFUSED).json()
    last = records(raw)[-1]
    f = tmp_path / "cut.pcap"
    f.write_bytes(raw[: last + 30])
    r = cli("analyze", "--json", f)
    assert r.code == Exit.DAMAGED
    got = r.json()
    assert got["packets"] == whole["packets"] - 1
    assert got["damage"] == [{
        "file": str(f), "offset": last, "skipped": 30,
        "reason": f"truncated last record: it says "
        f"{struct.unpack_from('<I', raw, last + 8)[0]} bytes, 14 remain",
    }]
    assert f"rsthound: damaged: {f}: at byte {last}: truncated last record" in r.err
    # The last packet was a SYN or a RST; all but at most one refusal are still there.
    assert refused_count(r) >= whole["failed"]["refused"] - 1


def test_truncated_record_header(cli, tmp_path):
    raw = REFUSED.read_bytes()
    f = tmp_path / "cut.pcap"
    f.write_bytes(raw + raw[24:30])
    r = cli("analyze", "--json", f)
    assert r.code == Exit.DAMAGED
    assert r.json()["damage"][0]["reason"] == "truncated record header (6 of 16 bytes)"
    assert refused_count(r) == cli("analyze", "--json", REFUSED).json()["failed"]["refused"]


def test_garbage_mid_file_resynchronises(cli, tmp_path):
    raw = REFUSED.read_bytes()
    offs = records(raw)
    mid = offs[len(offs) // 2]
    garbage = bytes((i * 37 + 11) % 256 for i in range(1000)).replace(b"\0", b"\xff")
    f = tmp_path / "garbage.pcap"
    f.write_bytes(raw[:mid] + b"\xff\xff\xff\x7f" * 4 + garbage + raw[mid:])
    r = cli("analyze", "--json", f)
    assert r.code == Exit.DAMAGED
    got = r.json()
    assert got["packets"] == len(offs)  # every real record was found again
    assert got["damage"][0]["offset"] == mid
    assert got["damage"][0]["skipped"] == 1016
    assert "impossible" in got["damage"][0]["reason"]
    assert refused_count(r) == cli("analyze", "--json", REFUSED).json()["failed"]["refused"]


def test_absurd_record_length_at_end(cli, tmp_path):
    raw = bytearray(REFUSED.read_bytes())
    last = records(bytes(raw))[-1]
    struct.pack_into("<I", raw, last + 8, 0x7FFFFFFF)
    f = tmp_path / "bad.pcap"
    f.write_bytes(raw)
    r = cli("analyze", "--json", f)
    assert r.code == Exit.DAMAGED
    d = r.json()["damage"][0]
    assert d["offset"] == last and d["skipped"] == len(raw) - last
    assert "nothing readable after it" in d["reason"]


def test_one_bad_file_among_good_ones(cli, tmp_path):
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"\0" * 100)
    r = cli("analyze", "--json", REFUSED, bad)
    assert r.code == Exit.ERROR
    assert r.json()["files"] == [str(REFUSED)]
    assert refused_count(r) > 0


def test_pcapng_damaged_block_then_good_ones(cli, tmp_path):
    raw = (DATA / "multi_if.pcapng").read_bytes()
    whole = cli("analyze", "--json", DATA / "multi_if.pcapng").json()
    # find the third enhanced packet block and break its trailing length field
    off, seen = 0, 0
    while off < len(raw):
        btype, blen = struct.unpack_from("<II", raw, off)
        if btype == 6:
            seen += 1
            if seen == 3:
                break
        off += blen
    bad = bytearray(raw)
    struct.pack_into("<I", bad, off + blen - 4, 12345)
    f = tmp_path / "bad.pcapng"
    f.write_bytes(bad)
    r = cli("analyze", "--json", f)
    assert r.code == Exit.DAMAGED
    got = r.json()
    assert got["damage"][0]["offset"] == off
    assert got["damage"][0]["reason"] == "block length fields disagree"
    assert got["packets"] == whole["packets"] - 1


def test_pcapng_truncated_tail(cli, tmp_path):
    raw = (DATA / "multi_if.pcapng").read_bytes()
    f = tmp_path / "cut.pcapng"
    f.write_bytes(raw[:-7])
    r = cli("analyze", "--json", f)
    assert r.code == Exit.DAMAGED
    assert r.json()["damage"][0]["reason"].startswith("truncated last block")


def test_debug_shows_traceback(cli, tmp_path):
    f = tmp_path / "x.pcap"
    f.write_bytes(b"garbage" * 10)
    r = cli("analyze", "--debug", f)
    assert r.code == Exit.ERROR
    assert "Traceback" in r.err


def test_synthetic_capture_with_random_tail(cli, tmp_path: Path):
    t = Talk().c_(0x02).s_(0x14, seq=0)
    f = tmp_path / "t.pcap"
    f.write_bytes(pcap_bytes(t.packets) + b"\x01" * 9)
    r = cli("analyze", "--json", f)
    assert r.code == Exit.DAMAGED
    assert refused_count(r) == 1


def test_standard_input(tmp_path):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "rsthound", "analyze", "--json", "-"]
    r = subprocess.run(cmd, input=REFUSED.read_bytes(), capture_output=True, check=False)
    assert r.returncode == 0, r.stderr
    assert b'"refused": 16' in r.stdout
    r = subprocess.run(cmd, input=b"", capture_output=True, check=False)
    assert (r.returncode, r.stderr) == (2, b"rsthound: -: at byte 0: empty input, not a capture\n")


def test_pcapng_packet_block_with_impossible_lengths(cli, tmp_path):
    raw = bytearray((DATA / "multi_if.pcapng").read_bytes())
    off = 0
    while off < len(raw):
        btype, blen = struct.unpack_from("<II", raw, off)
        if btype == 6:
            break
        off += blen
    struct.pack_into("<I", raw, off + 20, 5000)  # captured length beyond the block
    f = tmp_path / "bad.pcapng"
    f.write_bytes(raw)
    r = cli("analyze", "--json", f)
    assert r.code == Exit.DAMAGED
    assert r.json()["damage"][0] == {
        "file": str(f), "offset": off, "skipped": 0,
        "reason": "packet block shorter than the packet length it states; the packet is skipped",
    }


def test_a_hostile_interface_name_in_a_capture_is_inert(cli, tmp_path):
    """pcapng interface names come from whoever wrote the file: a terminal escape in one is
    shown as text, never sent to the terminal."""
    raw = (DATA / "multi_if.pcapng").read_bytes()
    at = raw.index(b"rh-c0\0")
    f = tmp_path / "hostile.pcapng"
    f.write_bytes(raw[:at] + b"\x1b[2J\x07" + raw[at + 5:])  # same length: clear screen, bell
    r = cli("analyze", "--resets", f)
    assert r.code == 0, r.err
    assert "\x1b" not in r.out and "\x07" not in r.out
    assert "\\x1b[2J\\x07 IP 10.200.0.2.7211" in r.out, r.out
