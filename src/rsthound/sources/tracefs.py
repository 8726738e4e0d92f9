"""The process behind each connect, and the kernel's reason for each reset, from tracefs.

Two private instances under tracefs `instances/` (the global buffer is never touched):

- `rsthound-PID-conn`, with the `fields` option so that events show the socket address:
  `sock:inet_sock_set_state` CLOSE -> SYN_SENT runs inside connect(), in the caller's
  context, and ties the socket to the process; the socket's later events (leaving SYN_SENT,
  `tcp:tcp_retransmit_skb` of its SYN) carry its ports, which the captured packets have too.
- `rsthound-PID-rst`, in the normal format: `tcp:tcp_send_reset` with its addresses and,
  on 6.10+ kernels, `reason=NO_SOCKET` and friends, printed by the kernel itself.

Events are probed before use; the instances go on close, and instances of rsthound
processes that are gone are removed at start.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import threading
import time
from collections import OrderedDict

from rsthound.errors import NeedPrivilege, NotSupported
from rsthound.sources.processes import Process, describe

MOUNTS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
TCP_SYN_SENT, TCP_CLOSE = 2, 7
KEEP = 4096  # sockets and port pairs remembered
READ_EVERY = 0.05  # seconds between reads of the trace
# Bytes of trace text read per pipe and tick (about 1.3 MB/s, 6,000 lines/s): under a storm
# the capture keeps its core for the packets, and what the trace buffer cannot hold is lost
# (some events then name no process) instead of packets.
READ_BUDGET = 64 << 10


def find_tracefs() -> str:
    """Where tracefs is mounted; mounted at /sys/kernel/tracing first if it is not (root)."""
    for m in MOUNTS:
        if os.path.isdir(f"{m}/instances"):
            return m
    if os.path.isdir(MOUNTS[0]) and os.geteuid() == 0:
        r = subprocess.run(["mount", "-t", "tracefs", "tracefs", MOUNTS[0]],
                           capture_output=True, text=True)
        if r.returncode == 0 and os.path.isdir(f"{MOUNTS[0]}/instances"):
            return MOUNTS[0]
    if os.geteuid() != 0:
        raise NeedPrivilege("tracefs needs root (it names the process behind each connect)")
    raise NotSupported("tracefs is not mounted and could not be ('mount -t tracefs tracefs "
                       "/sys/kernel/tracing')")


class Tracer:
    """Reads both instances on a thread; `process()` and `reason()` answer from memory."""

    def __init__(self, root: str | None = None) -> None:
        self.root = root or find_tracefs()
        self._remove_stale()
        events = f"{self.root}/events"
        need = ["sock/inet_sock_set_state"]
        missing = [e for e in need if not os.path.isdir(f"{events}/{e}")]
        if missing:
            raise NotSupported(f"this kernel has no {', '.join(missing)} trace event")
        self.has_reason = _has_field(f"{events}/tcp/tcp_send_reset/format", "reason")
        self._lock = threading.Lock()
        self._socks: OrderedDict[str, Process] = OrderedDict()  # skaddr -> process
        self._ports: OrderedDict[tuple[int, int], Process] = OrderedDict()
        self._reasons: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._procs: dict[int, tuple[float, Process]] = {}
        self.events = 0
        self.behind = False  # the trace came faster than READ_BUDGET allows
        self.instances: list[str] = []
        try:
            conn = self._instance("conn", fields=True)
            # into SYN_SENT (inside connect()) and out of it to CLOSE (a failure): a
            # connect that succeeds costs one line
            self._enable(conn, "sock/inet_sock_set_state",
                         f"protocol == 6 && ((oldstate == {TCP_CLOSE} && newstate == "
                         f"{TCP_SYN_SENT}) || (oldstate == {TCP_SYN_SENT} && newstate == "
                         f"{TCP_CLOSE}))")
            if os.path.isdir(f"{events}/tcp/tcp_retransmit_skb"):
                self._enable(conn, "tcp/tcp_retransmit_skb", f"state == {TCP_SYN_SENT}")
            pipes = [open(f"{conn}/trace_pipe", "rb", buffering=0)]  # noqa: SIM115
            if os.path.isdir(f"{events}/tcp/tcp_send_reset"):
                rst = self._instance("rst", fields=False)
                self._enable(rst, "tcp/tcp_send_reset", None)
                pipes.append(open(f"{rst}/trace_pipe", "rb", buffering=0))  # noqa: SIM115
        except PermissionError:
            self.close()
            raise NeedPrivilege("tracefs needs root (it names the process behind each "
                                "connect)") from None
        except BaseException:
            self.close()
            raise
        self._pipes = pipes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="rsthound-trace", daemon=True)
        self._thread.start()

    # -- setting up ------------------------------------------------------------------------
    def _remove_stale(self) -> None:
        base = f"{self.root}/instances"
        for name in os.listdir(base):
            m = re.fullmatch(r"rsthound-(\d+)-\w+", name)
            if m and not os.path.exists(f"/proc/{m[1]}"):
                _remove_instance(f"{base}/{name}")

    def _instance(self, what: str, fields: bool) -> str:
        path = f"{self.root}/instances/rsthound-{os.getpid()}-{what}"
        os.mkdir(path)
        self.instances.append(path)
        if fields:
            _write(f"{path}/options/fields", "1")
        return path

    @staticmethod
    def _enable(instance: str, event: str, filt: str | None) -> None:
        if filt:
            _write(f"{instance}/events/{event}/filter", filt)
        _write(f"{instance}/events/{event}/enable", "1")

    # -- reading ---------------------------------------------------------------------------
    def _read(self) -> None:
        """Read what the instances hold every READ_EVERY seconds, without blocking: a reader
        blocked on trace_pipe makes the kernel wake it at each event, which costs the
        traced program far more than recording the event does."""
        for p in self._pipes:
            os.set_blocking(p.fileno(), False)
        rest = {p.fileno(): b"" for p in self._pipes}
        while True:
            for fd in rest:
                budget = READ_BUDGET  # per pipe and tick: the packets come first
                while budget > 0:
                    try:
                        chunk = os.read(fd, min(budget, 1 << 16))
                    except BlockingIOError:
                        break
                    except OSError:
                        return
                    if not chunk:
                        break
                    budget -= len(chunk)
                    *lines, rest[fd] = (rest[fd] + chunk).split(b"\n")
                    for line in lines:
                        self._event(line.decode("ascii", "replace"))
                if budget <= 0:
                    self.behind = True
            if self._stop.wait(READ_EVERY):
                return

    def _event(self, line: str) -> None:
        """One trace line. Parsed with plain string searches: under a storm of failing
        connects there are three lines per connect, and this runs for each."""
        head, sep, rest = line.partition("]")
        if not sep:
            return
        who = head.rsplit("[", 1)[0].strip()
        comm, _, pid_text = who.rpartition("-")
        name, _, body = rest.partition(": ")[2].partition(": ")
        if not pid_text.isdigit() or not body:
            return
        self.events += 1
        if name == "tcp_send_reset":
            src, dest, reason = _value(body, "src="), _value(body, "dest="), _value(
                body, "reason=")
            if src and dest and reason:
                with self._lock:
                    _remember(self._reasons, (src, dest), reason)
            return
        sk = _value(body, "skaddr=")
        if name == "inet_sock_set_state" and _number(_value(body, "newstate=")) == TCP_SYN_SENT:
            proc = self._process(int(pid_text), comm)  # inside connect(): the caller
            with self._lock:
                _remember(self._socks, sk, proc)
            return
        sport = _number(_value(body, "sport="))
        with self._lock:
            proc = self._socks.get(sk)
            if proc is not None and sport:
                _remember(self._ports, (sport, _number(_value(body, "dport="))), proc)
                if name == "inet_sock_set_state":  # left SYN_SENT: done with this socket
                    self._socks.pop(sk, None)

    def _process(self, pid: int, comm: str) -> Process:
        now = time.monotonic()
        got = self._procs.get(pid)
        if got is not None and now - got[0] < 5:
            return got[1]
        proc = describe(pid, comm)
        if len(self._procs) > KEEP:
            self._procs.clear()
        self._procs[pid] = (now, proc)
        return proc

    # -- answering -------------------------------------------------------------------------
    def process(self, local_port: int, remote_port: int) -> Process | None:
        """The process that connected from `local_port` to `remote_port`, if seen."""
        with self._lock:
            return self._ports.get((local_port, remote_port))

    def reason(self, src: str, sport: int, dst: str, dport: int) -> str | None:
        """The kernel's reason for a reset it sent from src:sport to dst:dport."""
        with self._lock:
            return self._reasons.get((_ep(src, sport), _ep(dst, dport)))

    def close(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
            self._thread.join(timeout=2)
        for p in getattr(self, "_pipes", []):
            with contextlib.suppress(OSError):
                p.close()
        for path in self.instances:
            _remove_instance(path)
        self.instances = []


def _ep(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _value(body: str, key: str) -> str:
    """The text after `key` up to the next space ("" when absent)."""
    i = body.find(key)
    if i < 0:
        return ""
    i += len(key)
    j = body.find(" ", i)
    return body[i:] if j < 0 else body[i:j]


def _number(v: str) -> int:
    """0x1c2b or 7211 -> 7211; 0 when it is not a number."""
    try:
        return int(v, 16) if v.startswith("0x") else int(v)
    except ValueError:
        return 0


def _remember(d: OrderedDict, key: object, value: object) -> None:
    d[key] = value
    d.move_to_end(key)
    while len(d) > KEEP:
        d.popitem(last=False)


def _has_field(format_path: str, field: str) -> bool:
    try:
        with open(format_path) as f:
            return re.search(rf"field:[^;]*\b{field};", f.read()) is not None
    except OSError:
        return False


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _remove_instance(path: str) -> None:
    with contextlib.suppress(OSError):
        os.rmdir(path)  # the kernel tears the instance down, events and all
