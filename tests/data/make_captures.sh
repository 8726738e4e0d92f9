#!/usr/bin/env bash
# Regenerate the golden captures in tests/data from real traffic between two throwaway
# network namespaces (rh-cli, rh-srv). Nothing leaves them: every address used here
# exists only inside these namespaces. Needs root, iproute2, nftables, tcpdump,
# dumpcap/tshark/capinfos (Wireshark 4.x) and python3 (standard library only).
#
#   sudo tests/data/make_captures.sh            # writes tests/data/*.pcap*, then checks them
#   sudo tests/data/make_captures.sh /tmp/out   # somewhere else (expected.json is still read
#                                               # from tests/data)
#   sudo SCENARIOS="vlan raw_ip" tests/data/make_captures.sh   # only these (no check)
#
# Counts are stable from run to run; timestamps, ports and sequence numbers are not.
# Topology (see README.md for what each file holds):
#   rh-cli                                         rh-srv
#   lo 127.0.0.1
#   rh-c0 10.200.0.1/24 fd00:200::1/64  <-veth->  rh-s0 10.200.0.2/24 fd00:200::2/64
#   rh-cv 10.201.0.1/24 (802.1Q 100)    <-veth->  rh-sv 10.201.0.2/24
#   rh-cq 10.202.0.1/24 (802.1ad 200 + 802.1Q 300) <-veth-> rh-sq 10.202.0.2/24
#   rh-tunc 10.203.0.1  <- tun, copied by scenarios.py tun-relay ->  rh-tuns 10.203.0.2
#   rh-cf 10.204.0.1 (mtu 576, route mtu lock 1500) <-veth-> rh-sf 10.204.0.2/24
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=$(mkdir -p "${1:-$HERE}" && cd "${1:-$HERE}" && pwd)
PY=${PYTHON:-python3}
SCEN=$HERE/scenarios.py
CLI=rh-cli
SRV=rh-srv

die() { echo "make_captures: $*" >&2; exit 1; }
note() { echo "make_captures: $*" >&2; }

[[ $(id -u) == 0 ]] || die "run as root (network namespaces, tcpdump, nftables)"
for tool in ip nft ss tcpdump dumpcap tshark capinfos "$PY"; do
    command -v "$tool" >/dev/null || die "missing tool: $tool"
done

WORK=$(mktemp -d /tmp/rh-captures.XXXXXX)

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    # Only our own background jobs (captures, servers, the tun relay). Each is started
    # as `ip netns exec ... &` (not through a shell function) so that $! and `jobs -p`
    # are the process itself: ip netns exec execs its command.
    local pid
    for pid in $(jobs -p); do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip netns del "$CLI" 2>/dev/null || true
    ip netns del "$SRV" 2>/dev/null || true
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cli() { ip netns exec "$CLI" "$@"; }
srv() { ip netns exec "$SRV" "$@"; }

# --- namespaces and links -------------------------------------------------------------

veth() { # veth CLI_IF CLI_MAC SRV_IF SRV_MAC
    ip link add "$1" address "$2" netns "$CLI" type veth peer name "$3" address "$4" netns "$SRV"
}

