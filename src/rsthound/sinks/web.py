"""`watch --listen ADDR:PORT`: /metrics for Prometheus, a dashboard at /, and the JSON API
behind it (/api/status, /api/series, /api/listeners). Read-only (GET and HEAD only),
127.0.0.1 unless told otherwise, with optional bearer-token or basic authentication.

Everything the page needs is served from here (no CDN). The page writes every string
through textContent, so process names and command lines are shown, never run.
"""

from __future__ import annotations

import base64
import hmac
import json
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlparse

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from rsthound.analyze.alerts import Rule
from rsthound.analyze.rates import increase
from rsthound.errors import BadInput
from rsthound.report.listeners import listener_obj
from rsthound.report.prom import WatchCollector

KEEP_SECONDS = 3600  # the samples the API serves: an hour at 1 s


class WatchState:
    """What `watch` knows now, shared with the web server's threads."""

    def __init__(self, host: str, label: str, rules: tuple[Rule, ...], interval: float,
                 history: str | None) -> None:
        self.host, self.label, self.rules, self.interval = host, label, rules, interval
        self.history = history
        self.monitor: Any = None
        self._lock = threading.Lock()
        self._samples: deque[tuple[float, float, dict[str, int]]] = deque(
            maxlen=max(60, int(KEEP_SECONDS / interval)))
        self._values: dict[str, int] = {}
        self._prev: tuple[float, dict[str, int]] | None = None
        self._active: dict[str, dict[str, Any]] = {}
        self._events: deque[dict[str, Any]] = deque(maxlen=50)
        self._listeners: list[Any] = []

    def sample(self, mono: float, wall: float, values: dict[str, int]) -> None:
        with self._lock:
            if self._prev is not None:
                dt = mono - self._prev[0]
                inc = {k: increase(self._prev[1][k], v) for k, v in values.items()
                       if v is not None and self._prev[1].get(k) is not None}
                self._samples.append((wall, dt, inc))
            self._prev = (mono, values)
            self._values = {k: v for k, v in values.items() if v is not None}

    def event(self, obj: dict[str, Any]) -> None:
        with self._lock:
            self._events.append(obj)
            if obj["event"] == "alert":
                self._active[obj["rule"]] = obj
            elif obj["event"] == "clear":
                self._active.pop(obj["rule"], None)
            elif obj["rule"] in self._active:  # findings: shown with the alert
                self._active[obj["rule"]] = self._active[obj["rule"]] | {
                    "findings": obj.get("findings", []), "findings_summary": obj["summary"]}

    def listeners(self, found: list[Any]) -> None:
        with self._lock:
            self._listeners = list(found)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"values": dict(self._values),
                    "active": {r: e["level"] for r, e in self._active.items()},
                    "listeners": list(self._listeners),
                    "monitor": self.monitor.snapshot() if self.monitor else None}

    def series(self, metric: str, since: float) -> list[list[float]]:
        """[wall, rate per second] of each sample after `since`."""
        with self._lock:
            return [[round(w, 3), round(inc.get(metric, 0) / dt, 4)]
                    for w, dt, inc in self._samples if w > since and dt > 0]

    def status(self) -> dict[str, Any]:
        snap = self.snapshot()
        monitor = snap["monitor"]
        with self._lock:
            active = list(self._active.values())
            events = list(self._events)[::-1]
        return {
            "host": self.host, "netns": self.label, "now": time.time(),
            "interval": self.interval,
            "rules": [{"name": r.name, "metric": r.metric, "title": r.title,
                       "levels": dict(r.thresholds())} for r in self.rules],
            "series": {"Tcp.AttemptFails": self.series("Tcp.AttemptFails", time.time() - 600)},
            "active": active, "recent": events,
            "services": (monitor["services"][:20] if monitor else []),
            "capture": {"running": bool(monitor and monitor["running"]),
                        "error": monitor["error"] if monitor else "not started"},
            "listeners": [listener_obj(x) for x in snap["listeners"]],
            "listener_history": self.listener_history(),
        }

    def listener_history(self, limit: int = 20) -> list[dict[str, Any]]:
        from rsthound.errors import RstHoundError
        from rsthound.sinks.history import History

        if not self.history:
            return []
        try:
            with History(self.history) as h:
                return h.recent_listeners(limit)
        except (RstHoundError, OSError):
            return []


