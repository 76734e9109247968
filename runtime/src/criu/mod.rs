//! The `criu` binary: locating it, checking its version, and the exact argument lists of our
//! dumps and restores.
//!
//! We call the binary rather than CRIU's RPC interface because the options vpnhop needs
//! (`--network-lock nftables`, `--external veth[…]`, `--inherit-fd`, `--leave-stopped`) are not
//! all reachable through the `rust-criu` crate. Every command is logged in full at debug level;
//! a failure quotes the tail of CRIU's own log.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::mount::{mount, MsFlags};
use thiserror::Error;

use crate::config;

pub mod stats;

/// Errors of CRIU invocations.
#[derive(Debug, Error)]
pub enum CriuError {
    /// The binary is not there.
    #[error("criu `{0}` not found: run scripts/setup.sh or pass --criu")]
    Missing(PathBuf),
    /// The binary is older than 4.0.
    #[error("criu `{path}` is version {version}; vpnhop needs CRIU 4.x (see docs/criu.md)")]
    TooOld {
        /// The binary.
        path: PathBuf,
        /// What it reported.
        version: String,
    },
    /// The binary could not be started or its output read.
    #[error("running criu `{path}`")]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// CRIU ran and failed.
    #[error("criu {verb} failed ({status}); log `{log}`: {tail}")]
    Failed {
        /// `dump` or `restore`.
        verb: &'static str,
        /// Its exit status.
        status: String,
        /// CRIU's log file.
        log: PathBuf,
        /// The last error lines of that log.
        tail: String,
    },
}

/// A usable CRIU binary.
#[derive(Debug, Clone)]
pub struct Criu {
    bin: PathBuf,
    version: String,
}

impl Criu {
    /// Checks that `bin` exists and is CRIU 4.x or newer.
    pub fn locate(bin: &Path) -> Result<Criu, CriuError> {
        Criu::start_locate(bin)?.finish()
    }

    /// [`Criu::locate`] in two halves: checks that `bin` exists and starts `criu --version`,
    /// so that the caller can do other work while it runs; [`PendingCriu::finish`] checks the
    /// version.
    pub fn start_locate(bin: &Path) -> Result<PendingCriu, CriuError> {
        if !bin.is_file() {
            return Err(CriuError::Missing(bin.to_path_buf()));
        }

        let child = Command::new(bin)
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| CriuError::Spawn {
                path: bin.to_path_buf(),
                source,
            })?;
        Ok(PendingCriu {
            bin: bin.to_path_buf(),
            child: Some(child),
        })
    }

    /// A binary [`Criu::locate`] already checked (the CLI, before starting a shim): spares a
    /// second `criu --version` on the restore path. Its version reads `unknown`.
    pub fn trusted(bin: &Path) -> Criu {
        Criu {
            bin: bin.to_path_buf(),
            version: "unknown".to_string(),
        }
    }

    /// The binary.
    pub fn path(&self) -> &Path {
        &self.bin
    }

    /// The version CRIU reported, e.g. `4.2.1`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Dumps the process tree rooted at `opts.pid`; returns the wall time CRIU took.
    pub fn dump(&self, opts: &DumpOptions) -> Result<Duration, CriuError> {
        let log = opts.work_dir.join(DUMP_LOG);
        let env = helper_env(opts.iptables);
        self.run("dump", dump_args(opts), &log, &env, |_| Ok(()))
    }

    /// Restores the images in `opts.images_dir`; returns the wall time CRIU took.
    ///
    /// `prepare` may add set-up to the command before it is spawned: the restore uses it to give
    /// CRIU a private mount namespace and the container's stdio at known descriptors.
    pub fn restore<F>(&self, opts: &RestoreOptions, prepare: F) -> Result<Duration, CriuError>
    where
        F: FnMut(&mut Command) -> io::Result<()>,
    {
        let log = opts.work_dir.join(RESTORE_LOG);
        let env = helper_env(opts.iptables);
        self.run("restore", restore_args(opts), &log, &env, prepare)
    }

    fn run<F>(
        &self,
        verb: &'static str,
        args: Vec<OsString>,
        log: &Path,
        env: &[(&str, OsString)],
        mut prepare: F,
    ) -> Result<Duration, CriuError>
    where
        F: FnMut(&mut Command) -> io::Result<()>,
    {
        tracing::debug!(
            "running {} {}",
            self.bin.display(),
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        );

        prepare_kdat_cache();
        let mut cmd = Command::new(&self.bin);
        cmd.args(&args)
            .envs(env.iter().map(|(key, value)| (key, value)))
            .envs(fault_env(std::env::var_os(FAULT_ENV).is_some()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // CRIU's images hold the server's memory, private keys included: owner-only files.
        // SAFETY: umask(2) is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::umask(0o077);
                Ok(())
            });
        }
        prepare(&mut cmd).map_err(|source| CriuError::Spawn {
            path: self.bin.clone(),
            source,
        })?;

        let start = Instant::now();
        let output = cmd.output().map_err(|source| CriuError::Spawn {
            path: self.bin.clone(),
            source,
        })?;
        let elapsed = start.elapsed();

        if output.status.success() {
            return Ok(elapsed);
        }

        let mut tail = log_tail(log);
        if tail.is_empty() {
            tail = String::from_utf8_lossy(&output.stderr)
                .trim()
                .replace('\n', " | ");
        }
        Err(CriuError::Failed {
            verb,
            status: output.status.to_string(),
            log: log.to_path_buf(),
            tail,
        })
    }
}

