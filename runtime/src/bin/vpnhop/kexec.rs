//! `vpnhop kexec`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::thread;

use anyhow::{bail, Context};
use vpnhop::config;
use vpnhop::container;
use vpnhop::criu::Criu;
use vpnhop::kexec::{self, CmdLine, Kernel, PlanEntry, RestorePlan};
use vpnhop::proc;
use vpnhop::shim::CheckpointStats;
use vpnhop::state::{ContainerState, Status};

use crate::checkpoint::checkpoint_one;
use crate::restore::restore_one;
use crate::{absolute, Globals};

/// Arguments of `kexec`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Kernel image to boot [default: the newest in /boot other than the running one].
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Its initial ramdisk [default with --kernel: none].
    #[arg(long, requires = "kernel")]
    initrd: Option<PathBuf>,
    /// Command line of the new kernel [default: the running kernel's].
    #[arg(long, conflicts_with = "reuse_cmdline")]
    append: Option<String>,
    /// Boot the new kernel with the running kernel's command line (the default).
    #[arg(long)]
    reuse_cmdline: bool,
    /// Where the checkpoints and the restore plan go (persistent disk).
    #[arg(long, default_value = config::DEFAULT_IMAGE_ROOT)]
    image_root: PathBuf,
    /// Stop after the checks and a trial checkpoint (the containers keep running) of each.
    #[arg(long)]
    dry_run: bool,
}

/// Checkpoints every running container and reboots into another kernel; a boot-time
/// `vpnhop restore --all` brings them back. Anything failing before the reboot restores what was
/// dumped and unloads the kernel.
pub fn run(g: &Globals, args: Args) -> anyhow::Result<()> {
    kexec::preflight()?;
    Criu::locate(&g.criu)?;
    container::check_cgroups()?;
    let image_root = absolute(&args.image_root);

    let running = proc::kernel_release();
    let kernel = match &args.kernel {
        Some(image) => Kernel {
            image: absolute(image),
            initrd: args.initrd.as_deref().map(absolute),
            release: image
                .file_name()
                .and_then(|n| n.to_str())
                .map(|n| n.trim_start_matches("vmlinuz-").to_string())
                .unwrap_or_default(),
        },
        None => kexec::newest_other_kernel(Path::new("/boot"), &running)?,
    };
    println!("kernel: {} (running {running})", kernel.image.display());
    let cmdline = match args.append {
        Some(line) => CmdLine::Append(line),
        None => CmdLine::Reuse,
    };

    let containers: Vec<ContainerState> = g
        .store
        .list()?
        .into_iter()
        .filter(|s| s.observed_status() == Status::Running)
        .collect();
    if let Some(orphan) = containers.iter().find(|s| !s.shim_alive()) {
        bail!(
            "container `{}` has no running shim and cannot be checkpointed",
            orphan.name
        );
    }
    let _locks = containers
        .iter()
        .map(|s| g.store.lock(&s.name))
        .collect::<Result<Vec<_>, _>>()?;
    check_space(&containers, &image_root)?;

    if args.dry_run {
        return dry_run(g, &containers, &image_root);
    }

    kexec::load(&kernel, &cmdline)?;
    tracing::info!(kernel = %kernel.release, "kernel loaded");

    let dumped = match checkpoint_all(g, &containers, &image_root) {
        Ok(dumped) => dumped,
        Err((dumped, err)) => return Err(abandon(g, &dumped, err)),
    };

    let entries: Vec<PlanEntry> = dumped
        .iter()
        .map(|(name, dir)| PlanEntry {
            name: name.clone(),
            image_dir: dir.clone(),
            root: g.store.root().to_path_buf(),
        })
        .collect();
    let plan = match RestorePlan::new(entries, &kernel.release).write(&image_root) {
        Ok(plan) => plan,
        Err(err) => return Err(abandon(g, &dumped, err.into())),
    };
    println!("restore plan written: {}", plan.display());

    println!("rebooting into {}", kernel.release);
    let _ = std::io::stdout().flush();
    if let Err(err) = kexec::reboot() {
        RestorePlan::discard(&image_root);
        return Err(abandon(g, &dumped, err.into()));
    }
    Ok(())
}

