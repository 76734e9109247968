//! Starting a shim and waiting for its report.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context};
use vpnhop::config;
use vpnhop::shim::Ready;

use crate::Globals;

/// Starts `vpnhop-shim` for `name` in a session of its own with `mode_args`, and returns once
/// it reports; on failure the shim has already removed what it created.
pub fn start_shim(
    g: &Globals,
    name: &str,
    mode_args: &[&std::ffi::OsStr],
) -> anyhow::Result<(Ready, Child)> {
    let shim = config::shim_path();
    let shim_log = g.store.shim_log(name);
    let stderr = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&shim_log)
        .with_context(|| format!("opening shim log `{}`", shim_log.display()))?;

    let mut cmd = Command::new(&shim);
    cmd.arg("--root")
        .arg(g.store.root())
        .arg("--name")
        .arg(name)
        .arg("--log-format")
        .arg(serde_plain(&g.log_format))
        .arg("--log-level")
        .arg(g.log_level.as_str())
        .args(mode_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    // SAFETY: setsid(2) is async-signal-safe. The shim must outlive this command and not get
    // its terminal's signals.
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(Into::into));
    }

    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting shim `{}`", shim.display()))?;
    let stdout = child.stdout.take().context("shim stdout")?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("reading the shim's report")?;

    if line.trim().is_empty() {
        let _ = child.wait();
        bail!(
            "shim of container `{name}` exited without reporting; see `{}`",
            shim_log.display()
        );
    }
    let ready: Ready = serde_json::from_str(&line)
        .with_context(|| format!("malformed report from the shim of container `{name}`"))?;
    if let Ready::Failed { .. } = ready {
        let _ = child.wait();
    }
    Ok((ready, child))
}

fn serde_plain<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}
