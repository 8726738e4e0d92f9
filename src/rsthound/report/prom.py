"""`watch --listen`'s /metrics, in the Prometheus text format (prometheus-client).

Names (docs/metrics.md has the table):

- kernel counters: `rsthound_netstat_<Group>_<Name>_total`, the name node_exporter's
  netstat collector gives the same counter (`node_netstat_Tcp_AttemptFails`) with
  rsthound's prefix and the `_total` of a counter;
- `rsthound_failed_connections_total{cause,service}` and
  `rsthound_resets_total{kind,direction,service}` from the always-on capture, services
  bounded (the first N, then "other");
- `rsthound_alert_active{rule,level}`, `rsthound_capture_up`, and per listener
  `rsthound_listener_queue`, `rsthound_listener_backlog`, `rsthound_listener_drops_total`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from rsthound.metrics import COUNTERS

MAX_LISTENERS = 100


def counter_name(kernel: str) -> str:
    """"Tcp.AttemptFails" -> "rsthound_netstat_Tcp_AttemptFails" (without _total)."""
    return "rsthound_netstat_" + kernel.replace(".", "_")


class WatchCollector(Collector):
    """Reads `state` (sinks.web.WatchState) at each scrape."""

    def __init__(self, state: Any) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        snap = self.state.snapshot()
        values = snap["values"]
        for m in COUNTERS:
            if values.get(m.name) is not None:
                c = CounterMetricFamily(counter_name(m.name), m.meaning, unit="")
                c.add_metric([], values[m.name])
                yield c
        failed = CounterMetricFamily(
            "rsthound_failed_connections", "Failed TCP connections seen by the always-on "
            "capture, by cause (as rsthound diagnose names it) and service (ip:port; "
            "past the first N services: other).", labels=["cause", "service"])
        resets = CounterMetricFamily(
            "rsthound_resets", "TCP resets seen by the always-on capture, by kind, direction "
            "(sent by this host, or received) and service.",
            labels=["kind", "direction", "service"])
        monitor = snap["monitor"]
        if monitor is not None:
            for (cause, service), n in sorted(monitor["failed"].items()):
                failed.add_metric([cause, service], n)
            for (kind, direction, service), n in sorted(monitor["resets"].items()):
                resets.add_metric([kind, direction, service], n)
        yield failed
        yield resets
        up = GaugeMetricFamily("rsthound_capture_up", "1 while the always-on capture runs "
                               "(it needs CAP_NET_RAW), else 0.")
        up.add_metric([], 1 if monitor and monitor["running"] else 0)
        yield up
        alert = GaugeMetricFamily("rsthound_alert_active", "1 for each rule alerting now, "
                                  "with its level.", labels=["rule", "level"])
        for rule, level in sorted(snap["active"].items()):
            alert.add_metric([rule, level], 1)
        yield alert
        yield from _listeners(snap["listeners"])


def _listeners(found: list[Any]) -> Iterator[Metric]:
    queue = GaugeMetricFamily("rsthound_listener_queue", "Connections waiting for accept() "
                              "on a listening socket.", labels=["listener"])
    backlog = GaugeMetricFamily("rsthound_listener_backlog", "A listening socket's "
                                "accept-queue limit (listen() backlog, capped by somaxconn).",
                                labels=["listener"])
    drops = CounterMetricFamily("rsthound_listener_drops", "Connections a listening socket "
                                "dropped (queue full, and other causes).", labels=["listener"])
    fullest = sorted(found, key=lambda x: -(x.queue / max(x.backlog or 1, 1)))[:MAX_LISTENERS]
    for x in fullest:
        queue.add_metric([x.endpoint], x.queue)
        if x.backlog is not None:
            backlog.add_metric([x.endpoint], x.backlog)
        if x.drops is not None:
            drops.add_metric([x.endpoint], x.drops)
    yield queue
    yield backlog
    yield drops