/// A `criu --version` under way, from [`Criu::start_locate`]; dropping it reaps the process.
#[derive(Debug)]
pub struct PendingCriu {
    bin: PathBuf,
    child: Option<std::process::Child>,
}

impl PendingCriu {
    /// Waits for `criu --version` and checks that it reports 4.x or newer.
    pub fn finish(mut self) -> Result<Criu, CriuError> {
        let bin = std::mem::take(&mut self.bin);
        let child = self.child.take().expect("a pending criu has its child");
        let output = child
            .wait_with_output()
            .map_err(|source| CriuError::Spawn {
                path: bin.clone(),
                source,
            })?;
        let text = String::from_utf8_lossy(&output.stdout);
        let version = parse_version(&text).unwrap_or_else(|| "unknown".to_string());

        let major: u32 = version
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        if major < 4 {
            return Err(CriuError::TooOld { path: bin, version });
        }
        Ok(Criu { bin, version })
    }
}

impl Drop for PendingCriu {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }
}

/// Where our CRIU keeps its kernel feature cache (`criu.kdat`), set when it is built
/// (`RUNDIR`, see scripts/setup.sh).
pub const KDAT_DIR: &str = "/run/vpnhop-criu";

/// Makes [`KDAT_DIR`] a tmpfs unless it is on one already. CRIU keeps its probe of kernel
/// features (~30 ms per call) only on a tmpfs, so that a reboot discards it; where /run is not a
/// tmpfs every dump and restore would probe again.
fn prepare_kdat_cache() {
    let dir = Path::new(KDAT_DIR);
    if let Err(err) = fs::create_dir_all(dir) {
        tracing::warn!(dir = KDAT_DIR, "CRIU cache directory: {err}");
        return;
    }

    let on_tmpfs = nix::sys::statfs::statfs(dir)
        .map(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
        .unwrap_or(false);
    if on_tmpfs {
        return;
    }

    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    match mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        flags,
        Some("size=1m,mode=0700"),
    ) {
        Ok(()) => tracing::debug!(dir = KDAT_DIR, "tmpfs mounted for CRIU's cache"),
        Err(err) => tracing::warn!(dir = KDAT_DIR, "mounting a tmpfs for CRIU's cache: {err}"),
    }
}

/// Name of CRIU's dump log in the work directory.
pub const DUMP_LOG: &str = "dump.log";
/// Name of CRIU's restore log in the work directory.
pub const RESTORE_LOG: &str = "restore.log";

