"""`watch --listen ADDR:PORT`: /metrics for Prometheus, a dashboard at /, and the JSON API
behind it (/api/status, /api/series, /api/listeners). Read-only (GET and HEAD only),
127.0.0.1 unless told otherwise, with optional bearer-token or basic authentication.

Everything the page needs is served from here (no CDN). The page writes every string
through textContent, so process names and command lines are shown, never run.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import socket
import sqlite3
import threading
import time
from collections import deque
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlparse

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from rsthound.analyze.alerts import TRACED, Rule
from rsthound.errors import BadInput, RstHoundError
from rsthound.metrics import BY_NAME
from rsthound.model import Tick
from rsthound.report.listeners import listener_obj
from rsthound.report.prom import WatchCollector
from rsthound.sinks.history import History

KEEP_SECONDS = 3600  # the samples the API serves: an hour at 1 s
FRESH = 0.25  # seconds a rendered /metrics or /api/status is served again


class WatchState:
    """What `watch` knows now, shared with the web server's threads."""

    def __init__(self, host: str, label: str, rules: tuple[Rule, ...], interval: float,
                 history: str | None) -> None:
        self.host, self.label, self.rules, self.interval = host, label, rules, interval
        self.started = time.time()
        self.history = history
        self.monitor: Any = None
        self._lock = threading.Lock()
        self._samples: deque[tuple[float, float, dict[str, int]]] = deque(
            maxlen=max(60, int(KEEP_SECONDS / interval)))
        self._values: dict[str, int] = {}
        self._active: dict[str, dict[str, Any]] = {}
        self._events: deque[dict[str, Any]] = deque(maxlen=50)
        self._listeners: list[Any] = []

    def sample(self, tick: Tick) -> None:
        with self._lock:
            if tick.increases is not None:
                self._samples.append((tick.wall, tick.seconds, tick.increases))
            self._values = dict(tick.values)

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
        """The listeners now, with their owners named (sockdiag.OwnerCache)."""
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
        monitor = self.monitor.snapshot(timeline=True) if self.monitor else None
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
            "started": self.started,
            # failures per tick from the always-on capture: [end, seconds, [[cause,
            # service, n], ...]], for the charts by service and by cause
            "timeline": (monitor["timeline"] if monitor else []),
            "capture": {"running": bool(monitor and monitor["running"]),
                        "error": monitor["error"] if monitor else "not started"},
            "listeners": self.listeners_now(),
            "listener_history": self.listener_history(),
        }

    def listeners_now(self) -> list[dict[str, Any]]:
        with self._lock:
            return [listener_obj(x) for x in self._listeners]

    def listener_history(self, limit: int = 20) -> list[dict[str, Any]]:
        if not self.history:
            return []
        try:
            with History(self.history) as h:
                return h.recent_listeners(limit)
        except (RstHoundError, OSError, sqlite3.Error):  # (being made: watch has just begun)
            return []


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


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


HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "script-src 'self' 'unsafe-inline'",
}
MAX_HEAD = 16 << 10  # bytes of request line and headers
IDLE = 60.0  # seconds a keep-alive connection may wait for its next request


