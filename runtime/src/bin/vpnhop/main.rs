//! `vpnhop`: the command-line front of the runtime. One file per verb.

mod checkpoint;
mod inspect;
mod kexec;
mod logs;
mod ps;
mod restore;
mod rm;
mod run;
mod spawn;
mod spec;
mod stop;
mod system;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vpnhop::config;
use vpnhop::logging::{self, LogFormat, LogLevel};
use vpnhop::state::Store;

#[derive(Debug, Parser)]
#[command(
    name = "vpnhop",
    version,
    about = "Run OpenVPN in a container and carry it across a kernel reboot with CRIU"
)]
struct Cli {
    /// Root directory of the runtime state.
    #[arg(long, global = true, default_value = config::DEFAULT_ROOT, env = "VPNHOP_ROOT")]
    root: PathBuf,
    /// Write the runtime's log to this file instead of stderr.
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Format of the runtime's log.
    #[arg(long, global = true, value_enum, default_value_t)]
    log_format: LogFormat,
    /// Level of the runtime's log.
    #[arg(long, global = true, value_enum, default_value_t)]
    log_level: LogLevel,
    /// The CRIU 4.x binary [default: $VPNHOP_CRIU or /opt/vpnhop/criu/sbin/criu].
    #[arg(long, global = true)]
    criu: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create and start a container from a bundle.
    Run(run::Args),
    /// List containers.
    Ps(ps::Args),
    /// Show everything known about a container, as JSON.
    Inspect(inspect::Args),
    /// Print a container's output.
    Logs(logs::Args),
    /// Stop a container: SIGTERM, then SIGKILL after a grace period.
    Stop(stop::Args),
    /// Remove a container and everything it created on the host.
    Rm(rm::Args),
    /// Dump a running container into an image directory on persistent disk.
    Checkpoint(checkpoint::Args),
    /// Restore a container from an image directory.
    Restore(restore::Args),
    /// Checkpoint every container and reboot into another kernel (restored at boot).
    Kexec(kexec::Args),
    /// Install or remove the boot-time restore unit.
    #[command(subcommand)]
    System(system::SystemCommand),
    /// Print the OpenVPN bundle's config.json, generated from oci-spec types.
    Spec(spec::Args),
}

/// What every verb gets besides its own arguments.
#[derive(Debug)]
pub struct Globals {
    /// The state store.
    pub store: Store,
    /// The `criu` binary.
    pub criu: PathBuf,
    /// Log format, passed on to shims.
    pub log_format: LogFormat,
    /// Log level, passed on to shims.
    pub log_level: LogLevel,
}

fn main() -> ExitCode {
    let cli = Cli::parse();

    if let Err(err) = logging::init(cli.log.as_deref(), cli.log_format, cli.log_level) {
        eprintln!(
            "vpnhop: log `{}`: {err}",
            cli.log.unwrap_or_default().display()
        );
        return ExitCode::FAILURE;
    }

    let globals = Globals {
        store: Store::new(absolute(&cli.root)),
        criu: cli.criu.unwrap_or_else(config::criu_path),
        log_format: cli.log_format,
        log_level: cli.log_level,
    };

    let result = match cli.command {
        Command::Run(args) => run::run(&globals, args),
        Command::Ps(args) => ps::run(&globals, args).map(|()| ExitCode::SUCCESS),
        Command::Inspect(args) => inspect::run(&globals, args).map(|()| ExitCode::SUCCESS),
        Command::Logs(args) => logs::run(&globals, args).map(|()| ExitCode::SUCCESS),
        Command::Stop(args) => stop::run(&globals, args).map(|()| ExitCode::SUCCESS),
        Command::Rm(args) => rm::run(&globals, args).map(|()| ExitCode::SUCCESS),
        Command::Checkpoint(args) => checkpoint::run(&globals, args).map(|()| ExitCode::SUCCESS),
        Command::Restore(args) => restore::run(&globals, args).map(|()| ExitCode::SUCCESS),
        Command::Kexec(args) => kexec::run(&globals, args).map(|()| ExitCode::SUCCESS),
        Command::System(cmd) => system::run(&globals, cmd).map(|()| ExitCode::SUCCESS),
        Command::Spec(args) => spec::run(args).map(|()| ExitCode::SUCCESS),
    };

    match result {
        Ok(code) => code,
        Err(err) => {
            // One line: the chain of causes joined by ": ".
            eprintln!("vpnhop: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `path` made absolute against the working directory: the shim and libcontainer change theirs.
pub fn absolute(path: &std::path::Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}
