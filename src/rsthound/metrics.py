"""The kernel's TCP counters that tell of failed connections and resets: one table, read by
the terminal, JSON, Prometheus and the docs alike.

Names stay the kernel's (`Tcp.AttemptFails` is `AttemptFails` in the `Tcp:` lines of
/proc/net/snmp; `TcpExt.*` come from /proc/net/netstat), because that is what people grep for
and what `nstat` prints (as `TcpAttemptFails`, `TcpExtListenOverflows`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Metric:
    name: str  # kernel name, "Tcp.AttemptFails"
    unit: str  # what one count is
    short: str  # at most 28 characters, for the terminal table
    meaning: str  # one plain sentence, for docs, JSON consumers and Prometheus HELP

    @property
    def nstat_name(self) -> str:
        """How `nstat` spells it: TcpAttemptFails, TcpExtListenOverflows."""
        return self.name.replace(".", "")


COUNTERS: tuple[Metric, ...] = (
    Metric("Tcp.AttemptFails", "connections", "connects that failed",
           "Connections that died while opening (SYN-SENT or SYN-RECV to CLOSED): mostly this "
           "host's outgoing connects that were refused or timed out, not a full listen queue."),
    Metric("Tcp.ActiveOpens", "connections", "connects started",
           "Outgoing connects this host started (each connect() that sent a SYN)."),
    Metric("Tcp.PassiveOpens", "connections", "connections accepted",
           "Incoming connections that local listeners took (handshakes answered)."),
    Metric("Tcp.EstabResets", "connections", "open connections reset",
           "Established connections that ended in a reset, sent or received."),
    Metric("Tcp.OutRsts", "segments", "resets sent by TCP",
           "RST segments the TCP stack sent (refusals of closed ports, aborts); resets from "
           "firewall rules such as 'reject with tcp reset' are not counted here."),
    Metric("Tcp.InErrs", "segments", "bad segments received",
           "Segments received with errors (bad checksum, short header)."),
    Metric("Tcp.RetransSegs", "segments", "segments retransmitted",
           "Segments sent again because no acknowledgement came in time."),
    Metric("TcpExt.ListenOverflows", "events", "accept queue overflows",
           "Times a listener's accept queue was full and an incoming connection was dropped "
           "(no reset is sent unless net.ipv4.tcp_abort_on_overflow=1)."),
    Metric("TcpExt.ListenDrops", "events", "listener drops (all causes)",
           "Incoming connection attempts dropped by a listener for any reason, overflows "
           "included."),
    Metric("TcpExt.TCPAbortOnData", "connections", "reset: data after close",
           "Connections reset because data arrived after the local program closed them."),
    Metric("TcpExt.TCPAbortOnClose", "connections", "reset: closed with unread",
           "Connections reset because the local program closed them with unread data."),
    Metric("TcpExt.TCPAbortOnMemory", "connections", "reset: out of memory",
           "Connections aborted for lack of memory or too many orphaned sockets."),
    Metric("TcpExt.TCPAbortOnTimeout", "connections", "aborted: retries exhausted",
           "Connections aborted after retransmissions or keepalive probes ran out."),
    Metric("TcpExt.TCPAbortOnLinger", "connections", "aborted: linger timeout",
           "Connections aborted in FIN-WAIT-2 when the linger time (tcp_fin_timeout) ran out."),
    Metric("TcpExt.TCPAbortFailed", "events", "could not send a reset",
           "Times the kernel wanted to send a reset but had no memory for it."),
    Metric("TcpExt.TCPSynRetrans", "segments", "SYNs retransmitted",
           "SYN and SYN-ACK segments sent again: connects or handshakes going unanswered."),
    Metric("TcpExt.TCPTimeouts", "events", "retransmission timeouts",
           "Retransmission timers that fired, in any state."),
    Metric("TcpExt.TCPReqQFullDrop", "events", "SYNs dropped: SYN queue",
           "SYNs dropped because a listener's SYN queue was full and SYN cookies are off."),
    Metric("TcpExt.TCPReqQFullDoCookies", "events", "SYN cookies: SYN queue full",
           "SYN cookies sent because a listener's SYN queue was full."),
    Metric("TcpExt.TCPBacklogDrop", "segments", "dropped: socket backlog",
           "Segments dropped because a busy socket's backlog was full."),
    Metric("Icmp.InDestUnreachs", "messages", "ICMP unreachables in",
           "ICMP destination unreachable messages received: a connect refused by a REJECT "
           "rule (port unreachable, administratively prohibited), or a host or net out of "
           "reach. Tcp.AttemptFails does not count such connects. UDP's count here too."),
    Metric("Icmp6.InDestUnreachs", "messages", "ICMPv6 unreachables in",
           "ICMPv6 destination unreachable messages received: the IPv6 side of "
           "Icmp.InDestUnreachs."),
    Metric("Ip.OutNoRoutes", "packets", "no route for outgoing",
           "Outgoing packets, and connects, that found no route (connect() fails at once "
           "with ENETUNREACH, before any SYN)."),
)

BY_NAME: dict[str, Metric] = {m.name: m for m in COUNTERS}
