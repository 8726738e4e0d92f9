"""The diagnosis itself, on facts made by hand (what each cause rests on), and the parsers
of the facts it reads: nftables rulesets (real nft output) and watch's history."""

from __future__ import annotations

from pathlib import Path

import pytest

from rsthound.analyze.diagnosis import Facts, Seen, diagnose
from rsthound.formats.nft import parse_nft_json, parse_nft_text
from rsthound.model import Listener, Process, ResetKind, Route

DATA = Path(__file__).parent / "data" / "nft"
CLIENT = Process(4312, "shipper", "python3 shipper.py", "root", "shipper.service", None, 1)
COLLECTOR = {"pid": 4300, "comm": "collector", "cmdline": "python3 collector.py",
             "user": "root", "unit": "collector.service", "container": None, "netns": 1}


def rules():
    texts = parse_nft_text((DATA / "ruleset.txt").read_text())
    return parse_nft_json((DATA / "ruleset.json").read_text(), texts)


def test_nft_rules_that_reject_or_drop_which_ports():
    got = {r.handle: r for r in rules()}
    assert sorted(got) == [2, 4, 5, 7]  # udp and accept rules are not ours
    assert got[2].verdict == "reject" and got[2].ports == {7400}
    assert got[2].text == "tcp dport 7400 reject with tcp reset"
    assert got[2].where == "inet t in (hook input)"
    assert got[4].verdict == "drop" and got[4].ports == {7500, 7501}
    assert got[5].matches(8000) and got[5].matches(8010) and not got[5].matches(8011)
    assert got[7].matches(7211) and not got[7].matches(22)
    assert not got[2].matches(7211)


def test_nft_output_that_is_not_json_gives_no_rules():
    assert parse_nft_json("not json", {}) == []
    assert parse_nft_json('{"nftables": [{"rule": {"family": "ip"}}]}', {}) == []


def refusal(ts: float, port: int = 7211, proc: Process | None = CLIENT,
            server: str = "127.0.0.1") -> Seen:
    return Seen(ts, ResetKind.REFUSED, (server, port), ("127.0.0.1", 40000 + int(ts)),
                server, f"{ts} lo IP ... Flags [R.]  refused by server", proc, "NO_SOCKET")


def facts(*seen: Seen, **kw) -> Facts:
    """Facts of a window; the counters move as the failed connects would move them, and the
    clients (127.0.0.1, 10.77.0.1) are this host's unless `local` says otherwise."""
    fails = sum(1 for s in seen if s.kind in (ResetKind.REFUSED, ResetKind.TIMEOUT))
    f = Facts(1000.0, 1003.0, list(seen), captured=True,
              counters={"Tcp.AttemptFails": fails, "Tcp.OutRsts": len(seen)},
              local={"127.0.0.1": True, "10.77.0.1": True}, firewall=[])
    for k, v in kw.items():
        setattr(f, k, {**f.local, **v} if k == "local" else v)
    return f


def test_refusals_to_a_dead_local_port_name_the_client_and_the_last_listener():
    f = facts(*(refusal(1000.2 + i / 2) for i in range(6)),
              served={7211: [{"addr": "127.0.0.1", "started": 900.0, "stopped": 990.0,
                              "process": COLLECTOR, "seen_start": True}]},
              port_names={7211: "no name in /etc/services"})
    [top] = diagnose(f)
    assert (top.cause, top.service, top.count) == ("no-listener", "127.0.0.1:7211", 6)
    assert top.rate_per_s == pytest.approx(2.0)
    assert top.clients == [CLIENT.obj() | {"count": 6}]
    assert top.last_listener["process"]["pid"] == 4300 and top.last_listener["stopped"] == 990
    assert top.reason == "NO_SOCKET" and top.since == pytest.approx(1000.2)
    assert "systemctl start collector.service" in top.fix
    assert any("Tcp.AttemptFails +6" in e for e in top.evidence)


def test_since_comes_from_the_history_when_it_goes_back_further():
    f = facts(refusal(1000.5), since={"Tcp.AttemptFails": 700.0})
    assert diagnose(f)[0].since == 700.0


def test_a_refusal_while_a_reject_rule_matches_is_the_firewall():
    f = facts(refusal(1000.5, port=7400), firewall=rules())
    [top] = diagnose(f)
    assert top.cause == "firewall-reject"
    assert any("reject with tcp reset" in e and "handle 2" in e for e in top.evidence)


def test_a_refusal_while_a_listener_is_there_is_not_the_listener():
    x = Listener("127.0.0.1", 7211, 0, 128, 0, 0, 77)
    f = facts(refusal(1000.5), listeners=[x])
    assert diagnose(f)[0].cause == "firewall-reject"


def test_a_refusal_from_another_host_is_a_remote_no_listener():
    f = facts(refusal(1000.5, server="10.77.0.2"), local={"10.77.0.2": False, "127.0.0.1": True})
    [top] = diagnose(f)
    assert top.cause == "no-listener" and top.last_listener is None
    assert "10.77.0.2" in top.why


def timeout(ts: float, server: str = "10.77.0.2", port: int = 7500) -> Seen:
    return Seen(ts, ResetKind.TIMEOUT, (server, port), ("10.77.0.1", 50000), None,
                "2 SYNs, no answer", CLIENT)


