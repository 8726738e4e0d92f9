#!/usr/bin/env bash
# The shipped unit, run for real under systemd: a minimal Debian tree (debootstrap), booted
# with systemd-nspawn in a network namespace of its own, rsthound installed in it as the
# README says, the unit started; then a client inside knocks on a closed port. Prints the
# unit's journal and `rsthound history --json`, which tests/test_service.py reads.
#
#   sudo tests/service/run_in_nspawn.sh WORKDIR WHEELDIR
#
# WORKDIR keeps the Debian tree between runs (WORKDIR/tree); WHEELDIR holds rsthound's wheel
# and its dependencies'. Needs root, debootstrap, systemd-nspawn, nsenter.
set -euo pipefail

WORK=$1
WHEELS=$2
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TREE=$WORK/tree
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if [[ ! -x $TREE/usr/bin/python3 ]]; then
    rm -rf "$TREE"
    debootstrap --variant=minbase \
        --include=systemd,systemd-sysv,dbus,python3,python3-venv,iproute2,nftables \
        bookworm "$TREE" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -5 "$WORK/debootstrap.log" >&2; exit 3; }
fi

# install as the README says: a venv in /opt/rsthound, the sysusers file, the unit
rm -rf "$TREE/opt/rsthound" "$TREE/var/lib/rsthound" "$TREE/wheels"
rm -rf "$TREE"/var/log/journal/*  # this run's journal only
cp -r "$WHEELS" "$TREE/wheels"
# (nothing of this host's pip settings: a clean environment)
chroot "$TREE" env -i PATH=/usr/bin:/bin python3 -m venv /opt/rsthound
chroot "$TREE" env -i PATH=/usr/bin:/bin /opt/rsthound/bin/pip install -q \
    --disable-pip-version-check --no-index --find-links /wheels rsthound
install -D -m 0644 "$HERE/contrib/rsthound.sysusers" "$TREE/etc/sysusers.d/rsthound.conf"
install -D -m 0644 "$HERE/contrib/rsthound-watch.service" \
    "$TREE/etc/systemd/system/rsthound-watch.service"
mkdir -p "$TREE/etc/systemd/system/multi-user.target.wants"
ln -sf /etc/systemd/system/rsthound-watch.service \
    "$TREE/etc/systemd/system/multi-user.target.wants/rsthound-watch.service"
cat >"$TREE/usr/local/bin/knock" <<'EOF'
#!/usr/bin/python3
import socket, time
for _ in range(16):
    s = socket.socket()
    try: s.connect(("127.0.0.1", 7211))
    except OSError: pass
    s.close(); time.sleep(0.5)
EOF
chmod 0755 "$TREE/usr/local/bin/knock"

# boot: its own network namespace (lo only); tracefs bound in, as a host's systemd has it
systemd-nspawn -D "$TREE" --register=no --keep-unit --boot --private-network \
    --bind=/sys/kernel/tracing --console=passive >"$WORK/boot.log" 2>&1 &
NSPAWN=$!
trap 'kill $NSPAWN 2>/dev/null; wait $NSPAWN 2>/dev/null || true' EXIT

init=""  # the container's PID 1: nspawn's child (or its child's, by version)
for _ in $(seq 100); do
    init=$(pgrep -x -P "$NSPAWN" systemd || true)
    for c in $(pgrep -P "$NSPAWN" || true); do
        [[ -n $init ]] || init=$(pgrep -x -P "$c" systemd || true)
    done
    [[ -n $init ]] && break
    sleep 0.2
done
[[ -n $init ]] || { echo "no systemd in the container: $(cat "$WORK/boot.log")" >&2; exit 4; }
inside() { nsenter -t "$init" -a "$@"; }
for _ in $(seq 150); do
    [[ $(inside systemctl is-active rsthound-watch 2>/dev/null) == active ]] && break
    sleep 0.2
done
inside systemctl is-active rsthound-watch >/dev/null \
    || { inside systemctl status rsthound-watch --no-pager >&2 || true; exit 5; }
sleep 3  # watch opens its capture and trace, then becomes its user
inside /usr/local/bin/knock &
KNOCK=$!
sleep 0.5
# the kernel trace records pids as the host numbers them (the container has a pid namespace
# of its own): the host's number, then
echo "knock pid $(pgrep -n -f "^/usr/bin/python3 /usr/local/bin/knock")"
wait $KNOCK
# the investigation (3 s) and its findings: a few seconds, more on a loaded machine
for _ in $(seq 150); do
    inside journalctl -u rsthound-watch --no-pager -o cat | grep -q FINDINGS && break
    sleep 0.2
done
sleep 1  # (the history has it just after)
echo "--- journal"
inside journalctl -u rsthound-watch --no-pager -o cat
echo "--- user"
inside stat -c %U "/proc/$(inside systemctl show -p MainPID --value rsthound-watch)"
echo "--- history"
inside /opt/rsthound/bin/rsthound history --db /var/lib/rsthound/history.db --since 10m --json
