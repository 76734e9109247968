# shellcheck shell=bash
# Shared helpers of the guest-VM harness: logging, the image cache key, and
# the host tools the harness needs. Sourced by build-image.sh and vm.sh.

GUEST_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=guest.conf
. "$GUEST_DIR/guest.conf"

# Where built images live, one directory per cache key.
GUEST_CACHE_ROOT=${GUEST_CACHE_ROOT:-/var/cache/vpnhop/guest}

guest_log() { printf 'guest: %s\n' "$*" >&2; }
guest_die() { printf 'guest: ERROR: %s\n' "$*" >&2; exit 1; }

# Seconds since the epoch with a fraction, for timings.
guest_now() { date +%s.%N; }
# Elapsed seconds since START (from guest_now), one decimal.
guest_since() { awk -v s="$1" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }'; }

# The cache key: what decides the image's content is the build script and
# the configuration it reads, so a hash of both names the cache entry. An
# edit to either makes a new key (and a rebuild); nothing else does.
guest_cache_key() {
    cat "$GUEST_DIR/build-image.sh" "$GUEST_DIR/guest.conf" | sha256sum | cut -c1-16
}
guest_cache_dir() { printf '%s/%s\n' "$GUEST_CACHE_ROOT" "$(guest_cache_key)"; }

# apt with the same patience as scripts/setup.sh: another apt user (the
# other engineer's setup, CI) may hold the dpkg lock for a while.
guest_apt=(apt-get -q -o DPkg::Lock::Timeout=300 -o Acquire::Retries=3)

guest_apt_update() {
    local _
    for _ in 1 2 3 4 5 6; do
        "${guest_apt[@]}" update >/dev/null && return 0
        guest_log "apt-get update failed, retrying in 15 s"
        sleep 15
    done
    guest_die "apt-get update keeps failing"
}

# Host tools: debootstrap builds the guest, QEMU 10 runs it. Debian 12's
# QEMU 7.2 would do too, but the team standardised on 10 from
# bookworm-backports (qemu-utils 10 is already installed from there, and
# mixing qemu-utils 10 with qemu-system 7.2 is asking for trouble).
# Only what is missing is installed, and backports is pinned so that only
# the QEMU packages named here ever come from it.
GUEST_BPO_SOURCES=/etc/apt/sources.list.d/vpnhop-backports.sources
GUEST_BPO_PIN=/etc/apt/preferences.d/vpnhop-backports
guest_host_deps() {
    local need=()
    command -v debootstrap >/dev/null || need+=(debootstrap)
    command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
    command -v qemu-img >/dev/null || need+=(qemu-utils)
    command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
    command -v ssh >/dev/null || need+=(openssh-client)
    command -v ip >/dev/null || need+=(iproute2)
    command -v flock >/dev/null || need+=(util-linux)
    [[ ${#need[@]} -gt 0 ]] || return 0

    export DEBIAN_FRONTEND=noninteractive
    if [[ " ${need[*]} " == *" qemu-"* ]]; then
        # bookworm-backports as a `deb` source, pinned at 100 (its default
        # too, spelled out): apt never picks it by itself, only for the
        # packages named pkg/bookworm-backports below. Never trixie/sid.
        if [[ ! -f $GUEST_BPO_SOURCES ]] \
            && ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
            guest_log "adding bookworm-backports (pinned, for QEMU only): $GUEST_BPO_SOURCES"
            printf '%s\n' \
                '# Managed by vpnhop tests/guest: bookworm-backports binaries, for' \
                '# QEMU 10 only (pinned low in /etc/apt/preferences.d/vpnhop-backports).' \
                'Types: deb' \
                'URIs: http://deb.debian.org/debian' \
                'Suites: bookworm-backports' \
                'Components: main' \
                'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' \
                >"$GUEST_BPO_SOURCES"
        fi
        if [[ ! -f $GUEST_BPO_PIN ]]; then
            printf '%s\n' \
                '# Managed by vpnhop tests/guest: nothing comes from bookworm-backports' \
                '# unless asked for by name (pkg/bookworm-backports).' \
                'Package: *' \
                'Pin: release n=bookworm-backports' \
                'Pin-Priority: 100' \
                >"$GUEST_BPO_PIN"
        fi
    fi
    guest_apt_update
    local pkgs=() p
    for p in "${need[@]}"; do
        case $p in
            # qemu-system-x86 10 needs these three at their backports
            # versions too; everything else resolves from bookworm.
            qemu-system-x86)
                pkgs+=(qemu-system-x86/bookworm-backports
                    qemu-system-common/bookworm-backports
                    qemu-system-data/bookworm-backports
                    seabios/bookworm-backports) ;;
            qemu-utils) pkgs+=(qemu-utils/bookworm-backports) ;;
            *) pkgs+=("$p") ;;
        esac
    done
    guest_log "installing host tools: ${pkgs[*]}"
    "${guest_apt[@]}" install -y --no-install-recommends "${pkgs[@]}" >/dev/null \
        || guest_die "could not install ${pkgs[*]}"
}
