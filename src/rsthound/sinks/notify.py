"""Send alert events to a webhook and to Alertmanager, off the sampling thread.

A slow or failing receiver must not delay sampling: posts go through a bounded queue to one
thread, and a receiver that fails is said once on stderr (and again once it works again).
"""

from __future__ import annotations

import json
import queue
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

TIMEOUT = 5.0


class Poster:
    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self._q: queue.Queue[tuple[str, Any] | None] = queue.Queue(maxsize=1000)
        self._failing: dict[str, bool] = {}
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="rsthound-notify", daemon=True)
        self._thread.start()

    def post(self, url: str, body: Any) -> None:
        try:
            self._q.put_nowait((url, body))
        except queue.Full:
            self.dropped += 1

    def close(self, wait: float = TIMEOUT) -> None:
        """Send what is queued (up to `wait` seconds), then stop."""
        self._q.put(None)
        self._thread.join(wait)

    def _run(self) -> None:
        while (item := self._q.get()) is not None:
            url, body = item
            data = json.dumps(body).encode()
            req = urllib.request.Request(url, data=data, method="POST",
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
                    resp.read()
                if self._failing.get(url):
                    self.say(f"notifications to {url} work again")
                self._failing[url] = False
            except (urllib.error.URLError, OSError, ValueError) as e:
                if not self._failing.get(url):
                    reason = getattr(e, "reason", None) or e
                    self.say(f"cannot notify {url}: {reason}; alerts go on (said once)")
                self._failing[url] = True
