"""The local process behind a socket: what /proc says of it (formats/procpid.py reads the
files). `proc_root` is another system's /proc (a host's, mounted in a container)."""

from __future__ import annotations

import contextlib
import os
import pwd

from rsthound.formats.procpid import cgroup_owner, parse_tgid
from rsthound.model import Process


def _read(path: str) -> str | None:
    with contextlib.suppress(OSError), open(path, "rb") as f:
        return f.read().decode("utf-8", "replace")
    return None


def process_of(tid: int, proc_root: str = "/proc") -> int | None:
    """The process (thread group) a live thread belongs to; None once it is gone."""
    return parse_tgid(_read(f"{proc_root}/{tid}/status") or "")


def describe(pid: int, comm: str, proc_root: str = "/proc") -> Process:
    """What /proc says of a process: its command line, user, unit or container. A thread's
    id (what the kernel trace records) is taken for its process, the thread group leader."""
    base = f"{proc_root}/{pid}"
    tgid = process_of(pid, proc_root)
    if tgid and tgid != pid:
        pid, base = tgid, f"{proc_root}/{tgid}"
        comm = (_read(f"{base}/comm") or comm).strip()
    if comm.startswith("<"):  # "<...>": the trace had not recorded the name yet
        comm = (_read(f"{base}/comm") or comm).strip()
    cmdline = (_read(f"{base}/cmdline") or "").replace("\0", " ").strip() or comm
    user = unit = container = None
    netns = None
    with contextlib.suppress(OSError, KeyError, ValueError):
        user = pwd.getpwuid(os.stat(base).st_uid).pw_name
    with contextlib.suppress(OSError):
        netns = os.stat(f"{base}/ns/net").st_ino
    cgroup = _read(f"{base}/cgroup")
    if cgroup is not None:
        unit, container = cgroup_owner(cgroup)
    return Process(pid, comm, cmdline, user, unit, container, netns)
