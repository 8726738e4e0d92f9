"""What a new user hit (issue 15), each with the test that would have caught it: nonsense
values refused with one line, inputs checked before any is read, errors said before the
start-up line, Ctrl-C keeping what was seen, and tcpdump's conventions."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import DATA, free_port

NOBODY = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=-all",
          "--bounding-set=-all")


@pytest.mark.parametrize(("argv", "said"), [
    (("analyze", "--top", "-1", "F"), "--top: '-1' is not a whole number 0 or more"),
    (("analyze", "--max-conns", "0", "F"), "--max-conns: '0' is not a whole number 1 or more"),
    (("capture", "-s", "10"), "--snaplen: '10' is not a whole number 128-262144"),
    (("capture", "-c", "-1"), "--count: '-1' is not a whole number 1 or more"),
    (("watch", "--interval", "0"), "--interval: '0' is too short an interval"),
    (("watch", "--interval", "0.001"), "--interval: '0.001' is too short an interval"),
    (("counters", "--interval", "0.001"), "too short an interval (0.01 s at least, or 0)"),
    (("watch", "--webhook", "notaurl"), "'notaurl' is not an http:// or https:// URL"),
    (("watch", "--alertmanager", "ftp://x"), "is not an http:// or https:// URL"),
])
def test_nonsense_values_are_refused_in_one_line(cli, argv, said):
    r = cli(*argv)
    assert r.code == 2 and r.err.count("\n") == 1 and said in r.err, r.err
    assert r.out == ""


def test_top_zero_keeps_the_findings_and_drops_the_table(cli):
    f = DATA / "refused.pcap"
    r = cli("analyze", "--top", "0", f)
    assert r.code == 0 and "No failed connections" not in r.out, r.out
    assert "SERVICE" not in r.out and "Findings" in r.out and "refused 16" in r.out
    assert "... and 1 more services" in r.out


def test_every_input_is_checked_before_any_is_read(cli, tmp_path):
    f = DATA / "refused.pcap"
    r = cli("analyze", f, "nosuch.pcap")
    assert r.code == 2 and r.out == "" and r.err == "rsthound: nosuch.pcap: no such file\n"
    r = cli("analyze", "port 9000", f)
    assert r.code == 2 and r.out == "" and "port 9000: no such file (files come first" in r.err
    r = cli("analyze", tmp_path, f)
    assert r.code == 2 and r.out == "" and "a directory" in r.err
    r = cli("analyze", f, "port 90x2")
    assert r.code == 2 and r.out == "" and "not a filter expression" in r.err


def test_a_filter_expression_on_files_as_tcpdump_takes_it(cli):
    f = DATA / "ipv6.pcap"
    every = cli("analyze", "--json", f).json()["connections"]
    one = cli("analyze", "--json", f, "port", "9002").json()
    assert (every, one["connections"], one["packets"]) == (3, 1, 2)
    assert cli("analyze", "--json", f, "tcp[tcpflags] & tcp-rst != 0").json()["packets"] == 0
    # ip6 and tcp flags, in tcpdump's own syntax: the two resets
    assert cli("analyze", "--json", f, "ip6[53] & 4 != 0").json()["packets"] == 2
    # every link type of the golden files, raw IP and Linux cooked ones included; tagged
    # frames want `vlan and`, as in tcpdump
    for name, expr in (("raw_ip.pcap", "port 7211"), ("any_sll.pcap", "port 7211"),
                       ("any_sll2.pcap", "port 7211"), ("vlan.pcap", "vlan and port 7211")):
        r = cli("analyze", "--json", DATA / name, *expr.split())
        assert r.code == 0 and r.json()["connections"] == 1, (name, r.err)


def test_errors_come_before_the_start_up_line(cli, tmp_path):
    for argv, said in ((("--listen", "99999"), "99999: not ADDR:PORT"),
                       (("--listen", "9999", "--token-file", str(tmp_path / "x")),
                        "cannot read it"),
                       (("--db", "/nonexistent/dir/h.db"), "folder /nonexistent/dir does not "
                        "exist")):
        r = cli("watch", *argv, "--duration", "0")
        assert r.code == 2 and r.err.count("\n") == 1 and said in r.err, r.err
    assert not (tmp_path / "nonexistent").exists()
    r = cli("history", "--db", tmp_path)
    assert r.code == 2 and "a directory, not a history file" in r.err, r.err


@pytest.mark.kernel
def test_errors_that_need_root_come_before_the_start_up_line(cli):
    from conftest import need_root_tools

    need_root_tools("ip")
    r = cli("watch", "--user", "no-such-user-here", "--duration", "0")
    assert r.code == 2 and r.err == "rsthound: no-such-user-here: no such user\n", r.err
    r = cli("diagnose", "--netns", "no-such-netns-here")
    assert r.code == 2 and r.err.count("\n") == 1 and "no such network namespace" in r.err
    r = cli("capture", "-w", "/nonexistent/dir/x.pcap", "-c", "1")
    assert r.code == 2 and r.err.count("\n") == 1, r.err
    assert "no such folder /nonexistent/dir" in r.err and "ErrorCode" not in r.err


@pytest.mark.kernel
def test_capture_json_summary_is_the_last_line(netns):
    p = subprocess.Popen(netns.argv(sys.executable, "-m", "rsthound", "capture", "--json",
                                    "--summary", "--duration", "3"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert "capturing" in p.stderr.readline()
    client = netns.knock(3, 0.2, port=7211)
    client.wait(timeout=10)
    out, err = p.communicate(timeout=30)
    lines = [json.loads(x) for x in out.splitlines()]
    assert p.returncode == 0 and lines, err
    last = lines[-1]
    assert last["event"] == "summary" and last["resets"]["total"] == 3, last
    assert [x["kind"] for x in lines[:-1]] == ["refused"] * 3


@pytest.mark.kernel
def test_ctrl_c_ends_diagnose_early_and_keeps_what_it_saw(netns):
    client = netns.knock(40, 0.25, port=7211)
    p = subprocess.Popen(netns.argv(sys.executable, "-m", "rsthound", "diagnose", "--json",
                                    "--duration", "20"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "watching" in p.stderr.readline()
        time.sleep(2.5)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=20)
    finally:
        client.kill()
        client.wait()
    assert p.returncode == 1, err
    report = json.loads(out)
    assert report["window"]["seconds"] < 10 and "stopped after" in err, err
    assert report["findings"][0]["cause"] == "no-listener"


@pytest.mark.kernel
def test_ctrl_c_stops_watch_with_exit_0(netns):
    p = subprocess.Popen(netns.argv(sys.executable, "-m", "rsthound", "watch", "--no-history"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert "watching" in p.stderr.readline()
    time.sleep(1.5)
    p.send_signal(signal.SIGINT)
    _out, err = p.communicate(timeout=20)
    assert p.returncode == 0 and "Traceback" not in err and "interrupted" not in err, err


def test_without_root_watch_listen_says_the_capture_is_off():
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to drop to nobody")
    port = free_port()
    p = subprocess.run([*NOBODY, sys.executable, "-m", "rsthound", "watch", "--no-history",
                        "--listen", f"127.0.0.1:{port}", "--duration", "2"],
                       capture_output=True, text=True, timeout=30,
                       env=dict(os.environ, STATE_DIRECTORY="", HOME="/nonexistent"))
    assert p.returncode == 0, p.stderr
    off = [ln for ln in p.stderr.splitlines() if "no always-on capture" in ln]
    assert len(off) == 1 and "CAP_NET_RAW" in off[0], p.stderr


@pytest.mark.kernel
def test_listeners_by_port_and_address(netns):
    """As `ss -ltn 'sport = :N'`: --port and --address (an address takes the wildcard of
    its family too)."""
    code = ("import socket, time\nfor a, p in (('127.0.0.1', 7300), ('0.0.0.0', 7301), "
            "('::1', 7302)):\n    s = socket.socket(socket.AF_INET6 if ':' in a else "
            "socket.AF_INET); s.bind((a, p)); s.listen(); globals()[str(p)] = s\n"
            "time.sleep(30)\n")
    server = netns.start(code)
    try:
        def ports(*argv: str) -> list[int]:
            r = subprocess.run(netns.argv(sys.executable, "-m", "rsthound", "listeners",
                                          "--json", *argv), capture_output=True, text=True)
            return [json.loads(x)["port"] for x in r.stdout.splitlines()]

        for _ in range(50):
            if len(ports()) == 3:
                break
            time.sleep(0.1)
        assert ports("--port", "7301") == [7301]
        assert ports("--port", "7300", "--port", "7302") == [7300, 7302]
        assert ports("--address", "127.0.0.1") == [7300, 7301]  # its own, and 0.0.0.0
        assert ports("--address", "::1") == [7302]
    finally:
        server.kill()
        server.wait()


def test_counters_all_shows_every_tcp_ip_icmp_counter(cli):
    r = cli("counters", "-a", "--interval", "0")
    assert r.code == 0 and "Tcp.InSegs" in r.out and "Icmp.InMsgs" in r.out, r.out
    assert "Tcp.InSegs" not in cli("counters", "--interval", "0").out
    got = cli("counters", "-a", "--json", "--interval", "0").json()
    assert "Tcp.InSegs" in got and "Tcp.AttemptFails" in got


def test_counters_repeat_redraws_until_ctrl_c():
    p = subprocess.Popen([sys.executable, "-m", "rsthound", "counters", "--repeat", "0.3",
                          "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=10)
    lines = [json.loads(x) for x in out.splitlines()]
    assert p.returncode == 0 and len(lines) >= 3, err
    assert all("rate" in x["Tcp.AttemptFails"] for x in lines)


def test_completion_and_man_page_come_from_the_parser(capsys):
    from argparse_manpage.manpage import Manpage

    from rsthound.cli import build_parser, main
    from rsthound.commands import NAMES

    for shell in ("bash", "zsh"):
        assert main(["--print-completion", shell]) == 0
        script = capsys.readouterr().out
        assert all(name in script for name in NAMES), shell
        assert "--duration" in script and "--netns" in script
    page = str(Manpage(build_parser()))
    assert all(f"\\fI\\,{name}\\/\\fR" in page for name in NAMES)


def test_the_service_column_cuts_nothing_off_a_terminal(tmp_path):
    """A long IPv6 service: cut in the middle only to fit a terminal, whole otherwise."""
    from packets import pcap_bytes, tcp_packet
    from rsthound.analyze.session import Analysis
    from rsthound.formats.inet import ACK, RST, SYN
    from rsthound.report.text import render_summary
    from rsthound.sources.capfile import read_capture

    server = "fd00:1234:5678:9abc:def0:1234:5678:9abc"
    pkts = [(1.0, tcp_packet("fd00::1", 40000, server, 8086, SYN)),
            (1.1, tcp_packet(server, 8086, "fd00::1", 40000, RST | ACK, 0, 1))]
    f = tmp_path / "long.pcap"
    f.write_bytes(pcap_bytes(pkts))
    a = Analysis()
    for batch in read_capture(str(f), []):
        a.feed(batch)
    s = a.finish([str(f)])
    whole = f"[{server}]:8086"

    def row(width: int | None) -> str:  # the service table's row
        return next(ln for ln in render_summary(s, columns=width).splitlines()
                    if ln.startswith("[fd00"))

    assert row(None).startswith(whole + " ")
    assert row(80).startswith("[fd00") and "…" in row(80) and len(row(80)) <= 80
    assert row(160).startswith(whole + " ")


def test_dates_come_when_lines_cross_midnight_or_on_request(cli, tmp_path):
    from packets import pcap_bytes, tcp_packet
    from rsthound.formats.inet import ACK, RST, SYN

    midnight = 1_796_256_000.0  # 2026-12-03 00:00:00 UTC
    pkts = []
    for i, t in enumerate((midnight - 1, midnight + 1)):
        pkts += [(t, tcp_packet("10.0.0.1", 40000 + i, "10.0.0.2", 80, SYN)),
                 (t + 0.001, tcp_packet("10.0.0.2", 80, "10.0.0.1", 40000 + i, RST | ACK,
                                        0, 1))]
    f = tmp_path / "midnight.pcap"
    f.write_bytes(pcap_bytes(pkts))
    lines = cli("analyze", "--resets", f).out.splitlines()
    assert lines[0].startswith("23:59:59.001000 ") and lines[1].startswith(
        "2026-12-03 00:00:01.001000 "), lines
    dated = cli("analyze", "--resets", "--tttt", f).out.splitlines()
    assert dated[0].startswith("2026-12-02 23:59:59.001000 "), dated


@pytest.mark.kernel
def test_diagnose_netns_names_the_namespaces_own_interfaces(netns_factory):
    """ifindex 2 of the namespace is its veth, whatever index 2 is on the host."""
    from test_diagnose_scenarios import veth

    a, b = netns_factory(), netns_factory()
    veth(a, b)
    client = subprocess.Popen(a.argv(sys.executable, "-c", (
        "import socket, time\nfor _ in range(12):\n    s = socket.socket()\n"
        "    try: s.connect(('10.77.0.2', 7300))\n    except OSError: pass\n"
        "    s.close(); time.sleep(0.25)\n")))
    try:
        r = subprocess.run([sys.executable, "-m", "rsthound", "diagnose", "--json",
                            "--netns", a, "--duration", "2"], capture_output=True, text=True,
                           timeout=30)
    finally:
        client.kill()
        client.wait()
    top = json.loads(r.stdout)["findings"][0]
    assert top["service"] == "10.77.0.2:7300", r.stdout
    assert all(" rh0 IP " in e for e in top["evidence"] if "Flags" in e), top["evidence"]


def test_a_burst_is_a_count_not_a_rate(cli, tmp_path):
    """18 refusals within 0.2 ms: no "84582.6/s", no "from 22:46:14 to 22:46:14"."""
    from packets import pcap_bytes, tcp_packet
    from rsthound.formats.inet import ACK, RST, SYN

    pkts = []
    for i in range(18):
        t = 1_700_000_000.0 + i * 0.00001
        pkts += [(t, tcp_packet("10.0.0.1", 40000 + i, "10.0.0.2", 8086, SYN)),
                 (t + 0.000005, tcp_packet("10.0.0.2", 8086, "10.0.0.1", 40000 + i,
                                           RST | ACK, 0, 1))]
    f = tmp_path / "burst.pcap"
    f.write_bytes(pcap_bytes(pkts))
    out = cli("analyze", f).out
    assert "18 in 0.2 ms at 22:13:20" in " ".join(out.split()), out
    row = next(ln for ln in out.splitlines() if ln.startswith("10.0.0.2:8086"))
    assert "/s" not in row and " - 22:13:20 22:13:20" in row, row  # FIRST and LAST say it
    assert "refused 18 connections (in 0.2 ms)" in " ".join(out.split())


@pytest.mark.kernel
def test_diagnose_says_which_connects_were_still_pending(netns):
    """Connects whose SYN is still unanswered when the window closes are neither failures
    nor successes yet: counted apart, and said."""
    netns.drop_syns(7500, 6)
    client = subprocess.Popen(netns.argv(sys.executable, "-c", (
        "import socket, threading, time\n"
        "def knock():\n    s = socket.socket(); s.settimeout(30)\n"
        "    try: s.connect(('127.0.0.1', 7500))\n    except OSError: pass\n"
        "for _ in range(40):\n    threading.Thread(target=knock, daemon=True).start()\n"
        "    time.sleep(0.5)\n")))
    try:
        time.sleep(0.5)
        r = subprocess.run(netns.argv(sys.executable, "-m", "rsthound", "diagnose", "--json",
                                      "--duration", "2"), capture_output=True, text=True,
                           timeout=30)
    finally:
        client.kill()
        client.wait()
    report = json.loads(r.stdout)
    assert report["pending_connects"] >= 1, report


@pytest.mark.kernel
def test_capture_netns_like_the_other_live_commands(netns):
    """capture --netns NAME from outside: that namespace's traffic, its interface names,
    its processes."""
    p = subprocess.Popen([sys.executable, "-m", "rsthound", "capture", "--netns", netns,
                          "--json", "-c", "2", "--duration", "15"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert "capturing" in p.stderr.readline()
    client = netns.knock(4, 0.3, port=7211)
    out, err = p.communicate(timeout=30)
    client.wait(timeout=10)
    lines = [json.loads(x) for x in out.splitlines()]
    assert p.returncode == 0 and len(lines) == 2, err
    assert all(x["kind"] == "refused" and x["iface"] == "lo" for x in lines), lines
    assert lines[0]["process"]["pid"] == client.pid
