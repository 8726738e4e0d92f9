"""Shared test fixtures: the in-process CLI, golden data, and the kernel-test gate."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from rsthound.cli import main

DATA = Path(__file__).parent / "data"


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> object:
        return json.loads(self.out)

    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.out.splitlines() if line.strip()]


@pytest.fixture(autouse=True)
def _utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()


@pytest.fixture(autouse=True)
def _state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`watch` keeps its history where systemd would say, here a test's own folder."""
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))


@pytest.fixture
def cli():
    """Run rsthound in-process: cli("analyze", "x.pcap") -> Result(code, out, err)."""

    def run(*argv: str) -> Result:
        out, err = io.StringIO(), io.StringIO()
        code = main([str(a) for a in argv], stdout=out, stderr=err)
        return Result(code, out.getvalue(), err.getvalue())

    return run


@pytest.fixture(scope="session")
def expected() -> dict:
    return json.loads((DATA / "expected.json").read_text())


def need_root_tools(*tools: str) -> None:
    """Skip (with the reason printed by -ra) unless root and the named programs exist."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces); CI runs as root")
    for t in tools:
        if shutil.which(t) is None:
            pytest.skip(f"needs {t} (make test installs it as root)")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing uses now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tracefs_reason_field() -> bool:
    """This kernel's tcp:tcp_send_reset carries the reset's reason (6.10+)."""
    from rsthound.errors import RstHoundError
    from rsthound.sources.tracefs import find_tracefs

    try:
        fmt = Path(find_tracefs(), "events/tcp/tcp_send_reset/format").read_text()
    except (OSError, RstHoundError):
        return False
    return "reason;" in fmt


_KNOCK = """
import socket, time
for _ in range({n}):
    s = socket.socket()
    try: s.connect(('127.0.0.1', {port}))
    except OSError: pass
    s.close(); time.sleep({gap})
"""

# each connect in a thread of its own, which ends with it: a connect left to time out does
# not hold the next back, so that knocks stay on pace
_KNOCK_THREADS = """
import os, socket, threading, time
if {cpu} >= 0: os.sched_setaffinity(0, {{{cpu}}})
def knock():
    s = socket.socket()
    try: s.connect(('{addr}', {port}))
    except OSError: pass
    s.close()
for _ in range({n}):
    threading.Thread(target=knock).start()
    time.sleep({gap})
"""


@pytest.fixture
def tracefs_root() -> str:
    """Where tracefs is (mounted if need be); the test skips, saying why, without it."""
    from rsthound.errors import RstHoundError
    from rsthound.sources.tracefs import find_tracefs

    try:
        return find_tracefs()
    except RstHoundError as e:
        pytest.skip(f"tracefs: {e}")


class Netns(str):
    """A throwaway network namespace (its name), with loopback up."""

    @property
    def name(self) -> str:
        return str(self)

    def argv(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self, *argv]

    def run(self, code: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run Python `code` inside the namespace and wait for it."""
        return subprocess.run(self.argv(sys.executable, "-c", code), check=True,
                              timeout=timeout, capture_output=True, text=True)

    def start(self, code: str) -> subprocess.Popen:
        return subprocess.Popen(self.argv(sys.executable, "-c", code),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    @contextmanager
    def sleeper(self) -> Iterator[int]:
        """A process living in the namespace, for as long as the block runs: its pid."""
        p = subprocess.Popen(self.argv("sleep", "120"))
        try:
            for _ in range(100):  # until ip netns exec has switched and exec'd sleep
                if os.readlink(f"/proc/{p.pid}/ns/net") != os.readlink("/proc/self/ns/net"):
                    break
                time.sleep(0.02)
            yield p.pid
        finally:
            p.kill()
            p.wait()

    def knock(self, n: int, gap: float, port: int = 7211) -> subprocess.Popen:
        """A client connecting to 127.0.0.1:port n times, `gap` seconds apart (refused
        where nothing listens); its pid is the Popen's."""
        return self.start(_KNOCK.format(n=n, gap=gap, port=port))

    def knock_threads(self, n: int, gap: float, port: int = 7211, addr: str = "127.0.0.1",
                      cpu: int = -1) -> subprocess.Popen:
        """A client connecting to addr:port n times, `gap` seconds apart, each connect in a
        thread of its own (left to fail in the background: knocks stay on pace), pinned to
        `cpu` when one is given; its pid is the Popen's."""
        return self.start(_KNOCK_THREADS.format(n=n, gap=gap, port=port, addr=addr, cpu=cpu))

    def drop_syns(self, port: int, syn_retries: int) -> None:
        """Silently drop SYNs to `port` (nftables), and give up connects after
        `syn_retries` retransmissions: connects there time out, and soon."""
        if shutil.which("nft") is None:
            pytest.skip("needs nft (make test installs nftables as root)")
        subprocess.run(self.argv("sh", "-c", f"echo {syn_retries} > "  # no procps needed
                                 "/proc/sys/net/ipv4/tcp_syn_retries"), check=True)
        subprocess.run(self.argv("nft", "add table inet t; add chain inet t in { type filter "
                                 "hook input priority 0; }; add rule inet t in tcp dport "
                                 f"{port} tcp flags syn drop"), check=True)

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self], check=False)


@pytest.fixture
def netns_factory():
    """Make namespaces on demand (root, ip); all are deleted afterwards."""
    need_root_tools("ip")
    made: list[Netns] = []

    def make() -> Netns:
        ns = Netns(f"rh-test-{os.getpid()}-{len(made)}")
        subprocess.run(["ip", "netns", "add", ns], check=True)
        made.append(ns)
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        return ns

    yield make
    for ns in made:
        ns.delete()


@pytest.fixture
def netns(netns_factory) -> Netns:
    return netns_factory()
