#!/usr/bin/env bash
# The whole test suite, as CI runs it (as root, on a fresh Debian 12 machine):
#   set-up, formatting, lints, unit tests, and the end-to-end tests, which
#   build their own network namespaces and need root, CRIU and OpenVPN.
# End-to-end tests refuse to skip here (VPNHOP_REQUIRE_PRIVILEGED=1): a test
# that cannot run fails.
set -euo pipefail

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
shellcheck scripts/*.sh bundles/openvpn/build.sh .ci/run

# The end-to-end tests drive the real binaries, the shim included.
log "build"
cargo build --workspace --locked

log "unit and end-to-end tests"
VPNHOP_REQUIRE_PRIVILEGED=1 cargo test --workspace --locked

log "all passed"
