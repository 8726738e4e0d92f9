"""A fleet, for real: three rsthound agents watching three network namespaces (three
simulated hosts), Debian's Prometheus scraping them and evaluating contrib/prometheus/
rules.yml, and Debian's Alertmanager receiving what fires. Only the host with refusals
alerts, with its host label and the cause rsthound found."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

RULES = Path(__file__).parent.parent / "contrib" / "prometheus" / "rules.yml"
DASHBOARD = Path(__file__).parent.parent / "contrib" / "grafana" / "dashboard.json"



def fetch(url: str) -> object:
    with urllib.request.urlopen(url, timeout=3) as r:
        return json.load(r)


def test_only_the_failing_host_alerts_with_its_cause(netns_factory, tmp_path):
    prometheus = shutil.which("prometheus")
    alertmanager = shutil.which("prometheus-alertmanager")
    if prometheus is None or alertmanager is None:
        pytest.skip("needs prometheus and prometheus-alertmanager (make test installs them)")
    hosts = {name: netns_factory() for name in ("host-a", "host-b", "host-c")}
    procs: list[subprocess.Popen] = []

    def start(argv: list[str]) -> subprocess.Popen:
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(p)
        return p

    try:
        ports = {}
        for name, ns in hosts.items():
            ports[name] = free_port()
            start([sys.executable, "-m", "rsthound", "watch", "--netns", ns, "--host", name,
                   "--no-history", "--no-investigate", "--listen",
                   f"127.0.0.1:{ports[name]}"])
        client = hosts["host-b"].knock(400, 0.5)
        procs.append(client)
        am_port, prom_port = free_port(), free_port()
        (tmp_path / "am.yml").write_text("route:\n  receiver: none\nreceivers:\n"
                                         "  - name: none\n")
        start([alertmanager, f"--config.file={tmp_path / 'am.yml'}",
               f"--storage.path={tmp_path / 'am'}", "--cluster.listen-address=",
               f"--web.listen-address=127.0.0.1:{am_port}"])
        targets = "\n".join(
            f"      - targets: ['127.0.0.1:{p}']\n        labels: {{host: {name}}}"
            for name, p in ports.items())
        (tmp_path / "prom.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"rule_files: ['{RULES}']\n"
            "alerting:\n  alertmanagers:\n"
            f"    - static_configs: [{{targets: ['127.0.0.1:{am_port}']}}]\n"
            "scrape_configs:\n  - job_name: rsthound\n    static_configs:\n" + targets + "\n")
        start([prometheus, f"--config.file={tmp_path / 'prom.yml'}",
               f"--storage.tsdb.path={tmp_path / 'tsdb'}",
               f"--web.listen-address=127.0.0.1:{prom_port}"])

        def firing() -> list[dict]:
            try:
                got = fetch(f"http://127.0.0.1:{am_port}/api/v2/alerts")
            except OSError:
                return []
            return [a for a in got if a["labels"]["alertname"].startswith("RstHound_")]

        held: list[dict] = []
        end = time.monotonic() + 90
        while time.monotonic() < end:
            held = firing()
            names = {a["labels"]["alertname"] for a in held}
            if {"RstHound_failed_connections", "RstHound_failing_service"} <= names:
                break
            time.sleep(1)
        assert client.poll() is None, "the client stopped early"
        up = fetch(f"http://127.0.0.1:{prom_port}/api/v1/query?query=up")
        assert sorted(r["metric"]["host"] for r in up["data"]["result"]
                      if r["value"][1] == "1") == ["host-a", "host-b", "host-c"], up
        names = {a["labels"]["alertname"] for a in held}
        assert {"RstHound_failed_connections", "RstHound_failing_service"} <= names, held
        assert {a["labels"]["host"] for a in held} == {"host-b"}, held
        service = next(a for a in held if a["labels"]["alertname"] == "RstHound_failing_service")
        assert service["labels"]["cause"] == "no-listener", service
        assert service["labels"]["service"] == "127.0.0.1:7211", service
        failed = next(a for a in held
                      if a["labels"]["alertname"] == "RstHound_failed_connections")
        assert failed["labels"]["severity"] == "warn", failed
        assert "failed TCP connections on host-b" in failed["annotations"]["summary"]
        # the Grafana dashboard's queries run on this Prometheus, and its main panels have
        # the failing host's data
        dash = json.loads(DASHBOARD.read_text())
        for panel in dash["panels"]:
            for target in panel["targets"]:
                expr = target["expr"].replace("$host", "host-b")
                got = fetch(f"http://127.0.0.1:{prom_port}/api/v1/query?"
                            + urllib.parse.urlencode({"query": expr}))
                assert got["status"] == "success", (panel["title"], got)
                if panel["id"] in (1, 2, 4, 8):
                    assert got["data"]["result"], (panel["title"], expr)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
