#!/usr/bin/env bash
# The product's headline claim, end to end across a real kernel change: in a
# Debian 12 guest booted on kernel A (bookworm, 6.1), `vpnhop run` the
# OpenVPN bundle publishing 1194/udp; connect an OpenVPN client from the
# host-side test namespace and ping the server through the tunnel; run
# `vpnhop kexec`, which checkpoints the container and reboots the guest into
# kernel B (bookworm-backports, 6.12); the boot unit installed by
# `vpnhop system install` restores it. Then check that the guest runs kernel
# B, the ping goes on, the client never renegotiated (one "Initialization
# Sequence Completed"), `vpnhop ps` shows the container running and the
# restore plan is marked done. Prints the client-visible outage and its parts.
#
# Run as root from the repository, after scripts/setup.sh and a cargo build:
#   tests/guest/kexec.sh
# Env: VPNHOP_BIN_DIR (default target/debug: vpnhop and vpnhop-shim),
# VPNHOP_CRIU_PREFIX (default /opt/vpnhop/criu), VM_KEEP=1 keeps the logs.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=vm.sh
. "$(dirname "${BASH_SOURCE[0]}")/vm.sh"

repo=$(cd "$GUEST_DIR/../.." && pwd)
bin_dir=${VPNHOP_BIN_DIR:-$repo/target/debug}
criu_prefix=${VPNHOP_CRIU_PREFIX:-/opt/vpnhop/criu}
bundle=$repo/bundles/openvpn

for f in "$bin_dir/vpnhop" "$bin_dir/vpnhop-shim"; do
    [[ -x $f ]] || guest_die "no $f: run cargo build --workspace first"
done
[[ -x $criu_prefix/sbin/criu ]] || guest_die "no CRIU in $criu_prefix: run scripts/setup.sh first"
[[ -x $bundle/rootfs/usr/sbin/openvpn && -f $bundle/client.ovpn ]] \
    || guest_die "bundle $bundle is not built: run scripts/setup.sh first"
command -v openvpn >/dev/null || guest_die "no openvpn on the host: run scripts/setup.sh first"
command -v ping >/dev/null || guest_die "no ping on the host: run scripts/setup.sh first"

passed=0
failed=0
failures=()
pass() { passed=$((passed + 1)); guest_log "ok: $*"; }
fail() { failed=$((failed + 1)); failures+=("$*"); guest_log "FAILED: $*"; }

# What runs on the host side: killed by pid, whatever happens.
client_pid=
ping_pid=
vm_cleanup_hook() {
    local pid
    for pid in $ping_pid $client_pid; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in $ping_pid $client_pid; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ $failed -gt 0 || ${1:-0} -ne 0 ]] && vm_alive; then
        guest_log "guest diagnostics:"
        # shellcheck disable=SC2016 # expanded in the guest
        vm_ssh 'v=/opt/vpnhop/bin/vpnhop
            journalctl -b -u vpnhop-restore.service --no-pager | tail -n 30
            $v ps; $v logs vpn 2>&1 | tail -n 20; ls -l /var/lib/vpnhop/checkpoints
            echo "-- host: links, nftables, conntrack"; ip -br link; ip -br addr
            nft list ruleset; cat /proc/net/nf_conntrack 2>/dev/null | grep -w udp | head
            pid=$($v inspect vpn 2>/dev/null | sed -n "s/^ *\"pid\": \([0-9]*\).*/\1/p")
            if [ -n "$pid" ]; then
                echo "-- container $pid: addresses, routes, sockets"
                nsenter -t "$pid" -n ip -br addr; nsenter -t "$pid" -n ip route
                nsenter -t "$pid" -n ss -uanp; grep -E "^(State|SigBlk|SigPnd)" /proc/$pid/status
            fi' </dev/null 2>&1 | sed 's/^/guest:   | /' >&2 || true
    fi
}

vm_init
guest_log "kernels: A=$KERNEL_A (booted), B=$KERNEL_B (kexec target)"

