# shellcheck shell=bash
# Library for tests that run vpnhop in a guest VM: source it, then
#
#   vm_init                   image (built or cached), run directory, traps
#   vm_disk [PAYLOAD_DIR]     per-run disks: root overlay + payload at /opt/vpnhop
#   vm_net                    test netns + tap + host address
#   vm_boot [A|B]             QEMU in the background; VM_PID
#   vm_wait_ssh [TIMEOUT]     until the guest answers ssh (default 180 s)
#   vm_ssh 'COMMAND'          run COMMAND in the guest (root, over ssh)
#   vm_put SRC_DIR DEST_DIR   copy a directory's contents into the guest
#   vm_kexec KERNEL_VERSION   kexec the guest into a kernel of its /boot and
#                             wait until it is back (VM_KEXEC_SECONDS)
#   vm_wait_reboot OLD_BOOT_ID [TIMEOUT]
#                             after something else rebooted the guest
#                             (vpnhop kexec): wait until it is back
#   vm_teardown               QEMU, netns, images: runs by itself on exit
#
# Everything the run makes lives in VM_RUN (a fresh directory under
# /var/tmp): serial.log (the guest console), qemu.log, the disk images. On
# success it is removed; on failure (or with VM_KEEP=1) the disk images are
# removed and the logs kept; a failed wait prints the end of the console.
# VM_ACCEL=kvm tries KVM instead of TCG (this machine's /dev/kvm does not
# boot Debian kernels; elsewhere it may).
#
# A test with its own clean-up defines vm_cleanup_hook; vm_teardown calls it
# first (while the guest still runs). vm_init owns the EXIT/INT/TERM traps.

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VM_NETNS=vpnhop-guest-$$
VM_TAP=vhtap0
VM_PID=
VM_RUN=
VM_IMAGE=
VM_BOOT_T=
VM_BOOT_SECONDS=
VM_KEXEC_SECONDS=
VM_TORN_DOWN=0
VM_NET_UP=0
KERNEL_A=
KERNEL_B=

vm_init() {
    [[ $EUID -eq 0 ]] || guest_die "must run as root (netns, tap, QEMU)"
    guest_host_deps
    VM_IMAGE=$("$GUEST_DIR/build-image.sh" | tail -n1)
    [[ -f $VM_IMAGE/complete ]] || guest_die "no image in '$VM_IMAGE'"
    # shellcheck source=/dev/null
    . "$VM_IMAGE/kernels.env"
    VM_RUN=$(mktemp -d "${VM_RUN_ROOT:-/var/tmp}/vpnhop-guest.XXXXXX")
    trap 'vm__on_exit' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    guest_log "run directory: $VM_RUN (kernels: A=$KERNEL_A B=$KERNEL_B)"
}

# (a) The disks of this run. Root: a qcow2 overlay on the cached base image,
# instant and only as big as what the guest writes. Payload: a small ext4
# image made from PAYLOAD_DIR with mkfs.ext4 -d (no root, no loop mounts),
# labelled so that the guest's fstab mounts it at /opt/vpnhop. Both live as
# long as QEMU does, so whatever the guest writes survives its kexec.
vm_disk() {
    local payload=${1:-}
    qemu-img create -q -f qcow2 -F raw -b "$VM_IMAGE/base.img" "$VM_RUN/root.qcow2" \
        || guest_die "qemu-img create failed"
    if [[ -n $payload ]]; then
        [[ -d $payload ]] || guest_die "payload '$payload' is not a directory"
        local t mb
        t=$(guest_now)
        # Room for what the guest adds (logs, vpnhop state), at least 64 MB.
        mb=$(du -sm "$payload" | cut -f1)
        mb=$((mb + mb / 4 + 64))
        mkfs.ext4 -q -F -L "$GUEST_PAYLOAD_LABEL" -d "$payload" "$VM_RUN/payload.img" "${mb}M" \
            >/dev/null || guest_die "mkfs.ext4 -d of the payload failed"
        guest_log "payload disk: $(du -sm "$payload" | cut -f1) MB into a ${mb} MB image in $(guest_since "$t") s"
    fi
}

