#!/usr/bin/env bash
# The whole test suite, as CI runs it (as root, on a fresh Debian 12 machine):
#   set-up, formatting, lints, unit tests, and the end-to-end tests, which
#   build their own network namespaces and need root, CRIU and OpenVPN.
# End-to-end tests refuse to skip here (VPNHOP_REQUIRE_PRIVILEGED=1): a test
# that cannot run fails. Last, the slow one: `vpnhop kexec` in a QEMU guest
# across a real kernel change (tests/guest/kexec.sh, about 5 minutes once its
# image is cached). `--no-guest` leaves it out, for quick local runs.
set -euo pipefail

guest=1
case "${1:-}" in
    "") ;;
    --no-guest) guest=0 ;;
    *)
        echo "usage: scripts/test.sh [--no-guest]" >&2
        exit 2
        ;;
esac

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

log() { printf 'test: %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "test: must run as root (the end-to-end tests create namespaces and containers)" >&2
    exit 1
fi

log "set-up"
scripts/setup.sh

log "formatting"
cargo fmt --all --check

log "lints"
cargo clippy --workspace --all-targets --locked -- -D warnings
shellcheck -x scripts/*.sh bundles/openvpn/build.sh .ci/run tests/guest/*.sh

# The end-to-end tests drive the real binaries, the shim included.
log "build"
cargo build --workspace --locked

log "unit and end-to-end tests"
VPNHOP_REQUIRE_PRIVILEGED=1 cargo test --workspace --locked

if [ "$guest" -eq 1 ]; then
    log "kexec across a real kernel change, in a guest VM"
    tests/guest/kexec.sh
fi

log "all passed"