# The payload disk is /opt/vpnhop in the guest: the layout scripts/setup.sh
# gives a host, plus the binaries under bin/.
payload=$VM_RUN/payload
mkdir -p "$payload/bin" "$payload/bundles"
# Without their debug info: a debug build's binaries are 150 MB each.
for f in vpnhop vpnhop-shim; do
    strip --strip-debug -o "$payload/bin/$f" "$bin_dir/$f"
done
cp -a "$criu_prefix" "$payload/criu"
cp -a "$bundle" "$payload/bundles/openvpn"
vm_disk "$payload"
vm_net
vm_boot A
vm_wait_ssh 240

vpnhop=/opt/vpnhop/bin/vpnhop
if vm_ssh "$vpnhop system install" </dev/null >&2; then
    pass "vpnhop system install"
else
    fail "vpnhop system install"
fi
if vm_ssh "$vpnhop run -d --name vpn -p 1194:1194/udp /opt/vpnhop/bundles/openvpn" </dev/null >&2; then
    pass "vpnhop run -d --name vpn -p 1194:1194/udp"
else
    fail "vpnhop run in the guest"
    exit 1
fi

# The client lives in the test netns, where the tap's 203.0.113.1 is.
client_log=$VM_RUN/client.log
ping_log=$VM_RUN/ping.log
ip netns exec "$VM_NETNS" openvpn --config "$bundle/client.ovpn" \
    --remote "$GUEST_IP" 1194 --log "$client_log" </dev/null >/dev/null 2>&1 &
client_pid=$!
inits() { grep -c 'Initialization Sequence Completed' "$client_log" 2>/dev/null || true; }
for _ in $(seq 120); do
    [[ $(inits) -ge 1 ]] && break
    kill -0 "$client_pid" 2>/dev/null || break
    sleep 0.5
done
if [[ $(inits) -ge 1 ]]; then
    pass "client connected through the guest's published port"
else
    fail "client did not connect"
    tail -n 20 "$client_log" | sed 's/^/guest:   client | /' >&2 || true
    exit 1
fi

# 5 pings a second, each line stamped with the host's clock (-D); -O prints
# the ones left unanswered, which is what makes the outage visible.
ip netns exec "$VM_NETNS" ping -D -O -i 0.2 -W 1 10.8.0.1 >"$ping_log" 2>&1 &
ping_pid=$!
replies() { grep -c 'bytes from 10.8.0.1' "$ping_log" 2>/dev/null || true; }
for _ in $(seq 50); do
    [[ $(replies) -ge 5 ]] && break
    sleep 0.2
done
if [[ $(replies) -ge 5 ]]; then
    pass "ping through the tunnel before the kexec"
else
    fail "no ping replies through the tunnel before the kexec"
    exit 1
fi

# vpnhop kexec picks the newest /boot kernel other than the running one (B).
# Its output is stamped with the host's clock line by line; the ssh session
# ends when the guest goes down.
old_boot=$(vm_boot_id)
kexec_log=$VM_RUN/kexec.log
t_kexec=$(guest_now)
vm_ssh "$vpnhop kexec 2>&1" </dev/null \
    | while IFS= read -r line; do printf '%s %s\n' "$(date +%s.%N)" "$line"; done >"$kexec_log" \
    || true
sed 's/^[0-9.]* /guest:   kexec | /' "$kexec_log" >&2
if grep -q ' rebooting into ' "$kexec_log"; then
    pass "vpnhop kexec checkpointed, wrote the plan and rebooted"
else
    fail "vpnhop kexec did not get to the reboot"
    exit 1
fi
vm_wait_reboot "$old_boot" 300

# The boot unit may still be restoring when ssh answers: wait for its end.
unit_state=
for _ in $(seq 120); do
    unit_state=$(vm_ssh 'systemctl show -p ActiveState --value vpnhop-restore.service' </dev/null) \
        || unit_state=
    [[ $unit_state == active || $unit_state == failed ]] && break
    sleep 1
