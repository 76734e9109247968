//! `vpnhop-shim`: the per-container monitor.
//!
//! Started by `vpnhop run` or `vpnhop restore` in a session of its own, it becomes a child
//! subreaper, creates (or restores) the container as its child, reports on its stdout whether
//! that worked, and then stays for the container's lifetime: it keeps the container's stdio
//! pipes and log, reaps its exit status and serves the control socket.

mod monitor;

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use vpnhop::bundle::Bundle;
use vpnhop::container::{self, ShimStdio};
use vpnhop::criu::Criu;
use vpnhop::image::{ImageDir, ImageMeta, ProcessRef, RestoredMarker, META_FILE, RESTORED_FILE};
use vpnhop::logging::{self, LogFormat, LogLevel};
use vpnhop::proc;
use vpnhop::shim::{Ready, RestoreStats};
use vpnhop::state::{Status, Store};

#[derive(Debug, Parser)]
#[command(
    name = "vpnhop-shim",
    version,
    about = "Per-container monitor of vpnhop"
)]
struct Cli {
    /// State root.
    #[arg(long)]
    root: PathBuf,
    /// Container name; its state directory must exist.
    #[arg(long)]
    name: String,
    /// Format of the shim's log (written to shim.log in the state directory).
    #[arg(long, value_enum, default_value_t)]
    log_format: LogFormat,
    /// Level of the shim's log.
    #[arg(long, value_enum, default_value_t = LogLevel::Info)]
    log_level: LogLevel,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Create and start the container from its bundle.
    Run,
    /// Restore the container from a verified image directory.
    Restore {
        /// The image directory.
        #[arg(long)]
        image_dir: PathBuf,
        /// The `criu` binary.
        #[arg(long)]
        criu: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let store = Store::new(&cli.root);

    if let Err(err) = logging::init(
        Some(&store.shim_log(&cli.name)),
        cli.log_format,
        cli.log_level,
    ) {
        eprintln!(
            "vpnhop-shim: log `{}`: {err}",
            store.shim_log(&cli.name).display()
        );
    }

    match start(&cli, &store) {
        Ok((pid, stdio, restore)) => {
            report(&Ready::Started { pid, restore });
            detach_stdout();
            monitor::Monitor::new(store, cli.name, pid, stdio).run();
            ExitCode::SUCCESS
        }
        Err(err) => {
            let message = format!("{err:#}");
            tracing::error!(container = %cli.name, "{message}");
            if let Ok(state) = store.load(&cli.name) {
                if let Err(err) = container::cleanup(&store, &state) {
                    tracing::warn!(container = %cli.name, "cleanup after failure: {err:#}");
                }
            }
            report(&Ready::Failed { message });
            ExitCode::FAILURE
        }
    }
}

/// Creates or restores the container; returns its init pid and the shim's stdio ends.
fn start(cli: &Cli, store: &Store) -> anyhow::Result<(i32, ShimStdio, Option<RestoreStats>)> {
    nix::sys::prctl::set_child_subreaper(true).context("becoming a child subreaper")?;
    let mut state = store.load(&cli.name)?;

    let (pid, stdio, restore) = match &cli.mode {
        Mode::Run => {
            let bundle = Bundle::load(&state.bundle)?;
            let (pid, stdio) = container::create(store, &state, &bundle)?;
            (pid, stdio, None)
        }
        Mode::Restore { image_dir, criu } => {
            // The CLI checked CRIU and verified the image against its manifest just before.
            let criu = Criu::trusted(criu);
            let image = ImageDir::new(image_dir);
            let meta: ImageMeta = image.read_json(META_FILE)?;
            let (pid, stdio, stats) = container::restore(store, &state, &criu, &image, &meta)?;

            let marker = RestoredMarker {
                process: ProcessRef {
                    boot_id: proc::boot_id(),
                    pid,
                    start: proc::start_time(pid),
                },
                name: state.name.clone(),
                root: store.root().to_path_buf(),
                restored: chrono::Utc::now(),
            };
            if let Err(err) = image.write_json(RESTORED_FILE, &marker) {
                tracing::warn!(container = %state.name, "restore marker not written: {err:#}");
            }
            state.restored_from = Some(image_dir.clone());
            (pid, stdio, Some(stats))
        }
    };

    state.status = Status::Running;
    state.pid = Some(pid);
    state.pid_start = proc::start_time(pid);
    state.shim_pid = Some(std::process::id() as i32);
    state.shim_start = proc::start_time(std::process::id() as i32);
    state.started = Some(chrono::Utc::now());
    store.save(&state)?;
    Ok((pid, stdio, restore))
}

fn report(ready: &Ready) {
    let mut out = std::io::stdout().lock();
    let line = serde_json::to_string(ready).unwrap_or_default();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The CLI waits for EOF on our stdout after the ready line: point fd 1 at /dev/null.
fn detach_stdout() {
    if let Ok(null) = OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2(null.as_raw_fd(), 1);
    }
}
