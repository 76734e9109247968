//! `vpnhop rm`.

use anyhow::bail;
use vpnhop::container;
use vpnhop::state::Status;

use crate::Globals;

/// Arguments of `rm`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Stop the container first if it runs.
    #[arg(short, long)]
    force: bool,
    /// The containers.
    #[arg(required = true)]
    names: Vec<String>,
}

/// Removes each container and what it created on the host; prints each name.
pub fn run(g: &Globals, args: Args) -> anyhow::Result<()> {
    for name in &args.names {
        let _lock = g.store.lock(name)?;
        let state = g.store.load(name)?;

        if state.observed_status() == Status::Running {
            if !args.force {
                bail!("container `{name}` is running: stop it first or use --force");
            }
            crate::stop::stop(g, name, 0)?;
        }

        let state = g.store.load(name)?;
        container::cleanup(&g.store, &state)?;
        g.store.remove(name)?;
        tracing::info!(container = %name, "removed");
        println!("{name}");
    }
    Ok(())
}
