#!/usr/bin/env bash
# Bring a Debian 12 (bookworm) machine, as root, to the state vpnhop needs:
#   1. host packages (OpenVPN, runc, CRIU's run-time and build dependencies)
#   2. CRIU 4.x built from Debian sid's source package into /opt/vpnhop/criu,
#      with vpnhop's patches (scripts/criu-patches); with --stock-criu also
#      an unpatched, default build in /opt/vpnhop/criu-stock (the benchmark's
#      hand-run baseline)
#   3. the OpenVPN bundle rootfs and demo PKI (bundles/openvpn/build.sh)
# Idempotent: each step checks its result first, so a re-run takes seconds.
# See docs/criu.md for why CRIU is built from source.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
criu_prefix=/opt/vpnhop/criu
criu_bin=$criu_prefix/sbin/criu
criu_rundir=/run/vpnhop-criu
stock_prefix=/opt/vpnhop/criu-stock
patch_dir=$repo/scripts/criu-patches
build_dir=/var/cache/vpnhop/criu-build
src_list=/etc/apt/sources.list.d/vpnhop-criu-src.sources

export DEBIAN_FRONTEND=noninteractive
# Another apt user (e.g. a concurrent install) may hold the dpkg lock: wait.
apt=(apt-get -q -o DPkg::Lock::Timeout=300 -o Acquire::Retries=3)

log() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: ERROR: %s\n' "$*" >&2; exit 1; }

stock=0
for arg in "$@"; do
    case $arg in
    --stock-criu) stock=1 ;;
    *) die "unknown argument: $arg (usage: setup.sh [--stock-criu])" ;;
    esac
done

[[ $EUID -eq 0 ]] || die "must run as root"
# shellcheck source=/dev/null
. /etc/os-release
[[ ${VERSION_CODENAME:-} == bookworm ]] \
    || log "warning: written for Debian 12 (bookworm), this is ${PRETTY_NAME:-unknown}"

# ------------------------------------------------------------ packages ----

packages=(
    # vpnhop itself and the bundle
    openvpn openssl ca-certificates tar iproute2 iptables nftables conntrack
    libseccomp-dev pkg-config util-linux
    # the tests, the demo and the benchmark (runc is the start-up baseline)
    iputils-ping shellcheck runc
    # tools this script uses
    curl xz-utils patch
    # CRIU at run time (libraries it links, plus python3 for criu-ns)
    libprotobuf-c1 libnl-3-200 libnet1 libnftables1 libbsd0 libcap2
    libuuid1 libaio1 python3
    # CRIU build dependencies (apt-get build-dep would ask for sid's
    # versions, which do not resolve on bookworm, so list them by hand)
    gcc make libc6-dev libprotobuf-c-dev libprotobuf-dev protobuf-c-compiler
    protobuf-compiler libnl-3-dev libnet1-dev libcap-dev libbsd-dev
    libnftables-dev uuid-dev libaio-dev
)

apt_updated=0
apt_update() {
    if [[ $apt_updated -eq 0 ]]; then
        log "apt-get update"
        # DPkg::Lock::Timeout does not cover the lists lock that a
        # concurrent update holds, so retry for a while instead.
        local i
        for i in 1 2 3 4 5 6 7 8 9 10; do
            "${apt[@]}" update >/dev/null && break
            [[ $i -lt 10 ]] || die "apt-get update keeps failing"
            log "apt-get update failed, retrying in 15 s"
            sleep 15
        done
        apt_updated=1
    fi
}

# Only what is missing, so already-installed packages are never upgraded
# behind the back of whatever else runs on this machine.
missing_packages() {
    local installed
    installed=$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "${packages[@]}" 2>/dev/null \
        | awk '$2 == "installed" { print $1 }') || true
    local p
    for p in "${packages[@]}"; do
        grep -qxF "$p" <<<"$installed" || printf '%s\n' "$p"
    done
}

