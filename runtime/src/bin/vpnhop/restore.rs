//! `vpnhop restore`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::bail;
use vpnhop::config;
use vpnhop::container;
use vpnhop::criu::Criu;
use vpnhop::image::ImageDir;
use vpnhop::kexec::RestorePlan;
use vpnhop::name;
use vpnhop::network;
use vpnhop::shim::{Ready, RestoreStats};
use vpnhop::state::Store;
use vpnhop::state::{ContainerState, Status};

use crate::ps::Format;
use crate::{absolute, spawn, Globals};

/// Arguments of `restore`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Name of the restored container [default: the name at checkpoint time].
    #[arg(long, conflicts_with = "all")]
    name: Option<String>,
    /// Restore everything the pending restore plan of `vpnhop kexec` lists, then mark the plan
    /// done (what the boot-time unit runs).
    #[arg(long)]
    all: bool,
    /// Where `vpnhop kexec` left its images and plan (with --all).
    #[arg(long, requires = "all", default_value = config::DEFAULT_IMAGE_ROOT)]
    image_root: PathBuf,
    /// Print host rebuild time, CRIU restore time and image size.
    #[arg(long)]
    print_stats: bool,
    /// Format of the statistics.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    /// The image directory written by `checkpoint`.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    image_dir: Option<PathBuf>,
}

/// Restores the container (or, with --all, the plan's containers); prints each name.
pub fn run(g: &Globals, args: Args) -> anyhow::Result<()> {
    if args.all {
        return restore_all(g, &absolute(&args.image_root));
    }

    let dir = absolute(&args.image_dir.unwrap_or_default());
    let (name, stats) = restore_one(g, &dir, args.name)?;
    println!("{name}");
    if args.print_stats {
        print_stats(&stats, args.format)?;
    }
    Ok(())
}

