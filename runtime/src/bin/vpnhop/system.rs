//! `vpnhop system`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use vpnhop::config;
use vpnhop::criu::Criu;
use vpnhop::kexec;

use crate::{absolute, Globals};

/// Name of the boot-time restore unit.
pub const UNIT: &str = "vpnhop-restore.service";

/// `system` verbs.
#[derive(Debug, clap::Subcommand)]
pub enum SystemCommand {
    /// Install and enable the systemd unit that runs `vpnhop restore --all` at boot.
    Install(InstallArgs),
    /// Disable and remove that unit.
    Uninstall(UninstallArgs),
}

/// Arguments of `system install`.
#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// Where `vpnhop kexec` leaves its images and plan.
    #[arg(long, default_value = config::DEFAULT_IMAGE_ROOT)]
    image_root: PathBuf,
    /// Directory of systemd units.
    #[arg(long, default_value = "/etc/systemd/system")]
    unit_dir: PathBuf,
}

/// Arguments of `system uninstall`.
#[derive(Debug, clap::Args)]
pub struct UninstallArgs {
    /// Directory of systemd units.
    #[arg(long, default_value = "/etc/systemd/system")]
    unit_dir: PathBuf,
}

/// Runs a `system` verb.
pub fn run(g: &Globals, command: SystemCommand) -> anyhow::Result<()> {
    match command {
        SystemCommand::Install(args) => install(g, args),
        SystemCommand::Uninstall(args) => uninstall(args),
    }
}

fn install(g: &Globals, args: InstallArgs) -> anyhow::Result<()> {
    let vpnhop = std::env::current_exe().context("locating the vpnhop binary")?;
    let criu = Criu::locate(&g.criu)?;
    let unit = kexec::restore_unit(&vpnhop, criu.path(), &absolute(&args.image_root));

    let path = args.unit_dir.join(UNIT);
    std::fs::create_dir_all(&args.unit_dir)
        .with_context(|| format!("creating `{}`", args.unit_dir.display()))?;
    std::fs::write(&path, unit).with_context(|| format!("writing unit `{}`", path.display()))?;
    println!("{}", path.display());

    if !systemd_runs() {
        println!(
            "systemd is not running here: have your init run `{} --criu {} restore --all \
             --image-root {}` at boot, once the network is up",
            vpnhop.display(),
            criu.path().display(),
            absolute(&args.image_root).display()
        );
        return Ok(());
    }
    systemctl(&["daemon-reload"])?;
    systemctl(&["enable", UNIT])
}

fn uninstall(args: UninstallArgs) -> anyhow::Result<()> {
    if systemd_runs() {
        let _ = systemctl(&["disable", UNIT]);
    }
    let path = args.unit_dir.join(UNIT);
    match std::fs::remove_file(&path) {
        Ok(()) => println!("{}", path.display()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("removing `{}`", path.display())),
    }
    if systemd_runs() {
        systemctl(&["daemon-reload"])?;
    }
    Ok(())
}

fn systemd_runs() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

fn systemctl(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("systemctl")
        .args(args)
        .output()
        .context("running systemctl")?;
    if !out.status.success() {
        bail!(
            "`systemctl {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
