"""nftables rules as `nft` prints them: the JSON of `nft -j list ruleset` for what a rule
matches and does, the text of `nft -a list ruleset` for how people read it (with handles).
Only rules that reject or drop TCP are kept.
"""

from __future__ import annotations

import contextlib
import json
import re

from rsthound.model import FirewallRule


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
