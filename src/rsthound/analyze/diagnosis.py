"""From what one window of watching saw to ranked findings: what fails, who, why, since
when, and what to do.

Pure: `diagnose(Facts)` reads the facts `investigate.collect` gathered (packets already
classified into resets and timeouts, the processes and reset reasons the kernel trace gave,
counters, listeners, firewall rules, routes, history) and decides. Each finding keeps the
facts it stands on, so a person can check it.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from rsthound.analyze import unreached
from rsthound.analyze.connects import accounting, connects, tie
from rsthound.analyze.evidence import counter_evidence, most_common, n_of
from rsthound.analyze.facts import Facts, Seen
from rsthound.model import Cause, Finding, Listener, Process, ResetKind, process_text, takes
from rsthound.textforms import clock, endpoint

# which counter tells since when each cause goes on (in watch's history)
SINCE_METRIC = {
    Cause.NO_LISTENER: "Tcp.AttemptFails", Cause.FIREWALL_REJECT: "Tcp.AttemptFails",
    Cause.FIREWALL_DROP: "Tcp.AttemptFails", Cause.UNREACHABLE: "Tcp.AttemptFails",
    Cause.LISTEN_OVERFLOW: "TcpExt.ListenOverflows", Cause.LOCAL_ABORT: "Tcp.OutRsts",
    Cause.PEER_ABORT: "Tcp.EstabResets",
}
SAMPLES = 3  # packet lines kept as evidence per finding
SHOWN_COUNTERS = ("Tcp.AttemptFails", "Tcp.OutRsts", "Tcp.EstabResets",
                  "TcpExt.ListenOverflows", "TcpExt.TCPSynRetrans")


def diagnose(f: Facts) -> list[Finding]:
    """Ranked findings: abnormal ones first, the most frequent first."""
    groups: dict[tuple[tuple[str, int], str], list[Seen]] = {}
    for s in tie(f):
        groups.setdefault((s.server, _category(s, f)), []).append(s)
    found: dict[tuple[str | None, str], Finding] = {}
    for (server, category), seen in groups.items():
        finding = _judge(server, category, seen, f)
        key = (finding.service, finding.cause)
        if key in found:  # timeouts and aborts of one overflowing listener: one finding
            _merge(found[key], finding, f)
        else:
            found[key] = finding
    for finding in _from_counters(f, found):
        found[(finding.service, finding.cause)] = finding
    findings = list(found.values())
    left = _unaccounted(f, findings)
    if left is not None:
        findings.append(left)
    # explained first: what is left unexplained is said last
    return sorted(findings, key=lambda x: (not x.abnormal, x.cause == Cause.UNEXPLAINED,
                                           -x.count, x.service or ""))


def _unaccounted(f: Facts, findings: list[Finding]) -> Finding | None:
    """The failed connects no finding accounts for, said as such: never silent."""
    got = accounting(f, findings)
    n = got["total"] - got["explained"]
    if n <= 0:
        return None
    source = ("traced, and none of them explained" if got["source"] == "trace" else
              "counted by the kernel (Tcp.AttemptFails), and neither captured nor traced")
    finding = Finding(None, Cause.UNEXPLAINED, n, n / f.seconds,
                      f"{n_of(n, 'connect')} failed unexplained",
                      f"{n_of(n, 'failed connect')} {source}",
                      "run as root so that rsthound can capture and trace (sudo rsthound "
                      "diagnose), or watch longer (--duration 10)", connects=n)
    counter_evidence(finding, f, ("Tcp.AttemptFails", "Tcp.OutRsts", "TcpExt.TCPSynRetrans",
                                  "Icmp.InDestUnreachs"))
    finding.since = f.start
    return finding


def _category(s: Seen, f: Facts) -> str:
    if s.via in ("output", "unexplained"):
        return s.via
    if s.kind is ResetKind.ABORT or s.kind is ResetKind.STRAY:
        return "abort-local" if s.sender and f.local.get(s.sender) else "abort-peer"
    return s.kind.value


# -- one group of resets or timeouts to one service --------------------------------------
def _judge(server: tuple[str, int], category: str, seen: list[Seen], f: Facts) -> Finding:
    addr, port = server
    service = endpoint(addr, port)
    local = f.local.get(addr, False)
    n = len(seen)
    rate = n / f.seconds
    listener = _listener_on(f, addr, port) if local else None
    overflowing = listener is not None and _overflowing(listener, f)
    evidence = [s.line + (f"  reason {s.reason}" if s.reason else "") for s in seen[:SAMPLES]]
    reason = most_common(s.reason for s in seen)
    finding = Finding(service, Cause.NORMAL, n, rate, "", "", "", first=min(s.ts for s in seen),
                      clients=_clients(seen), reason=reason, evidence=evidence,
                      errno=most_common(s.connect.errno for s in seen if s.connect),
                      connects=connects(seen, f))
    if listener is not None:
        finding.server = listener.process.obj() if listener.process else None
    rules = [r for r in f.firewall or () if r.matches(port)]

    if category == "output":
        unreached.output_reject(finding, f)
    elif category == "unexplained":
        unreached.unexplained(finding, seen)
    elif category == ResetKind.REJECTED.value:
        unreached.rejected(finding, seen, f)
    elif category == ResetKind.UNREACHABLE.value:
        unreached.unreachable(finding, seen, f)
    elif category == "refused":
        finding.what = f"{n_of(n, 'connect')} refused"
        # (the SYNs reached the wire: this host's output rules are not what rejects them)
        rejects = [r for r in rules if r.verdict == "reject" and r.hook != "output"]
        if rejects or listener is not None:
            finding.cause = Cause.FIREWALL_REJECT
            finding.evidence += [r.describe() for r in rejects]
            finding.why = (f"{service} has a listener, yet its connects are refused: "
                           if listener is not None else "")
            if rejects:
                finding.why += f"a firewall rule rejects them ({rejects[0].text})"
                finding.fix = (f"remove or narrow that rule (nft -a list ruleset; nft delete "
                               f"rule {rejects[0].chain_ref} handle {rejects[0].handle}), or "
                               "let this client through")
            else:
                finding.why += "the resets do not come from it (a firewall rule or a middlebox)"
                finding.fix = "find the rule that rejects them: nft list ruleset, iptables-save"
            counter_evidence(finding, f, ("Tcp.OutRsts", "Tcp.AttemptFails"))
        elif others := [x for x in (*f.listeners, *f.listeners_before)
                        if local and x.port == port]:
            unreached.wrong_address(finding, others)
            counter_evidence(finding, f, ("Tcp.OutRsts", "Tcp.AttemptFails"))
        else:
            _no_listener(finding, addr, port, local, f)
    elif category == "injected?":
        finding.cause = Cause.FIREWALL_REJECT
        finding.what = f"{n_of(n, 'reset')} not from {service}'s own stack"
        finding.why = ("the resets' TTL or IP ID does not fit the server's other packets: a "
                       "firewall or middlebox on the way sends them")
        finding.fix = "find the device that rejects the connection on the way (traceroute -T)"
    elif category == "timeout":
        finding.what = f"{n_of(n, 'connect')} timed out (SYNs unanswered)"
        drops = [r for r in rules if r.verdict == "drop"]
        path = f.paths.get(addr)
        if overflowing and listener is not None:
            _overflow(finding, listener, f)
        elif drops:
            finding.cause = Cause.FIREWALL_DROP
            finding.evidence += [r.describe() for r in drops]
            finding.why = f"a firewall rule here drops the SYNs ({drops[0].text})"
            finding.fix = (f"remove or narrow that rule (nft delete rule {drops[0].chain_ref} "
                           f"handle {drops[0].handle}), or let this client through")
        elif path is not None and path.answers_on_link:
            finding.cause = Cause.FIREWALL_DROP
            finding.evidence.append(path.describe(addr))
            finding.why = (f"{addr} answers on the link, but nothing answers the SYNs to port "
                           f"{port}: a firewall drops them (on {addr} or on the way)")
            finding.fix = (f"open port {port} in the firewall in front of {service} (or on "
                           "it), or fix the client's target")
        else:
            finding.cause = Cause.UNREACHABLE
            if path is not None:
                finding.evidence.append(path.describe(addr))
            finding.why = (f"{addr} does not answer at all"
                           + (f" ({path.describe(addr)})" if path is not None else ""))
            finding.fix = (f"check that {addr} is up and is the right address (ip route get "
                           f"{addr}; ip neigh)")
        counter_evidence(finding, f, ("Tcp.AttemptFails", "TcpExt.TCPSynRetrans"))
    elif category.startswith("abort"):
        if overflowing and listener is not None and f.sysctl.get("tcp_abort_on_overflow"):
            finding.what = f"{n_of(n, 'connection')} reset by a full listener"
            _overflow(finding, listener, f)
        else:
            by_local = category == "abort-local"
            finding.cause = Cause.LOCAL_ABORT if by_local else Cause.PEER_ABORT
            finding.what = f"{n_of(n, 'open connection')} reset by " + (
                "this host" if by_local else "the peer")
            why = f" (the kernel's reason: {reason})" if reason else ""
            finding.why = ((f"a local program ({process_text(finding.server)}) " if by_local and
                            finding.server else "this host " if by_local else
                            f"{addr}'s side ") + f"resets open connections{why}")
            finding.fix = _ABORT_FIX.get(reason or "", _ABORT_FIX[""])
            counter_evidence(finding, f, ("Tcp.EstabResets", "Tcp.OutRsts"))
    else:  # after-close
        finding.what = f"{n_of(n, 'reset')} after a close"
        finding.why = ("resets that follow a FIN: a request crossed the server's close of an "
                       "idle keep-alive connection, ordinary churn")
        finding.fix = "nothing to do"
    finding.since = _since(finding, f)
    return finding


_ABORT_FIX = {
    "TCP_ABORT_ON_CLOSE": "the program closes sockets with unread data: read what the peer "
                          "sent before close(), or shutdown(SHUT_WR) and drain first",
    "TCP_ABORT_ON_LINGER": "the program closes with SO_LINGER 0 (an abortive close): drop "
                           "that option unless the reset is wanted",
    "TCP_ABORT_ON_DATA": "data arrives after the program closed: finish the exchange (or "
                         "shutdown the write side) before closing",
    "TCP_KEEPALIVE_TIMEOUT": "keep-alive probes went unanswered: the peer or a NAT on the "
                             "way forgot the connection",
    "": "look at the resetting side's logs (a crash, a timeout, SO_LINGER 0, or a close "
        "with unread data)",
}


def _no_listener(finding: Finding, addr: str, port: int, local: bool, f: Facts) -> None:
    finding.cause = Cause.NO_LISTENER
    service = finding.service
    usually = f.port_names.get(port)
    finding.usually = usually
    rows = f.served.get(port) or []
    last = next((r for r in rows if r["stopped"] is not None), None) if local else None
    if local and rows and last is None:
        last = rows[0]
    if not local:
        finding.why = f"nothing listens on {service}: {addr} answers the SYNs with resets"
        finding.fix = (f"start the service on {addr}, or point the client"
                       f"{_client_hint(finding)} at the right address and port")
        return
    finding.why = f"nothing listens on port {port} here"
    if last is not None:
        finding.last_listener = last
        proc = last.get("process") or {}
        if last["stopped"] is not None:
            finding.why += (f"; it was served by {process_text(proc)} until "
                            f"{clock(last['stopped'])}, nothing since")
        finding.fix = (f"start it again: systemctl start {proc['unit']}" if proc.get("unit")
                       else f"start it again ({proc.get('cmdline') or 'its program'})")
    else:
        finding.why += " (and 'rsthound watch' has no record of anything listening there)"
        finding.fix = "start the service that should listen there"
    if usually:
        finding.why += f"; port {port}: {usually}"
    finding.fix += (f", or point the client{_client_hint(finding)} at the right port")
    if f.elsewhere.get(port):
        finding.elsewhere = f.elsewhere[port]
        why, fix = unreached.elsewhere_text(finding.elsewhere, port)
        finding.why += why
        finding.fix = fix + "; or " + finding.fix
    counter_evidence(finding, f, ("Tcp.AttemptFails", "Tcp.OutRsts"))


def _overflow(finding: Finding, x: Listener, f: Facts) -> None:
    finding.cause = Cause.LISTEN_OVERFLOW
    finding.listener = {"addr": x.addr, "port": x.port, "queue": x.queue,
                        "backlog": x.backlog, "drops": x.drops}
    finding.server = x.process.obj() if x.process else finding.server
    grew = _drops_grew(x, f)
    somax = f.sysctl.get("somaxconn")
    abort = f.sysctl.get("tcp_abort_on_overflow")
    finding.why = (f"{x.endpoint}'s accept queue is full: {x.queue} waiting, backlog "
                   f"{x.backlog}" + (f", {grew} dropped in this window" if grew else "")
                   + (f", {x.drops} dropped in all" if x.drops else "")
                   + f"; {process_text(finding.server) if finding.server else 'its program'}"
                   " accepts too slowly" + ("; tcp_abort_on_overflow=1, so clients get resets"
                                   if abort else "; SYNs are dropped, clients retry and "
                                   "time out (tcp_abort_on_overflow=0)"))
    if somax is not None and x.backlog is not None and x.backlog >= somax:
        finding.fix = (f"make it accept faster; its backlog is capped by net.core.somaxconn "
                       f"= {somax}: raise both (sysctl -w net.core.somaxconn={somax * 4}, "
                       "and the program's listen() backlog)")
    else:
        finding.fix = (f"make it accept faster, or raise the backlog it passes to listen() "
                       f"(now {x.backlog}; the kernel allows up to net.core.somaxconn = "
                       f"{somax})")
    finding.evidence.append(f"listener {x.endpoint}: queue {x.queue}, backlog {x.backlog}, "
                            f"drops {x.drops}; net.core.somaxconn {somax}, "
                            f"net.ipv4.tcp_abort_on_overflow {abort}")
    counter_evidence(finding, f, ("TcpExt.ListenOverflows", "TcpExt.ListenDrops"))
    if not finding.what:
        finding.what = f"{n_of(finding.count, 'connection')} dropped by a full listener"


def _merge(into: Finding, other: Finding, f: Facts) -> None:
    into.count += other.count
    into.rate_per_s = into.count / f.seconds
    into.what = f"{n_of(into.count, 'connection')} failed"
    if other.first is not None and (into.first is None or other.first < into.first):
        into.first = other.first
    by_pid = {c["pid"]: c for c in into.clients}
    for c in other.clients:
        if c["pid"] in by_pid:
            by_pid[c["pid"]]["count"] += c["count"]
        else:
            into.clients.append(c)
    into.evidence += [e for e in other.evidence if e not in into.evidence]


# -- what the counters and listeners show without packets --------------------------------
def _from_counters(f: Facts, found: dict[tuple[str | None, str], Finding]) -> list[Finding]:
    out = []
    grew = f.counters.get("TcpExt.ListenOverflows") or 0
    if grew and not any(x.cause == Cause.LISTEN_OVERFLOW for x in found.values()):
        full = sorted((x for x in f.listeners if _overflowing(x, f)),
                      key=lambda x: (-_drops_grew(x, f), -x.queue))
        if full:
            x = full[0]
            n = _drops_grew(x, f) or grew
            finding = Finding(x.endpoint, Cause.LISTEN_OVERFLOW, n, n / f.seconds, "", "", "")
            _overflow(finding, x, f)
            finding.since = _since(finding, f)
            out.append(finding)
    fails = f.counters.get("Tcp.AttemptFails") or 0
    if not f.captured and fails:
        rsts = f.counters.get("Tcp.OutRsts") or 0
        refused = rsts >= fails / 2
        finding = Finding(
            None, Cause.NO_LISTENER if refused else Cause.UNREACHABLE, fails, fails / f.seconds,
            f"{n_of(fails, 'connect')} failed (Tcp.AttemptFails)",
            ("this host refused its own connects (Tcp.OutRsts grew as much): nothing listens "
             "on a local port they go to" if refused else
             "connects failed without this host sending resets: timeouts, or refusals from "
             "elsewhere"),
            "run as root to see which service and which process (capture and tracing)",
            connects=fails)
        counter_evidence(finding, f, ("Tcp.AttemptFails", "Tcp.OutRsts",
                                       "TcpExt.TCPSynRetrans"))
        finding.since = _since(finding, f)
        out.append(finding)
    return out


# -- small pieces ---------------------------------------------------------------------------
def _listener_on(f: Facts, addr: str, port: int) -> Listener | None:
    """The listener that takes connects to addr:port (its address, or a wildcard), now or
    at the start of the window (one that died meanwhile still explains the window)."""
    for group in (f.listeners, f.listeners_before):
        for x in group:
            if x.port == port and takes(x.addr, addr):
                return x
    return None


def _overflowing(x: Listener, f: Facts) -> bool:
    return x.full or _drops_grew(x, f) > 0 or (
        bool(f.counters.get("TcpExt.ListenOverflows")) and x.backlog is not None
        and x.queue >= x.backlog)


def _drops_grew(x: Listener, f: Facts) -> int:
    before = next((b for b in f.listeners_before if b.inode == x.inode), None)
    if before is None or before.drops is None or x.drops is None:
        return 0
    return max(0, x.drops - before.drops)


def _clients(seen: list[Seen]) -> list[dict[str, Any]]:
    """One entry per process id (what /proc said of it may differ from look to look: a
    process that changed its name, or one looked at before and after watch became a
    user), the first description kept."""
    counts: Counter[int] = Counter()
    first: dict[int, Process] = {}
    for s in seen:
        if s.process is not None:
            counts[s.process.pid] += 1
            first.setdefault(s.process.pid, s.process)
    return [first[pid].obj() | {"count": n} for pid, n in counts.most_common()]


def _client_hint(finding: Finding) -> str:
    return f", {process_text(finding.clients[0])}," if finding.clients else ""


def _since(finding: Finding, f: Facts) -> float | None:
    """When this began: the start of the counter's run in watch's history, else the first
    sight in this window."""
    run = f.since.get(SINCE_METRIC.get(finding.cause, ""))
    if run is not None and (finding.first is None or run < finding.first):
        return run
    return finding.first if finding.first is not None else f.start
