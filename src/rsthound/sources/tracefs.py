"""The process behind each connect, and the kernel's reason for each reset, from tracefs.

One private instance under tracefs `instances/` (the global buffer is never touched),
read in binary (`per_cpu/cpuN/trace_pipe_raw`, parsed with the layouts the kernel
publishes, see formats/traceraw.py):

- `sock:inet_sock_set_state` CLOSE -> SYN_SENT runs inside connect(), in the caller's
  context, and ties the socket's address to the process; the socket's later events (leaving
  SYN_SENT for CLOSE or ESTABLISHED, `tcp:tcp_retransmit_skb` of its SYN) carry its ports,
  which the captured packets have too.
- `tcp:tcp_send_reset`: the reset's addresses and, on 6.10+ kernels, its `reason`, named
  by the event's own print format (`NO_SOCKET`, `TCP_ABORT_ON_CLOSE`, ...).
- Every connect that leaves SYN_SENT for CLOSE is a failed connect (`FailedConnect`): its
  process, addresses, how long it took, and the error `sock:inet_sk_error_report` gave its
  socket (ECONNREFUSED, ETIMEDOUT, EHOSTUNREACH, ...; none: the program closed it).
- A connect that fails before SYN_SENT for want of a route: `fib:fib_table_lookup` in the
  caller's context, missing in the main table (or the default one, looked in last with
  policy rules), or on an unreachable, prohibit or blackhole route.
- `task:task_newtask` of each new thread (CLONE_THREAD), in its creator's context: a
  thread that connected and ended before its event was read is named by the process it
  was created in (the kernel's own table of thread to process ids, `saved_tgids`, is
  filled only while the top level's `record-tgid` option is on).

Each read takes every CPU's buffer, and handles the events in the order of their times,
up to the moment the read began: a connect's events can be recorded on two CPUs (the
caller's, and the one whose softirq took the reset), a thread's creation on a third.

Events are probed before use; the instance goes on close, and instances of rsthound
processes that are gone are removed at start (see `_remove_stale`).
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import itertools
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import OrderedDict, deque

from rsthound.errors import NeedPrivilege, NotSupported
from rsthound.formats.traceraw import EventFormat, page_events, parse_format, sockaddr
from rsthound.model import FailedConnect, Process
from rsthound.sources.processes import describe, process_of

MOUNTS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
TCP_ESTABLISHED, TCP_SYN_SENT, TCP_CLOSE = 1, 2, 7
CLONE_THREAD = 0x10000
KEEP = 4096  # sockets and port pairs remembered
PER_PAIR = 4  # connects remembered per port pair (of any namespace)
MAX_FAILED = 100_000  # failed connects kept until taken (a storm loses the oldest)
READ_EVERY = 0.05  # seconds between reads of the trace
# Bytes of trace read per CPU and tick (4 pages, about 200 events, 4,000 a second per CPU):
# under a storm the capture keeps its core for the packets, and what the trace buffer cannot
# hold is lost (some events then name no process) instead of packets.
READ_BUDGET = 16 << 10
PAGE = 4096
_serial = itertools.count(1)
OPTIONAL = {  # the events besides inet_sock_set_state, with their filters
    "tcp/tcp_retransmit_skb": f"state == {TCP_SYN_SENT}",
    "tcp/tcp_send_reset": None,
    "sock/inet_sk_error_report": "protocol == 6 && error != 0",
    # this host's own lookups (iif lo) for TCP that found no route: a miss in main (254;
    # the only table looked in without policy rules) or in default (253, looked in last),
    # or an unreachable (-113), prohibit (-13) or blackhole (-22) route
    "fib/fib_table_lookup": "proto == 6 && iif == 1 && (((tb_id == 254 || tb_id == 253) && "
                            "err == -11) || err == -113 || err == -13 || err == -22)",
    "task/task_newtask": f"clone_flags & {CLONE_THREAD}",  # threads, not processes
}
_PIDNS = str(os.stat("/proc/self/ns/pid").st_ino) if os.path.exists("/proc/self/ns/pid") else "0"


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
    """Reads its instance's binary ring buffer on a thread; `process()` and `reason()`
    answer from memory."""

    def __init__(self, root: str | None = None, proc_root: str = "/proc") -> None:
        self.root = root or find_tracefs()
        self.proc_root = proc_root  # where the traced processes are described
        self._remove_stale()
        events = f"{self.root}/events"
        self._lock = threading.Lock()
        # socket address -> (process, when it entered SYN_SENT)
        self._socks: OrderedDict[int, tuple[Process, float]] = OrderedDict()
        # failed connects not taken yet: [start, end, src, sport, dst, dport, process, errno]
        self._failed: deque[list] = deque(maxlen=MAX_FAILED)
        self._fails: OrderedDict[tuple[str, int, str, int], list] = OrderedDict()
        self._errors: OrderedDict[tuple[str, int, str, int], str] = OrderedDict()
        self._noroute: OrderedDict[tuple[int, str, int], float] = OrderedDict()
        self._clock = 0.0  # wall minus trace clock (s); 0: the trace has no usable clock
        # (local port, remote port) -> its last connects, newest last: (into SYN_SENT, last
        # event, process). The same ports can be another namespace's connect's too.
        self._ports: OrderedDict[tuple[int, int], list[tuple[float, float, Process]]] = \
            OrderedDict()
        self._reasons: OrderedDict[tuple[str, int, str, int], str] = OrderedDict()
        self._procs: dict[int, tuple[float, Process]] = {}
        self._creators: OrderedDict[int, int] = OrderedDict()  # new thread -> its creator
        self._later: list[tuple[int, memoryview]] = []  # read, after the last read began
        self.events = 0
        self.behind = False  # the trace came faster than READ_BUDGET allows
        self.instances: list[str] = []
        self._formats: dict[int, EventFormat] = {}
        self._pipes: list[int] = []
        try:
            self._formats = {f.id: f for f in (
                _format(events, e) for e in ("sock/inet_sock_set_state", *OPTIONAL))
                if f is not None}
            if not any(f.name == "inet_sock_set_state" for f in self._formats.values()):
                raise NotSupported("this kernel has no sock:inet_sock_set_state trace event")
            inst = self._instance()
            # into SYN_SENT (inside connect()), and out of it: to CLOSE (a failure) or to
            # ESTABLISHED (so that a later reset of the connection names its process too)
            self._enable(inst, "sock/inet_sock_set_state",
                         f"protocol == 6 && ((oldstate == {TCP_CLOSE} && newstate == "
                         f"{TCP_SYN_SENT}) || (oldstate == {TCP_SYN_SENT} && (newstate == "
                         f"{TCP_CLOSE} || newstate == {TCP_ESTABLISHED})))")
            have = {f.name for f in self._formats.values()}
            for event, filt in OPTIONAL.items():
                if event.split("/")[1] in have:
                    try:
                        self._enable(inst, event, filt)
                    except PermissionError:
                        raise
                    except OSError:  # a filter this kernel cannot parse: without the event
                        pass
            # event times in CLOCK_MONOTONIC, which Python reads too: a connect's start and
            # end, to the microsecond
            with contextlib.suppress(OSError):
                _write(f"{inst}/trace_clock", "mono")
                self._clock = time.time() - time.monotonic()
            for cpu in sorted(os.listdir(f"{inst}/per_cpu")):
                self._pipes.append(os.open(f"{inst}/per_cpu/{cpu}/trace_pipe_raw",
                                           os.O_RDONLY | os.O_NONBLOCK))
        except PermissionError:
            self.close()
            raise NeedPrivilege("tracefs needs root (it names the process behind each "
                                "connect)") from None
        except BaseException:
            self.close()
            raise
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="rsthound-trace", daemon=True)
        self._thread.start()

    # -- setting up ------------------------------------------------------------------------
    def _remove_stale(self) -> None:
        """Remove the instances of rsthound processes that are gone. Another pid namespace's
        pids mean nothing here (a watch in a container, or on its host): its instances go
        only once no process is left in that namespace, which only the host can tell."""
        base = f"{self.root}/instances"
        alive: set[str] | None = None  # the pid namespaces with a process in them
        for name in os.listdir(base):
            m = re.fullmatch(r"rsthound-(\d+)(?:-\d+)?(?:-p(\d+))?", name)
            if not m:
                continue
            if m[2] in (None, _PIDNS):
                gone = not os.path.exists(f"/proc/{m[1]}")
            else:
                alive = _pid_namespaces() if alive is None else alive
                gone = bool(alive) and m[2] not in alive
            if gone:
                _remove_instance(f"{base}/{name}")

    def _instance(self) -> str:
        # one per Tracer: watch's always-on capture and its investigations trace at once
        path = f"{self.root}/instances/rsthound-{os.getpid()}-{next(_serial)}-p{_PIDNS}"
        try:
            os.mkdir(path)
        except FileExistsError:
            # not this process's (its serial numbers are new): left by an earlier one with
            # the same pid, in a container whose pids start again at 1 each boot
            _remove_instance(path)
            os.mkdir(path)
        self.instances.append(path)
        return path

    @staticmethod
    def _enable(instance: str, event: str, filt: str | None) -> None:
        if filt:
            _write(f"{instance}/events/{event}/filter", filt)
        _write(f"{instance}/events/{event}/enable", "1")

    # -- reading ---------------------------------------------------------------------------
    def _read(self) -> None:
        """Read what the ring buffer holds every READ_EVERY seconds, without blocking: a
        reader blocked on it makes the kernel wake it at each event, which costs the traced
        program far more than recording the event does. Once stopped, all that is left."""
        while self._read_all() and not self._stop.wait(READ_EVERY):
            pass
        self._read_all(final=True)

    def _read_all(self, final: bool = False) -> bool:
        """One read of every CPU's buffer; its events, with those held from the last read,
        handled in the order of their times up to the moment this read began (later ones
        may still have earlier ones on a CPU read before them: they wait for the next).
        False once the instance is gone."""
        if self._clock:  # again each time: the wall clock is slewed (NTP) or set
            self._clock = time.time() - time.monotonic()
        until = math.inf if final or not self._clock else time.monotonic_ns()
        got = self._later
        for fd in self._pipes:
            budget = READ_BUDGET  # per CPU and tick: the packets come first
            while budget > 0:
                try:
                    page = os.read(fd, PAGE)
                except BlockingIOError:
                    break
                except OSError:
                    return False
                if not page:
                    break
                budget -= len(page)
                got.extend(page_events(page))
            if budget <= 0:  # this CPU's later events are still in its buffer
                self.behind = True
                if got and not final:
                    until = min(until, got[-1][0])
        got.sort(key=_time)
        n = bisect.bisect_right(got, until, key=_time)
        for ts, rec in got[:n]:
            self._record(rec, ts / 1e9 + self._clock if self._clock else time.time())
        self._later = got[n:]
        return True

    def _record(self, rec: memoryview, when: float) -> None:
        """One binary event record, `when` it happened (wall time): common_type (u16) at 0,
        common_pid (s32) at 4, then the event's fields where its format says."""
        if len(rec) < 8:
            return
        fmt = self._formats.get(int.from_bytes(rec[0:2], sys.byteorder))
        if fmt is None:
            return
        self.events += 1
        if fmt.name == "task_newtask":  # a thread, created by the thread recording it
            _remember(self._creators, fmt.get(rec, "pid"),
                      int.from_bytes(rec[4:8], sys.byteorder, signed=True))
            return
        if fmt.name == "tcp_send_reset":
            src, dst = sockaddr(fmt.raw(rec, "saddr")), sockaddr(fmt.raw(rec, "daddr"))
            if src and dst and "reason" in fmt.fields:
                reason = fmt.symbol("reason", fmt.get(rec, "reason"))
                with self._lock:
                    _remember(self._reasons, (*_ep(*src), *_ep(*dst)), reason)
            return
        if fmt.name == "inet_sk_error_report":
            self._error(fmt, rec)
            return
        if fmt.name == "fib_table_lookup":
            self._no_route(fmt, rec, when)
            return
        sk = fmt.get(rec, "skaddr")
        if fmt.name == "inet_sock_set_state" and fmt.get(rec, "newstate") == TCP_SYN_SENT:
            pid = int.from_bytes(rec[4:8], sys.byteorder, signed=True)
            proc = self._process(pid, "<...>")  # inside connect(): the caller
            with self._lock:
                _remember(self._socks, sk, (proc, when))
            return
        sport = fmt.get(rec, "sport")
        with self._lock:
            got = self._socks.get(sk)
            if got is not None and sport:
                proc, start = got
                pair = (sport, fmt.get(rec, "dport"))
                last = [c for c in self._ports.get(pair, ()) if c[0] != start][-(PER_PAIR - 1):]
                _remember(self._ports, pair, [*last, (start, when, proc)])
                if fmt.name == "inet_sock_set_state":  # left SYN_SENT: done with it
                    self._socks.pop(sk, None)
                    if fmt.get(rec, "newstate") == TCP_CLOSE:
                        self._failed_connect(fmt, rec, proc, start, when)

    def _failed_connect(self, fmt: EventFormat, rec: memoryview, proc: Process, start: float,
                        end: float) -> None:
        """A socket went from SYN_SENT to CLOSE: a connect failed. Its error comes just
        before or just after (the kernel reports an ICMP error first, a reset after)."""
        key = _tuple(fmt, rec)
        entry = [start, end, *key, proc, self._errors.pop(key, None)]
        self._failed.append(entry)
        if entry[7] is None:
            _remember(self._fails, key, entry)

    def _error(self, fmt: EventFormat, rec: memoryview) -> None:
        err = abs(fmt.get(rec, "error"))  # positive (sk_err); negative on some kernels
        name = errno.errorcode.get(err, str(err))
        key = _tuple(fmt, rec)
        with self._lock:
            entry = self._fails.pop(key, None)
            if entry is not None:
                entry[7] = name
            else:
                _remember(self._errors, key, name)

    def _no_route(self, fmt: EventFormat, rec: memoryview, when: float) -> None:
        """connect() found no route (or an unreachable one): it fails before SYN_SENT. The
        lookup runs more than once for one connect (main, then default, with policy rules):
        one failure per process, address and port within 10 ms."""
        pid = int.from_bytes(rec[4:8], sys.byteorder, signed=True)
        dst = socket.inet_ntop(socket.AF_INET, fmt.raw(rec, "dst"))
        dport = fmt.get(rec, "dport")
        err = -fmt.get(rec, "err")
        with self._lock:
            last = self._noroute.get((pid, dst, dport))
            _remember(self._noroute, (pid, dst, dport), when)
        if last is not None and when - last < 0.01:
            return
        name = "ENETUNREACH" if err == errno.EAGAIN else errno.errorcode.get(err, str(err))
        proc = self._process(pid, "<...>")
        with self._lock:
            self._failed.append([when, when, "0.0.0.0", 0, dst, dport, proc, name])

    def failed(self) -> list[FailedConnect]:
        """The failed connects not taken yet, oldest first."""
        with self._lock:
            out = [FailedConnect(*x) for x in self._failed]
            self._failed.clear()
        return out

    def _process(self, pid: int, comm: str) -> Process:
        now = time.monotonic()
        got = self._procs.get(pid)
        if got is not None and now - got[0] < 5:
            return got[1]
        proc = describe(pid, comm, self.proc_root)  # a live thread's id leads to its process
        if proc.netns is None and not os.path.exists(f"{self.proc_root}/{pid}"):
            # gone, maybe while it was read: named by the process it was a thread of, and by
            # the name the trace remembers
            leader = self._leader(pid)
            if comm.startswith("<"):
                comm = self._comm(leader) or self._comm(pid) or comm
            proc = describe(leader, comm, self.proc_root)
        if len(self._procs) > KEEP:
            self._procs.clear()
        self._procs[pid] = (now, proc)
        return proc

    def _leader(self, tid: int) -> int:
        """The process a thread that is gone belonged to: the one its creator belongs to,
        or its creator's creator's (creators go too); itself where the trace did not see
        it created (a thread older than the trace, or a process)."""
        for _ in range(64):  # (a thread's creators, not a loop of reused ids)
            creator = self._creators.get(tid)
            if creator is None:
                return tid
            tgid = process_of(creator, self.proc_root)
            if tgid:
                return tgid
            tid = creator
        return tid

    def _comm(self, pid: int) -> str | None:
        """The name the kernel's trace remembers for a pid (saved_cmdlines): a process that
        connected and exited before its event was read is still named."""
        with contextlib.suppress(OSError), open(f"{self.root}/saved_cmdlines") as f:
            for line in f:
                got, _, name = line.rstrip("\n").partition(" ")
                if got == str(pid):
                    return name
        return None

    # -- answering -------------------------------------------------------------------------
    def connects(self, local_port: int, remote_port: int) -> list[tuple[float, float, Process]]:
        """The last connects seen from `local_port` to `remote_port`, newest last: when each
        entered SYN_SENT, when it was last seen, and its process."""
        with self._lock:
            return list(self._ports.get((local_port, remote_port), ()))

    def reason(self, src: str, sport: int, dst: str, dport: int) -> str | None:
        """The kernel's reason for a reset it sent from src:sport to dst:dport."""
        with self._lock:
            return self._reasons.get((src, sport, dst, dport))

    def close(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
            self._thread.join(timeout=2)
        for fd in getattr(self, "_pipes", []):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._pipes = []
        for path in self.instances:
            _remove_instance(path)
        self.instances = []


def _ep(addr: str, port: int) -> tuple[str, int]:
    """As the packets show it: an IPv4-mapped IPv6 address (a dual-stack socket's) as IPv4."""
    if addr.startswith("::ffff:") and "." in addr:
        addr = addr[7:]
    return addr, port


def _tuple(fmt: EventFormat, rec: memoryview) -> tuple[str, int, str, int]:
    """(src, sport, dst, dport) of a socket event, as the packets show them."""
    if fmt.get(rec, "family") == socket.AF_INET6:
        fam, s, d = socket.AF_INET6, fmt.raw(rec, "saddr_v6"), fmt.raw(rec, "daddr_v6")
    else:
        fam, s, d = socket.AF_INET, fmt.raw(rec, "saddr"), fmt.raw(rec, "daddr")
    src = _ep(socket.inet_ntop(fam, s), fmt.get(rec, "sport"))
    dst = _ep(socket.inet_ntop(fam, d), fmt.get(rec, "dport"))
    return (*src, *dst)


def _format(events: str, event: str) -> EventFormat | None:
    """An event's binary layout; None where this kernel lacks the event."""
    try:
        with open(f"{events}/{event}/format") as f:
            return parse_format(f.read())
    except FileNotFoundError:
        return None


def _pid_namespaces() -> set[str]:
    """The pid namespaces (inodes) that have a process, as the host sees them; empty inside
    a container, which sees only its own (only the host's has the kernel's threads)."""
    try:
        with open("/proc/2/comm") as f:
            if f.read().strip() != "kthreadd":
                return set()
    except OSError:
        return set()
    out = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError):
                out.add(str(os.stat(f"/proc/{pid}/ns/pid").st_ino))
    return out


def _time(event: tuple[int, memoryview]) -> int:
    return event[0]


def _remember(d: OrderedDict, key: object, value: object) -> None:
    d[key] = value
    d.move_to_end(key)
    while len(d) > KEEP:
        d.popitem(last=False)


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _remove_instance(path: str) -> None:
    with contextlib.suppress(OSError):
        os.rmdir(path)  # the kernel tears the instance down, events and all
