"""`rsthound listeners`: who listens where, with accept queues, backlogs, drops, owners."""

from __future__ import annotations

import argparse
import time
from typing import Any, TextIO

from rsthound.commands import Exit, options
from rsthound.model import takes
from rsthound.observe.observation import observed_ns
from rsthound.report.jsonout import line
from rsthound.report.listeners import listener_obj, render_listeners
from rsthound.sources.procfs import netns_label
from rsthound.sources.sockdiag import listeners

EPILOG = """\
examples:
  rsthound listeners                 this host's listeners
  rsthound listeners --netns blue    those of 'ip netns' namespace blue
  rsthound listeners --json | jq 'select(.full)'
  rsthound listeners --port 7211     who listens on 7211 (as ss -ltn 'sport = :7211')
  rsthound listeners --address ::1   the listeners that take connects to [::1]

QUEUE is how many connections wait for accept(); at BACKLOG the queue is full and new
connections are dropped (FULL). DROPS counts what this listener dropped so far.
Processes of other users are named only to root.

exit status: 0 shown; 2 error.
"""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "listeners",
        help="who listens where: accept queues, backlogs, drops, processes",
        description="Listening TCP sockets with their accept queue, backlog, drops and "
        "owning process\n(sock_diag netlink, as 'ss -ltnpm' shows them).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    p.add_argument("--json", action="store_true", help="one JSON object per listener")
    p.add_argument("--port", type=options.port_arg, action="append", default=[],
                   help="only listeners on this port (repeatable)")
    p.add_argument("--address", type=options.host_arg, action="append", default=[],
                   help="only listeners that take connects to this address: bound to it, or "
                   "to the wildcard of its family (repeatable)")
    options.add_namespace(p)
    options.add_debug(p)


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    found, source = listeners(observed_ns(args.netns, args.proc_root), args.proc_root)
    if args.port:
        found = [x for x in found if x.port in args.port]
    if args.address:
        found = [x for x in found if any(takes(x.addr, a) for a in args.address)]
    if args.json:
        out.write("".join(line(listener_obj(x)) for x in found))
    else:
        out.write(render_listeners(found, netns_label(args.netns), source, time.time()))
    return Exit.OK
