"""The files of /proc/PID that name a process's owner: `status` (its thread group) and
`cgroup` (its systemd unit or container)."""

from __future__ import annotations

import re


def parse_tgid(status: str) -> int | None:
    """The thread group (process) id in /proc/PID/status.

    >>> parse_tgid("Name:\\tpython3\\nUmask:\\t0022\\nState:\\tS\\nTgid:\\t4312\\n")
    4312
    """
    for line in status.splitlines():
        if line.startswith("Tgid:"):
            fields = line.split()
            return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None
    return None


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