/// Refuses to start if the image root cannot hold the checkpoints: about the containers'
/// resident memory, plus room for the other images.
fn check_space(containers: &[ContainerState], image_root: &Path) -> anyhow::Result<()> {
    let need: u64 = containers
        .iter()
        .map(|s| {
            let rss: u64 = container::pids(&s.name)
                .iter()
                .filter_map(|p| proc::rss_bytes(*p))
                .sum();
            rss + rss / 2 + (16 << 20)
        })
        .sum();
    let free = kexec::free_bytes(image_root).unwrap_or(u64::MAX);
    if free < need {
        bail!(
            "image root `{}` has {} MiB free; the checkpoints need about {} MiB",
            image_root.display(),
            free >> 20,
            need >> 20
        );
    }
    Ok(())
}

/// Checkpoints every container in parallel. On failure, returns those already dumped.
#[allow(clippy::type_complexity)]
fn checkpoint_all(
    g: &Globals,
    containers: &[ContainerState],
    image_root: &Path,
) -> Result<Vec<(String, PathBuf)>, (Vec<(String, PathBuf)>, anyhow::Error)> {
    let results: Vec<(String, PathBuf, anyhow::Result<CheckpointStats>)> = thread::scope(|scope| {
        let handles: Vec<_> = containers
            .iter()
            .map(|s| {
                let dir = image_root.join(&s.name);
                scope.spawn(move || {
                    let result = checkpoint_one(g, &s.name, &dir, false);
                    (s.name.clone(), dir, result)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    (
                        String::new(),
                        PathBuf::new(),
                        Err(anyhow::anyhow!("checkpoint thread panicked")),
                    )
                })
            })
            .collect()
    });

    let mut dumped = Vec::new();
    let mut first_error = None;
    for (name, dir, result) in results {
        match result {
            Ok(stats) => {
                let frozen = stats
                    .frozen_ms
                    .map(|ms| format!("{ms:.0} ms"))
                    .unwrap_or("-".into());
                println!(
                    "checkpointed {name} into {} (frozen {frozen})",
                    dir.display()
                );
                dumped.push((name, dir));
            }
            Err(err) => {
                if first_error.is_none() {
                    first_error = Some(err.context(format!("checkpointing container `{name}`")));
                }
            }
        }
    }
    match first_error {
        None => Ok(dumped),
        Some(err) => Err((dumped, err)),
    }
}

/// The reboot is off: bring back what was dumped, unload the kernel, and report `err`.
fn abandon(g: &Globals, dumped: &[(String, PathBuf)], err: anyhow::Error) -> anyhow::Error {
    for (name, dir) in dumped {
        if let Err(restore_err) = restore_one(g, dir, Some(name.clone())) {
            eprintln!(
                "vpnhop: restoring `{name}` from `{}`: {restore_err:#}",
                dir.display()
            );
        }
    }
    if let Err(unload_err) = kexec::unload() {
        eprintln!("vpnhop: {unload_err}");
    }
    err.context("kexec abandoned; dumped containers restored, kernel unloaded")
}

fn dry_run(g: &Globals, containers: &[ContainerState], image_root: &Path) -> anyhow::Result<()> {
    for s in containers {
        let trial = image_root.join(format!(".dry-run-{}", s.name));
        let stats = checkpoint_one(g, &s.name, &trial, true)
            .with_context(|| format!("trial checkpoint of container `{}`", s.name))?;
        let _ = std::fs::remove_dir_all(&trial);
        let frozen = stats
            .frozen_ms
            .map(|ms| format!("{ms:.0} ms"))
            .unwrap_or("-".into());
        println!(
            "{}: checkpointable (frozen {frozen}, images {} KiB)",
            s.name,
            stats.image_bytes >> 10
        );
    }
    println!(
        "dry run: {} container(s) ready; nothing loaded, nothing rebooted",
        containers.len()
    );
    Ok(())
}