mapfile -t missing < <(missing_packages)
if [[ ${#missing[@]} -gt 0 ]]; then
    apt_update
    log "installing: ${missing[*]}"
    # -t bookworm: never take binaries from anything but bookworm, even
    # though sid is configured (as deb-src only) further down.
    "${apt[@]}" install -y --no-install-recommends -t bookworm "${missing[@]}" >/dev/null
    mapfile -t missing < <(missing_packages)
    [[ ${#missing[@]} -eq 0 ]] || die "still missing after install: ${missing[*]}"
else
    log "packages already installed"
fi

# ---------------------------------------------------------------- CRIU ----

criu_version() {
    # criu_version BIN: prints e.g. "4.2.1", or nothing when there is no usable binary.
    [[ -x $1 ]] || return 0
    "$1" --version 2>/dev/null | awk '/^Version:/ { print $2 }' || true
}

fetch_criu_source() {
    # Sets criu_tarball to the verified upstream tarball of sid's CRIU.
    # A deb-src line for sid only: apt-get source can then fetch sid's CRIU
    # source, while binaries keep coming from bookworm. A `deb` line for sid
    # would pull sid's glibc and break the system.
    local want
    want=$(printf '%s\n' \
        '# Managed by vpnhop scripts/setup.sh: sid SOURCE packages only, to build' \
        '# CRIU 4.x. Never turn this into a binary (deb) entry.' \
        'Types: deb-src' \
        'URIs: http://deb.debian.org/debian' \
        'Suites: sid' \
        'Components: main' \
        'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg')
    if [[ ! -f $src_list || $(<"$src_list") != "$want" ]]; then
        log "adding deb-src entry for sid: $src_list"
        printf '%s\n' "$want" >"$src_list"
        apt_updated=0
    fi
    apt_update

    # The URIs and SHA256 come from the signed Sources index, so checking
    # the hash ties the download to Debian's archive signature. Only the
    # upstream .orig.tar.xz is needed (no Debian patches are applied).
    local line url file sha
    line=$(cd /tmp && apt-get source --print-uris criu 2>/dev/null \
        | grep -E "^'[^']*/criu_[^']*\.orig\.tar\.xz' " | head -n1) || true
    [[ -n $line ]] || die "apt-get source --print-uris criu found no .orig.tar.xz"
    read -r url file _ sha <<<"$line"
    url=${url//\'/}
    sha=${sha#SHA256:}
    [[ $sha =~ ^[0-9a-f]{64}$ ]] || die "no SHA256 for $file in: $line"

    local ver=${file#criu_}
    ver=${ver%.orig.tar.xz}
    [[ $ver == 4.* ]] || die "sid offers criu $ver, need 4.x"

    mkdir -p "$build_dir"
    local tarball=$build_dir/$file
    if [[ ! -f $tarball ]] || ! sha256sum -c --status <<<"$sha  $tarball"; then
        log "downloading $url"
        curl -fsSL --retry 3 -o "$tarball.part" "$url"
        mv -f "$tarball.part" "$tarball"
    fi
    sha256sum -c --status <<<"$sha  $tarball" \
        || die "SHA256 mismatch for $tarball (want $sha)"
    log "verified $file (sha256 $sha)"
    criu_tarball=$tarball
}

# What a build in PREFIX is made of: its make arguments and the content of
# the patches applied. The recipe is kept beside the installed binary, so a
# change to either (a new patch, say) rebuilds once.
criu_recipe() {
    local prefix=$1 patched=$2
    printf 'make %s\n' "$(criu_make_args "$prefix" "$patched")"
    if ((patched)); then
        local p
        for p in "$patch_dir"/*.patch; do
            printf 'patch %s %s\n' "$(basename "$p")" "$(sha256sum <"$p" | cut -d' ' -f1)"
        done
    fi
}

criu_make_args() {
    # NO_GNUTLS: no TLS page-server needed, one build dep less.
    # RUNDIR: where CRIU caches its kernel feature probe (criu.kdat). CRIU
    # keeps the cache only on a tmpfs, and /run is not one on every host;
    # vpnhop makes this directory a tmpfs where needed (docs/criu.md). The
    # stock build keeps CRIU's default (/run).
    local prefix=$1 patched=$2
    local args=(NO_GNUTLS=1 PYTHON=/usr/bin/python3 PREFIX="$prefix")
    ((patched)) && args+=(RUNDIR="$criu_rundir")
    printf '%s\n' "${args[*]}"
}

build_criu() {
    # build_criu PREFIX PATCHED: builds and installs CRIU into PREFIX, with
    # vpnhop's patches and RUNDIR when PATCHED is 1.
    local prefix=$1 patched=$2
    fetch_criu_source
    local tarball=$criu_tarball
    local ver=${tarball##*/criu_}
    ver=${ver%.orig.tar.xz}

    local src=$build_dir/criu-$ver
    rm -rf "$src"
    tar -C "$build_dir" -xJf "$tarball"
    [[ -d $src ]] || die "unexpected tarball layout: $src missing"

    # The patches are written against one CRIU version (docs/criu.md). If sid
    # has moved on and one no longer applies, none is applied: CRIU without
    # them works, only slower, and a half-patched CRIU would be untested.
    local unapplied=
    if ((patched)); then
        local p
        for p in "$patch_dir"/*.patch; do
            if ! patch -d "$src" -p1 -s --forward --batch --dry-run <"$p" >/dev/null; then
                unapplied=$(basename "$p")
                break
            fi
            patch -d "$src" -p1 -s --forward --batch <"$p" || die "patch $p does not apply to criu $ver"
        done
        if [[ -n $unapplied ]]; then
            log "WARNING: $unapplied does not apply to criu $ver: building criu without" \
                "vpnhop's patches (checkpoints and restores keep the clients waiting longer;" \
                "scripts/criu-patches needs updating)"
            rm -rf "$src"
            tar -C "$build_dir" -xJf "$tarball"
        else
            log "applied $(find "$patch_dir" -name '*.patch' | wc -l) patches from $patch_dir"
        fi
    fi

    local make_args
    read -r -a make_args <<<"$(criu_make_args "$prefix" "$patched")"
    log "building criu $ver into $prefix (takes a couple of minutes; log: $build_dir/build.log)"
    if ! make -C "$src" -j"$(nproc)" "${make_args[@]}" criu >"$build_dir/build.log" 2>&1; then
        tail -n 30 "$build_dir/build.log" >&2
        die "criu build failed, see $build_dir/build.log"
    fi
    # install-criu installs the binary (+ criu-ns, uapi headers) only: no
    # man pages (asciidoc), libcriu, crit or plugins.
    rm -rf "$prefix"
    make -C "$src" "${make_args[@]}" install-criu >>"$build_dir/build.log" 2>&1 \
        || die "criu install failed, see $build_dir/build.log"
    criu_recipe "$prefix" "$patched" >"$prefix/vpnhop-build"
    if [[ -n $unapplied ]]; then
        printf '# patches not applied: %s does not apply to criu %s\n' "$unapplied" "$ver" \
            >>"$prefix/vpnhop-build"
    fi
    rm -rf "$src"
}

ensure_criu() {
    # ensure_criu PREFIX PATCHED: a CRIU 4.x in PREFIX built by the current recipe.
    local prefix=$1 patched=$2 bin=$1/sbin/criu have
    have=$(criu_version "$bin")
    # Comment lines (patches that did not apply) are not part of the recipe.
    local built
    built=$(grep -v '^#' "$prefix/vpnhop-build" 2>/dev/null) || true
    if [[ $have == 4.* && $built != "$(criu_recipe "$prefix" "$patched")" ]]; then
        log "criu $have in $prefix was built by another recipe: rebuilding"
        have=
    fi
    if [[ $have == 4.* ]]; then
        log "criu $have already in $prefix"
        if grep -q '^# patches not applied' "$prefix/vpnhop-build"; then
            log "WARNING: $(sed -n 's/^# //p' "$prefix/vpnhop-build")"
        fi
        return
    fi
    build_criu "$prefix" "$patched"
    have=$(criu_version "$bin")
    [[ $have == 4.* ]] || die "$bin --version does not report 4.x (got '${have}')"
    log "installed criu $have in $prefix"
}

ensure_criu "$criu_prefix" 1
((stock)) && ensure_criu "$stock_prefix" 0
have=$(criu_version "$criu_bin")

# Always re-check: the kernel may have changed since the build.
check_out=$("$criu_bin" check 2>&1) || true
if [[ $check_out != *"Looks good."* ]]; then
    printf '%s\n' "$check_out" >&2
    die "$criu_bin check failed on kernel $(uname -r)"
fi
log "criu check: Looks good."

# -------------------------------------------------------------- bundle ----

bash "$repo/bundles/openvpn/build.sh" | sed 's/^/setup: /'

# ------------------------------------------------------------- summary ----

openvpn_ver=$(openvpn --version 2>/dev/null | awk 'NR == 1 { print $2 }') || true
runc_ver=$(runc --version 2>/dev/null | awk 'NR == 1 { print $3 }') || true
openssl_ver=$(openssl version | awk '{ print $2 }')
log "done: criu $have ($criu_bin), openvpn ${openvpn_ver:-?}, runc ${runc_ver:-?}, openssl $openssl_ver, kernel $(uname -r)"
