"""`rsthound counters`: /proc/net parsing by name, rates, namespaces, and nstat agreeing."""

from __future__ import annotations

import re
import subprocess

import pytest

from conftest import DATA
from rsthound.analyze.rates import increase, rates
from rsthound.formats.procnet import parse_proc_net
from rsthound.metrics import COUNTERS
from rsthound.sources.procfs import CounterReader

PROC = DATA / "proc"


def test_parse_by_name_not_position():
    problems: list[str] = []
    got = parse_proc_net("Tcp: B A\nTcp: 2 1\nTcpExt: X\nTcpExt: 5\n", "t", problems)
    assert got == {"Tcp.B": 2, "Tcp.A": 1, "TcpExt.X": 5}
    assert problems == []


@pytest.mark.parametrize(("text", "kept", "said"), [
    ("Tcp: A B C\nTcp: 1 2\n", {"Tcp.A": 1, "Tcp.B": 2}, "line 2: 2 values for 3 names"),
    ("Tcp: A B\nTcp: 1 2 3\nUdp: X\nUdp: 4\n", {"Udp.X": 4}, "line 2: 3 values for 2"),
    ("Tcp: A B\nTcp: 1 x\n", {"Tcp.A": 1}, "'x' is not a number (the value of Tcp.B)"),
    ("Tcp: A\nUdp: X\nUdp: 2\n", {"Udp.X": 2}, "line 2: expected the values of Tcp"),
    ("garbage\nTcp: A\nTcp: 3\n", {"Tcp.A": 3}, "line 1: expected 'Prefix: Name"),
    ("Tcp: A\n", {}, "line 1: no line of values for Tcp"),
])
def test_damaged_text_keeps_what_can_be_placed(text, kept, said):
    problems: list[str] = []
    assert parse_proc_net(text, "f", problems) == kept
    assert len(problems) == 1 and said in problems[0] and problems[0].startswith("f: line")


def test_increase_survives_wrap_and_reset():
    assert increase(5, 9) == 4
    assert increase(2**32 - 2, 3) == 5  # a 32-bit counter wrapped
    assert increase(1_000_000, 40) == 40  # namespace re-created: counting from zero again
    assert increase(2**40, 7) == 7  # 64-bit counters do not wrap in practice: a reset
    assert rates({"a": 1, "b": 5}, {"a": 3, "c": 1}, 2.0) == {"a": 1.0}


@pytest.mark.parametrize("tree", ["linux-6.18", "old-layout"])
def test_golden_trees_give_the_same_names(cli, tree):
    r = cli("counters", "--proc-root", PROC / tree, "--interval", "0", "--json")
    assert r.code == 0, r.err
    got = r.json()
    # every value must be the one under that name in the file, whatever its position
    for path in ("snmp", "netstat"):
        lines = (PROC / tree / "1/net" / path).read_text().splitlines()
        for names, values in zip(lines[::2], lines[1::2], strict=True):
            prefix = names.split(":")[0]
            for k, v in zip(names.split()[1:], values.split()[1:], strict=True):
                name = f"{prefix}.{k}"
                if name in got:
                    assert got[name] == {"value": int(v)}
    if tree == "old-layout":  # crafted values, and counters that layout lacks
        assert got["Tcp.AttemptFails"]["value"] == 7
        assert got["TcpExt.ListenOverflows"]["value"] == 42
        assert "TcpExt.TCPReqQFullDrop" not in got
        text = cli("counters", "--proc-root", PROC / tree, "--interval", "0").out
        assert "not in this kernel: TcpExt.TCPAbortFailed" in text
    else:
        assert set(got) == {m.name for m in COUNTERS}


