#!/usr/bin/env bash
# Build (as root) the guest VM that the kexec tests boot, and cache it under
# /var/cache/vpnhop/guest/KEY/, KEY being a hash of this script and
# guest.conf (package list, kernels, addresses). A re-run with the same KEY
# only checks the cache and prints its path, so it takes well under a second.
#
# The cache entry holds:
#   base.img                 sparse raw ext4 root filesystem (read-only;
#                            each run boots a qcow2 overlay on top of it)
#   vmlinuz-A, initrd.img-A  kernel A (bookworm, 6.1), booted by QEMU -kernel
#   vmlinuz-B, initrd.img-B  kernel B (bookworm-backports, 6.12); the guest
#                            has both in its own /boot too, for kexec
#   kernels.env              KERNEL_A=<uname -r of A>, KERNEL_B=<... of B>
#   id_ed25519{,.pub}        the key the host logs in with (root@guest)
#   known_hosts              the guest's ssh host key, pinned
#   build.log                what the build printed
#
# Usage: build-image.sh            prints the cache directory on stdout
#        build-image.sh --rebuild  ignores the cache entry of this KEY
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

rebuild=0
case ${1:-} in
    --rebuild) rebuild=1 ;;
    '') ;;
    *) guest_die "usage: $0 [--rebuild]" ;;
esac

[[ $EUID -eq 0 ]] || guest_die "build-image.sh must run as root (debootstrap, chroot)"

key=$(guest_cache_key)
out=$GUEST_CACHE_ROOT/$key

cache_complete() { [[ -f $out/complete ]]; }

if [[ $rebuild -eq 0 ]] && cache_complete; then
    guest_log "image cached: $out"
    printf '%s\n' "$out"
    exit 0
fi

guest_host_deps
mkdir -p "$GUEST_CACHE_ROOT"

# One build at a time per cache (a concurrent run of the other engineer's
# test would otherwise debootstrap into the same directory); whoever waited
# finds the finished entry and is done.
exec 9>"$GUEST_CACHE_ROOT/.build.lock"
if ! flock -n 9; then
    guest_log "another build holds $GUEST_CACHE_ROOT/.build.lock, waiting"
    flock 9
fi
if [[ $rebuild -eq 0 ]] && cache_complete; then
    guest_log "image cached (built meanwhile): $out"
    printf '%s\n' "$out"
    exit 0
fi

t_start=$(guest_now)
# Built beside the final place (same filesystem) and renamed into it at the
# end, so a half-built entry is never mistaken for a cached one.
work=$GUEST_CACHE_ROOT/.build-$key
rm -rf "$work"
mkdir -p "$work/out"
rootfs=$work/rootfs
blog=$work/out/build.log
: >"$blog"
cleanup_work() { rm -rf "$work"; }
trap cleanup_work EXIT

# Run a build step with its output in build.log; on failure show the end.
step() {
    local what=$1
    shift
    guest_log "$what"
    printf '\n=== %s\n' "$what" >>"$blog"
    if ! "$@" >>"$blog" 2>&1; then
        tail -n 40 "$blog" >&2
        # $work goes away on exit: keep the log where it can be read.
        cp "$blog" "$GUEST_CACHE_ROOT/failed-build.log"
        guest_die "failed: $what (whole log: $GUEST_CACHE_ROOT/failed-build.log)"
    fi
}

# Run a command inside the rootfs with /proc, /sys and /dev mounted, in a
# private mount namespace so that those mounts vanish with it, whatever
# happens (no unmount to forget, nothing leaks into the host's mounts).
in_chroot() {
    # shellcheck disable=SC2016 # $1/$@ are expanded by the inner sh
    unshare --mount --propagation private -- /bin/sh -ec '
        root=$1; shift
        mount -t proc proc "$root/proc"
        mount -t sysfs sysfs "$root/sys"
        mount --rbind /dev "$root/dev"
        exec chroot "$root" /usr/bin/env -i \
            PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C \
            DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true \
            "$@"' sh "$rootfs" "$@"
}

# ------------------------------------------------------------- rootfs ----

step "debootstrap --variant=minbase $GUEST_SUITE (a minute or two)" \
    debootstrap --variant=minbase "$GUEST_SUITE" "$rootfs" "$GUEST_MIRROR"