setup() {
    local ns
    for ns in "$CLI" "$SRV"; do
        ip netns del "$ns" 2>/dev/null || true # leftover of an interrupted run
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        # New links start without IPv6: no router solicitations or MLD reports in captures.
        ip netns exec "$ns" sysctl -qw net.ipv6.conf.default.disable_ipv6=1
    done

    # Main link. Static neighbours: no ARP/ND at all, so counts never depend on the
    # neighbour cache timers across the ~40 s this script runs.
    veth rh-c0 02:00:00:c8:00:01 rh-s0 02:00:00:c8:00:02
    local me peer ifc mac peermac v4 v6 peerv4 peerv6
    while read -r ns ifc v4 v6 peerv4 peerv6 peermac; do
        ip netns exec "$ns" sysctl -qw "net.ipv6.conf.$ifc.addr_gen_mode=1" # no link-local
        ip netns exec "$ns" sysctl -qw "net.ipv6.conf.$ifc.disable_ipv6=0"
        ip -n "$ns" addr add "$v4/24" dev "$ifc"
        ip -n "$ns" addr add "$v6/64" dev "$ifc" nodad
        ip -n "$ns" neigh add "$peerv4" lladdr "$peermac" dev "$ifc" nud permanent
        ip -n "$ns" neigh add "$peerv6" lladdr "$peermac" dev "$ifc" nud permanent
        ip -n "$ns" link set "$ifc" up
    done <<EOF
$CLI rh-c0 10.200.0.1 fd00:200::1 10.200.0.2 fd00:200::2 02:00:00:c8:00:02
$SRV rh-s0 10.200.0.2 fd00:200::2 10.200.0.1 fd00:200::1 02:00:00:c8:00:01
EOF

    # VLAN links: this kernel has no CONFIG_VLAN_8021Q, so tcx programs push the tags on
    # egress and pop them on ingress; the frames on the wire are real 802.1Q / 802.1ad.
    # ARP stays dynamic here: each link carries one short capture, so it is always the
    # same request/reply pair at the start.
    veth rh-cv 02:00:00:c9:00:01 rh-sv 02:00:00:c9:00:02
    veth rh-cq 02:00:00:ca:00:01 rh-sq 02:00:00:ca:00:02
    ip -n "$CLI" addr add 10.201.0.1/24 dev rh-cv
    ip -n "$SRV" addr add 10.201.0.2/24 dev rh-sv
    ip -n "$CLI" addr add 10.202.0.1/24 dev rh-cq
    ip -n "$SRV" addr add 10.202.0.2/24 dev rh-sq
    for ifc in rh-cv rh-cq; do ip -n "$CLI" link set "$ifc" up; done
    for ifc in rh-sv rh-sq; do ip -n "$SRV" link set "$ifc" up; done
    TCX=1
    if cli "$PY" "$SCEN" tcx-tag rh-cv 8100:100 &&
        srv "$PY" "$SCEN" tcx-tag rh-sv 8100:100 &&
        cli "$PY" "$SCEN" tcx-tag rh-cq 88a8:200 8100:300 &&
        srv "$PY" "$SCEN" tcx-tag rh-sq 88a8:200 8100:300; then :; else
        TCX=0
        note "tcx (bpf) tagging unavailable: vlan.pcap and qinq.pcap are not regenerated"
    fi

    # Raw IP link: a tun device in each namespace, packets copied by a relay process.
    TUN=0
    if [[ -c /dev/net/tun ]]; then
        ip netns exec "$CLI" "$PY" "$SCEN" tun-relay rh-tunc "$SRV" rh-tuns \
            >"$WORK/relay.log" 2>&1 &
        wait_for ready "$WORK/relay.log" $!
        ip -n "$CLI" addr add 10.203.0.1 peer 10.203.0.2 dev rh-tunc
        ip -n "$SRV" addr add 10.203.0.2 peer 10.203.0.1 dev rh-tuns
        ip -n "$CLI" link set rh-tunc up
        ip -n "$SRV" link set rh-tuns up
        TUN=1
    else
        note "no /dev/net/tun: raw_ip.pcap and multi_link.pcapng are not regenerated"
    fi

    # Fragmentation link: the locked route MTU (1500) lets TCP build full-size segments,
    # the device MTU (576) makes IP fragment them (the client clears DF).
    veth rh-cf 02:00:00:cc:00:01 rh-sf 02:00:00:cc:00:02
    ip -n "$CLI" link set rh-cf mtu 576
    ip -n "$CLI" addr add 10.204.0.1/32 dev rh-cf
    ip -n "$SRV" addr add 10.204.0.2/24 dev rh-sf
    ip -n "$CLI" link set rh-cf up
    ip -n "$SRV" link set rh-sf up
    ip -n "$CLI" route add 10.204.0.0/24 dev rh-cf mtu lock 1500

    srv nft -f - <<'EOF'
table inet rsthound_golden {
    chain input {
        type filter hook input priority filter; policy accept;
        tcp dport 9000 reject with tcp reset
        tcp dport 9001 drop
        tcp dport 9005 reject
    }
}
EOF
    # Let the MLDv2 reports sent when fd00:200::/64 came up (initial + repeat) pass.
    sleep 3
}

# --- helpers ----------------------------------------------------------------------------

wait_for() { # wait_for TEXT LOGFILE PID: until the process logs TEXT (5 s at most)
    local i
    for i in $(seq 50); do
        grep -q "$1" "$2" 2>/dev/null && return 0
        kill -0 "$3" 2>/dev/null || die "process $3 exited early: $(cat "$2")"
        sleep 0.1
    done
    die "timed out waiting for '$1' in $2"
}

