#!/usr/bin/env bash
# vpnhop end to end, in one command (as root):
#   run OpenVPN in a container, connect a client, checkpoint the server,
#   "reboot" its host, restore it, and show that the client's tunnel
#   survived without renegotiating.
#
# Everything happens in two network namespaces this script creates and
# deletes: a "server host" and a "client", joined by a veth pair. The root
# network namespace is never touched and no packet leaves the machine.
# Addresses: 203.0.113.0/24 (server host <-> client, documentation range),
# 198.51.100.0/24 (container bridge, documentation range), 10.8.0.0/24
# (OpenVPN tunnel).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
vpnhop=$repo/target/release/vpnhop
bundle=$repo/bundles/openvpn

# The pid in every name keeps concurrent runs (and other tests) apart.
srv=vpnhop-demo-$$-srv
cli=vpnhop-demo-$$-cli
veth_srv=vhd$$s # interface names are limited to 15 characters
veth_cli=vhd$$c
srv_ip=203.0.113.1
cli_ip=203.0.113.2
tunnel_server=10.8.0.1
name=demo

tmp=
img_base=
root=
ping_pid=
client_pid=

log() { printf 'demo: %s\n' "$*"; }
die() {
    printf 'demo: ERROR: %s\n' "$*" >&2
    exit 1
}
step() { printf '\ndemo: ==== %s\n' "$*"; }

# vpnhop runs in the server host's netns via nsenter: `ip netns exec` would
# also remount /sys, hiding the cgroup hierarchies vpnhop needs.
vh() { nsenter --net="/run/netns/$srv" "$vpnhop" --root "$root" "$@"; }
in_cli() { ip netns exec "$cli" "$@"; }

# A process we started is alive (a zombie counts as gone).
alive() {
    local pid=$1 stat
    [[ -n $pid ]] && stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]]
}

# wait_until SECONDS DESCRIPTION COMMAND...: polls COMMAND every 0.1 s.
wait_until() {
    local timeout=$1 what=$2
    shift 2
    local deadline=$((SECONDS + timeout))
    until "$@"; do
        ((SECONDS < deadline)) || die "timed out after ${timeout} s waiting for $what"
        sleep 0.1
    done
}

netns_exists() { ip netns list | awk '{ print $1 }' | grep -qxF "$1"; }

# Creates the server host netns and its veth pair to the client netns. Used
# at start and again after the "reboot", when the client netns's old veth
# end has vanished with its peer.
make_server_host() {
    ip netns add "$srv"
    ip -n "$srv" link set lo up
    # Created inside the server netns with the peer placed straight into the
    # client netns, so the root netns never sees either end.
    ip -n "$srv" link add "$veth_srv" type veth peer name "$veth_cli" netns "$cli"
    ip -n "$srv" addr add "$srv_ip/24" dev "$veth_srv"
    ip -n "$cli" addr add "$cli_ip/24" dev "$veth_cli"
    ip -n "$srv" link set "$veth_srv" up
    ip -n "$cli" link set "$veth_cli" up
}

