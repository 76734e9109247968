#!/usr/bin/env bash
# Assemble the OpenVPN bundle rootfs and the demo PKI from the host's
# installed Debian packages (no network access needed).
#
#   bundles/openvpn/build.sh [--force-pki]
#
# Outputs (all git-ignored):
#   rootfs/      minimal root filesystem, mounted read-only by the runtime
#   pki/         demo CA, server and client certificates, tls-crypt key
#   client.ovpn  ready client profile; add `--remote HOST PORT` when using it
#
# Idempotent: the PKI is kept unless --force-pki is given or a file is
# missing, and the rootfs is only rebuilt when a hash of its inputs changes.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
self="$here/$(basename "${BASH_SOURCE[0]}")"
rootfs="$here/rootfs"
pki="$here/pki"
stamp="$here/.rootfs.inputs"
openvpn_bin=/usr/sbin/openvpn
ca_bundle=/etc/ssl/certs/ca-certificates.crt
multiarch=x86_64-linux-gnu

log() { printf 'build: %s\n' "$*"; }
die() { printf 'build: ERROR: %s\n' "$*" >&2; exit 1; }

force_pki=0
for arg in "$@"; do
    case "$arg" in
        --force-pki) force_pki=1 ;;
        -h | --help) sed -n '2,13p' "$self"; exit 0 ;;
        *) die "unknown argument: $arg" ;;
    esac
done

# The rootfs must be owned by root, so only root can build it.
[[ $EUID -eq 0 ]] || die "must run as root"
for tool in openssl ldd sha256sum "$openvpn_bin"; do
    command -v "$tool" >/dev/null || die "$tool not found (run scripts/setup.sh)"
done
[[ -f $ca_bundle ]] || die "$ca_bundle missing (install ca-certificates)"

# ---------------------------------------------------------------- PKI ----

pki_files=(ca.key ca.crt server.key server.crt client.key client.crt tls-crypt.key)

pki_complete() {
    local f
    for f in "${pki_files[@]}"; do
        [[ -s $pki/$f ]] || return 1
    done
}

# Sign a CSR with the CA. $1 = name, $2 = extendedKeyUsage.
issue_cert() {
    local name=$1 eku=$2 ext
    ext=$(mktemp)
    # An explicit extension file keeps the result independent of the
    # host's openssl.cnf. keyUsage must be present for remote-cert-tls.
    cat >"$ext" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyAgreement
extendedKeyUsage = $eku
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
        -out "$pki/$name.key" 2>/dev/null
    openssl req -new -key "$pki/$name.key" -subj "/CN=vpnhop-$name" \
        -out "$pki/$name.csr"
    # Leaf certificates end a little before the CA does.
    openssl x509 -req -in "$pki/$name.csr" -sha256 -days 3640 \
        -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
        -CAserial "$pki/ca.srl" -CAcreateserial \
        -extfile "$ext" -out "$pki/$name.crt" 2>/dev/null
    rm -f "$ext" "$pki/$name.csr"
}

