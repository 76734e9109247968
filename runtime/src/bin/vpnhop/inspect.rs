//! `vpnhop inspect`.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::Serialize;
use vpnhop::network::PortMapping;
use vpnhop::state::Status;

use crate::Globals;

/// Arguments of `inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The container.
    name: String,
}

#[derive(Debug, Serialize)]
struct Inspect {
    id: String,
    name: String,
    status: Status,
    pid: Option<i32>,
    pids: Vec<i32>,
    bundle: PathBuf,
    netns: Option<String>,
    bridge: String,
    addresses: Vec<Ipv4Addr>,
    gateway: Ipv4Addr,
    host_veth: String,
    published_ports: Vec<PortMapping>,
    shim_pid: Option<i32>,
    created: DateTime<Utc>,
    started: Option<DateTime<Utc>>,
    finished: Option<DateTime<Utc>>,
    exit_code: Option<i32>,
    checkpoint: Option<PathBuf>,
    restored_from: Option<PathBuf>,
}

/// Prints the container as JSON.
pub fn run(g: &Globals, args: Args) -> anyhow::Result<()> {
    let s = g.store.load(&args.name)?;
    let status = s.observed_status();
    let running = status == Status::Running;
    let pid = s.pid.filter(|_| running);

    let out = Inspect {
        id: s.id.clone(),
        name: s.name.clone(),
        status,
        pid,
        pids: if running {
            vpnhop::container::pids(&s.name)
        } else {
            Vec::new()
        },
        bundle: s.bundle.clone(),
        netns: pid.map(|p| format!("/proc/{p}/ns/net")),
        bridge: s.network.bridge.clone(),
        addresses: vec![s.network.address],
        gateway: s.network.gateway,
        host_veth: s.network.host_veth.clone(),
        published_ports: s.network.ports.clone(),
        shim_pid: s.shim_pid.filter(|_| s.shim_alive()),
        created: s.created,
        started: s.started,
        finished: s.finished,
        exit_code: s.exit_code,
        checkpoint: s.checkpoint.clone(),
        restored_from: s.restored_from.clone(),
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
