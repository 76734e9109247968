//! `vpnhop checkpoint`.

use std::path::{Path, PathBuf};

use anyhow::bail;
use vpnhop::config;
use vpnhop::criu::Criu;
use vpnhop::shim::{self, CheckpointStats, Request, Response};
use vpnhop::state::Status;

use crate::ps::Format;
use crate::{absolute, Globals};

/// Arguments of `checkpoint`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write the images [default: /var/lib/vpnhop/checkpoints/NAME].
    #[arg(long)]
    image_dir: Option<PathBuf>,
    /// Keep the container running after the dump.
    #[arg(long)]
    leave_running: bool,
    /// Print freeze time, dump time and image size.
    #[arg(long)]
    print_stats: bool,
    /// Format of the statistics.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    /// The container.
    name: String,
}

/// Dumps the container through its shim; prints the image directory.
pub fn run(g: &Globals, args: Args) -> anyhow::Result<()> {
    let name = &args.name;
    let _lock = g.store.lock(name)?;

    // Fail before anything happens if CRIU is unusable.
    Criu::locate(&g.criu)?;
    let image_dir = match &args.image_dir {
        Some(dir) => absolute(dir),
        None => PathBuf::from(config::DEFAULT_IMAGE_ROOT).join(name),
    };

    let stats = checkpoint_one(g, name, &image_dir, args.leave_running)?;
    println!("{}", image_dir.display());
    if args.print_stats {
        print_stats(&stats, args.format)?;
    }
    Ok(())
}

/// Asks the shim of `name` to dump it into `image_dir`. The caller holds the container's lock.
pub fn checkpoint_one(
    g: &Globals,
    name: &str,
    image_dir: &Path,
    leave_running: bool,
) -> anyhow::Result<CheckpointStats> {
    let state = g.store.load(name)?;
    if state.observed_status() != Status::Running || !state.shim_alive() {
        bail!("container `{name}` is not running");
    }

    let request = Request::Checkpoint {
        criu: g.criu.clone(),
        image_dir: image_dir.to_path_buf(),
        leave_running,
    };
    let stats = match shim::call(name, &g.store.socket(name), &request)? {
        Response::Checkpointed { stats, .. } => stats,
        Response::Error { message } => bail!("{message}"),
        other => bail!("unexpected answer from the shim of container `{name}`: {other:?}"),
    };
    tracing::info!(container = %name, image_dir = %image_dir.display(), "checkpointed");
    Ok(stats)
}

fn print_stats(stats: &CheckpointStats, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string(stats)?),
        Format::Table => {
            let frozen = stats
                .frozen_ms
                .map(|ms| format!("{ms:.1}"))
                .unwrap_or("-".into());
            println!("dump_ms           {:>10.1}", stats.dump_ms);
            if let Some(p) = stats.criu {
                println!("  freezing_ms     {:>10.1}", p.freezing_ms);
            }
            println!("  frozen_ms       {frozen:>10}");
            if let Some(p) = stats.criu {
                println!("    memdump_ms    {:>10.1}", p.memdump_ms);
                println!("    memwrite_ms   {:>10.1}", p.memwrite_ms);
            }
            println!("seal_ms           {:>10.1}", stats.seal_ms);
            println!("total_ms          {:>10.1}", stats.total_ms);
            println!("image_bytes       {:>10}", stats.image_bytes);
        }
    }
    Ok(())
}