def test_damaged_tree_reports_lines_and_keeps_the_rest(cli):
    r = cli("counters", "--proc-root", PROC / "damaged", "--interval", "0", "--json")
    assert r.code == 3
    assert "net/snmp: line 8: 12 values for 15 names of Tcp" in r.err
    assert "net/netstat: line 2: 'lots' is not a number (the value of TcpExt.ListenOverflows)" \
        in r.err
    got = r.json()
    assert got["Tcp.AttemptFails"] == {"value": 1}
    assert "Tcp.OutRsts" not in got and "TcpExt.ListenOverflows" not in got
    assert "TcpExt.ListenDrops" in got


def test_text_fits_80_columns_and_explains(cli):
    r = cli("counters", "--interval", "0.05")
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[0].startswith("rsthound counters: this host, rates over 0.05 s")
    assert max(len(line) for line in lines) <= 80
    assert re.search(r"^Tcp\.AttemptFails +[\d,]+ +\S+/\S+  connects that failed$", r.out, re.M)


@pytest.mark.parametrize("args", [
    ("--netns", "no-such-ns-here"), ("--netns", "999999999"), ("--proc-root", "/nonexistent"),
    ("--interval", "-1"),
])
def test_bad_targets_are_one_line_errors(cli, args):
    r = cli("counters", "--interval", "0", *args)
    assert r.code == 2
    assert r.out == "" and len(r.err.strip().splitlines()) == 1, r.err
    assert "Traceback" not in r.err


def _nstat() -> dict[str, int]:
    out = subprocess.run(["nstat", "-asz"], capture_output=True, text=True, check=True).stdout
    return {f[0]: int(f[1]) for f in (line.split() for line in out.splitlines()[1:]) if f}


def test_agrees_with_nstat():
    """Our values bracket nstat's, read between two of ours (the counters only grow)."""
    if not subprocess.run(["sh", "-c", "command -v nstat"], capture_output=True).stdout:
        pytest.skip("nstat (iproute2) is not installed")
    with CounterReader() as reader:
        before = reader.read().values
        theirs = _nstat()
        after = reader.read().values
    compared = 0
    for m in COUNTERS:
        if m.name in before and m.nstat_name in theirs:
            assert before[m.name] <= theirs[m.nstat_name] <= after[m.name], m.name
            compared += 1
    assert compared >= 15


@pytest.mark.kernel
def test_another_namespace_by_name_and_by_pid(cli, netns):
    """Refused connects inside a namespace move its counters, seen by name and by pid."""
    with CounterReader(netns=netns.name) as by_name:
        before = by_name.read().values
        netns.run("import socket\n"
                  "for _ in range(5):\n"
                  "    s = socket.socket()\n"
                  "    try: s.connect(('127.0.0.1', 7211))\n"
                  "    except ConnectionRefusedError: pass\n"
                  "    s.close()\n")
        after = by_name.read().values
    assert after["Tcp.AttemptFails"] - before["Tcp.AttemptFails"] == 5
    assert after["Tcp.OutRsts"] - before["Tcp.OutRsts"] == 5
    assert after["Tcp.ActiveOpens"] - before["Tcp.ActiveOpens"] == 5
    with netns.sleeper() as pid:
        r = cli("counters", "--netns", str(pid), "--interval", "0", "--json")
    assert r.code == 0, r.err
    assert r.json()["Tcp.AttemptFails"]["value"] == after["Tcp.AttemptFails"]
    r = cli("counters", "--netns", netns.name, "--interval", "0")
    assert r.out.startswith(f"rsthound counters: netns {netns.name},")


@pytest.mark.kernel
def test_removed_namespace_is_reported(netns_factory):
    ns = netns_factory()
    reader = CounterReader(netns=ns.name)
    reader.read()
    ns.delete()
    with pytest.raises(Exception, match="namespace was removed"):
        reader.read()
    reader.close()


def test_docs_table_is_the_metric_table():
    doc = (DATA.parent.parent / "docs" / "counters.md").read_text()
    for m in COUNTERS:
        assert f"| `{m.name}` | `{m.nstat_name}` | {m.unit} | {m.meaning} |" in doc
        assert len(m.short) <= 28
