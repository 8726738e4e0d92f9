"""`rsthound diagnose` on the failures that leave no RST or move no TCP counter: ICMP
rejects (from the target, from a router), a host down on the link, no route, listeners on
the wrong address or in another namespace, this host's own output rules, client-side
connect timeouts, and two of these at once beside healthy traffic (acceptance j-s of the
socket-outcome issue).

Each client makes a known number of connects, all inside diagnose's window, so the count
the finding gives must equal the connects that really failed; the kernel trace is the
ground truth diagnose counts from.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest
from test_diagnose_scenarios import (  # noqa: F401  (_no_leftovers: the autouse clean-up)
    ENV,
    LISTENER,
    Diagnosis,
    _no_leftovers,
    _started,
    bg,
    comm,
    running,
    veth,
)

from conftest import Netns

pytestmark = pytest.mark.kernel

# N connects to HOST PORT, GAP seconds apart, each given up after TIMEOUT seconds; prints
# one line per connect that failed
CONNECTS = """
import socket, sys, time
host, port, n, gap, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \\
    float(sys.argv[4]), float(sys.argv[5])
fam = socket.AF_INET6 if ':' in host else socket.AF_INET
for _ in range(n):
    s = socket.socket(fam)
    s.settimeout(timeout)
    try:
        s.connect((host, port))
    except OSError as e:
        print(type(e).__name__, e.errno, flush=True)
    else:
        print('ok', flush=True)
    s.close()
    time.sleep(gap)
"""


def nft(ns: Netns, script: str) -> None:
    if shutil.which("nft") is None:
        pytest.skip("needs nft (make test installs nftables as root)")
    subprocess.run(ns.argv("nft", script), check=True)


def diagnose_during(ns: Netns, clients: list[tuple[Netns, tuple]], duration: float = 5.0,
                    *argv: str) -> tuple[Diagnosis, list[subprocess.Popen], list[list[str]]]:
    """diagnose in `ns` for `duration` seconds; the clients start once its window is open
    and must be done before it closes. Returns the diagnosis, the clients, and what each
    client printed (one line per connect)."""
    d = subprocess.Popen(ns.argv(sys.executable, "-m", "rsthound", "diagnose", "--json",
                                 "--duration", str(duration), *argv),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    _started.append(d)
    assert "watching" in d.stderr.readline()
    time.sleep(1.0)  # the window is open: capture, trace and counters read
    procs = []
    for where, args in clients:
        p = subprocess.Popen(where.argv(sys.executable, "-c", CONNECTS, *map(str, args)),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=ENV)
        _started.append(p)
        procs.append(p)
    said = [p.communicate(timeout=duration)[0].split("\n")[:-1] for p in procs]
    out, err = d.communicate(timeout=30)
    assert d.returncode in (0, 1), f"exit {d.returncode}: {err}{out}"
    report = json.loads(out)
    for p in procs:
        assert p.returncode == 0, p.stderr
    return Diagnosis(d.returncode, report, err), procs, said


def check(d: Diagnosis, f: dict, service: str, cause: str, client: subprocess.Popen,
          n: int, errno: str | None) -> None:
    """The finding names the service, the cause and the client, and counts the connects
    that really failed, as the trace counted them."""
    assert (f["service"], f["cause"]) == (service, cause), str(d)
    assert [c["pid"] for c in f["clients"]] == [client.pid], str(d)
    assert f["clients"][0]["comm"] == comm(), str(d)
    assert f["count"] == n and f["connects"] == n, str(d)
    assert f["errno"] == errno, str(d)


def failed(said: list[str]) -> int:
    return sum(1 for line in said if line != "ok")


def router(a: Netns, r: Netns, b: Netns) -> tuple[str, str]:
    """a (10.78.0.1) - r - b (10.79.0.2), r forwarding: b's address and r's near side."""
    for x, y, n in ((a, r, "rha"), (r, b, "rhb")):
        subprocess.run(["ip", "-n", x, "link", "add", n, "type", "veth", "peer", "name", n,
                        "netns", y], check=True)
    for ns, dev, addr in ((a, "rha", "10.78.0.1/24"), (r, "rha", "10.78.0.2/24"),
                          (r, "rhb", "10.79.0.1/24"), (b, "rhb", "10.79.0.2/24")):
        subprocess.run(["ip", "-n", ns, "addr", "add", addr, "dev", dev], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
    subprocess.run(["ip", "-n", a, "route", "add", "default", "via", "10.78.0.2"], check=True)
    subprocess.run(["ip", "-n", b, "route", "add", "default", "via", "10.79.0.1"], check=True)
    subprocess.run(r.argv("sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"), check=True)
    return "10.79.0.2", "10.78.0.2"


def test_j_the_targets_firewall_rejects_with_icmp(netns_factory):
    """REJECT's default: an ICMP port unreachable from the target, no RST anywhere."""
    a, b = netns_factory(), netns_factory()
    veth(a, b)
    nft(b, "add table inet t; add chain inet t in { type filter hook input priority 0; }; "
           "add rule inet t in tcp dport 7300 reject")
    d, (client,), (said,) = diagnose_during(a, [(a, ("10.77.0.2", 7300, 2, 0.1, 5))])
    assert failed(said) == 2, said
    check(d, d.top, "10.77.0.2:7300", "firewall-reject", client, 2, "ECONNREFUSED")
    assert "ICMP port unreachable" in d.top["why"] and "10.77.0.2" in d.top["why"], str(d)
    assert d.report["failed_connects"] == {"total": 2, "explained": 2, "source": "trace"}


