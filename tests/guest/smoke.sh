#!/usr/bin/env bash
# End-to-end proof of the guest harness, without vpnhop: build (or find
# cached) the guest image, boot kernel A (bookworm, 6.1), kexec the guest
# into kernel B (bookworm-backports, 6.12) from its own /boot, and check on
# both kernels that kexec is there and that the host's CRIU 4.x, copied in
# through the payload disk, passes `criu check`. Prints the timings.
#
# Run as root from anywhere: tests/guest/smoke.sh
# Env: SMOKE_CRIU=/path/to/criu-prefix (default /opt/vpnhop/criu, as built
# by scripts/setup.sh).
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=vm.sh
. "$(dirname "${BASH_SOURCE[0]}")/vm.sh"

criu_prefix=${SMOKE_CRIU:-/opt/vpnhop/criu}
[[ -x $criu_prefix/sbin/criu ]] \
    || guest_die "no CRIU at $criu_prefix/sbin/criu: run scripts/setup.sh first"

passed=0
failed=0
failures=()
pass() { passed=$((passed + 1)); guest_log "ok: $*"; }
fail() { failed=$((failed + 1)); failures+=("$*"); guest_log "FAILED: $*"; }

t=$(guest_now)
vm_init
t_image=$(guest_since "$t")

# The payload is what a vpnhop test would put in /opt/vpnhop; here only CRIU.
payload=$VM_RUN/payload
mkdir -p "$payload"
cp -a "$criu_prefix" "$payload/criu"
t=$(guest_now)
vm_disk "$payload"
t_disk=$(guest_since "$t")

vm_net
vm_boot A
vm_wait_ssh 180
t_boot=$VM_BOOT_SECONDS

# Everything checked on one kernel: its version, kexec support, CRIU.
declare -A criu_said
check_kernel() {
    local label=$1 want=$2 got out
    got=$(vm_ssh 'uname -r' </dev/null) || got="(ssh failed)"
    if [[ $got == "$want" ]]; then
        pass "kernel $label: uname -r is $got"
    else
        fail "kernel $label: uname -r is '$got', want '$want'"
    fi
    if vm_ssh 'test -e /sys/kernel/kexec_loaded' </dev/null; then
        pass "kernel $label: /sys/kernel/kexec_loaded exists"
    else
        fail "kernel $label: no /sys/kernel/kexec_loaded"
    fi
    out=$(vm_ssh '/opt/vpnhop/criu/sbin/criu check 2>&1' </dev/null) || true
    criu_said[$label]=$out
    printf '%s\n' "$out" | sed "s/^/guest:   criu check ($label) | /" >&2
    if [[ $out == *"Looks good."* ]]; then
        pass "kernel $label: criu check: Looks good."
    else
        fail "kernel $label: criu check did not say 'Looks good.'"
    fi
}

check_kernel A "$KERNEL_A"

# Worth knowing for the vpnhop tests: what the NIC is called (net.ifnames=0
# should make it eth0; networkd matches by MAC either way) and that the
# payload is mounted where vpnhop expects CRIU.
ifname=$(vm_ssh "ip -o link | awk -F': ' 'tolower(\$0) ~ /$GUEST_MAC/ { print \$2 }'" </dev/null) || ifname='?'
guest_log "guest NIC ($GUEST_MAC): ${ifname:-not found}"
if mnt=$(vm_ssh 'findmnt -n -o SOURCE,FSTYPE /opt/vpnhop' </dev/null); then
    pass "payload disk mounted at /opt/vpnhop (${mnt//$'\n'/ })"
else
    fail "payload disk not mounted at /opt/vpnhop"
fi
# A file written before the kexec must still be there after it (same disk,
# QEMU keeps running): what a checkpoint relies on.
vm_ssh 'echo before-kexec >/var/lib/vpnhop-smoke && sync' </dev/null

# The CRIU round trip the vpnhop kexec verb depends on, in miniature: a
# process that is PID 1 of its own pid namespace and leads its own session
# (as a container's init does) is dumped under kernel A and restored under
# kernel B. It bumps a counter in a file every second, so "restored" means
# the count goes on from where it was, not from zero. The guest side runs
# as `sh -s` with its script on stdin: quoted heredocs, nothing in them is
# expanded on the host.
guest_env="CRIU=/opt/vpnhop/criu/sbin/criu CKPT=/var/lib/vpnhop-smoke-ckpt WORK=/var/lib/vpnhop-smoke-work"
if vm_ssh "$guest_env sh -s" <<'GUEST'; then
set -e
cd /
rm -rf "$CKPT" "$WORK"
mkdir -p "$CKPT" "$WORK"
# unshare's child is PID 1 of the new namespace; setsid (it is no group
# leader there, so no extra fork) gives it a session of its own; it execs sh.
unshare --pid --fork setsid sh -c \
    'i=0; while :; do i=$((i + 1)); echo $i >"$0/count"; sleep 1; done' "$WORK" \
    </dev/null >/dev/null 2>&1 &