/// How CRIU keeps the container's network quiet while it dumps and restores (`--network-lock`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkLock {
    /// An nftables table dropping the namespace's traffic: protects TCP connections from resets.
    #[default]
    Nftables,
    /// No lock. Safe when the container has no TCP socket: a UDP datagram that arrives while the
    /// process is frozen is lost either way. Saves the lock at dump and the unlock at restore.
    Skip,
}

impl NetworkLock {
    /// The lock a dump of the tree rooted at `pid` needs: none unless its network namespace has
    /// a TCP socket.
    pub fn for_tree(pid: i32) -> NetworkLock {
        let has_tcp = ["tcp", "tcp6"].iter().any(|table| {
            fs::read_to_string(format!("/proc/{pid}/net/{table}"))
                // A header line, then one line per socket; unreadable means unknown: lock.
                .map(|text| text.lines().count() > 1)
                .unwrap_or(true)
        });
        if has_tcp {
            NetworkLock::Nftables
        } else {
            NetworkLock::Skip
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            NetworkLock::Nftables => "nftables",
            NetworkLock::Skip => "skip",
        }
    }
}

/// Which iptables tools CRIU is given to save and restore the container's legacy (x_tables)
/// rules.
///
/// CRIU dumps a network namespace's nftables rules through libnftables, iptables-nft rules
/// included. For legacy rules it probes `iptables-save`, `iptables-legacy-save` and their IPv6
/// twins, and runs them: six processes at dump and six at restore, about 12 ms each way while
/// the clients wait, for a namespace in which nothing uses legacy iptables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Iptables {
    /// CRIU runs with the host's `PATH` and finds the tools.
    #[default]
    Legacy,
    /// The namespace has no legacy table: CRIU runs with a `PATH` of only the helpers it needs
    /// otherwise ([`HELPERS`]), finds no iptables tool and skips them, as it does on a host
    /// without iptables.
    None,
}

impl Iptables {
    /// What a dump of the tree rooted at `pid` needs: the tools only if its network namespace
    /// has a legacy table, which the kernel lists in `/proc/PID/net/ip{,6}_tables_names` (absent
    /// while the x_tables modules are not loaded).
    pub fn for_tree(pid: i32) -> Iptables {
        let legacy = ["ip_tables_names", "ip6_tables_names"].iter().any(|file| {
            match fs::read_to_string(format!("/proc/{pid}/net/{file}")) {
                Ok(names) => !names.trim().is_empty(),
                Err(err) => err.kind() != io::ErrorKind::NotFound,
            }
        });
        if legacy {
            Iptables::Legacy
        } else {
            Iptables::None
        }
    }
}

/// CRIU's fault-injection switch (`CRIU_FAULT`), the only way to choose how it catches a task
/// leaving its code.
pub const FAULT_ENV: &str = "CRIU_FAULT";

/// `CRIU_FAULT` value that makes CRIU catch tasks leaving its code by tracing system calls, not
/// with a hardware breakpoint: the path it takes by itself where breakpoints do not work.
const NO_BREAKPOINTS: &str = "130";

/// CRIU's environment beyond `PATH`, at dump and restore: no hardware breakpoints, unless the
/// operator's environment already sets `CRIU_FAULT` (then theirs is passed on untouched).
///
/// CRIU stops each task where it leaves CRIU's code (the parasite at dump, the restorer at
/// restore) with a hardware breakpoint, and setting a debug register costs a trip to the
/// hypervisor in a virtual machine. On the development VM the breakpoint kept the tree frozen
/// about 15 ms longer at dump, and held the restored server 1 to 30 ms before letting it run;
/// tracing the tasks' last few system calls instead costs next to nothing on bare metal. CRIU has
/// no option for it, hence its fault-injection switch.
pub fn fault_env(operator_set: bool) -> Vec<(&'static str, &'static str)> {
    if operator_set {
        Vec::new()
    } else {
        vec![(FAULT_ENV, NO_BREAKPOINTS)]
    }
}

/// The programs CRIU runs besides the iptables tools: `ip` for addresses, routes and rules,
/// `tar` and `gzip` for tmpfs contents, `sh` for its helper commands.
pub const HELPERS: [&str; 4] = ["ip", "tar", "gzip", "sh"];

