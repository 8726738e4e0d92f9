"""`rsthound demo`: the classic case, made for real in a private network namespace.

A service, collector.py, listens on 127.0.0.1:7211 while `rsthound watch` keeps the
namespace's history; the collector dies; a client, shipper.py, keeps connecting twice a
second and is refused. Then `rsthound diagnose` runs in the namespace, and everything is
removed. Traffic never leaves the namespace.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any, TextIO

from rsthound.commands import diagnose, options
from rsthound.errors import NeedPrivilege, NotSupported, RstHoundError
from rsthound.sinks.history import History

PORT = 7211
COLLECTOR = f"""\
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", {PORT}))
s.listen()
while True:
    c, _ = s.accept()
    c.close()
"""
SHIPPER = f"""\
import socket, time
while True:
    try:
        socket.create_connection(("127.0.0.1", {PORT}), timeout=1).close()
    except OSError:
        pass  # connection refused: try again soon
    time.sleep(0.5)
"""


EPILOG = """\
Needs root (it makes a network namespace). In it: a service, 'collector', listens on
127.0.0.1:7211 while 'rsthound watch' keeps a history; the collector dies; a client,
'shipper', keeps connecting twice a second. Then 'rsthound diagnose' runs there, and
everything is removed. Nothing leaves the namespace.

exit status: 1 (diagnose found the failure, as it should); 2 error.
"""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="recreate a refused-connection case in a private namespace and diagnose it",
        description="Recreate the classic case (a client knocking on 127.0.0.1:7211 twice "
        "a second,\nwhere a service that used to listen has died) in a private network "
        "namespace,\nrun 'rsthound diagnose' on it, and clean up.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    p.add_argument("--json", action="store_true", help="diagnose's JSON object")
    options.add_debug(p)


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    json_out = args.json
    if os.geteuid() != 0:
        raise NeedPrivilege("the demo makes a network namespace: run it as root "
                            "(sudo rsthound demo)")
    if shutil.which("ip") is None:
        raise NotSupported("the demo needs iproute2's 'ip' (apt-get install iproute2)")
    ns = f"rsthound-demo-{os.getpid()}"
    work = tempfile.mkdtemp(prefix="rsthound-demo-")
    db = os.path.join(work, "history.db")
    procs: list[subprocess.Popen] = []

    def say(text: str) -> None:
        err.write(f"demo: {text}\n")
        err.flush()

    def start(*argv: str) -> subprocess.Popen:
        p = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, cwd=work)
        procs.append(p)
        return p

    try:
        subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        for name, code in (("collector.py", COLLECTOR), ("shipper.py", SHIPPER)):
            with open(os.path.join(work, name), "w") as f:
                f.write(code)
        collector = start("python3", "collector.py")
        watch = start(sys.executable, "-m", "rsthound", "watch", "--db", db, "--duration",
                      "60")
        say(f"network namespace {ns}: collector.py (pid {collector.pid}) listens on "
            f"127.0.0.1:{PORT}; 'rsthound watch' keeps the history")
        _until(lambda: _served(db, lambda rows: bool(rows)), "watch to see the collector")
        collector.kill()
        collector.wait()
        say(f"collector.py (pid {collector.pid}) dies at {time.strftime('%H:%M:%S')}")
        _until(lambda: _served(db, lambda rows: rows[0]["stopped"] is not None),
               "watch to see the collector go")
        watch.terminate()
        watch.wait(timeout=10)
        shipper = start("python3", "shipper.py")
        say(f"shipper.py (pid {shipper.pid}) connects to 127.0.0.1:{PORT} twice a second")
        time.sleep(0.6)
        say(f"rsthound diagnose --netns {ns}" + (" --json" if json_out else ""))
        err.flush()
        return diagnose.run(argparse.Namespace(
            duration=3.0, netns=ns, db=db, json=json_out, no_trace=False, proc_root="/proc",
            debug=args.debug), out, err)
    except subprocess.CalledProcessError as e:
        raise NotSupported(f"could not make the demo's network namespace: "
                           f"{(e.stderr or b'').decode().strip() or e}") from None
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def _served(db: str, test: Callable[[list], bool]) -> bool:
    if not os.path.exists(db):
        return False
    with contextlib.suppress(RstHoundError, OSError), History(db) as h:
        rows = h.served(PORT)
        return bool(rows) and test(rows)
    return False


def _until(ready: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > end:
            raise NotSupported(f"the demo waited {timeout:g} s for {what}, in vain")
        time.sleep(0.2)