# No docs, man pages, locales: nobody reads them in a test VM and they are a
# good part of a minbase system. Set before anything else is installed; what
# debootstrap already unpacked is deleted further down.
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/01-vpnhop-nodoc" <<'EOF'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/groff/*
path-exclude=/usr/share/lintian/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
path-exclude=/usr/share/zoneinfo/right/*
EOF

# bookworm (+updates, +security) for everything, bookworm-backports only
# for kernel B (asked for by name). No trixie/sid here either.
rm -f "$rootfs/etc/apt/sources.list"
cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $GUEST_MIRROR
Suites: $GUEST_SUITE $GUEST_SUITE-updates $GUEST_KERNEL_B_SUITE
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${GUEST_MIRROR%/debian}/debian-security
Suites: $GUEST_SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF

# Package scripts must not start daemons inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
chmod 755 "$rootfs/usr/sbin/policy-rc.d"

# A small initramfs: only the modules that find the root disk, for both
# kernels (set before the kernels are installed, whose postinst builds it).
mkdir -p "$rootfs/etc/initramfs-tools/conf.d"
printf 'MODULES=list\n' >"$rootfs/etc/initramfs-tools/conf.d/vpnhop"
printf '%s\n' "${GUEST_INITRAMFS_MODULES[@]}" >>"$rootfs/etc/initramfs-tools/modules"

step "apt-get update in the guest" in_chroot apt-get -q update
step "installing guest packages: ${GUEST_PACKAGES[*]}" \
    in_chroot apt-get -q install -y --no-install-recommends "${GUEST_PACKAGES[@]}"

# Kernel A, then kernel B: the metapackage moves to backports' version and
# pulls its kernel, A's versioned image stays (marked manual so that no
# autoremove ever takes it).
step "installing kernel A ($GUEST_KERNEL_PACKAGE from $GUEST_KERNEL_A_SUITE)" \
    in_chroot apt-get -q install -y --no-install-recommends "$GUEST_KERNEL_PACKAGE"
# The one directory in /lib/modules is A's version.
kernel_versions() { find "$rootfs/lib/modules" -mindepth 1 -maxdepth 1 -type d -printf '%f\n'; }
kernel_a=$(kernel_versions)
[[ $kernel_a =~ ^[0-9][^[:space:]]*$ ]] || guest_die "cannot tell kernel A's version (got '$kernel_a')"
step "marking kernel A ($kernel_a) manually installed" \
    in_chroot apt-mark manual "linux-image-$kernel_a"
step "installing kernel B ($GUEST_KERNEL_PACKAGE from $GUEST_KERNEL_B_SUITE)" \
    in_chroot apt-get -q install -y --no-install-recommends "$GUEST_KERNEL_PACKAGE/$GUEST_KERNEL_B_SUITE"
kernel_b=$(kernel_versions | grep -vxF "$kernel_a")
[[ $kernel_b =~ ^[0-9][^[:space:]]*$ ]] || guest_die "cannot tell kernel B's version (got '$kernel_b')"
guest_log "kernel A: $kernel_a, kernel B: $kernel_b"

# No QEMU VM has sound, GPUs, wifi, ...: drop those module trees (hundreds of
# MB per kernel) and re-index what is left. The initramfs was built before
# and holds its own copies of what it needs.
prune_modules() {
    local k d
    for k in "$kernel_a" "$kernel_b"; do
        for d in "${GUEST_PRUNE_MODULES[@]}"; do
            rm -rf "${rootfs:?}/lib/modules/$k/kernel/$d"
        done
        chroot "$rootfs" depmod -a "$k"
    done
}
step "pruning kernel modules the VM cannot use" prune_modules

# ------------------------------------------------------ configuration ----

printf '%s\n' "$GUEST_HOSTNAME" >"$rootfs/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 %s\n%s vpnhop-host\n' \
    "$GUEST_HOSTNAME" "$GUEST_HOST_IP" >"$rootfs/etc/hosts"
# No DNS: nothing outside the test network is reachable anyway.
: >"$rootfs/etc/resolv.conf"

# A fixed machine-id: an empty one would make systemd treat every boot as a
# first boot (and systemd-firstboot may prompt on the console).
head -c16 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$rootfs/etc/machine-id"
printf '\n' >>"$rootfs/etc/machine-id"

# Root is the whole virtio disk (no partition table). No fsck at boot (pass
# 0): the image is fresh each run. The payload disk carries what the test
# puts in /opt/vpnhop; nofail and a short timeout so that a run without it
# still boots.
mkdir -p "$rootfs/opt/vpnhop"
cat >"$rootfs/etc/fstab" <<EOF
/dev/vda / ext4 rw,errors=remount-ro 0 0
LABEL=$GUEST_PAYLOAD_LABEL /opt/vpnhop ext4 rw,nofail,x-systemd.device-timeout=15s 0 0
EOF

# Network: systemd-networkd, the NIC matched by the MAC that vm.sh gives it,
# so the name (eth0 with net.ifnames=0, ens3/enp0s3 without) does not matter.
mkdir -p "$rootfs/etc/systemd/network"
cat >"$rootfs/etc/systemd/network/10-vpnhop-test.network" <<EOF
[Match]
MACAddress=$GUEST_MAC

[Network]
Address=$GUEST_IP/$GUEST_PREFIX
LinkLocalAddressing=no
IPv6AcceptRA=no
EOF
ln -sf /lib/systemd/system/systemd-networkd.service \
    "$rootfs/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
mkdir -p "$rootfs/etc/systemd/system/sockets.target.wants"
ln -sf /lib/systemd/system/systemd-networkd.socket \
    "$rootfs/etc/systemd/system/sockets.target.wants/systemd-networkd.socket"
# network-online.target (which a restore unit may want) waits for the one
# configured link only, and not for long.
mkdir -p "$rootfs/etc/systemd/system/network-online.target.wants" \
    "$rootfs/etc/systemd/system/systemd-networkd-wait-online.service.d"
ln -sf /lib/systemd/system/systemd-networkd-wait-online.service \
    "$rootfs/etc/systemd/system/network-online.target.wants/systemd-networkd-wait-online.service"
printf '[Service]\nExecStart=\nExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=30\n' \
    >"$rootfs/etc/systemd/system/systemd-networkd-wait-online.service.d/vpnhop.conf"

# Timers and jobs that only cost CPU time under TCG, and could fire in the
# middle of a checkpoint; and first-boot prompts.
for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
    e2scrub_reap.service fstrim.timer dpkg-db-backup.timer \
    systemd-tmpfiles-clean.timer systemd-firstboot.service getty@tty1.service; do
    ln -sf /dev/null "$rootfs/etc/systemd/system/$unit"
done

# ssh: the host logs in as root with a key made here; the guest's host key
# is made here too and pinned on the host side, so no trust-on-first-use.
ssh-keygen -q -t ed25519 -N '' -C "vpnhop-guest-test" -f "$work/out/id_ed25519"
rm -f "$rootfs"/etc/ssh/ssh_host_*
ssh-keygen -q -t ed25519 -N '' -C "root@$GUEST_HOSTNAME" -f "$rootfs/etc/ssh/ssh_host_ed25519_key"
printf '%s %s\n' "$GUEST_IP" "$(cut -d' ' -f1,2 "$rootfs/etc/ssh/ssh_host_ed25519_key.pub")" \
    >"$work/out/known_hosts"
install -d -m 700 "$rootfs/root/.ssh"
install -m 600 "$work/out/id_ed25519.pub" "$rootfs/root/.ssh/authorized_keys"
cat >"$rootfs/etc/ssh/sshd_config.d/vpnhop-test.conf" <<'EOF'
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
EOF

# ------------------------------------------------------------ shrink ----

shrink() {
    rm -f "$rootfs/usr/sbin/policy-rc.d"
    in_chroot apt-get clean
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/lib/dpkg/*-old \
        "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/*
    # What debootstrap unpacked before the dpkg excludes were in place.
    find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
        "$rootfs"/usr/share/groff/* "$rootfs"/usr/share/lintian/*
    find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias \
        -exec rm -rf {} +
}
step "removing docs, man pages, locales, apt caches" shrink

# ----------------------------------------------------------- outputs ----

for k in "$kernel_a" "$kernel_b"; do
    for f in vmlinuz initrd.img; do
        [[ -s $rootfs/boot/$f-$k ]] || guest_die "missing /boot/$f-$k in the guest"
    done
done
cp "$rootfs/boot/vmlinuz-$kernel_a" "$work/out/vmlinuz-A"
cp "$rootfs/boot/initrd.img-$kernel_a" "$work/out/initrd.img-A"
cp "$rootfs/boot/vmlinuz-$kernel_b" "$work/out/vmlinuz-B"
cp "$rootfs/boot/initrd.img-$kernel_b" "$work/out/initrd.img-B"
printf 'KERNEL_A=%s\nKERNEL_B=%s\n' "$kernel_a" "$kernel_b" >"$work/out/kernels.env"

rootfs_mb=$(du -sm "$rootfs" | cut -f1)
t_mkfs=$(guest_now)
step "mkfs.ext4 -d: ${rootfs_mb} MB rootfs into a $GUEST_ROOT_SIZE sparse image" \
    mkfs.ext4 -q -F -L vpnhop-root -d "$rootfs" "$work/out/base.img" "$GUEST_ROOT_SIZE"
guest_log "mkfs.ext4 took $(guest_since "$t_mkfs") s"
# Runs never write it: each boots a qcow2 overlay on top.
chmod 0444 "$work/out/base.img"
rm -rf "$rootfs"

printf 'key=%s\nbuilt=%s\nkernel_a=%s\nkernel_b=%s\nseconds=%s\n' "$key" \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$kernel_a" "$kernel_b" "$(guest_since "$t_start")" \
    >"$work/out/complete"
rm -rf "$out"
mv "$work/out" "$out"

# Entries of other keys are images of an older harness: drop them (a VM
# still running on one keeps its open files until it exits).
find "$GUEST_CACHE_ROOT" -mindepth 1 -maxdepth 1 -type d -not -name "$key" \
    -not -name '.build-*' -exec rm -rf {} +

guest_log "image built in $(guest_since "$t_start") s: $out ($(du -sh "$out" | cut -f1) on disk)"
printf '%s\n' "$out"