def test_k_a_router_on_the_way_rejects_with_admin_prohibited(netns_factory):
    a, r, b = netns_factory(), netns_factory(), netns_factory()
    target, hop = router(a, r, b)
    nft(r, "add table inet t; add chain inet t fw { type filter hook forward priority 0; }; "
           "add rule inet t fw tcp dport 7300 reject with icmpx admin-prohibited")
    d, (client,), (said,) = diagnose_during(a, [(a, (target, 7300, 2, 0.1, 5))])
    assert failed(said) == 2, said
    check(d, d.top, f"{target}:7300", "firewall-reject", client, 2, "EHOSTUNREACH")
    assert f"router on the way, {hop}" in d.top["why"], str(d)
    assert "prohibited" in d.top["why"], str(d)


def test_l_a_host_down_on_the_link(netns_factory):
    """Nobody answers ARP for 10.77.0.9: EHOSTUNREACH after about 3 s, not one SYN out."""
    a, b = netns_factory(), netns_factory()
    veth(a, b)
    d, (client,), (said,) = diagnose_during(a, [(a, ("10.77.0.9", 7300, 1, 0, 10))], 6.0)
    assert failed(said) == 1, said
    check(d, d.top, "10.77.0.9:7300", "unreachable", client, 1, "EHOSTUNREACH")
    assert "neighbour" in d.top["why"] and "10.77.0.9" in d.top["why"], str(d)
    assert d.code == 1, str(d)


def test_m_no_route_to_the_target(netns_factory):
    """connect() fails at once with ENETUNREACH: no state change, no packet at all."""
    a = netns_factory()
    d, (client,), (said,) = diagnose_during(a, [(a, ("10.99.0.1", 7300, 3, 0.1, 5))])
    assert failed(said) == 3, said
    check(d, d.top, "10.99.0.1:7300", "unreachable", client, 3, "ENETUNREACH")
    assert "no route" in d.top["why"], str(d)


def test_n_a_loopback_only_listener_reached_on_another_address(netns_factory):
    a, b = netns_factory(), netns_factory()
    veth(a, b)
    server = bg(a, LISTENER, "127.0.0.1", 7300, 64, 0.1)
    time.sleep(0.3)
    running(server)
    d, (client,), (said,) = diagnose_during(a, [(a, ("10.77.0.1", 7300, 3, 0.1, 5))])
    assert failed(said) == 3, said
    check(d, d.top, "10.77.0.1:7300", "wrong-address", client, 3, "ECONNREFUSED")
    assert d.top["listener"]["endpoint"] == "127.0.0.1:7300", str(d)
    assert d.top["server"]["pid"] == server.pid and "loopback" in d.top["why"], str(d)
    assert "10.77.0.1" in d.top["fix"] and "0.0.0.0" in d.top["fix"], str(d)


def test_o_an_ipv4_only_listener_reached_on_ipv6_localhost(netns):
    server = bg(netns, LISTENER, "127.0.0.1", 7300, 64, 0.1)
    time.sleep(0.3)
    running(server)
    d, (client,), (said,) = diagnose_during(netns, [(netns, ("::1", 7300, 3, 0.1, 5))])
    assert failed(said) == 3, said
    check(d, d.top, "[::1]:7300", "wrong-address", client, 3, "ECONNREFUSED")
    assert "IPv4 only" in d.top["why"] and d.top["server"]["pid"] == server.pid, str(d)