# Long enough that a count restarted from zero could not pass for one that
# went on (the check after the restore allows 3 s more than at the dump).
sleep 6
pid=$(pgrep -o -P $! sh)
grep -q '^NSpid:.*[[:space:]]1$' "/proc/$pid/status"
[ "$(ps -o sid= -p "$pid" | tr -d ' ')" = "$pid" ]
"$CRIU" dump -t "$pid" -D "$CKPT" -o dump.log -v4
cat "$WORK/count" >"$WORK/count-at-dump"
! kill -0 "$pid" 2>/dev/null
GUEST
    pass "criu dump under kernel A of a pid-namespace init with its own session (count $(vm_ssh 'cat /var/lib/vpnhop-smoke-work/count-at-dump' </dev/null))"
    dumped=1
else
    fail "criu dump under kernel A"
    vm_ssh 'tail -n 20 /var/lib/vpnhop-smoke-ckpt/dump.log' </dev/null >&2 || true
    dumped=0
fi

vm_kexec "$KERNEL_B"
t_kexec=$VM_KEXEC_SECONDS

check_kernel B "$KERNEL_B"
if [[ $(vm_ssh 'cat /var/lib/vpnhop-smoke' </dev/null) == before-kexec ]]; then
    pass "a file written under kernel A is there under kernel B"
else
    fail "the file written under kernel A is gone after the kexec"
fi
if [[ $dumped -eq 1 ]]; then
    if vm_ssh "$guest_env sh -s" <<'GUEST'; then
set -e
cd /
"$CRIU" restore -D "$CKPT" -d -o restore.log -v4 --pidfile "$WORK/restored.pid"
pid=$(cat "$WORK/restored.pid")
c0=$(cat "$WORK/count-at-dump")
sleep 3
c1=$(cat "$WORK/count")
echo "guest:   count at dump $c0, 3 s after restore $c1; $(grep '^NSpid:' "/proc/$pid/status")" >&2
# Went on from the dumped value (a fresh start would be at 3 or so). One
# test a line: set -e does not stop at a failed left side of &&.
[ "$c1" -gt "$c0" ]
[ "$c1" -lt $((c0 + 10)) ]
grep -q '^NSpid:.*[[:space:]]1$' "/proc/$pid/status"
[ "$(ps -o sid= -p "$pid" | tr -d ' ')" = "$pid" ]
kill -9 "$pid"
GUEST
        pass "criu restore under kernel B: the count goes on, still PID 1 of its namespace, own session"
    else
        fail "criu restore under kernel B"
        vm_ssh 'tail -n 20 /var/lib/vpnhop-smoke-ckpt/restore.log' </dev/null >&2 || true
    fi
fi

# vpnhop's containers need these; the image prunes module trees, so make
# sure none of them went with it.
mods="tun veth bridge br_netfilter nf_tables nft_chain_nat nft_masq nf_nat nf_conntrack xt_MASQUERADE iptable_nat overlay"
if vm_ssh "for m in $mods; do modprobe \$m || exit 1; done" </dev/null; then
    pass "kernel B: modules vpnhop needs load ($mods)"
else
    fail "kernel B: a module vpnhop needs does not load (of: $mods)"
fi

guest_log "timings: image ${t_image} s (build or cache check), disks ${t_disk} s, boot to ssh ${t_boot} s, kexec to ssh ${t_kexec} s"
guest_log "kernels: A=$KERNEL_A B=$KERNEL_B; NIC: ${ifname:-?}"
guest_log "criu check, last line: A: '$(tail -n1 <<<"${criu_said[A]:-}")', B: '$(tail -n1 <<<"${criu_said[B]:-}")'"
if [[ $failed -gt 0 ]]; then
    printf 'guest: failed: %s\n' "${failures[@]}" >&2
fi
printf 'guest: %d passed, %d failed\n' "$passed" "$failed"
[[ $failed -eq 0 ]]