make_pki() {
    log "generating demo PKI in $pki"
    rm -rf "$pki"
    # Private keys must never be readable by others: 0700 dir, 0600 files.
    (
        umask 077
        mkdir -p "$pki"
        local cacnf
        cacnf=$(mktemp)
        cat >"$cacnf" <<'EOF'
[req]
distinguished_name = dn
x509_extensions = v3_ca
prompt = no
[dn]
CN = vpnhop-ca
[v3_ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
            -out "$pki/ca.key" 2>/dev/null
        openssl req -x509 -new -config "$cacnf" -key "$pki/ca.key" \
            -sha256 -days 3650 -out "$pki/ca.crt"
        rm -f "$cacnf"
        issue_cert server serverAuth
        issue_cert client clientAuth
        "$openvpn_bin" --genkey tls-crypt "$pki/tls-crypt.key" >/dev/null
    )
    chmod 0644 "$pki"/*.crt
    openssl verify -CAfile "$pki/ca.crt" "$pki/server.crt" "$pki/client.crt" >/dev/null \
        || die "freshly generated certificates do not verify"
}

if [[ $force_pki -eq 1 ]] || ! pki_complete; then
    make_pki
else
    log "keeping existing PKI (use --force-pki to regenerate)"
fi
chmod 0700 "$pki"

# --------------------------------------------------------- client.ovpn ----

write_client_profile() {
    local out="$here/client.ovpn" tmp
    tmp=$(mktemp "$here/.client.ovpn.XXXXXX")
    chmod 0600 "$tmp"
    {
        cat <<'EOF'
# vpnhop demo client profile. There is no `remote` line on purpose:
#   openvpn --config client.ovpn --remote HOST 1194
client
dev tun
proto udp
nobind
# The server must present a serverAuth certificate named vpnhop-server.
remote-cert-tls server
verify-x509-name vpnhop-server name
# Userspace data channel, like the server (see server.conf).
disable-dco
persist-tun
persist-key
verb 3
EOF
        printf '<ca>\n%s\n</ca>\n' "$(cat "$pki/ca.crt")"
        printf '<cert>\n%s\n</cert>\n' "$(openssl x509 -in "$pki/client.crt")"
        printf '<key>\n%s\n</key>\n' "$(cat "$pki/client.key")"
        printf '<tls-crypt>\n%s\n</tls-crypt>\n' "$(cat "$pki/tls-crypt.key")"
    } >"$tmp"
    # Replace only on change so the file's mtime means something.
    if [[ -f $out ]] && cmp -s "$tmp" "$out"; then
        rm -f "$tmp"
    else
        mv -f "$tmp" "$out"
        log "wrote $out"
    fi
    chmod 0600 "$out"
}

write_client_profile

# ------------------------------------------------------------- rootfs ----

# Shared libraries openvpn links against, resolved by the host's loader.
# Prints one path per line as ldd reports it; includes the loader.
openvpn_libs() {
    ldd "$openvpn_bin" | awk '
        $2 == "=>" && $3 ~ /^\// { print $3; next }
        $1 ~ /^\// { print $1 }'
}

mapfile -t libs < <(openvpn_libs | sort -u)
[[ ${#libs[@]} -gt 0 ]] || die "ldd found no libraries for $openvpn_bin"

# Everything that ends up in the rootfs, plus this script (it holds the
# generated /etc files). A changed hash means the rootfs is stale.
inputs=(
    "$self" "$openvpn_bin" "$ca_bundle" "$here/server.conf"
    "$pki/ca.crt" "$pki/server.crt" "$pki/server.key" "$pki/tls-crypt.key"
    "${libs[@]}"
)
want_hash=$( (for f in "${inputs[@]}"; do
    printf '%s %s\n' "$f" "$(sha256sum <"$f" | cut -d' ' -f1)"
done) | sha256sum | cut -d' ' -f1)

if [[ -d $rootfs && -f $stamp && $(<"$stamp") == "$want_hash" ]]; then
    log "rootfs up to date"
    exit 0
fi

log "assembling rootfs"
new=$(mktemp -d "$here/.rootfs.new.XXXXXX")
trap 'rm -rf "$new"' EXIT

# Merged-/usr layout, as on Debian 12: the top-level dirs are symlinks.
install -d -m 0755 "$new/usr/bin" "$new/usr/sbin" "$new/usr/lib/$multiarch" "$new/usr/lib64"
ln -s usr/bin "$new/bin"
ln -s usr/sbin "$new/sbin"
ln -s usr/lib "$new/lib"
ln -s usr/lib64 "$new/lib64"

# Mount points (the rootfs itself is read-only at run time).
install -d -m 0755 "$new/proc" "$new/sys" "$new/dev" "$new/run" \
    "$new/etc/openvpn/pki" "$new/etc/ssl/certs" "$new/var/run"
install -d -m 1777 "$new/tmp"

install -m 0755 "$openvpn_bin" "$new/usr/sbin/openvpn"

# Copy each library under its soname, into /usr/lib/<multiarch>
# whether ldd reported /lib/... or /usr/lib/... (same dir on merged-/usr).
for lib in "${libs[@]}"; do
    name=$(basename "$lib")
    install -m 0644 "$(readlink -f "$lib")" "$new/usr/lib/$multiarch/$name"
done
# The ELF interpreter path baked into binaries is /lib64/ld-linux-x86-64.so.2.
loader=ld-linux-x86-64.so.2
[[ -f $new/usr/lib/$multiarch/$loader ]] || die "dynamic loader not found by ldd"
chmod 0755 "$new/usr/lib/$multiarch/$loader"
ln -s "../lib/$multiarch/$loader" "$new/usr/lib64/$loader"

install -m 0644 "$ca_bundle" "$new/etc/ssl/certs/ca-certificates.crt"

# Minimal /etc: user and group databases (OpenVPN runs as root in its
# namespaces, see server.conf) and resolver
# lookups. glibc >= 2.34 has nss_files built in, so no libnss_* needed.
printf '%s\n' 'root:x:0:0:root:/root:/usr/sbin/nologin' \
    'nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin' >"$new/etc/passwd"
printf '%s\n' 'root:x:0:' 'nogroup:x:65534:' >"$new/etc/group"
printf '%s\n' 'passwd: files' 'group: files' 'shadow: files' \
    'hosts: files dns' >"$new/etc/nsswitch.conf"
printf '%s\n' '127.0.0.1 localhost' '::1 localhost ip6-localhost ip6-loopback' \
    >"$new/etc/hosts"
# Empty on purpose; the runtime may bind-mount a real one.
: >"$new/etc/resolv.conf"
chmod 0644 "$new/etc/passwd" "$new/etc/group" "$new/etc/nsswitch.conf" \
    "$new/etc/hosts" "$new/etc/resolv.conf"

install -m 0644 "$here/server.conf" "$new/etc/openvpn/server.conf"
install -m 0644 "$pki/ca.crt" "$pki/server.crt" "$new/etc/openvpn/pki/"
install -m 0600 "$pki/server.key" "$pki/tls-crypt.key" "$new/etc/openvpn/pki/"

chown -hR 0:0 "$new"
chmod 0755 "$new"

# Sanity check: the binary and its libraries must work inside the new tree.
version=$(chroot "$new" /usr/sbin/openvpn --version 2>&1 | head -n1) || true
[[ $version == OpenVPN\ * ]] \
    || die "openvpn does not run inside the assembled rootfs: $version"

# Swap in the new tree; the old one is removed only after the rename.
if [[ -e $rootfs ]]; then
    old=$(mktemp -d "$here/.rootfs.old.XXXXXX")
    mv "$rootfs" "$old/rootfs"
    mv "$new" "$rootfs"
    rm -rf "$old"
else
    mv "$new" "$rootfs"
fi
trap - EXIT
printf '%s\n' "$want_hash" >"$stamp"
log "rootfs ready: $rootfs"
