//! `vpnhop run`.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use chrono::Utc;
use vpnhop::bundle::Bundle;
use vpnhop::config;
use vpnhop::name;
use vpnhop::network::{self, Ipv4Cidr, PortMapping, Wiring};
use vpnhop::shim::Ready;
use vpnhop::state::{ContainerState, Status};

use crate::{absolute, spawn, Globals};

/// Arguments of `run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Return once the container runs instead of following its output.
    #[arg(short, long)]
    detach: bool,
    /// Container name [default: generated].
    #[arg(long)]
    name: Option<String>,
    /// Publish a port: [HOSTIP:]HOSTPORT:CTRPORT[/udp|/tcp] [default: the bundle's].
    #[arg(short, long = "publish", value_name = "PORT")]
    publish: Vec<PortMapping>,
    /// Bridge to attach the container to (an interface name: at most 15 characters).
    #[arg(long, default_value = config::DEFAULT_BRIDGE, value_parser = parse_ifname)]
    bridge: String,
    /// Subnet of the bridge (used when the bridge is created).
    #[arg(long, default_value = config::DEFAULT_SUBNET)]
    subnet: Ipv4Cidr,
    /// The OCI bundle.
    bundle: PathBuf,
}

fn parse_ifname(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 15
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(s.to_string())
    } else {
        Err("an interface name has 1 to 15 characters from [a-zA-Z0-9_.-]".to_string())
    }
}

/// Creates and starts the container; prints its name.
pub fn run(g: &Globals, args: Args) -> anyhow::Result<ExitCode> {
    let bundle = Bundle::load(&absolute(&args.bundle))?;
    vpnhop::container::check_cgroups()?;
    let ports = if args.publish.is_empty() {
        bundle.default_ports()?
    } else {
        args.publish
    };

    let id = name::new_id()?;
    let name = match args.name {
        Some(n) => {
            name::validate(&n)?;
            n
        }
        None => name::generated(&id),
    };

    let state = {
        let _lock = g.store.lock_root()?;
        if g.store.dir(&name).exists() {
            return Err(vpnhop::state::StateError::AlreadyExists(name).into());
        }
        let others = g.store.list()?;
        let wiring = plan_wiring(&others, &id, &args.bridge, args.subnet, ports)?;
        let state = ContainerState {
            name: name.clone(),
            id,
            status: Status::Creating,
            bundle: bundle.path.clone(),
            created: Utc::now(),
            started: None,
            finished: None,
            pid: None,
            pid_start: None,
            shim_pid: None,
            shim_start: None,
            exit_code: None,
            network: wiring,
            restored_from: None,
            checkpoint: None,
        };
        g.store.create(&state)?;
        state
    };

    let (ready, mut shim) = match spawn::start_shim(g, &name, &["run".as_ref()]) {
        Ok(started) => started,
        Err(err) => {
            return Err(match g.store.keep_failed(&name) {
                Ok(kept) => err.context(format!("logs kept in `{}`", kept.display())),
                Err(_) => err,
            });
        }
    };
    if let Ready::Failed { message } = ready {
        match g.store.keep_failed(&name) {
            Ok(kept) => bail!("{message}; logs kept in `{}`", kept.display()),
            Err(_) => bail!("{message}"),
        }
    }

    println!("{name}");
    tracing::info!(container = %name, "running");
    if args.detach {
        return Ok(ExitCode::SUCCESS);
    }

    crate::logs::follow(g, &name, true)?;
    let _ = shim.wait();
    let code = g.store.load(&state.name)?.exit_code.unwrap_or(1);
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// Plans the wiring of a new container beside `others`: their addresses are taken, their
/// published ports may not be published again, and a bridge keeps the subnet it was made with.
pub fn plan_wiring(
    others: &[ContainerState],
    id: &str,
    bridge: &str,
    subnet: Ipv4Cidr,
    ports: Vec<PortMapping>,
) -> anyhow::Result<Wiring> {
    let used: Vec<Ipv4Addr> = others
        .iter()
        .filter(|s| s.network.bridge == bridge)
        .map(|s| s.network.address)
        .collect();
    let wiring = Wiring::plan(id, bridge, subnet, &used, ports)?;

    network::check_conflicts(
        &wiring,
        others.iter().map(|s| (s.name.as_str(), &s.network)),
    )?;
    Ok(wiring)
}