class WebServer:
    """HTTP/1.1 with keep-alive on an asyncio loop of its own (a thread): a request costs a
    few hundred microseconds, where http.server's thread per connection costs about 1 ms,
    which 50 concurrent clients turn into queueing."""

    def __init__(self, addr: str, port: int, state: WatchState, auth: Auth) -> None:
        self.state, self.auth = state, auth
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(WatchCollector(state))
        self.page = resources.files("rsthound").joinpath("web/index.html").read_bytes()
        self._made: dict[str, tuple[float, bytes]] = {}
        self.loop = asyncio.new_event_loop()
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((addr, port))
            sock.listen(256)
        except OSError as e:
            raise BadInput(f"cannot listen there: {e.strerror}", f"{addr}:{port}") from None
        self.address = sock.getsockname()
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._serve, sock=sock, limit=MAX_HEAD))
        self._thread = threading.Thread(target=self.loop.run_forever, name="rsthound-web",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), self.loop).result(timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE)
                lines = head.decode("latin-1").split("\r\n")
                parts = lines[0].split(" ")
                if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                    writer.write(_response(400, b"bad request\n", "text/plain", {}, False))
                    break
                method, target, version = parts
                headers = {k.strip().lower(): v.strip() for k, _, v in
                           (ln.partition(":") for ln in lines[1:] if ln)}
                length = int(headers.get("content-length", "0") or 0)
                if length:  # a body (POST): read and ignore it, within reason
                    if length > MAX_HEAD:
                        break
                    await reader.readexactly(length)
                keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
                try:
                    code, body, ctype, extra = self.route(method, target,
                                                          headers.get("authorization"))
                except Exception as e:  # a bug or a race: one request fails, not the server
                    code, body, ctype, extra = 500, f"error: {e}\n".encode(), "text/plain", {}
                if method == "HEAD":
                    extra = extra | {"Content-Length": str(len(body))}
                    body = b""
                writer.write(_response(code, body, ctype, extra, keep))
                await writer.drain()
                if not keep:
                    break
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    def route(self, method: str, target: str, authorization: str | None,
              ) -> tuple[int, bytes, str, dict[str, str]]:
        """(status, body, content type, extra headers) for one request."""
        if method not in ("GET", "HEAD"):
            return 405, b"read-only: GET only\n", "text/plain", {"Allow": "GET, HEAD"}
        if not self.auth.allows(authorization):
            how = 'Basic realm="rsthound"' if self.auth.basic else "Bearer"
            return 401, b"authentication required\n", "text/plain", {"WWW-Authenticate": how}
        url = urlparse(target)
        if url.path == "/metrics":
            return 200, self._cached("metrics", lambda: generate_latest(self.registry)), \
                CONTENT_TYPE_LATEST, {}
        if url.path in ("/", "/index.html"):
            return 200, self.page, "text/html; charset=utf-8", {}
        if url.path == "/api/status":
            return 200, self._cached("status", lambda: _dumps(self.state.status())), \
                "application/json", {}
        if url.path == "/api/series":
            q = parse_qs(url.query)
            metric = q.get("metric", ["Tcp.AttemptFails"])[0]
            if metric not in BY_NAME and metric != TRACED:
                known = ", ".join([*BY_NAME, TRACED])
                return 404, _dumps({"error": f"no such metric: {metric}", "known": known}), \
                    "application/json", {}
            try:
                since = float(q.get("since", ["0"])[0] or 0)
            except ValueError:
                return 400, b"since: not a number\n", "text/plain", {}
            return 200, _dumps({"metric": metric, "points": self.state.series(metric, since)}), \
                "application/json", {}
        if url.path == "/api/listeners":
            return 200, _dumps({"listeners": self.state.listeners_now(),
                                "history": self.state.listener_history()}), \
                "application/json", {}
        return 404, b"not found\n", "text/plain", {}

    def _cached(self, key: str, make: Any) -> bytes:
        """What changes once a sample (every second) is made at most every FRESH seconds,
        however many clients ask: 50 dashboards and a few Prometheus servers cost one
        rendering."""
        got = self._made.get(key)
        if got is None or time.monotonic() - got[0] > FRESH:
            got = self._made[key] = (time.monotonic(), make())
        return got[1]


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 500: "Internal Server Error"}


def _response(code: int, body: bytes, ctype: str, extra: dict[str, str], keep: bool) -> bytes:
    headers = {"Content-Type": ctype, "Content-Length": str(len(body)), **HEADERS, **extra,
               "Connection": "keep-alive" if keep else "close", "Server": "rsthound"}
    head = f"HTTP/1.1 {code} {_REASONS.get(code, 'Error')}\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return head.encode("latin-1") + body
