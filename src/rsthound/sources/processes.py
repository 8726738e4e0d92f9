"""The local process behind a socket: what /proc says of it."""

from __future__ import annotations

import contextlib
import os
import pwd
import re
from dataclasses import dataclass
from typing import Any

from rsthound.model import printable


@dataclass(frozen=True)
class Process:
    """The local process behind a connection."""

    pid: int
    comm: str
    cmdline: str
    user: str | None
    unit: str | None  # systemd unit, from the cgroup
    container: str | None  # container id, from the cgroup
    netns: int | None  # the process's network namespace (inode)

    def obj(self) -> dict[str, Any]:
        return {"pid": self.pid, "comm": self.comm, "cmdline": self.cmdline, "user": self.user,
                "unit": self.unit, "container": self.container, "netns": self.netns}

    def command(self) -> str:
        """The command line with its program's base name: "python3 /opt/collector.py"."""
        argv = self.cmdline.split() or [self.comm]
        return printable(" ".join([os.path.basename(argv[0]), *argv[1:]]))

    def text(self) -> str:
        """"python3 /opt/collector.py (pid 4312, collector.service)": the command line (its
        program's base name, then its arguments) tells more than the name (python3, java),
        so it comes first, cut at 40 characters."""
        where = f", {printable(self.unit)}" if self.unit else (
            f", container {printable(self.container[:12])}" if self.container else "")
        cmd = self.command()
        if len(cmd) > 40:
            cmd = cmd[:39] + "…"
        return f"{cmd} (pid {self.pid}{where})"


def describe(pid: int, comm: str) -> Process:
    """What /proc says of a process: its command line, user, unit or container. A thread's
    id (what the kernel trace records) is taken for its process, the thread group leader."""
    base = f"/proc/{pid}"
    with contextlib.suppress(OSError, ValueError), open(f"{base}/status") as f:
        for line in f:
            if line.startswith("Tgid:"):
                tgid = int(line.split()[1])
                if tgid and tgid != pid:
                    pid, base = tgid, f"/proc/{tgid}"
                    with contextlib.suppress(OSError), open(f"{base}/comm") as c:
                        comm = c.read().strip()
                break
    if comm.startswith("<"):  # "<...>": the trace had not recorded the name yet
        with contextlib.suppress(OSError), open(f"{base}/comm") as f:
            comm = f.read().strip()
    cmdline = comm
    user = unit = container = None
    netns = None
    with contextlib.suppress(OSError), open(f"{base}/cmdline", "rb") as f:
        cmdline = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip() or comm
    with contextlib.suppress(OSError, KeyError, ValueError):
        uid = os.stat(base).st_uid
        user = pwd.getpwuid(uid).pw_name
    with contextlib.suppress(OSError):
        netns = os.stat(f"{base}/ns/net").st_ino
    with contextlib.suppress(OSError), open(f"{base}/cgroup") as f:
        unit, container = cgroup_owner(f.read())
    return Process(pid, comm, cmdline, user, unit, container, netns)


def cgroup_owner(text: str) -> tuple[str | None, str | None]:
    """(systemd unit, container id) from /proc/PID/cgroup.

    >>> cgroup_owner("0::/system.slice/collector.service\\n")
    ('collector.service', None)
    >>> cgroup_owner("0::/system.slice/docker-" + "ab" * 32 + ".scope\\n")[1][:6]
    'ababab'
    """
    path = text.strip().splitlines()[-1].split(":", 2)[-1] if text.strip() else ""
    parts = [p for p in path.split("/") if p]
    for p in reversed(parts):
        m = re.search(r"([0-9a-f]{64})", p)
        if m:
            return None, m[1]
    for p in reversed(parts):
        if p.endswith((".service", ".scope")) and not p.startswith("session-"):
            return p, None
    return None, None