/// Follows the pending restore plan in `image_root`: each container is restored into the state
/// root it ran under. The plan is marked done even if some fail, so that a later ordinary boot
/// does not bring back stale images; those are named, and can be restored by hand.
fn restore_all(g: &Globals, image_root: &Path) -> anyhow::Result<()> {
    let Some(plan) = RestorePlan::pending(image_root)? else {
        println!("no pending restore plan in {}", image_root.display());
        return Ok(());
    };
    tracing::info!(
        entries = plan.entries.len(),
        from = %plan.from_kernel,
        to = %plan.to_kernel,
        "following restore plan"
    );

    let mut failed = Vec::new();
    for entry in &plan.entries {
        let globals = Globals {
            store: Store::new(&entry.root),
            criu: g.criu.clone(),
            log_format: g.log_format,
            log_level: g.log_level,
        };
        match restore_one(&globals, &entry.image_dir, Some(entry.name.clone())) {
            Ok((name, stats)) => {
                tracing::info!(container = %name, restore_ms = stats.total_ms, "restored");
                println!("{name}");
            }
            Err(err) => {
                eprintln!("vpnhop: restoring `{}`: {err:#}", entry.name);
                failed.push(entry.name.clone());
            }
        }
    }

    RestorePlan::mark_done(image_root)?;
    if !failed.is_empty() {
        bail!(
            "{} of {} containers not restored: {}",
            failed.len(),
            plan.entries.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

/// Restores the container of image `dir` under a new shim, named `name` or as at checkpoint.
pub fn restore_one(
    g: &Globals,
    dir: &Path,
    name: Option<String>,
) -> anyhow::Result<(String, RestoreStats)> {
    // `criu --version` runs while the image is verified: both are in the clients' wait.
    let criu = Criu::start_locate(&g.criu)?;
    container::check_cgroups()?;
    let dir = dir.to_path_buf();
    let image = ImageDir::new(&dir);
    let started = Instant::now();
    let meta = image.verify()?;
    let verify_ms = ms_since(started);
    let criu = criu.finish()?;

    // The same container must never run twice: not beside the process it was dumped from, and
    // not beside an earlier restore of the same image.
    if meta.source.is_alive() {
        bail!(
            "the container dumped into `{}` still runs (pid {}); a second copy is refused",
            dir.display(),
            meta.source.pid
        );
    }
    if let Some(marker) = image.restored_marker().filter(|m| m.process.is_alive()) {
        bail!(
            "image `{}` is already restored as container `{}` (pid {}); a second restore is \
             refused",
            dir.display(),
            marker.name,
            marker.process.pid
        );
    }

    let name = name.unwrap_or_else(|| meta.name.clone());
    name::validate(&name)?;

    {
        let _lock = g.store.lock_root()?;
        let carried_log = take_over_checkpointed(g, &name, &dir)?;
        let others = g.store.list()?;
        if let Some(other) = others.iter().find(|s| s.id == meta.id) {
            // Same id, same veth and netfilter table names: `rm` of one would tear down the other.
            bail!(
                "container `{}` already holds the id of image `{}`; remove it first",
                other.name,
                dir.display()
            );
        }
        let named = others.iter().map(|s| (s.name.as_str(), &s.network));
        network::check_conflicts(&meta.wiring, named)?;
        let state = ContainerState {
            name: name.clone(),
            id: meta.id.clone(),
            status: Status::Creating,
            bundle: meta.bundle.clone(),
            created: meta.created,
            started: None,
            finished: None,
            pid: None,
            pid_start: None,
            shim_pid: None,
            shim_start: None,
            exit_code: None,
            network: meta.wiring.clone(),
            restored_from: None,
            checkpoint: Some(dir.clone()),
        };
        g.store.create(&state)?;
        if let Some(log) = carried_log {
            let _ = std::fs::rename(log, g.store.container_log(&name));
        }
    }

    let mode = [
        "restore".as_ref(),
        "--image-dir".as_ref(),
        dir.as_os_str(),
        "--criu".as_ref(),
        criu.path().as_os_str(),
    ];
    let spawned = Instant::now();
    let ready = match spawn::start_shim(g, &name, &mode) {
        Ok((ready, _child)) => ready,
        Err(err) => {
            return Err(match g.store.keep_failed(&name) {
                Ok(kept) => err.context(format!("logs kept in `{}`", kept.display())),
                Err(_) => err,
            });
        }
    };

    let shim_ms = ms_since(spawned);
    let stats = match ready {
        Ready::Started { restore, .. } => RestoreStats {
            verify_ms,
            shim_ms,
            ..restore.unwrap_or_default()
        },
        Ready::Failed { message } => match g.store.keep_failed(&name) {
            Ok(kept) => bail!("{message}; logs kept in `{}`", kept.display()),
            Err(_) => bail!("{message}"),
        },
    };

    tracing::info!(container = %name, image_dir = %dir.display(), "restored");
    Ok((name, stats))
}

/// A container of the same name that was checkpointed into this very image and no longer runs
/// is replaced by the restore (the usual checkpoint-then-restore on one host); its container log
/// is moved aside and returned, to be carried over. Any other container of that name makes the
/// restore fail: pass `--name`.
fn take_over_checkpointed(
    g: &Globals,
    name: &str,
    dir: &std::path::Path,
) -> anyhow::Result<Option<PathBuf>> {
    let existing = match g.store.load(name) {
        Ok(state) => state,
        Err(vpnhop::state::StateError::NotFound(_)) => return Ok(None),
        Err(err) => return Err(err.into()),
    };

    let checkpointed_here = existing.checkpoint.as_deref() == Some(dir);
    if checkpointed_here && existing.status == Status::Checkpointed {
        // Its shim may still be removing the old host side.
        crate::logs::wait_shim_gone(g, name);
    }
    let existing = g.store.load(name)?;
    let gone = existing.observed_status() != Status::Running && !existing.shim_alive();
    if !(checkpointed_here && gone) {
        bail!("container name `{name}` is already in use; pass --name to restore under another");
    }

    // The container's earlier output stays with it.
    container::cleanup(&g.store, &existing)?;
    let log = g.store.container_log(name);
    let carried = g.store.root().join(format!(".{name}.container.log"));
    let kept = std::fs::rename(&log, &carried).is_ok();
    g.store.remove(name)?;
    Ok(kept.then_some(carried))
}

fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}

fn print_stats(stats: &RestoreStats, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string(stats)?),
        Format::Table => {
            println!("verify_ms         {:>10.1}", stats.verify_ms);
            println!("shim_ms           {:>10.1}", stats.shim_ms);
            println!("  wiring_ms       {:>10.1}", stats.wiring_ms);
            println!("  cgroups_ms      {:>10.1}", stats.cgroups_ms);
            println!("  restore_ms      {:>10.1}", stats.restore_ms);
            if let Some(p) = stats.criu {
                println!("    forking_ms    {:>10.1}", p.forking_ms);
                println!("    criu_tasks_ms {:>10.1}", p.restore_ms);
            }
            println!("  total_ms        {:>10.1}", stats.total_ms);
            println!("image_bytes       {:>10}", stats.image_bytes);
        }
    }
    Ok(())
}