# Runs on every exit, also on failure or Ctrl-C: nothing may be left behind.
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [[ $rc -ne 0 ]]; then
        step "FAILED (exit $rc): diagnostics"
        local f
        for f in "$root"/*/shim.log "$root"/*/criu/*.log "$tmp/client.log"; do
            [[ -n $root && -f $f ]] || continue
            log "--- last lines of $f"
            tail -n 30 "$f" | sed 's/^/demo:   /'
        done
    fi
    step "cleanup"
    if [[ -n $ping_pid ]] && alive "$ping_pid"; then
        kill "$ping_pid" 2>/dev/null
        wait "$ping_pid" 2>/dev/null
    fi
    if [[ -n $client_pid ]] && alive "$client_pid"; then
        log "stopping the OpenVPN client (pid $client_pid)"
        kill "$client_pid" 2>/dev/null
        local i
        for ((i = 0; i < 50; i++)); do alive "$client_pid" || break; sleep 0.1; done
    fi
    if [[ -n $root && -d $root/$name ]] && netns_exists "$srv"; then
        log "removing container $name"
        vh rm -f "$name" >/dev/null
    fi
    local ns
    for ns in "$srv" "$cli"; do
        if netns_exists "$ns"; then
            log "deleting netns $ns"
            ip netns delete "$ns"
        fi
    done
    [[ -n $tmp ]] && rm -rf "$tmp"
    [[ -n $img_base ]] && rm -rf "$img_base"

    # Check what could outlive us: netns, veths, cgroups, processes.
    local left=()
    netns_exists "$srv" && left+=("netns $srv")
    netns_exists "$cli" && left+=("netns $cli")
    ip link show "$veth_srv" >/dev/null 2>&1 && left+=("link $veth_srv")
    ip link show "$veth_cli" >/dev/null 2>&1 && left+=("link $veth_cli")
    if [[ -n $root ]] && compgen -G "/sys/fs/cgroup/*/vpnhop/$name" >/dev/null; then
        left+=("cgroups /vpnhop/$name")
    fi
    alive "$ping_pid" && left+=("ping pid $ping_pid")
    alive "$client_pid" && left+=("openvpn pid $client_pid")
    if [[ ${#left[@]} -gt 0 ]]; then
        log "WARNING: left behind: ${left[*]}"
        [[ $rc -ne 0 ]] || rc=1
    else
        log "nothing left behind"
    fi
    exit "$rc"
}

# ------------------------------------------------------------ 1. build ----

[[ $EUID -eq 0 ]] || die "must run as root"
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "setup and build"
bash "$repo/scripts/setup.sh"
log "cargo build --release --workspace --locked"
(cd "$repo" && cargo build --release --workspace --locked)
[[ -x $vpnhop && -x $repo/target/release/vpnhop-shim ]] || die "binaries missing in target/release"

tmp=$(mktemp -d /tmp/vpnhop-demo.XXXXXX)
root=$tmp/root
# Images go to persistent disk (they must survive a real reboot); a
# subdirectory of a private parent also keeps vpnhop's temporary siblings
# (.NAME.partial-*) out of the shared /var/tmp.
img_base=$(mktemp -d /var/tmp/vpnhop-demo.XXXXXX)
img=$img_base/image

# ------------------------------------------------------------ 2. world ----

step "network namespaces: $srv ($srv_ip) <-> $cli ($cli_ip)"
ip netns add "$cli"
ip -n "$cli" link set lo up
make_server_host
ip netns exec "$srv" ping -c 1 -W 2 "$cli_ip" >/dev/null || die "veth link does not work"
log "server host and client can reach each other"

# ------------------------------------------------------- 3-4. container ----

step "vpnhop run -d --name $name --subnet 198.51.100.0/24 bundles/openvpn"
vh run -d --name "$name" --subnet 198.51.100.0/24 "$bundle"
log "vpnhop ps"
vh ps
log "vpnhop inspect $name"
vh inspect "$name"

# ------------------------------------------------------------ 5. client ----

step "OpenVPN client in $cli, server $srv_ip:1194"
in_cli openvpn --config "$bundle/client.ovpn" --remote "$srv_ip" 1194 \
    --log "$tmp/client.log" --writepid "$tmp/client.pid" --daemon
wait_until 5 "the client's pid file" test -s "$tmp/client.pid"
client_pid=$(<"$tmp/client.pid")
connected() {
    alive "$client_pid" || die "the OpenVPN client exited, see above"
    grep -q 'Initialization Sequence Completed' "$tmp/client.log"
}
wait_until 30 "the client to connect" connected
log "client connected (pid $client_pid): $(grep -m1 'Initialization Sequence Completed' "$tmp/client.log")"
in_cli ping -c 3 "$tunnel_server"

# ---------------------------------------------------- 6. background ping ----

step "background ping through the tunnel, every 50 ms"
# ping block-buffers into a file: stdbuf makes it write each reply at once,
# so replies can be watched live. Not through the in_cli function: its
# subshell would be $!, and killing that would orphan ping. ip and stdbuf
# exec, so $! is ping's own pid.
ip netns exec "$cli" stdbuf -oL ping -D -i 0.05 "$tunnel_server" \
    >"$tmp/ping.log" 2>"$tmp/ping.err" &
ping_pid=$!
replies() { grep -c 'bytes from' "$tmp/ping.log" || true; }
# resumed_after EPOCH: a reply is stamped ([epoch.usec], ping -D) after EPOCH.
resumed_after() {
    awk -v t="$1" '/bytes from/ {
        ts = substr($1, 2, length($1) - 2)
        if (ts + 0 > t + 0) { found = 1; exit }
    } END { exit !found }' "$tmp/ping.log"
}
any_reply() { grep -q 'bytes from' "$tmp/ping.log"; }
wait_until 5 "the first background ping reply" any_reply
sleep 1
[[ $(cat "/proc/$ping_pid/comm" 2>/dev/null) == ping ]] || die "pid $ping_pid is not ping"
log "$(replies) replies so far (ping pid $ping_pid)"

# -------------------------------------------------------- 7. checkpoint ----

# Kept to prove below that the "reboot" left no process of ours.
read -r shim_pid ctr_pid < <(vh inspect "$name" | python3 -c '
import json, sys
d = json.load(sys.stdin)
print(d["shim_pid"] or 0, d["pid"] or 0)')
log "shim pid $shim_pid, container pid $ctr_pid"

# The checkpoint ends with a syncfs(2) of the image's file system; without
# this, it would also write out what the build just left in the page cache.
sync
step "vpnhop checkpoint --image-dir $img --print-stats $name"
ckpt_start=$EPOCHREALTIME
vh checkpoint --image-dir "$img" --print-stats "$name"
ckpt_end=$EPOCHREALTIME
log "image directory:"
ls -l "$img"
log "$(find "$img" -type f | wc -l) files, $(du -sh "$img" | cut -f1)"

# ------------------------------------------------------------ 8. reboot ----

step "simulated reboot of the server host"
# Bridge, veths and nft rules die with the netns; the state root is volatile
# (/run) on a real host. The client and its netns stay: they are elsewhere.
ip netns delete "$srv"
rm -rf "$root"
log "deleted netns $srv and the state root"
for pid in "$shim_pid" "$ctr_pid"; do
    [[ $pid -gt 0 ]] || continue
    wait_until 5 "pid $pid to be gone" eval "! alive $pid"
done
log "no vpnhop-shim (pid $shim_pid) or container process (pid $ctr_pid) left"
# The netns is torn down asynchronously; the client's veth end goes with it.
wait_until 10 "the old veth end in $cli to vanish" \
    eval "! ip -n '$cli' link show '$veth_cli' >/dev/null 2>&1"
make_server_host
log "recreated $srv and the veth pair to $cli"
resumed_after "$ckpt_end" && die "ping replies while the server is down?"
log "the client got $(replies) ping replies before the checkpoint, none since"

# ----------------------------------------------------------- 9. restore ----

step "vpnhop restore --print-stats $img"
restore_start=$EPOCHREALTIME
vh restore --print-stats "$img"

# Replies stamped after the restore began prove the tunnel is back.
wait_until 20 "the background ping to get replies again" resumed_after "$restore_start"
sleep 1
kill "$ping_pid"
wait "$ping_pid" 2>/dev/null || true
ping_pid=
log "ping resumed: $(replies) replies in total"

# The client-visible outage: the largest interval between two replies.
gap_ms=$(python3 - "$tmp/ping.log" <<'EOF'
import re, sys
ts = [float(m.group(1)) for line in open(sys.argv[1])
      if "bytes from" in line and (m := re.match(r"\[(\d+\.\d+)\]", line))]
print(f"{max(b - a for a, b in zip(ts, ts[1:])) * 1000:.0f}")
EOF
)
log "client-visible gap: $gap_ms ms (largest interval between ping replies)"
# Where the gap went: the last reply until the checkpoint command returned,
# the simulated reboot, then the restore until the first reply.
python3 - "$tmp/ping.log" "$ckpt_start" "$ckpt_end" "$restore_start" <<'EOF'
import re, sys
ckpt_start, ckpt_end, restore = map(float, sys.argv[2:5])
ts = [float(m.group(1)) for line in open(sys.argv[1])
      if "bytes from" in line and (m := re.match(r"\[(\d+\.\d+)\]", line))]
last = max(x for x in ts if x < restore)
first = min(x for x in ts if x > restore)
ms = lambda a, b: f"{(b - a) * 1000:6.0f} ms"
print(f"demo:   checkpoint command (wall clock):      {ms(ckpt_start, ckpt_end)}")
print(f"demo:   last reply -> checkpoint returned:    {ms(last, ckpt_end)}")
print(f"demo:   simulated reboot:                     {ms(ckpt_end, restore)}")
print(f"demo:   restore started -> first reply:       {ms(restore, first)}")
EOF

inits=$(grep -c 'Initialization Sequence Completed' "$tmp/client.log" || true)
if [[ $inits -ne 1 ]]; then
    die "the client log has $inits 'Initialization Sequence Completed' lines: the tunnel was renegotiated"
fi
log "client log: exactly one 'Initialization Sequence Completed', no renegotiation"

# -------------------------------------------------------------- 10. end ----

step "after the restore"
log "vpnhop ps"
vh ps
# Only output since the restore: the log lived in the old (volatile) state root.
log "vpnhop logs $name | tail -5"
vh logs "$name" | tail -5
log "ping -c 3 $tunnel_server, from the client through the tunnel"
in_cli ping -c 3 "$tunnel_server"
log "vpnhop stop $name"
vh stop "$name"
log "vpnhop rm $name"
vh rm "$name"

step "summary"
log "OpenVPN ran in a container, was checkpointed, its host 'rebooted' and it was restored:"
log "  client-visible gap: $gap_ms ms, tunnel kept (no renegotiation)"
log "  checkpoint and restore statistics are printed above"
