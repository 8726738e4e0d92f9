"""Judgments for the connects that failed without a listener's reset: an ICMP error (from
the target or a router), this host's own output rules, no route or no neighbour, a
listener on another address, one in another network namespace, and what rsthound has no
case for."""

from __future__ import annotations

import ipaddress
from typing import Any

from rsthound.analyze.evidence import counter_evidence, most_common, n_of
from rsthound.analyze.facts import Facts, Seen
from rsthound.model import Cause, Finding, FirewallRule, Listener, process_text


def rejected(finding: Finding, seen: list[Seen], f: Facts) -> None:
    """SYNs answered by ICMP port unreachable or administratively prohibited."""
    addr, port = _server(finding)
    sender = most_common(s.sender for s in seen) or addr
    code = most_common(getattr(s.event, "code", None) for s in seen) or "unreachable"
    finding.cause = Cause.FIREWALL_REJECT
    finding.what = f"{n_of(finding.count, 'connect')} rejected (ICMP {code})"
    if sender == addr:
        rules = _rules(f, port, "reject", ("input", None)) if f.local.get(addr) else []
        finding.why = (f"{addr} answers the SYNs with ICMP {code}: a firewall rule there "
                       "rejects them (REJECT's default answer: an ICMP error, no reset)")
        _quote(finding, rules, f"open port {port} in the firewall of {addr} (nft list "
               "ruleset; iptables -S), or point the client at the right service")
    else:
        finding.why = (f"a router on the way, {sender}, answers the SYNs with ICMP {code}: "
                       f"its firewall rejects connects to {finding.service}")
        finding.fix = (f"let the connection through on {sender} (its forward rules), or "
                       "reach the service another way")
    counter_evidence(finding, f, ("Icmp.InDestUnreachs", "Icmp6.InDestUnreachs",
                                  "Tcp.AttemptFails"))


def unreachable(finding: Finding, seen: list[Seen], f: Facts) -> None:
    """An ICMP host or net unreachable, or a connect() that found no route or no
    neighbour: nothing reached the service."""
    addr, _port = _server(finding)
    finding.cause = Cause.UNREACHABLE
    path = f.paths.get(addr)
    # (an ICMP error from this host itself: its own neighbour discovery gave up)
    icmp = [s for s in seen if s.sender and not f.local.get(s.sender)]
    errno = most_common(s.connect.errno for s in seen if s.connect)
    finding.what = f"{n_of(finding.count, 'connect')} failed: {addr} unreachable"
    if icmp:
        sender = most_common(s.sender for s in icmp)
        code = most_common(getattr(s.event, "code", None) for s in icmp)
        finding.why = (f"{sender} answers the SYNs with ICMP {code}"
                       + ("" if sender == addr else " (a router on the way)"))
        finding.fix = (f"check the route to {addr} on {sender} and the hops before it "
                       f"(traceroute -T -p {finding.service.rsplit(':', 1)[1]} {addr})")
    elif errno in ("ENETUNREACH", "EACCES", "EINVAL") or (path and path.kind == "no-route"):
        finding.why = (f"connect() failed at once ({errno or 'no route'}): this host has no "
                       f"route to {addr}, so not one SYN was sent")
        finding.fix = (f"add a route to {addr} (ip route add {addr} via GATEWAY), or point "
                       "the client at an address this host can reach")
    else:
        state = path.neighbour if path is not None else None
        hop = path.via if path is not None and path.via else addr
        finding.why = (f"nobody answers neighbour discovery (ARP/ND) for {hop} on the link"
                       + (f" (neighbour {state})" if state else "")
                       + f": connect() gave up with {errno or 'EHOSTUNREACH'} after about "
                       "3 s, and no SYN ever reached the wire")
        finding.fix = (f"check that {hop} is up and on this link (ip neigh show {hop}; "
                       f"ping {hop}), or fix the client's target")
    if path is not None:
        finding.evidence.append(path.describe(addr))
    counter_evidence(finding, f, ("Tcp.AttemptFails", "Ip.OutNoRoutes")
                     + (("Icmp.InDestUnreachs", "Icmp6.InDestUnreachs") if icmp else ()))