# (b) The test network: a namespace of our own with the tap QEMU attaches
# to. The host's root network namespace is never touched; deleting the
# namespace takes the tap with it.
vm_net() {
    ip netns add "$VM_NETNS" || guest_die "ip netns add $VM_NETNS failed"
    VM_NET_UP=1
    ip -n "$VM_NETNS" link set lo up
    ip -n "$VM_NETNS" tuntap add dev "$VM_TAP" mode tap
    ip -n "$VM_NETNS" addr add "$GUEST_HOST_IP/$GUEST_PREFIX" dev "$VM_TAP"
    ip -n "$VM_NETNS" link set "$VM_TAP" up
    guest_log "netns $VM_NETNS: $VM_TAP $GUEST_HOST_IP/$GUEST_PREFIX (guest: $GUEST_IP)"
}

# (c) Boot QEMU in the background (in the test netns, so that it opens the
# tap there). TCG, not KVM: this machine's /dev/kvm does not boot stock
# Debian kernels. The kernel is given with -kernel/-initrd (A by default);
# the guest has both kernels in its /boot as well, which is where kexec
# loads from. -no-reboot with panic=-1: a guest that panics or resets ends
# QEMU, so the waits below fail at once instead of timing out.
vm_boot() {
    local which=${1:-A} kernel
    case $which in
        A) kernel=$KERNEL_A ;;
        B) kernel=$KERNEL_B ;;
        *) guest_die "vm_boot: A or B, not '$which'" ;;
    esac
    local drives=(-drive "file=$VM_RUN/root.qcow2,if=virtio,format=qcow2,cache=unsafe")
    if [[ -f $VM_RUN/payload.img ]]; then
        drives+=(-drive "file=$VM_RUN/payload.img,if=virtio,format=raw,cache=unsafe")
    fi
    : >"$VM_RUN/serial.log"
    VM_BOOT_T=$(guest_now)
    ip netns exec "$VM_NETNS" qemu-system-x86_64 \
        -name vpnhop-guest -nodefaults -display none -monitor none -no-reboot \
        -accel "${VM_ACCEL:-tcg}" -cpu max -smp 2 -m 2048 \
        -kernel "$VM_IMAGE/vmlinuz-$which" -initrd "$VM_IMAGE/initrd.img-$which" \
        -append "$GUEST_CMDLINE" \
        "${drives[@]}" \
        -netdev "tap,id=n0,ifname=$VM_TAP,script=no,downscript=no" \
        -device "virtio-net-pci,netdev=n0,mac=$GUEST_MAC" \
        -device virtio-rng-pci \
        -chardev "file,id=ser0,path=$VM_RUN/serial.log" -serial chardev:ser0 \
        >"$VM_RUN/qemu.log" 2>&1 &
    VM_PID=$!
    guest_log "QEMU pid $VM_PID booting kernel $which ($kernel), console: $VM_RUN/serial.log"
}

vm_alive() { [[ -n $VM_PID ]] && kill -0 "$VM_PID" 2>/dev/null; }

# ssh into the guest from inside the test netns, with the key made at build
# time and the guest's host key pinned (no trust on first use, no user
# config). ServerAlive: a session cut by a reboot ends within ~15 s.
vm__ssh_cmd() {
    VM_SSH=(ip netns exec "$VM_NETNS" ssh -F /dev/null
        -i "$VM_IMAGE/id_ed25519" -o IdentitiesOnly=yes -o BatchMode=yes
        -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$VM_IMAGE/known_hosts"
        -o GlobalKnownHostsFile=/dev/null -o ConnectTimeout=5
        -o ServerAliveInterval=5 -o ServerAliveCountMax=3 -o LogLevel=ERROR
        "root@$GUEST_IP")
}

# (e) Run a command in the guest: vm_ssh 'uname -r'. Its stdin goes to the
# guest command; exit status is the command's (255: ssh itself failed).
vm_ssh() {
    vm__ssh_cmd
    "${VM_SSH[@]}" -- "$@"
}

# Copy the contents of a host directory into a guest directory.
vm_put() {
    local src=$1 dest=$2
    tar -C "$src" -cf - . | vm_ssh "mkdir -p '$dest' && tar -C '$dest' -xf -"
}

vm_boot_id() { vm_ssh 'cat /proc/sys/kernel/random/boot_id' </dev/null; }

# (d) Wait until the guest answers ssh. Fails at once if QEMU has gone.
vm_wait_ssh() {
    local timeout=${1:-180} t
    t=$(guest_now)
    while ! vm_ssh true </dev/null 2>/dev/null; do
        vm_alive || { vm__console_tail; guest_die "QEMU exited while waiting for ssh"; }
        if (($(printf '%.0f' "$(guest_since "$t")") >= timeout)); then
            vm__console_tail
            guest_die "no ssh from the guest after ${timeout} s"
        fi
        sleep 2
    done
    VM_BOOT_SECONDS=$(guest_since "$VM_BOOT_T")
    guest_log "ssh up ${VM_BOOT_SECONDS} s after QEMU started"
}

