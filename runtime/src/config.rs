//! Default locations and the environment variables that override them.

use std::env;
use std::path::PathBuf;

/// Runtime state root, as runc's `--root`: volatile, one directory per container.
pub const DEFAULT_ROOT: &str = "/run/vpnhop";

/// Where checkpoints go by default: persistent disk, never under the state root.
pub const DEFAULT_IMAGE_ROOT: &str = "/var/lib/vpnhop/checkpoints";

/// The CRIU 4.x that `scripts/setup.sh` builds from Debian's source package.
pub const DEFAULT_CRIU: &str = "/opt/vpnhop/criu/sbin/criu";

/// Where vpnhop links the helper programs CRIU may run when it must not find the iptables
/// tools (see `criu::Iptables`). Not under /run: CRIU mounts a tmpfs of its own over /run while
/// it restores a network namespace, and would not find them there.
pub const CRIU_HELPERS: &str = "/var/lib/vpnhop/criu-helpers";

/// Bridge that container veths are attached to unless `--bridge` says otherwise.
pub const DEFAULT_BRIDGE: &str = "vpnhop0";

/// Subnet of the default bridge; the bridge takes the first host address. (Podman's default
/// network is 10.88.0.0/16; this one stays clear of it.)
pub const DEFAULT_SUBNET: &str = "10.66.0.0/24";

/// Path of the `criu` binary: `$VPNHOP_CRIU`, else [`DEFAULT_CRIU`].
pub fn criu_path() -> PathBuf {
    env::var_os("VPNHOP_CRIU")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CRIU))
}

/// Path of the shim binary: `$VPNHOP_SHIM`, else `vpnhop-shim` next to the running executable.
pub fn shim_path() -> PathBuf {
    if let Some(path) = env::var_os("VPNHOP_SHIM") {
        return PathBuf::from(path);
    }

    env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("vpnhop-shim")))
        .unwrap_or_else(|| PathBuf::from("vpnhop-shim"))
}