done
if [[ $unit_state == active ]]; then
    pass "vpnhop-restore.service ran at boot"
else
    fail "vpnhop-restore.service is '$unit_state' after the boot"
fi

got=$(vm_ssh 'uname -r' </dev/null) || got='?'
if [[ $got == "$KERNEL_B" ]]; then
    pass "the guest runs kernel B ($got, was $KERNEL_A)"
else
    fail "the guest runs '$got', want $KERNEL_B"
fi

# The ping must come back on its own: same client, same tunnel.
before=$(replies)
for _ in $(seq 150); do
    [[ $(replies) -gt $before ]] && break
    sleep 0.2
done
sleep 2
if [[ $(replies) -gt $((before + 3)) ]]; then
    pass "ping through the tunnel resumed after the kexec"
else
    fail "ping through the tunnel did not resume"
fi
if [[ $(inits) -eq 1 ]]; then
    pass "the client never renegotiated (one Initialization Sequence Completed)"
else
    fail "the client log shows $(inits) Initialization Sequence Completed, want 1"
fi

status=$(vm_ssh "$vpnhop ps --format json" </dev/null \
    | python3 -c 'import json,sys; print(next((c["status"] for c in json.load(sys.stdin) if c["name"] == "vpn"), "absent"))') \
    || status='?'
if [[ $status == running ]]; then
    pass "vpnhop ps in the guest: vpn is running"
else
    fail "vpnhop ps in the guest: vpn is '$status'"
fi
if vm_ssh 'test -f /var/lib/vpnhop/checkpoints/restore-plan.done.json &&
        ! test -e /var/lib/vpnhop/checkpoints/restore-plan.json' </dev/null; then
    pass "the restore plan is marked done"
else
    fail "the restore plan is not marked done"
fi

# The outage, as the client saw it: the longest silence between two replies.
# Its parts: the checkpoint (last reply to vpnhop's "rebooting" line, host
# clock), boot until the restore unit started and the restore itself (guest
# monotonic clock, from systemd), and the rest (shutdown, the kexec
# hand-over, and the reply's way back) by difference.
read -r gap_start gap_end < <(awk -F'[][]' '/bytes from 10.8.0.1/ {
        t = $2 + 0; if (prev && t - prev > best) { best = t - prev; s = prev; e = t } prev = t }
    END { printf "%.3f %.3f\n", s, e }' "$ping_log")
t_reboot=$(awk '/ rebooting into / { print $1; exit }' "$kexec_log")
read -r boot_to_unit unit_s < <(vm_ssh 'systemctl show -p ExecMainStartTimestampMonotonic \
        -p ExecMainExitTimestampMonotonic --value vpnhop-restore.service' </dev/null \
    | awk 'NR == 1 { s = $1 } NR == 2 { e = $1 } END { printf "%.1f %.1f\n", s / 1e6, (e - s) / 1e6 }')
awk -v s="$gap_start" -v e="$gap_end" -v k="$t_kexec" -v r="$t_reboot" -v b="$boot_to_unit" \
    -v u="$unit_s" 'BEGIN {
    gap = e - s; ck = r - s
    printf "guest: outage seen by the client: %.1f s (last reply %.1f s after vpnhop kexec started)\n", gap, s - k
    printf "guest:   checkpoint and restore plan (to the reboot):  %6.1f s\n", ck
    printf "guest:   shutdown, kexec hand-over, reply path:        %6.1f s\n", gap - ck - b - u
    printf "guest:   kernel B boot until the restore unit started: %6.1f s\n", b
    printf "guest:   vpnhop restore --all:                         %6.1f s\n", u
}' >&2

guest_log "timings: boot A to ssh ${VM_BOOT_SECONDS} s, kexec to ssh ${VM_KEXEC_SECONDS} s (TCG emulation)"
if [[ $failed -gt 0 ]]; then
    printf 'guest: failed: %s\n' "${failures[@]}" >&2
fi
printf 'guest: %d passed, %d failed\n' "$passed" "$failed"
[[ $failed -eq 0 ]]