/// The `PATH` CRIU runs with, as an environment entry: none (the host's) for
/// [`Iptables::Legacy`]; otherwise [`config::CRIU_HELPERS`].
fn helper_env(iptables: Iptables) -> Vec<(&'static str, OsString)> {
    helper_path(iptables)
        .map(|dir| ("PATH", dir.into_os_string()))
        .into_iter()
        .collect()
}

/// [`config::CRIU_HELPERS`] for [`Iptables::None`], a directory holding links to [`HELPERS`] as
/// the host's `PATH` finds them; `None` for [`Iptables::Legacy`]. If it cannot be made, CRIU gets
/// the host's `PATH` and simply runs the iptables tools.
fn helper_path(iptables: Iptables) -> Option<PathBuf> {
    if iptables == Iptables::Legacy {
        return None;
    }
    let dir = Path::new(config::CRIU_HELPERS);

    let host_path =
        std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    let made = fs::create_dir_all(dir).and_then(|()| {
        for helper in HELPERS {
            let link = dir.join(helper);
            if link.exists() {
                continue;
            }
            let target = std::env::split_paths(&host_path)
                .map(|d| d.join(helper))
                .find(|p| p.is_file())
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, helper))?;
            let _ = fs::remove_file(&link);
            std::os::unix::fs::symlink(target, &link)?;
        }
        Ok(())
    });
    match made {
        Ok(()) => {
            tracing::debug!("criu runs with PATH={}", dir.display());
            Some(dir.to_path_buf())
        }
        Err(err) => {
            tracing::warn!(dir = %dir.display(), "CRIU's helper directory: {err}");
            None
        }
    }
}

/// What a dump needs.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    /// Host pid of the container's init process.
    pub pid: i32,
    /// Where CRIU writes its images.
    pub images_dir: PathBuf,
    /// Where CRIU writes its log.
    pub work_dir: PathBuf,
    /// Leave the tree running after the dump (`--leave-running`).
    pub leave_running: bool,
    /// The network lock.
    pub network_lock: NetworkLock,
    /// The iptables tools CRIU gets.
    pub iptables: Iptables,
    /// External mounts as `mnt[MOUNTPOINT]:KEY`.
    pub external_mounts: Vec<(String, String)>,
}

/// What a restore needs.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The images to restore.
    pub images_dir: PathBuf,
    /// Where CRIU writes its log (not the image directory, which stays untouched).
    pub work_dir: PathBuf,
    /// The container's root filesystem, a mount point.
    pub root: PathBuf,
    /// Where CRIU writes the restored init's host pid.
    pub pidfile: PathBuf,
    /// Veth pairs CRIU recreates: (inner name, host name, bridge).
    pub veths: Vec<(String, String, String)>,
    /// Descriptors handed to the restored tree: (fd in CRIU, key recorded at dump).
    pub inherit_fds: Vec<(i32, String)>,
    /// External mounts as (KEY, host path).
    pub external_mounts: Vec<(String, PathBuf)>,
    /// The network lock, as at dump.
    pub network_lock: NetworkLock,
    /// The iptables tools, as at dump.
    pub iptables: Iptables,
}

/// The argument list of a dump.
///
/// The network namespace is not declared external: CRIU must own it to dump the tun device,
/// the addresses, routes and rules inside. `--leave-stopped` (unless the container keeps
/// running) lets the shim kill the tree after CRIU is done, out of CRIU's critical path.
pub fn dump_args(opts: &DumpOptions) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "dump".into(),
        "--tree".into(),
        opts.pid.to_string().into(),
        "--images-dir".into(),
        opts.images_dir.clone().into(),
        "--work-dir".into(),
        opts.work_dir.clone().into(),
        "--log-file".into(),
        DUMP_LOG.into(),
        "-v4".into(),
        "--network-lock".into(),
        opts.network_lock.as_str().into(),
        // The runtime recreates the cgroups at restore and CRIU only joins them, so what CRIU
        // would record of them (every v1 hierarchy mounted and read while the tree is frozen,
        // ~15 ms here) is never used.
        "--manage-cgroups=ignore".into(),
    ];
    args.push(
        if opts.leave_running {
            "--leave-running"
        } else {
            "--leave-stopped"
        }
        .into(),
    );

    for (mountpoint, key) in &opts.external_mounts {
        args.push("--external".into());
        args.push(format!("mnt[{mountpoint}]:{key}").into());
    }
    args
}

