//! Stale connection-tracking entries of the published UDP ports.
//!
//! Netfilter decides how to NAT a flow once, on its first packet, and keeps the decision in the
//! flow's conntrack entry. A client that sends to a published port before the container's table
//! is in place (the host has booted and tracks connections for a firewall of its own; or a
//! packet slips into the moment between nftables registering the table's hooks and committing
//! its rules) gets an entry that says "no NAT". For UDP each packet refreshes that entry, so it
//! never expires while the client keeps talking: its packets go to the host's own port and come
//! back as "port unreachable", and the restored server never hears from it. Once the table is
//! in place, the entries of the published UDP ports are therefore deleted, and the next packet
//! of each flow is NATed by the new rules. Ref: Docker clears UDP conntrack entries the same way
//! when it publishes a port.
//!
//! The deletion is done by `conntrack` from conntrack-tools, the maintained user interface to
//! ctnetlink, one process per port, started without waiting so that the restore need not wait
//! for the walk of the conntrack table.

use std::io;
use std::process::{Child, Command, Stdio};

use super::{Protocol, Wiring};

/// The `conntrack` binary, looked up on `PATH`.
pub const CONNTRACK: &str = "conntrack";

/// Deletions of stale flows under way; [`Flush::wait`] collects them, and so does dropping it
/// (on an early return), so that no `conntrack` process is left unreaped.
#[derive(Debug)]
pub struct Flush {
    table: String,
    running: Vec<(String, Child)>,
}

/// Starts deleting the conntrack entries of every published UDP port of `wiring` (equivalent to
/// `conntrack -D -p udp --orig-port-dst HOSTPORT [--orig-dst HOSTIP]` for each).
///
/// Nothing here is fatal: a host without conntrack-tools keeps any stale flow, which is logged.
pub fn flush_stale_flows(wiring: &Wiring) -> Flush {
    let mut running = Vec::new();

    for port in wiring.ports.iter().filter(|p| p.protocol == Protocol::Udp) {
        let args = delete_args(port.host_port, port.host_ip.map(|ip| ip.to_string()));
        tracing::debug!("running {CONNTRACK} {}", args.join(" "));
        match Command::new(CONNTRACK)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(child) => running.push((port.to_string(), child)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                tracing::warn!(
                    port = %port,
                    "`{CONNTRACK}` not found (install conntrack): stale UDP flows of the port are \
                     kept"
                );
            }
            Err(err) => tracing::warn!(port = %port, "running `{CONNTRACK}`: {err}"),
        }
    }

    Flush {
        table: wiring.nft_table.clone(),
        running,
    }
}

impl Flush {
    /// Waits for the deletions and logs any that failed.
    pub fn wait(mut self) {
        self.collect();
    }

    fn collect(&mut self) {
        for (port, child) in self.running.drain(..) {
            let output = match child.wait_with_output() {
                Ok(output) => output,
                Err(err) => {
                    tracing::warn!(table = %self.table, %port, "waiting for `{CONNTRACK}`: {err}");
                    continue;
                }
            };
            let stderr = String::from_utf8_lossy(&output.stderr);
            if !deleted_or_none(output.status.code(), &stderr) {
                tracing::warn!(
                    table = %self.table,
                    %port,
                    "`{CONNTRACK}` failed ({}): {}",
                    output.status,
                    stderr.trim()
                );
            }
        }
    }
}

impl Drop for Flush {
    fn drop(&mut self) {
        self.collect();
    }
}

fn delete_args(host_port: u16, host_ip: Option<String>) -> Vec<String> {
    let mut args = vec![
        "-D".to_string(),
        "-p".to_string(),
        "udp".to_string(),
        "--orig-port-dst".to_string(),
        host_port.to_string(),
    ];
    if let Some(ip) = host_ip {
        args.push("--orig-dst".to_string());
        args.push(ip);
    }
    args
}

/// `conntrack -D` exits 0 when it deleted entries and 1 when there were none to delete, which is
/// the usual case and no failure.
fn deleted_or_none(code: Option<i32>, stderr: &str) -> bool {
    match code {
        Some(0) => true,
        Some(1) => stderr.contains("0 flow entries"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletion_names_the_port_and_the_host_address() {
        assert_eq!(
            delete_args(1194, None).join(" "),
            "-D -p udp --orig-port-dst 1194"
        );
        assert_eq!(
            delete_args(1194, Some("203.0.113.1".into())).join(" "),
            "-D -p udp --orig-port-dst 1194 --orig-dst 203.0.113.1"
        );
    }

    #[test]
    fn nothing_to_delete_is_no_failure() {
        let none = "conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted.";
        assert!(deleted_or_none(Some(0), ""));
        assert!(deleted_or_none(Some(1), none));
        assert!(!deleted_or_none(
            Some(1),
            "conntrack: Operation not permitted"
        ));
        assert!(!deleted_or_none(None, ""));
    }
}