def test_p_a_listener_in_another_namespace(netns_factory):
    """The port is served one namespace away: named, with how to reach it."""
    a, b = netns_factory(), netns_factory()
    server = bg(b, LISTENER, "127.0.0.1", 7300, 64, 0.1)
    time.sleep(0.3)
    running(server)
    d, (client,), (said,) = diagnose_during(a, [(a, ("127.0.0.1", 7300, 3, 0.1, 5))])
    assert failed(said) == 3, said
    check(d, d.top, "127.0.0.1:7300", "no-listener", client, 3, "ECONNREFUSED")
    there = [x for x in d.top["elsewhere"] if x["pid"] == server.pid]
    assert there and there[0]["endpoint"] == "127.0.0.1:7300", str(d)
    assert there[0]["namespace"] == f"netns {b}", str(d)
    assert "another network namespace" in d.top["why"], str(d)


def test_q_this_hosts_output_chain_rejects_with_a_reset(netns_factory):
    """The SYN never leaves; netfilter's reset is what the client gets."""
    a, b = netns_factory(), netns_factory()
    veth(a, b)
    nft(a, "add table inet t; add chain inet t out { type filter hook output priority 0; }; "
           "add rule inet t out tcp dport 7300 reject with tcp reset")
    d, (client,), (said,) = diagnose_during(a, [(a, ("10.77.0.2", 7300, 3, 0.1, 5))])
    assert failed(said) == 3, said
    check(d, d.top, "10.77.0.2:7300", "firewall-reject", client, 3, "ECONNREFUSED")
    assert "output" in d.top["why"], str(d)
    assert any("hook output" in e and "reject with tcp reset" in e
               for e in d.top["evidence"]), str(d)
    assert [f for f in d.report["findings"] if f["abnormal"]] == [d.top], str(d)


def test_r_a_client_that_gives_up_after_2_s_on_a_dropping_firewall(netns_factory):
    """The client's own connect timeout: Tcp.AttemptFails does not move, the trace counts
    each one."""
    a, b = netns_factory(), netns_factory()
    veth(a, b)
    nft(b, "add table inet t; add chain inet t in { type filter hook input priority 0; }; "
           "add rule inet t in tcp dport 7300 drop")
    d, (client,), (said,) = diagnose_during(a, [(a, ("10.77.0.2", 7300, 2, 0, 2))], 6.5)
    assert failed(said) == 2, said
    check(d, d.top, "10.77.0.2:7300", "firewall-drop", client, 2, None)
    assert d.report["counters"]["Tcp.AttemptFails"] == 0, str(d)
    assert d.report["failed_connects"]["total"] == 2, str(d)


def test_s_two_failures_at_once_beside_healthy_traffic(netns_factory):
    """An ICMP reject and no route at once, while another service answers: two findings,
    and nothing abnormal for the healthy one."""
    a, b = netns_factory(), netns_factory()
    veth(a, b)
    nft(b, "add table inet t; add chain inet t in { type filter hook input priority 0; }; "
           "add rule inet t in tcp dport 7300 reject")
    server = bg(b, LISTENER, "10.77.0.2", 7400, 64, 0.01)
    time.sleep(0.3)
    running(server)
    d, (rejected, lost, healthy), said = diagnose_during(a, [
        (a, ("10.77.0.2", 7300, 2, 0.1, 5)), (a, ("10.99.0.1", 7300, 3, 0.1, 5)),
        (a, ("10.77.0.2", 7400, 10, 0.1, 5))])
    assert [failed(x) for x in said] == [2, 3, 0], said
    abnormal = {f["service"]: f for f in d.report["findings"] if f["abnormal"]}
    assert set(abnormal) == {"10.77.0.2:7300", "10.99.0.1:7300"}, str(d)
    check(d, abnormal["10.77.0.2:7300"], "10.77.0.2:7300", "firewall-reject", rejected, 2,
          "ECONNREFUSED")
    check(d, abnormal["10.99.0.1:7300"], "10.99.0.1:7300", "unreachable", lost, 3,
          "ENETUNREACH")
    assert d.report["failed_connects"] == {"total": 5, "explained": 5, "source": "trace"}
    assert healthy.pid not in [c["pid"] for f in d.report["findings"] for c in f["clients"]]