/// The argument list of a restore.
///
/// `--restore-detached` leaves the restored tree to the shim, a child subreaper that adopts it
/// when CRIU exits. Cgroups are created by the runtime beforehand and CRIU only joins them
/// (`--manage-cgroups ignore`, the tree inherits CRIU's cgroups).
pub fn restore_args(opts: &RestoreOptions) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "restore".into(),
        "--images-dir".into(),
        opts.images_dir.clone().into(),
        "--work-dir".into(),
        opts.work_dir.clone().into(),
        "--log-file".into(),
        RESTORE_LOG.into(),
        "-v4".into(),
        "--root".into(),
        opts.root.clone().into(),
        "--restore-detached".into(),
        "--pidfile".into(),
        opts.pidfile.clone().into(),
        "--network-lock".into(),
        opts.network_lock.as_str().into(),
        "--manage-cgroups=ignore".into(),
    ];

    for (inner, host, bridge) in &opts.veths {
        args.push("--external".into());
        args.push(format!("veth[{inner}]:{host}@{bridge}").into());
    }
    for (fd, key) in &opts.inherit_fds {
        args.push("--inherit-fd".into());
        args.push(format!("fd[{fd}]:{key}").into());
    }
    for (key, path) in &opts.external_mounts {
        args.push("--external".into());
        args.push(format!("mnt[{key}]:{}", path.display()).into());
    }
    args
}

/// The run id CRIU printed at the top of `log`.
pub fn run_id(log: &Path) -> Option<String> {
    let text = fs::read_to_string(log).ok()?;
    text.lines().find_map(|l| {
        l.split_once("CRIU run id = ")
            .map(|(_, id)| id.trim().to_string())
    })
}

/// Name of the `inet` table of CRIU's nftables network lock for the run `run_id`, in the dumped
/// network namespace. CRIU formats `inet CRIU-<run id>` into a 32-byte buffer, so the name is cut
/// to what fits.
pub fn lock_table(run_id: &str) -> String {
    let full = format!("inet CRIU-{run_id}");
    full[5..full.len().min(31)].to_string()
}

fn parse_version(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Version:"))
        .map(|v| v.trim().to_string())
}