def parse_listen(text: str) -> tuple[str, int]:
    """"9321", ":9321", "127.0.0.1:9321", "[::1]:9321", "0.0.0.0:9321" -> (host, port);
    no host means 127.0.0.1."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise BadInput("not ADDR:PORT (for example 127.0.0.1:9321)", text)
    return host, int(port)


class Auth:
    """Bearer token and/or basic credentials, each read from a file (not the command
    line, where every user sees them)."""

    def __init__(self, token_file: str | None = None, basic_file: str | None = None) -> None:
        self.token = _secret(token_file) if token_file else None
        self.basic = _secret(basic_file) if basic_file else None
        if self.basic is not None and ":" not in self.basic:
            raise BadInput("the basic-auth file must hold USER:PASSWORD", basic_file)

    @property
    def required(self) -> bool:
        return self.token is not None or self.basic is not None

    def allows(self, header: str | None) -> bool:
        if not self.required:
            return True
        scheme, _, value = (header or "").partition(" ")
        if scheme.lower() == "bearer" and self.token is not None:
            return hmac.compare_digest(value.strip().encode(), self.token.encode())
        if scheme.lower() == "basic" and self.basic is not None:
            try:
                given = base64.b64decode(value.strip(), validate=True)
            except ValueError:
                return False
            return hmac.compare_digest(given, self.basic.encode())
        return False


def _secret(path: str) -> str:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError as e:
        raise BadInput(f"cannot read it: {e.strerror}", path) from None
    if not text:
        raise BadInput("it is empty", path)
    return text


class WebServer:
    def __init__(self, addr: str, port: int, state: WatchState, auth: Auth) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(WatchCollector(state))
        page = resources.files("rsthound").joinpath("web/index.html").read_bytes()

        class Handler(BaseHTTPRequestHandler):
            server_version = "rsthound"
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                url = urlparse(self.path)
                if not auth.allows(self.headers.get("Authorization")):
                    self._send(401, b"authentication required\n", "text/plain",
                               {"WWW-Authenticate": "Basic realm=\"rsthound\""
                                if auth.basic else "Bearer"})
                elif url.path == "/metrics":
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif url.path in ("/", "/index.html"):
                    self._send(200, page, "text/html; charset=utf-8")
                elif url.path == "/api/status":
                    self._json(state.status())
                elif url.path == "/api/series":
                    q = parse_qs(url.query)
                    metric = q.get("metric", ["Tcp.AttemptFails"])[0]
                    since = float(q.get("since", ["0"])[0] or 0)
                    self._json({"metric": metric, "points": state.series(metric, since)})
                elif url.path == "/api/listeners":
                    st = state.status()
                    self._json({"listeners": st["listeners"],
                                "history": st["listener_history"]})
                else:
                    self._send(404, b"not found\n", "text/plain")

            def do_HEAD(self) -> None:
                self.do_GET()

            def _refuse(self) -> None:
                self._send(405, b"read-only: GET only\n", "text/plain", {"Allow": "GET, HEAD"})

            do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

            def _json(self, obj: Any) -> None:
                self._send(200, json.dumps(obj, separators=(",", ":")).encode(),
                           "application/json")

            def _send(self, code: int, body: bytes, ctype: str,
                      extra: dict[str, str] | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("X-Content-Type-Options", "nosniff")
                self.send_header("Content-Security-Policy",
                                 "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                                 "script-src 'self' 'unsafe-inline'")
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        family = socket.AF_INET6 if ":" in addr else socket.AF_INET

        class Server(ThreadingHTTPServer):
            address_family = family
            daemon_threads = True

        try:
            self.httpd = Server((addr, port), Handler)
        except OSError as e:
            raise BadInput(f"cannot listen there: {e.strerror}", f"{addr}:{port}") from None
        self.address = self.httpd.server_address
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="rsthound-web",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
