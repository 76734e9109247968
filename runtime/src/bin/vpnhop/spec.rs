//! `vpnhop spec`.

use std::path::PathBuf;

use anyhow::Context;
use vpnhop::bundle;

/// Arguments of `spec`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Write BUNDLE/config.json instead of printing it.
    #[arg(long, value_name = "BUNDLE")]
    bundle: Option<PathBuf>,
}

/// Prints or writes the OpenVPN bundle's spec.
pub fn run(args: Args) -> anyhow::Result<()> {
    let spec = bundle::openvpn_spec().context("building the OpenVPN spec")?;

    match args.bundle {
        Some(dir) => bundle::write_spec(&dir, &spec)?,
        None => println!("{}", serde_json::to_string_pretty(&spec)?),
    }
    Ok(())
}
