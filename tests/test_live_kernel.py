"""Real kernel: make traffic in a throwaway network namespace, capture it with tcpdump,
and check that `analyze` tells what happened. Needs root, ip and tcpdump (CI has them)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from conftest import DATA, Netns, need_root_tools

SCEN = str(DATA / "scenarios.py")
pytestmark = pytest.mark.kernel


def start_tcpdump(ns: Netns, path) -> subprocess.Popen:
    p = subprocess.Popen(
        ns.argv("tcpdump", "-U", "-n", "--immediate-mode", "-i", "lo", "-w", str(path)),
        stderr=subprocess.PIPE, text=True,
    )
    line = p.stderr.readline()  # "listening on lo, ..." once the socket is bound
    assert "listening on" in line, line
    return p


def stop(p: subprocess.Popen) -> None:
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    p.wait(timeout=10)


def wait_listen(ns: Netns, port: int) -> None:
    for _ in range(50):
        out = subprocess.run(ns.argv("ss", "-Hltn", f"sport = :{port}"),
                             capture_output=True, text=True).stdout
        if out.strip():
            return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


def test_refusals_and_aborts_on_loopback(netns, tmp_path, cli):
    need_root_tools("tcpdump")
    cap = tmp_path / "live.pcap"
    dump = start_tcpdump(netns, cap)
    try:
        subprocess.run(netns.argv(sys.executable, SCEN, "refused", "127.0.0.1", "7211",
                             "--count", "4", "--interval", "0.2"), check=True)
        for mode, port in (("abort-client", 9100), ("abort-server", 9101), ("normal", 8080)):
            srv = subprocess.Popen(netns.argv(sys.executable, SCEN, "server", "127.0.0.1",
                                         str(port), mode), stdout=subprocess.DEVNULL)
            wait_listen(netns, port)
            subprocess.run(netns.argv(sys.executable, SCEN, "client", "127.0.0.1",
                                 str(port), mode), check=True, stdout=subprocess.DEVNULL)
            srv.wait(timeout=10)
    finally:
        stop(dump)
    got = cli("analyze", "--json", cap).json()
    svc = {s["service"]: s for s in got["services"]}
    assert svc["127.0.0.1:7211"]["refused"] == 4
    assert svc["127.0.0.1:7211"]["answered"] == 0
    assert svc["127.0.0.1:9100"]["resets"] == {"abort": {"orig": 1}}
    assert svc["127.0.0.1:9101"]["resets"] == {"abort": {"resp": 1}}
    assert svc["127.0.0.1:8080"]["failed"] == 0 and svc["127.0.0.1:8080"]["resets"] == {}
    assert got["conn_states"] == {"REJ": 4, "RSTO": 1, "RSTR": 1, "SF": 1}