# After the guest was told to reboot (kexec), wait until it answers ssh with
# a boot id other than OLD_BOOT_ID, i.e. from the new kernel: the old one
# may still answer for a moment. Sets VM_KEXEC_SECONDS (from the call).
vm_wait_reboot() {
    local old=$1 timeout=${2:-240} t id
    t=$(guest_now)
    while :; do
        id=$(vm_boot_id 2>/dev/null) || id=
        [[ -n $id && $id != "$old" ]] && break
        vm_alive || { vm__console_tail; guest_die "QEMU exited while the guest rebooted"; }
        if (($(printf '%.0f' "$(guest_since "$t")") >= timeout)); then
            vm__console_tail
            guest_die "guest not back ${timeout} s after the reboot"
        fi
        sleep 2
    done
    VM_KEXEC_SECONDS=$(guest_since "$t")
    guest_log "guest back after ${VM_KEXEC_SECONDS} s (boot id $id)"
}

# kexec into KERNEL_VERSION from the guest's own /boot, keeping the command
# line, through systemd (a clean shutdown: units stopped, disks synced).
# systemctl kexec is started a second after the ssh session ends so that
# the session is not cut in the middle.
vm_kexec() {
    local k=$1 old
    old=$(vm_boot_id) || guest_die "no boot id from the guest"
    vm_ssh "kexec -l /boot/vmlinuz-$k --initrd=/boot/initrd.img-$k --reuse-cmdline" </dev/null \
        || guest_die "kexec -l of $k failed in the guest"
    [[ $(vm_ssh 'cat /sys/kernel/kexec_loaded' </dev/null) == 1 ]] \
        || guest_die "kexec -l returned but /sys/kernel/kexec_loaded is not 1"
    vm_ssh 'systemd-run --quiet --on-active=1 --timer-property=AccuracySec=100ms systemctl kexec' </dev/null \
        || guest_die "could not schedule systemctl kexec"
    guest_log "kexec into $k scheduled"
    vm_wait_reboot "$old"
}

# Stop QEMU (TERM, then KILL): the guest is gone, the disks stay.
vm_stop() {
    vm_alive || { VM_PID=; return 0; }
    kill "$VM_PID" 2>/dev/null || true
    local _
    for _ in $(seq 50); do
        vm_alive || break
        sleep 0.2
    done
    vm_alive && kill -9 "$VM_PID" 2>/dev/null
    wait "$VM_PID" 2>/dev/null || true
    VM_PID=
}

vm__console_tail() {
    if [[ ! -s ${VM_RUN:-}/serial.log ]]; then
        guest_log "the guest console is empty: the kernel never printed a line"
        return 0
    fi
    guest_log "last lines of the guest console ($VM_RUN/serial.log):"
    tail -n 40 "$VM_RUN/serial.log" | tr -d '\r' | sed 's/^/guest:   | /' >&2
}

# (f) Tear everything down; idempotent. With a non-zero status (failure)
# the logs stay in VM_RUN for a look.
vm_teardown() {
    local rc=${1:-0}
    [[ $VM_TORN_DOWN -eq 0 ]] || return 0
    VM_TORN_DOWN=1
    if declare -F vm_cleanup_hook >/dev/null; then
        vm_cleanup_hook "$rc" || guest_log "vm_cleanup_hook failed"
    fi
    vm_stop
    if [[ $VM_NET_UP -eq 1 ]]; then
        ip netns del "$VM_NETNS" 2>/dev/null || guest_log "could not delete netns $VM_NETNS"
        VM_NET_UP=0
    fi
    if [[ -n $VM_RUN && -d $VM_RUN ]]; then
        rm -f "$VM_RUN/root.qcow2" "$VM_RUN/payload.img"
        rm -rf "$VM_RUN/payload"
        if [[ $rc -eq 0 && ${VM_KEEP:-0} != 1 ]]; then
            rm -rf "$VM_RUN"
        else
            guest_log "logs kept in $VM_RUN"
        fi
    fi
    guest_log "torn down"
}

vm__on_exit() {
    local rc=$?
    vm_teardown "$rc"
    exit "$rc"
}
