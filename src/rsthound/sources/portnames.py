"""What a port usually is: its name in /etc/services, and the systemd socket units that
declare it (`ListenStream=`), so that a dead port says who should be there."""

from __future__ import annotations

import contextlib
import glob
import re
import socket

from rsthound.model import PortName

UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/usr/local/lib/systemd/system",
             "/usr/lib/systemd/system", "/lib/systemd/system")


def port_name(port: int, unit_dirs: tuple[str, ...] = UNIT_DIRS) -> PortName:
    service = None
    with contextlib.suppress(OSError):
        service = socket.getservbyport(port, "tcp")
    units = []
    seen = set()
    for d in unit_dirs:
        for path in sorted(glob.glob(f"{d}/*.socket")):
            name = path.rsplit("/", 1)[1]
            if name in seen:
                continue  # the first directory wins, as for systemd
            seen.add(name)
            with contextlib.suppress(OSError), open(path) as f:
                for line in f:  # 7211, 127.0.0.1:7211, [::]:7211 (not a socket path)
                    m = re.match(r"\s*ListenStream\s*=\s*(?:\S*:)?(\d+)(?=\s|$)", line)
                    if m and int(m[1]) == port:
                        units.append(name)
                        break
    return PortName(port, service, tuple(units))
