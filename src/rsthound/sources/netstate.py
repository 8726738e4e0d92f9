"""What the network stack of a namespace says about a destination: the firewall rules that
reject or drop it (nftables), the route and the next hop's neighbour state (iproute2), and
whether an address is this namespace's own.

The programs are run inside the namespace through `nsenter --net=PATH` when one is given;
where a program is missing or refuses, the answer is None and the caller says what it
could not check.
"""

from __future__ import annotations

import contextlib
import errno
import json
import shutil
import socket
import subprocess

from rsthound.formats.nft import parse_nft_json, parse_nft_text
from rsthound.model import FirewallRule, Route
from rsthound.sources.procfs import in_netns


def _run(argv: list[str], ns_path: str | None) -> subprocess.CompletedProcess | None:
    """A program run inside the namespace; None when it cannot run."""
    if shutil.which(argv[0]) is None:
        return None
    if ns_path is not None:
        if shutil.which("nsenter") is None:
            return None
        argv = ["nsenter", f"--net={ns_path}", *argv]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None


def _output(argv: list[str], ns_path: str | None) -> str | None:
    """A program's output, run inside the namespace; None when it cannot run or fails."""
    r = _run(argv, ns_path)
    return r.stdout if r is not None and r.returncode == 0 else None


def read_firewall(ns_path: str | None = None) -> list[FirewallRule] | None:
    """The nftables rules that reject or drop TCP; None when nft is missing or refuses
    (it needs CAP_NET_ADMIN). iptables-nft rules are nftables rules too."""
    data = _output(["nft", "-j", "list", "ruleset"], ns_path)
    if data is None:
        return None
    texts = parse_nft_text(_output(["nft", "-a", "list", "ruleset"], ns_path) or "")
    return parse_nft_json(data, texts)


def read_path(addr: str, ns_path: str | None = None) -> Route | None:
    """The route to `addr` and its next hop's neighbour state; None if `ip` cannot say."""
    r = _run(["ip", "-j", "route", "get", addr], ns_path)
    if r is None:
        return None
    if r.returncode != 0:
        return Route("no-route", None, None, None) if "unreachable" in r.stderr else None
    try:
        route = json.loads(r.stdout)[0]
    except (ValueError, IndexError):
        return None
    if route.get("type") == "local":
        return Route("local", route.get("dev"), None, None)
    dev, via = route.get("dev"), route.get("gateway")
    state = None
    neigh = _output(["ip", "-j", "neigh", "show", "to", via or addr, "dev", dev or "lo"],
                    ns_path)
    with contextlib.suppress(ValueError, IndexError, TypeError):
        states = json.loads(neigh or "[]")[0].get("state") or []
        state = states[0] if states else None
    return Route("route", dev, via, state)


def is_local(addrs: set[str], ns_path: str | None = None) -> dict[str, bool]:
    """Which of these addresses belong to the namespace: bind() takes only its own."""
    def check() -> dict[str, bool]:
        out = {}
        for a in addrs:
            fam = socket.AF_INET6 if ":" in a else socket.AF_INET
            with socket.socket(fam, socket.SOCK_STREAM) as s:
                try:
                    s.bind((a, 0))
                    out[a] = True
                except OSError as e:
                    out[a] = e.errno != errno.EADDRNOTAVAIL
        return out

    return in_netns(ns_path, check) if ns_path else check()
