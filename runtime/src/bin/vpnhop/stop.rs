//! `vpnhop stop`.

use anyhow::bail;
use vpnhop::shim::{self, Request, Response};
use vpnhop::state::Status;

use crate::Globals;

/// Arguments of `stop`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds to wait after SIGTERM before SIGKILL.
    #[arg(short = 't', long = "time", default_value_t = 10)]
    time: u64,
    /// The container.
    name: String,
}

/// Stops the container; prints its name.
pub fn run(g: &Globals, args: Args) -> anyhow::Result<()> {
    let _lock = g.store.lock(&args.name)?;
    stop(g, &args.name, args.time)?;
    println!("{}", args.name);
    Ok(())
}

/// Stops `name` if it runs and waits until its shim has recorded the exit.
pub fn stop(g: &Globals, name: &str, grace_secs: u64) -> anyhow::Result<()> {
    let state = g.store.load(name)?;
    if state.observed_status() != Status::Running || !state.shim_alive() {
        return Ok(());
    }

    let request = Request::Stop {
        timeout_secs: grace_secs,
    };
    match shim::call(name, &g.store.socket(name), &request)? {
        Response::Exited { exit_code } => {
            tracing::info!(container = %name, exit_code, "stopped");
        }
        Response::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer from the shim of container `{name}`: {other:?}"),
    }

    crate::logs::wait_shim_gone(g, name);
    Ok(())
}