@pytest.mark.parametrize(("path", "rules_", "cause"), [
    (Route("route", "veth0", None, "REACHABLE"), [], "firewall-drop"),
    (Route("route", "veth0", None, "FAILED"), [], "unreachable"),
    (Route("no-route", None, None, None), [], "unreachable"),
    (Route("route", "veth0", None, "FAILED"), None, "unreachable"),
])
def test_timeouts_are_a_drop_when_the_host_answers_on_the_link(path, rules_, cause):
    f = facts(timeout(1000.5), local={"10.77.0.2": False}, paths={"10.77.0.2": path},
              firewall=rules_)
    assert diagnose(f)[0].cause == cause


def test_timeouts_with_a_drop_rule_here_name_the_rule():
    f = facts(timeout(1000.5, "127.0.0.1"), firewall=rules())
    top = diagnose(f)[0]
    assert top.cause == "firewall-drop" and "handle 4" in " ".join(top.evidence)


def test_a_full_listener_explains_timeouts_and_names_its_figures():
    before = Listener("127.0.0.1", 7600, 1, 1, 3, 0, 88)
    after = Listener("127.0.0.1", 7600, 2, 1, 9, 0, 88)
    f = facts(timeout(1000.5, "127.0.0.1", 7600), listeners_before=[before],
              listeners=[after], counters={"TcpExt.ListenOverflows": 6},
              sysctl={"somaxconn": 4096, "tcp_abort_on_overflow": 0})
    top = diagnose(f)[0]
    assert top.cause == "listen-overflow" and top.service == "127.0.0.1:7600"
    assert top.listener == {"addr": "127.0.0.1", "port": 7600, "queue": 2, "backlog": 1,
                            "drops": 9}
    assert "somaxconn = 4096" in top.fix and "6 dropped in this window" in top.why


def test_overflow_from_the_counters_alone_names_the_listener():
    before = Listener("0.0.0.0", 7600, 1, 1, 0, 0, 88)
    after = Listener("0.0.0.0", 7600, 2, 1, 4, 0, 88)
    f = facts(listeners_before=[before], listeners=[after],
              counters={"TcpExt.ListenOverflows": 4})
    [top] = diagnose(f)
    assert (top.cause, top.service, top.count) == ("listen-overflow", "0.0.0.0:7600", 4)


def abort(ts: float, sender: str, reason: str | None) -> Seen:
    return Seen(ts, ResetKind.ABORT, ("10.77.0.2", 7700), ("10.77.0.1", 50000), sender,
                "Flags [R.]  abort by server", None, reason)


def test_aborts_are_local_or_peer_by_who_sent_them():
    peer = facts(abort(1000.5, "10.77.0.2", "TCP_ABORT_ON_LINGER"),
                 local={"10.77.0.2": False, "10.77.0.1": True})
    assert diagnose(peer)[0].cause == "peer-abort"
    here = facts(abort(1000.5, "10.77.0.2", "TCP_ABORT_ON_CLOSE"),
                 local={"10.77.0.2": True, "10.77.0.1": False})
    top = diagnose(here)[0]
    assert top.cause == "local-abort" and top.reason == "TCP_ABORT_ON_CLOSE"
    assert "unread data" in top.fix


def test_resets_after_close_are_normal_and_ranked_last():
    after_close = Seen(1000.1, ResetKind.AFTER_CLOSE, ("127.0.0.1", 80), ("127.0.0.1", 5),
                       "127.0.0.1", "after-close")
    found = diagnose(facts(after_close, after_close, refusal(1000.5)))
    assert [x.cause for x in found] == ["no-listener", "normal"]
    assert not found[1].abnormal


def test_without_capture_the_counters_still_say_which_case():
    f = Facts(1000.0, 1003.0, counters={"Tcp.AttemptFails": 6, "Tcp.OutRsts": 6})
    [top] = diagnose(f)
    assert top.cause == "no-listener" and top.service is None and "root" in top.fix


def test_docs_list_every_cause_and_no_other():
    """docs/diagnose.md's table of causes is held to the Cause enum, as docs/counters.md is
    held to COUNTERS."""
    import re
    from pathlib import Path

    from rsthound.model import Cause

    doc = (Path(__file__).parent.parent / "docs" / "diagnose.md").read_text()
    rows = [ln for ln in doc.splitlines() if ln.startswith("| `")]
    documented = {w for ln in rows for w in re.findall(r"`([a-z-]+)`", ln.split("|")[1])}
    assert documented == {c.value for c in Cause}


def test_help_names_every_cause(cli, capsys):
    from rsthound.model import Cause

    cli("diagnose", "--help")
    out = " ".join(capsys.readouterr().out.split())
    assert [c.value for c in Cause if c.value not in out] == []


def test_connects_still_pending_are_said_apart():
    from rsthound.report.diagnosis import diagnosis_obj, render_diagnosis

    f = facts(refusal(1000.5), pending=3)
    found = diagnose(f)
    assert "3 connects still waiting for an answer" in render_diagnosis("box", f, found)
    assert diagnosis_obj("box", f, found)["pending_connects"] == 3
