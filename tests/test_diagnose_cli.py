"""`rsthound diagnose` and `rsthound demo` as users run them: a quiet namespace, no root, a
bad namespace, and the demo itself (real kernels, namespaces of our own)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from conftest import Netns


def run(ns: Netns, *argv: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run(ns.argv(*prefix, sys.executable, "-m", "rsthound", *argv),
                          capture_output=True, text=True, timeout=60)


def test_help_has_examples(cli, capsys):
    assert cli("diagnose", "--help").code == 0  # argparse prints help on sys.stdout
    out = capsys.readouterr().out
    assert "sudo rsthound diagnose --json" in out and "exit status: 0 nothing" in out


def test_a_namespace_that_does_not_exist_is_one_line(cli):
    r = cli("diagnose", "--netns", "no-such-namespace-here", "--duration", "0.1")
    assert r.code == 2 and r.err.count("\n") == 1, r.err  # the error, before anything
    assert "no such network namespace" in r.err and "Traceback" not in r.err


@pytest.mark.kernel
def test_a_quiet_namespace_is_one_line_and_exit_0(netns):
    r = run(netns, "diagnose", "--duration", "1")
    assert r.returncode == 0, r.stderr + r.stdout
    body = r.stdout.split("\n\n", 1)[1]
    assert body.startswith("Nothing abnormal: Tcp.AttemptFails +0"), r.stdout
    assert "Skipped" not in r.stdout  # as root nothing is skipped, and no history is needed


@pytest.mark.kernel
def test_without_root_it_does_what_it_can_and_says_what_it_skipped(netns):
    """As nobody, with no capabilities: the counters still show the refusals (no service
    or process: that needs capture and tracing), and the skipped parts say how to get them."""
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux)")
    client = netns.knock(40, 0.5)
    try:
        r = run(netns, "diagnose", "--json", "--duration", "2",
                prefix=("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                        "--inh-caps=-all"))
    finally:
        client.kill()
        client.wait()
    if "Permission denied" in r.stderr and not r.stdout:
        pytest.skip(f"python cannot run as nobody here: {r.stderr.strip()}")
    assert r.returncode == 1, r.stderr + r.stdout
    got = json.loads(r.stdout)
    top = got["findings"][0]
    assert (top["cause"], top["service"]) == ("no-listener", None), got
    assert "root" in top["fix"]
    skipped = " ".join(s["what"] + ": " + s["why"] for s in got["skipped"])
    assert "live capture" in skipped and "CAP_NET_RAW" in skipped, skipped
    assert "kernel trace" in skipped, skipped


@pytest.mark.kernel
def test_demo_tells_the_whole_story_and_cleans_up():
    from conftest import need_root_tools

    need_root_tools("ip")
    before = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    out = subprocess.run([sys.executable, "-m", "rsthound", "demo", "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stderr
    top = json.loads(out.stdout)["findings"][0]
    assert (top["cause"], top["service"]) == ("no-listener", "127.0.0.1:7211"), top
    assert "shipper.py" in top["clients"][0]["cmdline"]
    assert "collector.py" in top["last_listener"]["process"]["cmdline"]
    assert top["last_listener"]["stopped"] is not None
    after = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    # (other tests may make namespaces meanwhile: only the demo's must be gone)
    assert "rsthound-demo" not in after and "rsthound-demo" not in before
