"""What explains a window's sightings besides the packets: which addresses are this
namespace's own, the firewall rules, the routes and neighbours, the listen sysctls, what a
port usually is, and watch's history (who listened before, since when a counter grows).

One `Context` per namespace. watch's always-on capture keeps one for its life: addresses
and routes are cached, the rules re-read at most every `firewall_every` seconds (and the
last ones kept where nft now refuses, after watch became a user).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from typing import Any

from rsthound.analyze.diagnosis import SINCE_METRIC, Facts
from rsthound.errors import RstHoundError
from rsthound.model import FirewallRule, ResetKind, Route
from rsthound.sinks.history import History, default_path
from rsthound.sources.netstate import is_local, read_firewall, read_path
from rsthound.sources.portnames import port_name
from rsthound.sources.procfs import NETNS_DIR, in_netns, other_namespaces
from rsthound.sources.sockdiag import ListenerReader, name_owners

SYSCTLS = {"somaxconn": "/proc/sys/net/core/somaxconn",
           "tcp_abort_on_overflow": "/proc/sys/net/ipv4/tcp_abort_on_overflow",
           "tcp_max_syn_backlog": "/proc/sys/net/ipv4/tcp_max_syn_backlog"}


class Context:
    def __init__(self, ns_path: str | None, netns: str | None = None, db: str | None = None,
                 firewall_every: float = math.inf, proc_root: str = "/proc") -> None:
        self.ns_path, self.netns, self.db = ns_path, netns, db
        self.proc_root = proc_root
        self.firewall_every = firewall_every
        self.local: dict[str, bool] = {}
        self.paths: dict[str, Route | None] = {}
        self._firewall: tuple[float, list[FirewallRule] | None] = (-math.inf, None)

    def firewall(self) -> list[FirewallRule] | None:
        """The nftables rules that reject or drop TCP; None where nft cannot say."""
        if time.monotonic() - self._firewall[0] >= self.firewall_every or (
                self._firewall[0] == -math.inf):
            got = read_firewall(self.ns_path)
            self._firewall = (time.monotonic(), got if got is not None else self._firewall[1])
        return self._firewall[1]

    def addresses(self, addrs: set[str]) -> dict[str, bool]:
        """Which of these addresses are the namespace's own (all known ones, cached)."""
        new = addrs - self.local.keys()
        if new:
            try:
                self.local.update(is_local(new, self.ns_path))
            except RstHoundError:  # the namespace cannot be entered any more: say not
                self.local.update(dict.fromkeys(new, False))
        return self.local

    def route(self, addr: str) -> Route | None:
        if addr not in self.paths:
            self.paths[addr] = read_path(addr, self.ns_path)
        return self.paths[addr]

    def sysctls(self) -> dict[str, int]:
        """The listen sysctls of the namespace, read afresh."""
        def read() -> dict[str, int]:
            out = {}
            for name, path in SYSCTLS.items():
                with contextlib.suppress(OSError, ValueError), open(path) as f:
                    out[name] = int(f.read().split()[0])
            return out

        return in_netns(self.ns_path, read) if self.ns_path else read()

    # -- a window's facts -------------------------------------------------------------------
    def network(self, facts: Facts) -> None:
        """Addresses, rules and routes for what the window saw (every tick of watch)."""
        addrs = ({s.server[0] for s in facts.seen} | {s.sender for s in facts.seen if s.sender}
                 | {s.client[0] for s in facts.seen} | {x.dst for x in facts.failed}
                 | {x.src for x in facts.failed if x.sport})
        facts.local = self.addresses(addrs)
        if facts.failed or any(s.kind in (ResetKind.REFUSED, ResetKind.TIMEOUT)
                               for s in facts.seen):
            facts.firewall = self.firewall()
            if facts.firewall is None:
                facts.skipped.append({"what": "firewall rules", "why": "nft is missing or "
                                      "was refused (it needs CAP_NET_ADMIN)",
                                      "how": "install nftables and run as root"})
        for s in facts.seen:
            if s.kind is ResetKind.TIMEOUT:
                self.route(s.server[0])
        for x in facts.failed:
            if x.errno != "ECONNREFUSED":
                self.route(x.dst)
        facts.paths = self.paths

    def explain(self, facts: Facts) -> None:
        """Everything an investigation adds: the network, the sysctls, what the refused
        ports usually are and watch's history of them."""
        self.network(facts)
        with contextlib.suppress(RstHoundError):
            facts.sysctl = self.sysctls()
        refused = {s.server[1] for s in facts.seen if s.kind is ResetKind.REFUSED} | {
            x.dport for x in facts.failed if x.errno == "ECONNREFUSED"}
        for port in refused:
            facts.port_names[port] = port_name(port).text()
        listening = {x.port for x in (*facts.listeners, *facts.listeners_before)}
        for port in refused - listening:
            found = self.elsewhere(port)
            if found:
                facts.elsewhere[port] = found
        self._history(facts, refused)

    def elsewhere(self, port: int) -> list[dict[str, Any]]:
        """The listeners on `port` in the host's other network namespaces (containers, a
        service started in the wrong one), one process of each namespace read."""
        try:
            here = os.stat(self.ns_path or f"{self.proc_root}/self/ns/net").st_ino
        except OSError:
            return []
        found = []
        names = self.names()
        for inode, pid in other_namespaces(self.proc_root, here).items():
            try:
                with ListenerReader(f"{self.proc_root}/{pid}/ns/net") as reader:
                    mine = [x for x in reader.read() if x.port == port]
            except (RstHoundError, OSError):
                continue
            for x in name_owners(mine, self.proc_root):
                p = x.process
                found.append({"endpoint": x.endpoint, "netns": inode,
                              "namespace": names.get(inode),
                              "pid": p.pid if p else None, "comm": p.comm if p else None,
                              "container": p.container if p else None,
                              "unit": p.unit if p else None})
        return found

    def names(self) -> dict[int, str]:
        """Namespace inode -> its name in /run/netns ('ip netns')."""
        out = {}
        with contextlib.suppress(OSError):
            for name in os.listdir(NETNS_DIR):
                with contextlib.suppress(OSError):
                    out[os.stat(f"{NETNS_DIR}/{name}").st_ino] = f"netns {name}"
        return out

    def _history(self, facts: Facts, ports: set[int]) -> None:
        path = self.db or default_path(self.netns)
        if not os.path.exists(path):
            if not facts.seen:
                return  # nothing to explain: the missing file does not matter now
            facts.skipped.append({"what": "history (since when, who listened before)",
                                  "why": f"no history file at {path}",
                                  "how": "run 'rsthound watch' as a service (contrib/"
                                         "rsthound-watch.service) so that it keeps one"})
            return
        try:
            with History(path) as h:
                for port in ports:
                    facts.served[port] = h.served(port)
                until = round(facts.end * 1000)
                for metric in set(SINCE_METRIC.values()):
                    facts.since[metric] = h.active_since(metric, until)
        except (RstHoundError, OSError) as e:
            facts.skipped.append({"what": "history (since when, who listened before)",
                                  "why": str(e),
                                  "how": "check the file, or pass another with --db"})
