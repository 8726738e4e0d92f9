"""Traffic generators for the golden captures in tests/data (standard library only).

make_captures.sh runs each piece inside a network namespace with `ip netns exec`:

    scenarios.py refused 127.0.0.1 7211 --count 16 --interval 0.5
    scenarios.py server 10.200.0.2 8080 normal --count 3
    scenarios.py client 10.200.0.2 8080 normal
    scenarios.py tcx-tag rh-cv 8100:100
    scenarios.py tun-relay rh-tunc rh-srv rh-tuns

Client and server agree on a tiny protocol so that every packet on the wire is
deterministic: the client sends one request line, the server answers with a fixed
REPLY_LEN bytes, and the mode decides who closes and how. Pauses of PAUSE seconds
let each side's ACKs reach the wire before the next step, and FIN_PAUSE outlasts the
delayed ACK after a FIN, so packet counts do not depend on scheduling.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import os
import select
import socket
import struct
import sys
import time

REPLY_LEN = 100
# After receiving a FIN the kernel delays its ACK (up to TCP_DELACK_MAX, 200 ms) hoping to
# piggyback it on our FIN: waiting longer than that keeps ACK and FIN apart every time.
FIN_PAUSE = 0.5
IP_MTU_DISCOVER = 10  # <linux/in.h>; not exported by the socket module
IP_PMTUDISC_PROBE = 3
PAUSE = 0.2
IO_TIMEOUT = 10.0

# Who ends the connection and how; the same name is given to server and client.
MODES = ("normal", "server-first", "abort-client", "abort-server", "unread", "timeout")


def family_of(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def set_linger_zero(sock: socket.socket) -> None:
    # SO_LINGER {on, 0}: close() discards the send queue and sends RST instead of FIN.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def recv_line(sock: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("EOF before end of request line")
        buf += chunk
    return buf


def reply_for(request: bytes) -> bytes:
    head = b"OK " + request.strip()[:40] + b" "
    return head + b"x" * (REPLY_LEN - len(head) - 1) + b"\n"


def cmd_refused(args: argparse.Namespace) -> int:
    fam = family_of(args.host)
    refused = 0
    for i in range(args.count):
        if i:
            time.sleep(args.interval)
        s = socket.socket(fam, socket.SOCK_STREAM)
        if args.ip_options:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, bytes.fromhex(args.ip_options))
        s.settimeout(IO_TIMEOUT)
        try:
            s.connect((args.host, args.port))
        except ConnectionRefusedError:
            refused += 1
        else:
            print(f"unexpected: connect to {args.host}:{args.port} succeeded", file=sys.stderr)
        finally:
            s.close()
    print(f"refused {refused}/{args.count}")
    return 0 if refused == args.count else 1


def serve_one(conn: socket.socket, mode: str) -> str:
    conn.settimeout(IO_TIMEOUT)
    if mode == "unread":
        # Leave the client's bytes in the receive queue: close() then sends RST, not FIN.
        time.sleep(PAUSE)
        conn.close()
        return "closed with unread data"
    request = recv_line(conn)
    conn.sendall(reply_for(request))
    if mode == "server-first":
        conn.close()
        return "closed first"
    if mode == "abort-server":
        time.sleep(PAUSE)
        set_linger_zero(conn)
        conn.close()
        return "aborted"
    try:
        rest = conn.recv(4096)
        outcome = "peer closed" if rest == b"" else f"unexpected data {rest!r}"
        time.sleep(FIN_PAUSE)
    except ConnectionResetError:
        outcome = "peer reset"
    conn.close()
    return outcome


def cmd_server(args: argparse.Namespace) -> int:
    fam = family_of(args.host)
    with socket.socket(fam, socket.SOCK_STREAM) as ls:
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((args.host, args.port))
        ls.listen(16)
        ls.settimeout(30)
        for _ in range(args.count):
            conn, peer = ls.accept()
            print(f"server {args.port} {peer[0]}:{peer[1]}: {serve_one(conn, args.mode)}")
    return 0


def cmd_client(args: argparse.Namespace) -> int:
    fam = family_of(args.host)
    s = socket.socket(fam, socket.SOCK_STREAM)
    if args.ip_options:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, bytes.fromhex(args.ip_options))
    if args.no_df:
        # IP_PMTUDISC_PROBE: DF clear and the device MTU applies, so IP fragments
        # segments that the (locked, larger) route MTU let TCP build.
        s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE)
    s.settimeout(args.timeout if args.mode == "timeout" else IO_TIMEOUT)
    try:
        s.connect((args.host, args.port))
    except TimeoutError:
        s.close()
        print(f"client {args.port}: connect timed out after {args.timeout}s")
        return 0 if args.mode == "timeout" else 1
    pad = " " + "z" * args.pad if args.pad else ""
    request = f"GET /{args.mode} {s.getsockname()[1]}{pad}\n".encode()
    if args.mode == "unread":
        s.sendall(request + b"y" * 60 + b"\n")
        try:
            s.recv(4096)
            outcome = "no reset"
        except ConnectionResetError:
            outcome = "reset by peer"
        s.close()
        print(f"client {args.port}: {outcome}")
        return 0 if outcome == "reset by peer" else 1
    s.sendall(request)
    recv_exact(s, REPLY_LEN)
    if args.mode == "server-first":
        tail = s.recv(4096)
        time.sleep(FIN_PAUSE)
        s.close()
        print(f"client {args.port}: {'eof' if tail == b'' else 'data'} then close")
        return 0 if tail == b"" else 1
    if args.mode == "abort-client":
        time.sleep(PAUSE)
        set_linger_zero(s)
        s.close()
        print(f"client {args.port}: aborted")
        return 0
    if args.mode == "abort-server":
        try:
            s.recv(4096)
            outcome = "no reset"
        except ConnectionResetError:
            outcome = "reset by peer"
        s.close()
        print(f"client {args.port}: {outcome}")
        return 0 if outcome == "reset by peer" else 1
    time.sleep(PAUSE)
    # FIN first, then wait for the server's FIN, so that the next connection starts only
    # after this one is over (the wire is the same as with close()).
    s.shutdown(socket.SHUT_WR)
    tail = s.recv(4096)
    s.close()
    print(f"client {args.port}: closed first, then {'eof' if tail == b'' else 'data'}")
    return 0 if tail == b"" else 1


# --- 802.1Q / 802.1ad tagging with tcx (the kernel here lacks CONFIG_VLAN_8021Q) ---

BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_TYPE_SCHED_CLS = 3
BPF_TCX_INGRESS = 46
BPF_TCX_EGRESS = 47
HELPER_SKB_VLAN_PUSH = 18
HELPER_SKB_VLAN_POP = 19
SYS_BPF = {"x86_64": 321, "aarch64": 280}


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, dst | (src << 4), off, imm)


def mov_reg(dst: int, src: int) -> bytes:
    return insn(0xBF, dst, src)


def mov_imm(dst: int, imm: int) -> bytes:
    return insn(0xB7, dst, imm=imm)


def call(helper: int) -> bytes:
    return insn(0x85, imm=helper)


def tag_program(tags: list[tuple[int, int]]) -> bytes:
    """Egress: push the tags innermost first (r6 keeps the skb across helper calls)."""
    code = mov_reg(6, 1)
    for proto, vid in reversed(tags):
        # The helper takes vlan_proto in network byte order.
        code += mov_reg(1, 6) + mov_imm(2, socket.htons(proto)) + mov_imm(3, vid)
        code += call(HELPER_SKB_VLAN_PUSH)
    return code + mov_imm(0, 0) + insn(0x95)


def untag_program(depth: int) -> bytes:
    code = mov_reg(6, 1)
    for _ in range(depth):
        code += mov_reg(1, 6) + call(HELPER_SKB_VLAN_POP)
    return code + mov_imm(0, 0) + insn(0x95)


def bpf(cmd: int, attr: ctypes.Array) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    nr = SYS_BPF[os.uname().machine]
    ret = libc.syscall(nr, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf({cmd}): {os.strerror(err)}")
    return ret


def load_sched_cls(code: bytes, name: bytes) -> int:
    insns = ctypes.create_string_buffer(code, len(code))
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(65536)
    attr = ctypes.create_string_buffer(128)
    # union bpf_attr, BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, log_level,
    # log_size, log_buf, kern_version, prog_flags, prog_name; the rest stays zero.
    struct.pack_into(
        "<IIQQIIQII16s",
        attr,
        0,
        BPF_PROG_TYPE_SCHED_CLS,
        len(code) // 8,
        ctypes.addressof(insns),
        ctypes.addressof(license_),
        1,
        len(log),
        ctypes.addressof(log),
        0,
        0,
        name,
    )
    try:
        return bpf(BPF_PROG_LOAD, attr)
    except OSError:
        print(log.value.decode(errors="replace"), file=sys.stderr)
        raise


def tcx_attach(ifindex: int, prog_fd: int, attach_type: int) -> None:
    attr = ctypes.create_string_buffer(32)
    # BPF_PROG_ATTACH: target_ifindex, attach_bpf_fd, attach_type, attach_flags.
    struct.pack_into("<IIII", attr, 0, ifindex, prog_fd, attach_type, 0)
    bpf(BPF_PROG_ATTACH, attr)


def cmd_tcx_tag(args: argparse.Namespace) -> int:
    """Tag on egress, untag on ingress: the device then behaves like a VLAN trunk port.

    tcpdump sees the tags on both directions: egress taps run after tcx egress, and
    ingress taps run after the core has moved the outer tag to skb metadata but before
    tcx ingress pops it.
    """
    tags = []
    for spec in args.tags:
        proto, vid = spec.split(":")
        tags.append((int(proto, 16), int(vid)))
    ifindex = socket.if_nametoindex(args.iface)
    egress = load_sched_cls(tag_program(tags), b"rh_vlan_push")
    ingress = load_sched_cls(untag_program(len(tags)), b"rh_vlan_pop")
    # A prog_attach'ed tcx program stays until detached or the device goes away.
    tcx_attach(ifindex, egress, BPF_TCX_EGRESS)
    tcx_attach(ifindex, ingress, BPF_TCX_INGRESS)
    os.close(egress)
    os.close(ingress)
    print(f"tcx on {args.iface}: push {args.tags} on egress, pop {len(tags)} on ingress")
    return 0


# --- tun relay: two tun devices in two namespaces, IP packets copied between them ---

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def enter_netns(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns {name}: {os.strerror(err)}")
    os.close(fd)


def cmd_tun_relay(args: argparse.Namespace) -> int:
    a = open_tun(args.local_if)
    enter_netns(args.peer_ns)
    b = open_tun(args.peer_if)
    print("ready", flush=True)
    peer = {a: b, b: a}
    while True:
        ready, _, _ = select.select([a, b], [], [])
        for fd in ready:
            try:
                os.write(peer[fd], os.read(fd, 65536))
            except OSError as e:
                if e.errno not in (errno.EIO, errno.EAGAIN, errno.EINVAL):
                    raise


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("refused", help="connect to a closed port COUNT times")
    r.add_argument("host")
    r.add_argument("port", type=int)
    r.add_argument("--count", type=int, default=1)
    r.add_argument("--interval", type=float, default=0.5)
    r.add_argument("--ip-options", default="", help="IPv4 options as hex (IP_OPTIONS)")
    r.set_defaults(func=cmd_refused)

    s = sub.add_parser("server", help="accept COUNT connections and end each per MODE")
    s.add_argument("host")
    s.add_argument("port", type=int)
    s.add_argument("mode", choices=MODES)
    s.add_argument("--count", type=int, default=1)
    s.set_defaults(func=cmd_server)

    c = sub.add_parser("client", help="one connection ended per MODE")
    c.add_argument("host")
    c.add_argument("port", type=int)
    c.add_argument("mode", choices=MODES)
    c.add_argument("--timeout", type=float, default=4.0, help="connect timeout (mode timeout)")
    c.add_argument("--ip-options", default="", help="IPv4 options as hex (IP_OPTIONS)")
    c.add_argument("--pad", type=int, default=0, help="extra request bytes")
    c.add_argument("--no-df", action="store_true", help="IP_PMTUDISC_PROBE (fragmentable)")
    c.set_defaults(func=cmd_client)

    t = sub.add_parser("tcx-tag", help="VLAN-tag a device's traffic with tcx programs")
    t.add_argument("iface")
    t.add_argument("tags", nargs="+", help="outermost first, e.g. 88a8:200 8100:300")
    t.set_defaults(func=cmd_tcx_tag)

    u = sub.add_parser("tun-relay", help="join tun LOCAL_IF here to PEER_IF in PEER_NS")
    u.add_argument("local_if")
    u.add_argument("peer_ns")
    u.add_argument("peer_if")
    u.set_defaults(func=cmd_tun_relay)

    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