CAP_PID=
CAP_FILE=
CAP_SETTLE=0.3
cap_start() { # cap_start NS FILE TCPDUMP_ARGS...  (tcpdump -U -n -w FILE ARGS)
    local ns=$1
    CAP_FILE=$2
    shift 2
    # --immediate-mode: with TPACKET_V3 and tcpdump's 1 s timeout, packets of the last
    # second would still sit in an unretired ring block when SIGINT arrives, and be lost.
    ip netns exec "$ns" tcpdump -U -n --immediate-mode -Z root "$@" -w "$WORK/$CAP_FILE" \
        2>"$WORK/$CAP_FILE.log" &
    CAP_PID=$!
    CAP_SETTLE=0.3
    wait_for "listening on" "$WORK/$CAP_FILE.log" "$CAP_PID"
}

dumpcap_start() { # dumpcap_start NS FILE DUMPCAP_ARGS...
    local ns=$1
    CAP_FILE=$2
    shift 2
    ip netns exec "$ns" dumpcap -q "$@" -w "$WORK/$CAP_FILE" 2>"$WORK/$CAP_FILE.log" &
    CAP_PID=$!
    CAP_SETTLE=1.5 # no immediate mode in dumpcap: outlast its ring block timeout
    wait_for "Capturing on" "$WORK/$CAP_FILE.log" "$CAP_PID"
    sleep 0.5 # dumpcap reports before every interface has started reading
}

cap_stop() {
    sleep "$CAP_SETTLE"
    kill -INT "$CAP_PID"
    wait "$CAP_PID" || die "capture of $CAP_FILE failed: $(cat "$WORK/$CAP_FILE.log")"
    if grep -E "[1-9][0-9]* packets? dropped" "$WORK/$CAP_FILE.log"; then
        die "$CAP_FILE: packets dropped"
    fi
    install -m 0644 "$WORK/$CAP_FILE" "$OUT/$CAP_FILE"
    echo "  wrote $CAP_FILE ($(capinfos -c -M "$OUT/$CAP_FILE" | awk '/packets/ {print $NF}') packets)"
}

SERVERS=()
server() { # server HOST PORT MODE [COUNT]: start in rh-srv, return once it listens
    ip netns exec "$SRV" "$PY" "$SCEN" server "$1" "$2" "$3" --count "${4:-1}" \
        >>"$WORK/servers.log" 2>&1 &
    SERVERS+=($!)
    local i
    for i in $(seq 50); do
        [[ -n $(srv ss -Hltn "sport = :$2") ]] && return 0
        sleep 0.1
    done
    die "server on port $2 did not start: $(cat "$WORK/servers.log")"
}

servers_done() {
    local pid
    for pid in "${SERVERS[@]}"; do
        wait "$pid" || die "a server failed: $(cat "$WORK/servers.log")"
    done
    SERVERS=()
}

client() { cli "$PY" "$SCEN" client "$@" >>"$WORK/clients.log"; }
refused() { cli "$PY" "$SCEN" refused "$@" >>"$WORK/clients.log"; }

# --- scenarios ---------------------------------------------------------------------------

s_refused() {
    cap_start "$CLI" refused.pcap -i lo
    refused 127.0.0.1 7211 --count 16 --interval 0.5
    cap_stop
}

s_linger_abort_client() {
    cap_start "$CLI" linger_abort_client.pcap -i rh-c0
    server 10.200.0.2 9100 abort-client
    client 10.200.0.2 9100 abort-client
    servers_done
    cap_stop
}

s_linger_abort_server() {
    cap_start "$CLI" linger_abort_server.pcap -i rh-c0
    server 10.200.0.2 9101 abort-server
    client 10.200.0.2 9101 abort-server
    servers_done
    cap_stop
}

s_unread_close() {
    cap_start "$CLI" unread_close.pcap -i rh-c0
    server 10.200.0.2 9102 unread
    client 10.200.0.2 9102 unread
    servers_done
    cap_stop
}

s_normal() {
    cap_start "$CLI" normal.pcap -i rh-c0
    server 10.200.0.2 8080 normal 3
    server 10.200.0.2 8081 server-first 1
    client 10.200.0.2 8080 normal
    client 10.200.0.2 8080 normal
    client 10.200.0.2 8080 normal
    client 10.200.0.2 8081 server-first
    servers_done
    cap_stop
}

s_nft_reject() {
    cap_start "$CLI" nft_reject.pcap -i rh-c0
    refused 10.200.0.2 9000 --count 3 --interval 0.5
    cap_stop
}

s_icmp_reject() {
    # a plain `reject`: ICMP port unreachable (IPv4) and ICMPv6 port unreachable, no RST
    cap_start "$CLI" icmp_reject.pcap -i rh-c0
    refused 10.200.0.2 9005 --count 3 --interval 0.5
    refused fd00:200::2 9005 --count 2 --interval 0.5
    cap_stop
}

