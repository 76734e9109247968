//! vpnhop: a container runtime that runs OpenVPN in a sandbox of its own and carries it across a
//! kernel reboot with CRIU.
//!
//! The library holds everything the `vpnhop` command and the `vpnhop-shim` monitor share:
//! the container state store, the bundle and spec handling, the host-side network wiring, the
//! CRIU invocation and the checkpoint image layout. Container creation is handed to youki's
//! `libcontainer`; links, addresses and routes to `rtnetlink`; port publishing to nftables;
//! dumping and restoring process trees to the `criu` binary.

pub mod bundle;
pub mod config;
pub mod container;
pub mod criu;
pub mod fsutil;
pub mod image;
pub mod kexec;
pub mod logging;
pub mod name;
pub mod network;
pub mod proc;
pub mod shim;
pub mod state;

/// An error and its sources on one line, joined by ": ", as the CLI prints errors.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
