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
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass

from rsthound.sources.procfs import in_netns


@dataclass(frozen=True)
class FirewallRule:
    """One nftables rule that ends in reject or drop."""

    family: str
    table: str
    chain: str
    hook: str | None  # "input", or None for a chain other chains jump to
    handle: int
    text: str  # as `nft -a list ruleset` prints it, without "# handle N"
    verdict: str  # "reject" or "drop"
    ports: frozenset[int] | None  # the TCP destination ports it matches; None: any

    @property
    def chain_ref(self) -> str:
        """"inet t in": how `nft delete rule` names the chain."""
        return f"{self.family} {self.table} {self.chain}"

    @property
    def where(self) -> str:
        """"inet t in (hook input)"."""
        return self.chain_ref + (f" (hook {self.hook})" if self.hook else "")

    def matches(self, port: int) -> bool:
        return self.ports is None or port in self.ports

    def describe(self) -> str:
        return f"nft rule in {self.where}: {self.text} (handle {self.handle})"


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


def parse_nft_text(text: str) -> dict[tuple[str, str, str, int], str]:
    """(family, table, chain, handle) -> the rule as nft prints it."""
    out: dict[tuple[str, str, str, int], str] = {}
    table = chain = None
    for line in text.splitlines():
        if m := re.match(r"\s*table (\S+) (\S+) \{", line):
            table = (m[1], m[2])
        elif m := re.match(r"\s*chain (\S+) \{", line):
            chain = m[1]
        elif (m := re.match(r"\s*(.*\S)\s+# handle (\d+)$", line)) and table and chain:
            out[(table[0], table[1], chain, int(m[2]))] = m[1]
    return out


def parse_nft_json(data: str, texts: dict[tuple[str, str, str, int], str]) -> list[FirewallRule]:
    """The reject and drop rules of `nft -j list ruleset`, in the order nft lists them. An
    item of a shape this code does not know is passed over, not fatal."""
    try:
        items = json.loads(data).get("nftables")
    except (ValueError, AttributeError):
        return []
    items = [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []
    hooks = {}
    for c in (i.get("chain") for i in items):
        with contextlib.suppress(TypeError, KeyError, AttributeError):
            hooks[(c["family"], c["table"], c["name"])] = c.get("hook")
    rules = []
    for item in items:
        with contextlib.suppress(TypeError, KeyError, AttributeError, ValueError):
            rule = _rule(item.get("rule"), hooks, texts)
            if rule is not None:
                rules.append(rule)
    return rules


def _rule(r: dict, hooks: dict, texts: dict) -> FirewallRule | None:
    """One rule object; None unless it rejects or drops TCP (raises on odd shapes)."""
    if not r:
        return None
    exprs = [e for e in r.get("expr") or [] if isinstance(e, dict)]
    verdict = next((v for e in exprs for v in ("reject", "drop") if v in e), None)
    if verdict is None:
        return None
    ports: set[int] | None = None
    for e in exprs:
        m = e.get("match")
        if not m:
            continue
        payload = (m.get("left") or {}).get("payload") or {}
        if payload.get("protocol") in ("udp", "icmp", "icmpv6"):
            return None  # not TCP's
        if payload.get("protocol") == "tcp" and payload.get("field") == "dport":
            got = _ports(m.get("right"), m.get("op", "=="))
            ports = got if ports is None else ports & got
    key = (str(r["family"]), str(r["table"]), str(r["chain"]), int(r["handle"]))
    return FirewallRule(*key[:3], hooks.get(key[:3]), key[3], texts.get(key, verdict),
                        verdict, None if ports is None else frozenset(ports))


def _ports(right: object, op: str) -> set[int]:
    """The ports an nft match's right side names (a number, a set, a range); 1-65535 for
    what it cannot tell, so an unreadable rule is still shown."""
    every = set(range(1, 65536))
    found: set[int] = set()
    items = right.get("set") if isinstance(right, dict) and "set" in right else [right]
    for x in items if isinstance(items, list) else [items]:
        if isinstance(x, int) and not isinstance(x, bool):
            found.add(x)
        elif isinstance(x, dict) and isinstance(x.get("range"), list) and len(
                x["range"]) == 2 and all(isinstance(v, int) for v in x["range"]):
            lo, hi = x["range"]
            found.update(range(max(lo, 1), min(hi, 65535) + 1))
        else:
            return every
    return every - found if op == "!=" else found


@dataclass(frozen=True)
class Path:
    """How this namespace would reach an address."""

    kind: str  # "local", "route", "no-route"
    dev: str | None
    via: str | None  # the gateway, or None when on-link
    neighbour: str | None  # the next hop's state: REACHABLE, STALE, FAILED, ... or None

    def describe(self, addr: str) -> str:
        if self.kind == "local":
            return f"{addr} is this host's own address"
        if self.kind == "no-route":
            return f"no route to {addr}"
        hop = f"via {self.via}" if self.via else "on-link"
        state = f", neighbour {self.neighbour}" if self.neighbour else ""
        return f"route to {addr} {hop} dev {self.dev}{state}"

    @property
    def answers_on_link(self) -> bool:
        """The next hop (or the host itself) has answered neighbour discovery lately."""
        return self.kind == "local" or self.neighbour in (
            "REACHABLE", "STALE", "DELAY", "PROBE", "PERMANENT", "NOARP")


def read_path(addr: str, ns_path: str | None = None) -> Path | None:
    """The route to `addr` and its next hop's neighbour state; None if `ip` cannot say."""
    r = _run(["ip", "-j", "route", "get", addr], ns_path)
    if r is None:
        return None
    if r.returncode != 0:
        return Path("no-route", None, None, None) if "unreachable" in r.stderr else None
    try:
        route = json.loads(r.stdout)[0]
    except (ValueError, IndexError):
        return None
    if route.get("type") == "local":
        return Path("local", route.get("dev"), None, None)
    dev, via = route.get("dev"), route.get("gateway")
    state = None
    neigh = _output(["ip", "-j", "neigh", "show", "to", via or addr, "dev", dev or "lo"],
                    ns_path)
    with contextlib.suppress(ValueError, IndexError, TypeError):
        states = json.loads(neigh or "[]")[0].get("state") or []
        state = states[0] if states else None
    return Path("route", dev, via, state)


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