def output_reject(finding: Finding, f: Facts) -> None:
    """A connect this host's own output rules rejected: its SYN never left, and the reset
    or ICMP error came from netfilter, not from any TCP."""
    _addr, port = _server(finding)
    rules = _rules(f, port, "reject", ("output", None))
    finding.cause = Cause.FIREWALL_REJECT
    finding.what = f"{n_of(finding.count, 'connect')} rejected by this host's output rules"
    finding.why = ("the SYNs never left this host: a firewall rule in its output path "
                   "rejects them, and the reset comes from netfilter, not from a TCP "
                   "(Tcp.OutRsts does not count it)")
    _quote(finding, rules, "find the output rule that rejects them: nft list ruleset; "
           "iptables -S")
    counter_evidence(finding, f, ("Tcp.AttemptFails", "Tcp.OutRsts"))


def unexplained(finding: Finding, seen: list[Seen]) -> None:
    errno = most_common(s.connect.errno for s in seen if s.connect) or "no error"
    finding.cause = Cause.UNEXPLAINED
    finding.what = f"{n_of(finding.count, 'connect')} failed ({errno})"
    finding.why = (f"the sockets failed with {errno}, a case rsthound has no explanation "
                   "for, and no packet of them was captured")
    finding.fix = (f"look at the client's logs; 'rsthound capture' and 'ss -tnp dst "
                   f"{finding.service}' show more")


def wrong_address(finding: Finding, others: list[Listener]) -> None:
    """Refused on ADDR:PORT while a listener on PORT is there, on another address or
    family of the same namespace."""
    addr, port = _server(finding)
    x = others[0]
    finding.cause = Cause.WRONG_ADDRESS
    finding.listener = {"addr": x.addr, "port": x.port, "endpoint": x.endpoint,
                        "process": x.process.obj() if x.process else None}
    finding.server = x.process.obj() if x.process else None
    why = [f"nothing listens on {finding.service}, but "
           f"{process_text(finding.server) if finding.server else 'a program'} listens on "
           f"port {port} at {x.endpoint}"]
    if ":" in addr and ":" not in x.addr:
        why.append("IPv4 only, while the clients come over IPv6 (did 'localhost' resolve to "
                   "::1?)")
    elif ":" not in addr and ":" in x.addr:
        why.append("IPv6 only, while the clients come over IPv4")
    elif _is_loopback(x.addr):
        why.append("on loopback only, so other addresses of this host are refused")
    else:
        why.append(f"bound to {x.addr} only")
    finding.why = ": ".join(why)
    wildcard = "::" if ":" in addr else "0.0.0.0"
    finding.fix = (f"bind the service to the address its clients use ({addr}) or to all "
                   f"addresses ({wildcard}), or point the client at {x.endpoint}")
    finding.evidence.append(f"listener {x.endpoint}" + (
        f" of {process_text(finding.server)}" if finding.server else ""))


def elsewhere_text(found: list[dict[str, Any]], port: int) -> tuple[str, str]:
    """(why, fix) for listeners on `port` in other network namespaces."""
    x = found[0]
    where = x.get("namespace") or f"netns {x['netns']}"
    owner = (x.get("container") and f"container {x['container'][:12]}") or x.get("unit")
    who = f"{x.get('comm') or 'a process'} (pid {x.get('pid')}" + (
        f", {owner})" if owner else ")")
    why = (f"; {who} listens on {x['endpoint']} in another network namespace ({where}), "
           "out of reach from here")
    fix = (f"publish the port from that namespace (docker run -p {port}:{port}, or a DNAT "
           f"rule), or run the client in that namespace (nsenter --net=/proc/{x.get('pid')}"
           "/ns/net)")
    return why, fix


def _server(finding: Finding) -> tuple[str, int]:
    addr, _, port = (finding.service or ":0").rpartition(":")
    return addr.strip("[]"), int(port)


def _rules(f: Facts, port: int, verdict: str, hooks: tuple[str | None, ...]
           ) -> list[FirewallRule]:
    return [r for r in f.firewall or () if r.verdict == verdict and r.hook in hooks
            and r.matches(port)]


def _quote(finding: Finding, rules: list[FirewallRule], otherwise: str) -> None:
    """The rule that does it, in why, evidence and fix; else what to look for."""
    if rules:
        finding.why += f" ({rules[0].text})"
        finding.evidence += [r.describe() for r in rules]
        finding.fix = _remove(rules[0])
    else:
        finding.fix = otherwise


def _remove(r: FirewallRule) -> str:
    return (f"remove or narrow that rule (nft -a list ruleset; nft delete rule {r.chain_ref} "
            f"handle {r.handle}), or let this client through")


def _is_loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return False