/// The last error lines of a CRIU log, joined on one line.
pub fn log_tail(log: &Path) -> String {
    let Ok(text) = fs::read_to_string(log) else {
        return String::new();
    };

    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("Error") || l.contains("BUG"))
        .collect();
    let lines: Vec<&str> = if errors.is_empty() {
        text.lines()
            .rev()
            .take(3)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect()
    } else {
        errors.iter().rev().take(3).rev().copied().collect()
    };
    lines
        .iter()
        .map(|l| l.trim())
        .collect::<Vec<_>>()
        .join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(args: Vec<OsString>) -> String {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn dump_owns_the_network_namespace() {
        let opts = DumpOptions {
            pid: 42,
            images_dir: "/img/criu".into(),
            work_dir: "/run/x".into(),
            leave_running: false,
            network_lock: NetworkLock::Nftables,
            iptables: Iptables::None,
            external_mounts: vec![],
        };
        let args = joined(dump_args(&opts));

        assert!(
            args.starts_with("dump --tree 42 --images-dir /img/criu"),
            "{args}"
        );
        assert!(
            !args.contains("net["),
            "network namespace must not be external: {args}"
        );
        assert!(
            args.contains("--leave-stopped") && !args.contains("--leave-running"),
            "{args}"
        );
        assert!(args.contains("--network-lock nftables"), "{args}");
        // Cgroups are the runtime's to recreate: nothing of them is dumped.
        assert!(args.contains("--manage-cgroups=ignore"), "{args}");
    }

    #[test]
    fn criu_skips_hardware_breakpoints_unless_the_operator_chose() {
        assert_eq!(fault_env(false), vec![("CRIU_FAULT", "130")]);
        assert!(fault_env(true).is_empty());
    }

    /// Without iptables tools on its `PATH`, CRIU skips the legacy tables; it still needs its
    /// other helpers, and must not find them under /run, which it overmounts at restore (the
    /// restore failed with `execvp("ip", ...) failed`).
    #[test]
    fn helpers_without_iptables_live_outside_run() {
        assert_eq!(helper_path(Iptables::Legacy), None);
        assert!(!Path::new(config::CRIU_HELPERS).starts_with("/run"));
        assert!(!HELPERS.iter().any(|h| h.contains("iptables")));
        assert!(HELPERS.contains(&"ip") && HELPERS.contains(&"tar"));
    }

    #[test]
    fn a_tree_without_legacy_tables_gets_no_iptables_tools() {
        // This test process has no network namespace of its own; its pid stands for any tree
        // whose namespace the kernel can describe.
        let me = std::process::id() as i32;
        let names = ["ip_tables_names", "ip6_tables_names"]
            .iter()
            .map(|f| fs::read_to_string(format!("/proc/{me}/net/{f}")).unwrap_or_default())
            .collect::<String>();
        let want = if names.trim().is_empty() {
            Iptables::None
        } else {
            Iptables::Legacy
        };
        assert_eq!(Iptables::for_tree(me), want);
        assert_eq!(Iptables::for_tree(-1), Iptables::None);
    }

    #[test]
    fn restore_recreates_veth_and_hands_back_stdio() {
        let opts = RestoreOptions {
            images_dir: "/img/criu".into(),
            work_dir: "/run/x/criu".into(),
            root: "/b/rootfs".into(),
            pidfile: "/run/x/pid".into(),
            veths: vec![("eth0".into(), "vhabc".into(), "vpnhop0".into())],
            inherit_fds: vec![(10, "pipe:[123]".into())],
            external_mounts: vec![],
            network_lock: NetworkLock::Skip,
            iptables: Iptables::Legacy,
        };
        let args = joined(restore_args(&opts));

        assert!(
            args.contains("--external veth[eth0]:vhabc@vpnhop0"),
            "{args}"
        );
        assert!(args.contains("--inherit-fd fd[10]:pipe:[123]"), "{args}");
        assert!(args.contains("--root /b/rootfs"), "{args}");
        assert!(args.contains("--restore-detached"), "{args}");
        assert!(args.contains("--network-lock skip"), "{args}");
    }

    #[test]
    fn run_id_is_read_from_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("dump.log");
        fs::write(
            &log,
            "(00.000000) CRIU run id = 85da424c-c067\n(00.1) Version: 4.2.1\n",
        )
        .expect("write");
        assert_eq!(run_id(&log).as_deref(), Some("85da424c-c067"));
    }

    #[test]
    fn lock_table_is_cut_like_criu_cuts_it() {
        let id = "f53741c0-79f2-4bb1-9a7e-000000000000";
        assert_eq!(lock_table(id), "CRIU-f53741c0-79f2-4bb1-9a");
    }

    #[test]
    fn version_line_is_parsed() {
        assert_eq!(parse_version("Version: 4.2.1\n").as_deref(), Some("4.2.1"));
        assert_eq!(parse_version("nonsense"), None);
    }

    #[test]
    fn missing_binary_is_named() {
        let err = Criu::locate(Path::new("/nonexistent/criu")).expect_err("missing");
        assert_eq!(
            err.to_string(),
            "criu `/nonexistent/criu` not found: run scripts/setup.sh or pass --criu"
        );
    }

    #[test]
    fn log_tail_prefers_error_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("dump.log");
        fs::write(
            &log,
            "(0.1) a\n(0.2) Error (criu/tun.c:1): No tun device for file\n(0.3) b\n",
        )
        .expect("write");
        assert_eq!(
            log_tail(&log),
            "(0.2) Error (criu/tun.c:1): No tun device for file"
        );
    }
}
