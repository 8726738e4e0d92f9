#!/usr/bin/env python3
"""Write a large, realistic, seeded capture of TCP traffic for rsthound's benchmarks.

The capture is classic pcap (little-endian, microsecond timestamps, Ethernet) or pcapng. It
holds IPv4 and ~10% IPv6 TCP connections between a few hundred clients and ~50 servers on one
L2 segment, seen from a tap near the servers, over ~10 simulated minutes for 1M packets:

- normal: handshake, request/response exchanges (MSS-sized segments, delayed ACKs every
  second segment), FIN close from either side; many short ones, some bulk transfers;
- refused: SYN answered by RST+ACK (seq 0, ack ISN+1), plus a steady stream of 2 per second
  from one client to 10.0.0.11:7211;
- timeout: SYN sent at +0, +1, +3, +7 s and never answered;
- abort: RST on an established connection, by the client or by the server;
- after-close: RST after a FIN; stray: RSTs on 4-tuples never seen opening;
- still open: pooled long-lived connections, and whatever is in flight at the end.

Sequence and ack numbers are consistent, IPv4 and TCP checksums are correct, TTL is 64 or 128
per host, IPv4 IDs increase per host. Connections are simulated in Python per connection
(numpy for bulk transfers) in windows of simulated time, then headers are built with numpy
for a whole batch and copied with the payload into one buffer: memory stays bounded.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from typing import BinaryIO

import numpy as np

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
OPT_NONE, OPT_SYN, OPT_TS = 0, 1, 2
TCP_HL = np.array([20, 40, 32], dtype=np.int64)
M32 = 0xFFFFFFFF
US = 1_000_000
EPOCH = 1_750_000_000  # 2025-06-15 15:06:40 UTC
WINDOW_US = 5 * US  # simulated time generated per step
BATCH = 65536  # packets per write
POOL = 1 << 20  # bytes of payload pool (random, like TLS records)
DELACK_US = 40_000

# Fields of one packet row, in this order.
TS, CID, DIR, FLG, RSEQ, RACK, PLEN, WIN, OPT = range(9)

# Connection kinds drawn for each random arrival, weights by connection.
KINDS = (
    ("short", 0.870),
    ("bulk", 0.0031),
    ("refused", 0.025),
    ("timeout", 0.015),
    ("abort", 0.045),
    ("after_close", 0.012),
    ("stray", 0.0015),
)
PKTS_PER_CONN = 20.3  # measured mean of the mix above, to aim the span at ~600 s per 1M

SERVICE_PORTS = (443, 443, 443, 443, 8443, 6443, 9000, 4317, 50051, 11211)
POOL_PORTS = (4317, 9000, 11211)
CLOSED_PORTS = (81, 8081, 8888, 9090, 9443, 5000, 3000, 7000, 7211, 25000)
REFUSED_STREAM = (11, 7211)  # server 11 is 10.0.0.21: 10.1.0.7 -> 10.0.0.21:7211, 2/s


class Conns:
    """Connection table in growable numpy arrays (index = connection id)."""

    FIELDS = ("cli", "srv", "cport", "sport", "v6", "isn_c", "isn_s", "rtt")

    def __init__(self) -> None:
        self.n = 0
        self.cap = 1024
        self.a = {f: np.zeros(self.cap, dtype=np.int64) for f in self.FIELDS}

    def add(
        self, cli: int, srv: int, cport: int, sport: int, v6: int, isn_c: int, isn_s: int, rtt: int
    ) -> int:
        if self.n == self.cap:
            self.cap *= 2
            for f in self.FIELDS:
                self.a[f] = np.resize(self.a[f], self.cap)
        i = self.n
        a = self.a
        a["cli"][i] = cli
        a["srv"][i] = srv
        a["cport"][i] = cport
        a["sport"][i] = sport
        a["v6"][i] = v6
        a["isn_c"][i] = isn_c
        a["isn_s"][i] = isn_s
        a["rtt"][i] = rtt
        self.n += 1
        return i


class Hosts:
    """Servers, dead servers, clients and outside hosts, with their addresses and counters."""

    def __init__(self, rng: random.Random, n_clients: int = 300, n_servers: int = 50) -> None:
        ip4: list[int] = []
        ttl: list[int] = []
        self.servers = list(range(n_servers))
        for i in range(n_servers):
            ip4.append(ip(10, 0, 0, 10 + i))
            ttl.append(128 if i % 10 == 7 else 64)
        self.dead = list(range(len(ip4), len(ip4) + 3))
        for i in range(3):
            ip4.append(ip(10, 0, 0, 200 + i))
            ttl.append(64)
        self.clients = list(range(len(ip4), len(ip4) + n_clients))
        for i in range(n_clients):
            ip4.append(ip(10, 1, i // 250, 2 + i % 250))
            ttl.append(128 if rng.random() < 0.3 else 64)
        self.outside = list(range(len(ip4), len(ip4) + 6))
        for i in range(6):
            ip4.append(ip(10, 200, 17 * i, 9))
            ttl.append(64 - rng.randint(8, 20))
        n = len(ip4)
        self.n = n
        a4 = np.array(ip4, dtype=np.int64)
        self.ip4 = a4
        self.ip4b = a4.astype(">u4").view(np.uint8).reshape(n, 4).copy()
        ip6 = np.zeros((n, 16), dtype=np.uint8)
        ip6[:, 0] = 0xFD
        ip6[:, 7] = self.ip4b[:, 1]  # fd00:0:0:<second v4 byte>::<v4>
        ip6[:, 12:16] = self.ip4b
        self.ip6 = ip6
        self.ip6sum = ip6.view(">u2").astype(np.int64).sum(axis=1)
        mac = np.zeros((n, 6), dtype=np.uint8)
        mac[:, 0] = 0x02
        mac[:, 2:6] = self.ip4b
        self.mac = mac
        self.ttl = np.array(ttl, dtype=np.int64)
        self.ipid = np.array([rng.randrange(65536) for _ in range(n)], dtype=np.int64)
        self.tsoff = np.array([rng.randrange(1 << 32) for _ in range(n)], dtype=np.int64)
        # per-client path: LAN or WAN round trip, link speed, next ephemeral port
        self.rtt = {
            c: (
                rng.randint(150, 2000)
                if rng.random() < 0.6
                else int(math.exp(rng.uniform(math.log(5e3), math.log(1.2e5))))
            )
            for c in self.clients
        }
        self.mbps = {c: math.exp(rng.uniform(math.log(20), math.log(1000))) for c in self.clients}
        self.port = {c: rng.randint(32768, 60999) for c in self.clients}
        self.svc = {s: SERVICE_PORTS[s % len(SERVICE_PORTS)] for s in self.servers}
        # Zipf-like popularity of servers
        self.srv_w = [1.0 / (k + 1) ** 0.8 for k in range(n_servers)]

    def next_port(self, c: int) -> int:
        p = self.port[c] + 1
        self.port[c] = 32768 if p > 60999 else p
        return p


def ip(a: int, b: int, c: int, d: int) -> int:
    return (a << 24) | (b << 16) | (c << 8) | d


class Traffic:
    """Simulates connections into packet rows (see TS..OPT) and numpy chunks."""

    def __init__(self, seed: int, packets: int) -> None:
        self.r = random.Random(seed)
        self.np = np.random.default_rng(seed)
        self.h = Hosts(self.r)
        self.c = Conns()
        self.rows: list[tuple[int, ...]] = []
        self.chunks: list[np.ndarray] = []
        self.span = max(10 * US, int(600 * US * min(1.0, packets / 1e6)))
        self.rate = packets / (self.span / US) / PKTS_PER_CONN  # random arrivals per second
        self.kind_names = [k for k, _ in KINDS]
        self.kind_cum: list[float] = []
        tot = 0.0
        for _, w in KINDS:
            tot += w
            self.kind_cum.append(tot)
        self.kind_tot = tot
        self.count: dict[str, int] = {k: 0 for k in self.kind_names}
        self.count.update(refused_stream=0, long_lived=0)
        # long-lived pooled connections: [cid, cs, ss, next_t, mss, cwin, swin]
        self.pooled: list[list[int]] = []
        n_pool = max(4, int(40 * min(1.0, packets / 1e6)))
        for _ in range(n_pool):
            self._open_pooled(self.r.randint(0, 2 * US))
        self.stream_t = self.r.randint(0, US // 2)

    # -- helpers ---------------------------------------------------------------------------
    def _new_conn(
        self,
        cli: int,
        srv: int,
        sport: int,
        v6: int | None = None,
        isn_s: int | None = None,
        cport: int | None = None,
    ) -> int:
        r = self.r
        if v6 is None:
            v6 = 1 if r.random() < 0.1 else 0
        return self.c.add(
            cli,
            srv,
            self.h.next_port(cli) if cport is None else cport,
            sport,
            v6,
            r.randrange(1 << 32),
            r.randrange(1 << 32) if isn_s is None else isn_s,
            self.h.rtt.get(cli, 0),
        )

    def _pick_server(self) -> int:
        return self.r.choices(self.h.servers, weights=self.h.srv_w)[0]

    def _gap(self, cli: int, mbps: float | None = None) -> int:
        return max(1, round(1538 * 8 / (mbps or self.h.mbps[cli])))

    def _handshake(self, t: int, cid: int, rtt: int, cwin: int) -> int:
        e = self.rows.append
        e((t, cid, 0, SYN, 0, 0, 0, 64240, OPT_SYN))
        t1 = t + self.r.randint(15, 120)
        e((t1, cid, 1, SYN | ACK, 0, 1, 0, 65160, OPT_SYN))
        t2 = t1 + rtt
        e((t2, cid, 0, ACK, 1, 1, 0, cwin, OPT_TS))
        return t2

    def _segments(
        self,
        t: int,
        cid: int,
        d: int,
        seq: int,
        ack: int,
        nbytes: int,
        mss: int,
        gap: int,
        ack_delay: int,
        win: int,
        peer_win: int,
    ) -> tuple[int, int, int]:
        """Data from side d, ACKed every second segment by the peer after ack_delay.

        Returns (time of the last segment, next seq, seq the peer still has to ACK or -1).
        """
        n = -(-nbytes // mss)
        if n >= 24:
            self._bulk_chunk(t, cid, d, seq, ack, nbytes, mss, gap, ack_delay, win, peer_win)
            last = n - 1
            odd = n % 2 == 1
            return t + last * gap, seq + nbytes, (seq + nbytes if odd else -1)
        e = self.rows.append
        pd = 1 - d
        tt = t
        left = nbytes
        pending = -1
        k = 0
        t_last = t
        while left > 0:
            size = min(mss, left)
            left -= size
            e((tt, cid, d, ACK | (PSH if left == 0 else 0), seq, ack, size, win, OPT_TS))
            seq += size
            if k % 2 == 1:
                e((tt + ack_delay, cid, pd, ACK, ack, seq, 0, peer_win, OPT_TS))
                pending = -1
            else:
                pending = seq
            k += 1
            t_last = tt
            tt += gap
        return t_last, seq, pending

    def _bulk_chunk(
        self,
        t: int,
        cid: int,
        d: int,
        seq: int,
        ack: int,
        nbytes: int,
        mss: int,
        gap: int,
        ack_delay: int,
        win: int,
        peer_win: int,
    ) -> None:
        n = -(-nbytes // mss)
        jitter = self.np.integers(0, max(1, gap // 4) + 1, n)
        ts = t + np.arange(n, dtype=np.int64) * gap + jitter
        ts[0] = t
        ts = np.maximum.accumulate(ts)
        ts[1:] = np.maximum(ts[1:], ts[:-1] + 1)
        size = np.full(n, mss, dtype=np.int64)
        size[-1] = nbytes - mss * (n - 1)
        end = seq + np.cumsum(size)
        data = np.empty((n, 9), dtype=np.int64)
        data[:, TS] = ts
        data[:, CID] = cid
        data[:, DIR] = d
        data[:, FLG] = ACK
        data[-1, FLG] = ACK | PSH
        data[:, RSEQ] = end - size
        data[:, RACK] = ack
        data[:, PLEN] = size
        data[:, WIN] = win
        data[:, OPT] = OPT_TS
        k = np.arange(1, n, 2)
        acks = np.empty((len(k), 9), dtype=np.int64)
        acks[:, TS] = ts[k] + ack_delay
        acks[:, CID] = cid
        acks[:, DIR] = 1 - d
        acks[:, FLG] = ACK
        acks[:, RSEQ] = ack
        acks[:, RACK] = end[k]
        acks[:, PLEN] = 0
        acks[:, WIN] = peer_win
        acks[:, OPT] = OPT_TS
        self.chunks.append(data)
        self.chunks.append(acks)

    def _exchange(
        self,
        t: int,
        cid: int,
        cs: int,
        ss: int,
        rtt: int,
        req: int,
        resp: int,
        mss: int,
        gap: int,
        cwin: int,
        swin: int,
        think: int,
    ) -> tuple[int, int, int]:
        """Client request at t, server response; returns (time of next client action, cs, ss).

        The client's next action happens `think` after the last response segment reached it.
        """
        r = self.r
        t_req, cs, pend = self._segments(
            t, cid, 0, cs, ss, req, mss, gap, r.randint(10, 60), cwin, swin
        )
        proc = int(math.exp(r.gauss(math.log(2500), 1.3)))
        if pend >= 0 and proc > DELACK_US:
            self.rows.append((t_req + DELACK_US, cid, 1, ACK, ss, cs, 0, swin, OPT_TS))
        t_resp = t_req + proc + 1
        t_last, ss, pend = self._segments(t_resp, cid, 1, ss, cs, resp, mss, gap, rtt, swin, cwin)
        t_next = t_last + rtt + think
        if pend >= 0 and think > DELACK_US:
            self.rows.append(
                (t_last + rtt + r.randint(200, DELACK_US), cid, 0, ACK, cs, pend, 0, cwin, OPT_TS)
            )
        return t_next, cs, ss

    def _req_resp_sizes(self) -> tuple[int, int]:
        r = self.r
        req = int(math.exp(r.uniform(math.log(60), math.log(1400))))
        if r.random() < 0.04:
            req = r.randint(1500, 6000)
        resp = int(math.exp(r.gauss(math.log(1500), 1.2)))
        return req, min(resp, 40_000)

    def _close(self, t: int, cid: int, cs: int, ss: int, rtt: int, cwin: int, swin: int) -> None:
        r = self.r
        e = self.rows.append
        if r.random() < 0.55:  # client closes
            e((t, cid, 0, FIN | ACK, cs, ss, 0, cwin, OPT_TS))
            t1 = t + r.randint(20, 200)
            if r.random() < 0.3:
                e((t1, cid, 1, ACK, ss, cs + 1, 0, swin, OPT_TS))
                t1 += r.randint(100, 5000)
            e((t1, cid, 1, FIN | ACK, ss, cs + 1, 0, swin, OPT_TS))
            e((t1 + rtt, cid, 0, ACK, cs + 1, ss + 1, 0, cwin, OPT_TS))
        else:  # server closes (t is when the client would act; server acts a bit earlier)
            t0 = t - rtt // 2
            e((t0, cid, 1, FIN | ACK, ss, cs, 0, swin, OPT_TS))
            t1 = t0 + rtt
            if r.random() < 0.3:
                e((t1, cid, 0, ACK, cs, ss + 1, 0, cwin, OPT_TS))
                t1 += r.randint(50, 3000)
            e((t1, cid, 0, FIN | ACK, cs, ss + 1, 0, cwin, OPT_TS))
            e((t1 + r.randint(15, 80), cid, 1, ACK, ss + 1, cs + 1, 0, swin, OPT_TS))

    def _client_conn(self) -> tuple[int, int, int, int, int]:
        """A new client->server connection: (cid, cli, srv, rtt, mss)."""
        r = self.r
        cli = r.choice(self.h.clients)
        srv = self._pick_server()
        cid = self._new_conn(cli, srv, self.h.svc[srv])
        mss = 1428 if self.c.a["v6"][cid] else 1448
        return cid, cli, srv, self.h.rtt[cli], mss

    # -- connection kinds --------------------------------------------------------------------
    def short(self, t: int, bulk: bool = False) -> None:
        r = self.r
        cid, cli, _, rtt, mss = self._client_conn()
        gap = self._gap(cli)
        cwin = r.randint(500, 3000)
        swin = r.randint(500, 2000)
        if bulk:
            mbps = min(self.h.mbps[cli], 3e6 * 8 / max(rtt, 1))  # keep in flight < ~3 MB
            gap = self._gap(cli, mbps)
            cwin = min(65535, max(cwin, int(2 * 1538 * rtt / gap / 128) + 512))
            swin = cwin
        t = self._handshake(t, cid, rtt, cwin) + r.randint(5, 800)
        cs = ss = 1
        n_x = 1 if r.random() < 0.7 else r.randint(2, 4)
        for i in range(n_x):
            req, resp = self._req_resp_sizes()
            if bulk and i == n_x - 1:
                size = mss * r.randint(100, 2000) - r.randint(0, mss - 1)
                if r.random() < 0.25:
                    req = size  # upload
                else:
                    resp = size
            think = (
                r.randint(50, 3000)
                if i < n_x - 1 and r.random() < 0.5
                else r.randint(DELACK_US + 1, 2 * US)
            )
            t, cs, ss = self._exchange(t, cid, cs, ss, rtt, req, resp, mss, gap, cwin, swin, think)
        self._close(t, cid, cs, ss, rtt, cwin, swin)

    def refused(
        self, t: int, cli: int | None = None, srv: int | None = None, port: int | None = None
    ) -> None:
        r = self.r
        if cli is None:
            cli = r.choice(self.h.clients)
        if srv is None:
            srv = self._pick_server()
        if port is None:
            port = r.choice(CLOSED_PORTS)
        cid = self._new_conn(cli, srv, port, isn_s=0)
        e = self.rows.append
        e((t, cid, 0, SYN, 0, 0, 0, 64240, OPT_SYN))
        e((t + r.randint(15, 90), cid, 1, RST | ACK, 0, 1, 0, 0, OPT_NONE))

    def timeout(self, t: int) -> None:
        r = self.r
        cli = r.choice(self.h.clients)
        if r.random() < 0.6:
            cid = self._new_conn(cli, r.choice(self.h.dead), r.choice(SERVICE_PORTS))
        else:  # a port filtered by a firewall on a live server
            cid = self._new_conn(cli, self._pick_server(), r.choice((22, 25, 1433, 5985)))
        for dt in (0, 1, 3, 7):
            self.rows.append(
                (t + dt * US + r.randint(0, 3000), cid, 0, SYN, 0, 0, 0, 64240, OPT_SYN)
            )

    def abort(self, t: int) -> None:
        r = self.r
        cid, cli, _, rtt, mss = self._client_conn()
        gap = self._gap(cli)
        cwin = r.randint(500, 3000)
        swin = r.randint(500, 2000)
        e = self.rows.append
        t = self._handshake(t, cid, rtt, cwin) + r.randint(5, 800)
        cs = ss = 1
        for _ in range(r.randint(0, 2)):
            req, resp = self._req_resp_sizes()
            t, cs, ss = self._exchange(
                t, cid, cs, ss, rtt, req, resp, mss, gap, cwin, swin, r.randint(DELACK_US + 1, US)
            )
        by_client = r.random() < 0.5
        if by_client and r.random() < 0.4:  # client gives up in the middle of a response
            req, _ = self._req_resp_sizes()
            t_req, cs, _ = self._segments(
                t, cid, 0, cs, ss, req, mss, gap, r.randint(10, 60), cwin, swin
            )
            t_resp = t_req + r.randint(100, 5000)
            resp = mss * r.randint(8, 40)
            n_seen = r.randint(2, 6)
            t_rst = t_resp + (n_seen - 1) * gap + rtt + r.randint(1000, 20000)
            t_rst = min(t_rst, t_resp + (resp // mss - 2) * gap + rtt)
            rcvd = ss  # what the client had received when it reset
            for k in range(resp // mss):
                ts = t_resp + k * gap
                if ts >= t_rst:
                    break
                e((ts, cid, 1, ACK, ss, cs, mss, swin, OPT_TS))
                ss += mss
                if ts + rtt < t_rst:
                    rcvd = ss
                    if k % 2 == 1:
                        e((ts + rtt, cid, 0, ACK, cs, ss, 0, cwin, OPT_TS))
            e((t_rst, cid, 0, RST | ACK, cs, rcvd, 0, 0, OPT_TS))
        elif by_client:  # client closes with unread data, or kills the socket
            flags = RST | ACK if r.random() < 0.8 else RST
            e((t, cid, 0, flags, cs, ss, 0, 0 if flags == RST else cwin, OPT_TS))
        else:  # server resets after the request arrives (crash, SO_LINGER 0, overload)
            req, _ = self._req_resp_sizes()
            t_req, cs, _ = self._segments(
                t, cid, 0, cs, ss, req, mss, gap, r.randint(10, 60), cwin, swin
            )
            t_rst = t_req + int(math.exp(r.gauss(math.log(3000), 1.0)))
            e((t_rst, cid, 1, RST | ACK, ss, cs, 0, 0, OPT_TS))
            if r.random() < 0.3:  # a request already in flight elicits a second RST
                t2 = t_rst + r.randint(1, max(2, rtt // 2))
                e((t2, cid, 0, ACK | PSH, cs, ss, 120, cwin, OPT_TS))
                e((t2 + r.randint(10, 40), cid, 1, RST, ss, 0, 0, 0, OPT_NONE))

    def after_close(self, t: int) -> None:
        r = self.r
        cid, cli, _, rtt, mss = self._client_conn()
        gap = self._gap(cli)
        cwin = r.randint(500, 3000)
        swin = r.randint(500, 2000)
        e = self.rows.append
        t = self._handshake(t, cid, rtt, cwin) + r.randint(5, 800)
        cs = ss = 1
        req, resp = self._req_resp_sizes()
        t, cs, ss = self._exchange(
            t, cid, cs, ss, rtt, req, resp, mss, gap, cwin, swin, r.randint(DELACK_US + 1, US)
        )
        v = r.random()
        if v < 0.5:  # keep-alive race: server closes, a new request crosses its FIN
            tf = t - rtt // 2
            e((tf, cid, 1, FIN | ACK, ss, cs, 0, swin, OPT_TS))
            t2 = tf + r.randint(1, max(2, rtt // 2))
            e((t2, cid, 0, ACK | PSH, cs, ss, 300, cwin, OPT_TS))
            e((t2 + r.randint(10, 50), cid, 1, RST | ACK, ss + 1, cs + 300, 0, 0, OPT_TS))
            if r.random() < 0.5:  # the client's ACK of the FIN meets no socket
                e((tf + rtt + 1, cid, 0, ACK, cs + 300, ss + 1, 0, cwin, OPT_TS))
                e((tf + rtt + r.randint(10, 50), cid, 1, RST, ss + 1, 0, 0, 0, OPT_NONE))
        elif v < 0.8:  # client closes, server aborts with unread data
            e((t, cid, 0, FIN | ACK, cs, ss, 0, cwin, OPT_TS))
            e((t + r.randint(15, 300), cid, 1, RST | ACK, ss, cs + 1, 0, 0, OPT_TS))
        else:  # server closes, client ACKs the FIN, then resets instead of closing
            tf = t - rtt // 2
            e((tf, cid, 1, FIN | ACK, ss, cs, 0, swin, OPT_TS))
            e((tf + rtt, cid, 0, ACK, cs, ss + 1, 0, cwin, OPT_TS))
            e((tf + rtt + r.randint(100, 200_000), cid, 0, RST | ACK, cs, ss + 1, 0, 0, OPT_TS))

    def stray(self, t: int) -> None:
        r = self.r
        if r.random() < 0.5:  # backscatter of someone's spoofed SYNs
            cid = self.c.add(
                r.choice(self.h.servers),
                r.choice(self.h.outside),
                r.randint(1024, 65535),
                r.choice((80, 443, 22)),
                0,
                r.randrange(1 << 32),
                0,
                0,
            )
            self.rows.append((t, cid, 1, RST | ACK, 0, 1, 0, 0, OPT_NONE))
        else:  # a server resets a connection that predates the capture
            cid = self.c.add(
                r.choice(self.h.clients),
                self._pick_server(),
                r.randint(1024, 32000),
                r.choice(SERVICE_PORTS),
                1 if r.random() < 0.1 else 0,
                r.randrange(1 << 32),
                r.randrange(1 << 32),
                0,
            )
            self.rows.append(
                (
                    t,
                    cid,
                    1,
                    RST | (ACK if r.random() < 0.5 else 0),
                    r.randint(1, 1 << 30),
                    r.randint(1, 1 << 30),
                    0,
                    0,
                    OPT_NONE,
                )
            )

    def _open_pooled(self, t: int) -> None:
        r = self.r
        cli = r.choice(self.h.clients)
        srv = r.choice([s for s in self.h.servers if self.h.svc[s] in POOL_PORTS])
        cid = self._new_conn(cli, srv, self.h.svc[srv])
        mss = 1428 if self.c.a["v6"][cid] else 1448
        cwin, swin = r.randint(500, 3000), r.randint(500, 2000)
        t = self._handshake(t, cid, self.h.rtt[cli], cwin)
        self.pooled.append([cid, 1, 1, t + r.randint(1000, 500_000), mss, cwin, swin])
        self.count["long_lived"] += 1

    # -- time windows --------------------------------------------------------------------------
    def window(self, t0: int, t1: int) -> None:
        r = self.r
        n = int(self.np.poisson(self.rate * (t1 - t0) / US))
        starts = sorted(r.randrange(t0, t1) for _ in range(n))
        cum = self.kind_cum
        names = self.kind_names
        for t in starts:
            x = r.random() * self.kind_tot
            k = 0
            while x > cum[k]:
                k += 1
            kind = names[k]
            self.count[kind] += 1
            if kind == "short":
                self.short(t)
            elif kind == "bulk":
                self.short(t, bulk=True)
            elif kind == "refused":
                self.refused(t)
            elif kind == "timeout":
                self.timeout(t)
            elif kind == "abort":
                self.abort(t)
            elif kind == "after_close":
                self.after_close(t)
            else:
                self.stray(t)
        # the steady stream of refused connects: one client, one closed port, 2 per second
        cli = self.h.clients[5]
        while self.stream_t < t1:
            self.refused(self.stream_t, cli, REFUSED_STREAM[0], REFUSED_STREAM[1])
            self.count["refused_stream"] += 1
            self.stream_t += 500_000 + r.randint(-3000, 3000)
        for p in self.pooled:
            cid, cs, ss, nt, mss, cwin, swin = p
            rtt = int(self.c.a["rtt"][cid])
            gap = self._gap(int(self.c.a["cli"][cid]))
            while nt < t1:
                req = r.randint(40, 400)
                resp = r.randint(60, 5000)
                think = int(r.expovariate(1 / 4e6)) + DELACK_US + 1
                nt, cs, ss = self._exchange(
                    nt, cid, cs, ss, rtt, req, resp, mss, gap, cwin, swin, think
                )
            p[1], p[2], p[3] = cs, ss, nt

    def take_rows(self) -> np.ndarray:
        parts = list(self.chunks)
        if self.rows:
            parts.append(np.array(self.rows, dtype=np.int64))
        self.rows = []
        self.chunks = []
        if not parts:
            return np.empty((0, 9), dtype=np.int64)
        return np.concatenate(parts)


class Writer:
    """Turns sorted packet rows into pcap/pcapng records, a batch at a time."""

    def __init__(self, f: BinaryIO, traffic: Traffic, fmt: str, seed: int) -> None:
        self.f = f
        self.t = traffic
        self.ng = fmt == "pcapng"
        self.P = 28 if self.ng else 16
        self.W = self.P + 14 + 40 + 40
        rng = np.random.default_rng(seed + 7919)
        pool = rng.integers(0, 256, POOL + 4096, dtype=np.uint8)
        self.pool = pool
        self.pool_bytes = pool.tobytes()
        words = pool.view(">u2").astype(np.int64)
        self.psum = np.concatenate(([0], np.cumsum(words)))
        self.rng = rng
        self.packets = 0
        self.bytes = 0
        self.last_ts = 0
        if self.ng:
            # SHB (version 1.0, section length unknown), then one Ethernet IDB (microseconds)
            shb = np.array([0x0A0D0D0A, 28, 0x1A2B3C4D, 1, M32, M32, 28], dtype="<u4").tobytes()
            idb = np.array([1, 20, 1, 262144, 20], dtype="<u4").tobytes()
            f.write(shb + idb)
            self.bytes += len(shb) + len(idb)
        else:
            hdr = np.array([0xA1B2C3D4, 0x00040002, 0, 0, 262144, 1], dtype="<u4").tobytes()
            f.write(hdr)
            self.bytes += len(hdr)

    def write(self, rows: np.ndarray) -> None:
        for i in range(0, len(rows), BATCH):
            self._write(rows[i : i + BATCH])

    def _write(self, b: np.ndarray) -> None:
        n = len(b)
        h = self.t.h
        a = self.t.c.a
        cid = b[:, CID]
        c2s = b[:, DIR] == 0
        fl = b[:, FLG]
        ts = b[:, TS]
        cli, srv = a["cli"][cid], a["srv"][cid]
        src = np.where(c2s, cli, srv)
        dst = np.where(c2s, srv, cli)
        sport = np.where(c2s, a["cport"][cid], a["sport"][cid])
        dport = np.where(c2s, a["sport"][cid], a["cport"][cid])
        isn_c, isn_s = a["isn_c"][cid], a["isn_s"][cid]
        seq = (np.where(c2s, isn_c, isn_s) + b[:, RSEQ]) & M32
        ack = np.where(fl & ACK != 0, (np.where(c2s, isn_s, isn_c) + b[:, RACK]) & M32, 0)
        v6 = a["v6"][cid] != 0
        opt = b[:, OPT]
        plen = b[:, PLEN]
        tcphl = TCP_HL[opt]
        iplen = np.where(v6, 40, 20) + tcphl + plen  # v4 total length; v6 adds 40 fixed
        caplen = 14 + iplen
        # IP IDs: each host counts its IPv4 packets in time order
        ipid = np.zeros(n, dtype=np.int64)
        v4i = np.flatnonzero(~v6)
        if len(v4i):
            s4 = src[v4i]
            order = np.argsort(s4, kind="stable")
            ss = s4[order]
            first = np.r_[True, ss[1:] != ss[:-1]]
            starts = np.flatnonzero(first)
            grp = np.cumsum(first) - 1
            rank = np.arange(len(ss)) - starts[grp]
            ids = np.empty(len(ss), dtype=np.int64)
            ids[order] = h.ipid[ss] + rank
            ipid[v4i] = ids & 0xFFFF
            np.add.at(h.ipid, s4, 1)
        # TCP timestamps: client clocks run at the client's send time (half an RTT earlier)
        rtt = a["rtt"][cid]
        half = rtt // 2
        tsend = np.where(c2s, ts - half, ts)
        tsval = (h.tsoff[src] + np.maximum(tsend, 0) // 1000) & M32
        techo = np.where(c2s, ts - rtt, ts - half)
        tsecr = (h.tsoff[dst] + np.maximum(techo, 0) // 1000) & M32
        tsecr = np.where((opt == OPT_SYN) & (fl & ACK == 0), 0, tsecr)
        po = self.rng.integers(0, POOL // 2, n) * 2
        pw = plen // 2
        paysum = self.psum[po // 2 + pw] - self.psum[po // 2]
        odd = (plen & 1) == 1
        paysum += np.where(odd, self.pool[po + plen - 1].astype(np.int64) << 8, 0)
        reclen = 28 + ((caplen + 3) & ~3) + 4 if self.ng else 16 + caplen
        H = np.zeros((n, self.W), dtype=np.uint8)
        for fam in (False, True):
            m = v6 if fam else ~v6
            if not m.any():
                continue
            H[m] = self._headers(
                fam,
                ts[m],
                src[m],
                dst[m],
                sport[m],
                dport[m],
                seq[m],
                ack[m],
                fl[m],
                b[m, WIN],
                opt[m],
                tcphl[m],
                iplen[m],
                caplen[m],
                reclen[m],
                ipid[m],
                tsval[m],
                tsecr[m],
                paysum[m],
                cid[m],
                c2s[m],
            )
        hlen = self.P + caplen - plen
        off = np.zeros(n, dtype=np.int64)
        np.cumsum(reclen[:-1], out=off[1:])
        total = int(off[-1] + reclen[-1])
        out = bytearray(total)
        omv = memoryview(out)
        hmv = memoryview(H.reshape(-1))
        pmv = memoryview(self.pool_bytes)
        W = self.W
        hs = 0
        for o, hl, p, q in zip(
            off.tolist(), hlen.tolist(), plen.tolist(), po.tolist(), strict=True
        ):
            omv[o : o + hl] = hmv[hs : hs + hl]
            if p:
                o += hl
                omv[o : o + p] = pmv[q : q + p]
            hs += W
        if self.ng:  # trailing copy of the block length
            onp = np.frombuffer(out, dtype=np.uint8)
            pos = (off + reclen - 4)[:, None] + np.arange(4)
            onp[pos] = reclen.astype("<u4").view(np.uint8).reshape(n, 4)
        self.f.write(out)
        self.last_ts = int(ts[-1])
        self.packets += n
        self.bytes += total

    def _headers(
        self,
        v6: bool,
        ts: np.ndarray,
        src: np.ndarray,
        dst: np.ndarray,
        sport: np.ndarray,
        dport: np.ndarray,
        seq: np.ndarray,
        ack: np.ndarray,
        fl: np.ndarray,
        win: np.ndarray,
        opt: np.ndarray,
        tcphl: np.ndarray,
        iplen: np.ndarray,
        caplen: np.ndarray,
        reclen: np.ndarray,
        ipid: np.ndarray,
        tsval: np.ndarray,
        tsecr: np.ndarray,
        paysum: np.ndarray,
        cid: np.ndarray,
        c2s: np.ndarray,
    ) -> np.ndarray:
        h = self.t.h
        n = len(ts)
        P = self.P
        H = np.zeros((n, self.W), dtype=np.uint8)
        sec = EPOCH + ts // US
        if self.ng:
            t64 = EPOCH * US + ts
            le = np.stack(
                [
                    np.full(n, 6),
                    reclen,
                    np.zeros(n, dtype=np.int64),
                    t64 >> 32,
                    t64 & M32,
                    caplen,
                    caplen,
                ],
                axis=1,
            )
        else:
            le = np.stack([sec, ts % US, caplen, caplen], axis=1)
        H[:, :P] = le.astype("<u4").view(np.uint8).reshape(n, P)
        E = P
        H[:, E : E + 6] = h.mac[dst]
        H[:, E + 6 : E + 12] = h.mac[src]
        L3 = E + 14
        if v6:
            H[:, E + 12] = 0x86
            H[:, E + 13] = 0xDD
            flow = ((cid * 2 + c2s) * 2654435761 >> 7) & 0xFFFFF
            be(H, L3, 0x60000000 | flow, 4)
            be(H, L3 + 4, iplen - 40, 2)
            H[:, L3 + 6] = 6
            H[:, L3 + 7] = h.ttl[src]
            H[:, L3 + 8 : L3 + 24] = h.ip6[src]
            H[:, L3 + 24 : L3 + 40] = h.ip6[dst]
            T = L3 + 40
            pseudo = h.ip6sum[src] + h.ip6sum[dst] + 6 + (iplen - 40)
        else:
            H[:, E + 12] = 0x08
            H[:, L3] = 0x45
            be(H, L3 + 2, iplen, 2)
            be(H, L3 + 4, ipid, 2)
            H[:, L3 + 6] = 0x40  # DF
            H[:, L3 + 8] = h.ttl[src]
            H[:, L3 + 9] = 6
            H[:, L3 + 12 : L3 + 16] = h.ip4b[src]
            H[:, L3 + 16 : L3 + 20] = h.ip4b[dst]
            s = np.ascontiguousarray(H[:, L3 : L3 + 20]).view(">u2").sum(axis=1, dtype=np.int64)
            be(H, L3 + 10, ~fold(s) & 0xFFFF, 2)
            T = L3 + 20
            s4, d4 = h.ip4[src], h.ip4[dst]
            pseudo = (s4 >> 16) + (s4 & 0xFFFF) + (d4 >> 16) + (d4 & 0xFFFF) + 6 + (iplen - 20)
        be(H, T, sport, 2)
        be(H, T + 2, dport, 2)
        be(H, T + 4, seq, 4)
        be(H, T + 8, ack, 4)
        H[:, T + 12] = (tcphl // 4) << 4
        H[:, T + 13] = fl
        be(H, T + 14, win, 2)
        m = opt == OPT_SYN
        if m.any():
            mss = 1440 if v6 else 1460
            H[m, T + 20 : T + 28] = (2, 4, mss >> 8, mss & 0xFF, 4, 2, 8, 10)
            be(H, T + 28, tsval, 4, m)
            be(H, T + 32, tsecr, 4, m)
            H[m, T + 36 : T + 40] = (1, 3, 3, 7)
        m = opt == OPT_TS
        if m.any():
            H[m, T + 20 : T + 24] = (1, 1, 8, 10)
            be(H, T + 24, tsval, 4, m)
            be(H, T + 28, tsecr, 4, m)
        s = np.ascontiguousarray(H[:, T : T + 40]).view(">u2").sum(axis=1, dtype=np.int64)
        be(H, T + 16, ~fold(s + pseudo + paysum) & 0xFFFF, 2)
        return H


def be(
    H: np.ndarray, col: int, vals: np.ndarray | int, size: int, mask: np.ndarray | None = None
) -> None:
    """Store big-endian unsigned values of `size` bytes at column `col` of each row."""
    v = np.asarray(vals, dtype=np.int64)
    if mask is not None:
        v = v[mask]
    b = v.astype(f">u{size}").view(np.uint8).reshape(-1, size)
    if mask is None:
        H[:, col : col + size] = b
    else:
        H[mask, col : col + size] = b


def fold(s: np.ndarray) -> np.ndarray:
    for _ in range(3):
        s = (s & 0xFFFF) + (s >> 16)
    return s


def generate(path: str, packets: int, seed: int, fmt: str) -> dict[str, object]:
    t_start = time.perf_counter()
    traffic = Traffic(seed, packets)
    pending = np.empty((0, 9), dtype=np.int64)
    with open(path, "wb", buffering=1 << 20) as f:
        w = Writer(f, traffic, fmt, seed)
        t0 = 0
        while w.packets < packets:
            t1 = t0 + WINDOW_US
            traffic.window(t0, t1)
            rows = np.concatenate((pending, traffic.take_rows()))
            rows = rows[np.argsort(rows[:, TS], kind="stable")]
            cut = int(np.searchsorted(rows[:, TS], t1))
            cut = min(cut, packets - w.packets)
            w.write(rows[:cut])
            pending = rows[cut:]
            t0 = t1
    secs = time.perf_counter() - t_start
    return {
        "file": path,
        "format": fmt,
        "packets": w.packets,
        "bytes": w.bytes,
        "span_s": round(w.last_ts / US, 1),
        "seconds": round(secs, 2),
        "packets_per_s": round(w.packets / secs),
        "connections": traffic.c.n,
        "started": traffic.count,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=1_000_000, help="packets to write")
    ap.add_argument("--seed", type=int, default=1, help="random seed (same seed, same file)")
    ap.add_argument("-o", "--output", required=True, help="capture file to write")
    ap.add_argument("--format", choices=("pcap", "pcapng"), default="pcap")
    ap.add_argument("-q", "--quiet", action="store_true", help="no summary on stderr")
    args = ap.parse_args(argv)
    if args.packets < 1:
        ap.error("--packets must be positive")
    info = generate(args.output, args.packets, args.seed, args.format)
    if not args.quiet:
        started = info.pop("started")
        print(" ".join(f"{k}={v}" for k, v in info.items()), file=sys.stderr)
        print(
            "started: " + " ".join(f"{k}={v}" for k, v in started.items()),  # type: ignore
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