s_nft_drop() {
    local linear=net.ipv4.tcp_syn_linear_timeouts
    if cli sysctl -n "$linear" >/dev/null 2>&1; then
        # Kernel default (4): first SYN retransmits 1 s apart. Both shapes get a file.
        cap_start "$CLI" nft_drop_linear.pcap -i rh-c0
        client 10.200.0.2 9001 timeout --timeout 3.5
        cap_stop
        # The classic exponential backoff most deployed kernels show: SYN at 0, 1, 3 s.
        cli sysctl -qw "$linear=0"
    fi
    cap_start "$CLI" nft_drop.pcap -i rh-c0
    client 10.200.0.2 9001 timeout --timeout 4
    cap_stop
}

s_ipv6() {
    cap_start "$CLI" ipv6.pcap -i rh-c0
    refused fd00:200::2 9002
    server fd00:200::2 9003 normal
    client fd00:200::2 9003 normal
    server fd00:200::2 9004 abort-client
    client fd00:200::2 9004 abort-client
    servers_done
    cap_stop
}

any_traffic() {
    refused 127.0.0.1 7211
    server 10.200.0.2 8080 normal
    client 10.200.0.2 8080 normal
    servers_done
}

s_any() {
    cap_start "$CLI" any_sll2.pcap -i any -y LINUX_SLL2
    any_traffic
    cap_stop
    cap_start "$CLI" any_sll.pcap -i any -y LINUX_SLL
    any_traffic
    cap_stop
}

s_nanosec() {
    cap_start "$CLI" nanosec.pcap -i lo --time-stamp-precision=nano
    refused 127.0.0.1 7211 --count 3 --interval 0.5
    cap_stop
}

vlan_traffic() { # vlan_traffic SERVER_ADDR
    refused "$1" 7211
    server "$1" 8080 normal
    client "$1" 8080 normal
    servers_done
}

s_vlan() {
    ((TCX)) || return 0
    cap_start "$CLI" vlan.pcap -i rh-cv
    vlan_traffic 10.201.0.2
    cap_stop
    cap_start "$CLI" qinq.pcap -i rh-cq
    vlan_traffic 10.202.0.2
    cap_stop
}

s_raw_ip() {
    ((TUN)) || return 0
    cap_start "$CLI" raw_ip.pcap -i rh-tunc
    vlan_traffic 10.203.0.2
    cap_stop
}

s_multi() {
    dumpcap_start "$CLI" multi_if.pcapng -i lo -i rh-c0
    refused 127.0.0.1 7211
    refused 10.200.0.2 7211
    server 10.200.0.2 8080 normal
    client 10.200.0.2 8080 normal
    servers_done
    cap_stop
    ((TUN)) || return 0
    # Three link types in one file; per-interface filters keep 'any' from duplicating
    # what the other two interfaces see.
    dumpcap_start "$CLI" multi_link.pcapng -i any -y LINUX_SLL2 -f "tcp port 7211" \
        -i rh-c0 -f "tcp port 8080" -i rh-tunc -f "tcp port 8080"
    refused 127.0.0.1 7211
    server 10.200.0.2 8080 normal
    client 10.200.0.2 8080 normal
    server 10.203.0.2 8080 normal
    client 10.203.0.2 8080 normal
    servers_done
    cap_stop
}

s_ipv4_options() {
    cap_start "$CLI" ipv4_options.pcap -i rh-c0
    # Record Route with one free slot (the kernel fills in the sender), then 3 NOPs + EOL.
    refused 10.200.0.2 7211 --ip-options 07070400000000
    refused 10.200.0.2 7211 --ip-options 01010100
    server 10.200.0.2 8083 normal
    client 10.200.0.2 8083 normal --ip-options 07070400000000
    servers_done
    cap_stop
}

s_fragments() {
    cap_start "$CLI" fragments.pcap -i rh-cf
    server 10.204.0.2 8082 normal
    client 10.204.0.2 8082 normal --no-df --pad 1300
    servers_done
    cap_stop
}

ALL="refused linger_abort_client linger_abort_server unread_close normal nft_reject icmp_reject nft_drop
ipv6 any nanosec vlan raw_ip multi ipv4_options fragments"
for name in ${SCENARIOS:-$ALL}; do
    [[ $(type -t "s_$name") == function ]] || die "unknown scenario '$name' (known: $ALL)"
done

setup
echo "make_captures: writing to $OUT"
for name in ${SCENARIOS:-$ALL}; do
    "s_$name"
done

if [[ -z ${SCENARIOS:-} && -f $HERE/expected.json ]]; then
    "$PY" "$HERE/check_captures.py" --expected "$HERE/expected.json" "$OUT"
fi
