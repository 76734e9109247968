//! Rebooting into a new kernel with the containers carried across: the kernel to load, the
//! `kexec` calls, and the restore plan that the next boot follows.
//!
//! Loading and executing the kernel is handed to kexec-tools (`kexec -s -l`, which uses
//! kexec_file_load(2)); the reboot to `systemctl kexec` where systemd runs, so that services stop
//! and file systems are unmounted cleanly. The checkpoints themselves are the shims' work, as for
//! `vpnhop checkpoint`.

use std::cmp::Ordering;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::fsutil::{self, Durability};
use crate::proc;

/// Present when the running kernel can load another one.
pub const KEXEC_LOADED: &str = "/sys/kernel/kexec_loaded";
/// The plan a boot-time `restore --all` follows, in the image root.
pub const PLAN_FILE: &str = "restore-plan.json";
/// The plan once followed.
pub const PLAN_DONE_FILE: &str = "restore-plan.done.json";

/// Errors of the kexec path.
#[derive(Debug, Error)]
pub enum KexecError {
    /// The running kernel has no kexec.
    #[error("this kernel cannot kexec (`{KEXEC_LOADED}` is missing); nothing was changed")]
    Unsupported,
    /// kexec-tools are not installed.
    #[error("`kexec` (kexec-tools) not found; install kexec-tools")]
    NoTools,
    /// No kernel to switch to.
    #[error("no installed kernel other than the running one ({0}) in `/boot`; pass --kernel")]
    NoKernel(String),
    /// A kernel or initrd given does not exist.
    #[error("kernel file `{0}` not found")]
    Missing(PathBuf),
    /// `kexec` or `systemctl` failed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// What it said.
        stderr: String,
    },
    /// A file could not be read or written.
    #[error("`{path}`")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The plan does not parse.
    #[error("restore plan `{path}` is malformed")]
    Plan {
        /// The plan file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> KexecError + '_ {
    move |source| KexecError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Checks that this kernel can kexec and kexec-tools are there.
pub fn preflight() -> Result<(), KexecError> {
    check_support(Path::new(KEXEC_LOADED))?;
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("kexec").is_file()))
        .unwrap_or(false);
    if !found {
        return Err(KexecError::NoTools);
    }
    Ok(())
}

fn check_support(kexec_loaded: &Path) -> Result<(), KexecError> {
    if kexec_loaded.exists() {
        Ok(())
    } else {
        Err(KexecError::Unsupported)
    }
}

/// A kernel to boot and its initial ramdisk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kernel {
    /// The kernel image.
    pub image: PathBuf,
    /// Its initrd, if any.
    pub initrd: Option<PathBuf>,
    /// Its release, from the file name (`/boot/vmlinuz-RELEASE`).
    pub release: String,
}

/// The newest kernel in `boot` that is not `running` (a `uname -r`), with its initrd.
pub fn newest_other_kernel(boot: &Path, running: &str) -> Result<Kernel, KexecError> {
    let entries = fs::read_dir(boot).map_err(io_err(boot))?;
    let mut releases: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("vmlinuz-")
                .map(str::to_string)
        })
        .filter(|r| r != running)
        .collect();
    releases.sort_by(|a, b| compare_releases(a, b));

    let release = releases
        .pop()
        .ok_or_else(|| KexecError::NoKernel(running.to_string()))?;
    let initrd = boot.join(format!("initrd.img-{release}"));
    Ok(Kernel {
        image: boot.join(format!("vmlinuz-{release}")),
        initrd: initrd.is_file().then_some(initrd),
        release,
    })
}

/// Orders kernel releases by their numbers: `6.1.0-57-amd64` < `6.12.95+deb12-amd64`.
pub fn compare_releases(a: &str, b: &str) -> Ordering {
    let numbers = |s: &str| -> Vec<u64> {
        s.split(|c: char| !c.is_ascii_digit())
            .filter(|p| !p.is_empty())
            .filter_map(|p| p.parse().ok())
            .collect()
    };
    numbers(a).cmp(&numbers(b)).then_with(|| a.cmp(b))
}

/// How the new kernel's command line is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmdLine {
    /// The running kernel's.
    Reuse,
    /// This one.
    Append(String),
}

/// Loads `kernel` for the next kexec (equivalent to `kexec -s -l IMAGE --initrd=INITRD
/// --reuse-cmdline`), falling back to the older kexec_load(2) interface if kexec_file_load(2)
/// refuses.
pub fn load(kernel: &Kernel, cmdline: &CmdLine) -> Result<(), KexecError> {
    if !kernel.image.is_file() {
        return Err(KexecError::Missing(kernel.image.clone()));
    }
    let mut args: Vec<String> = vec!["-l".into(), kernel.image.display().to_string()];
    if let Some(initrd) = &kernel.initrd {
        args.push(format!("--initrd={}", initrd.display()));
    }
    match cmdline {
        CmdLine::Reuse => args.push("--reuse-cmdline".into()),
        CmdLine::Append(line) => args.push(format!("--append={line}")),
    }

    let mut file_load = vec!["-s".to_string()];
    file_load.extend(args.iter().cloned());
    run("kexec", &file_load).or_else(|_| run("kexec", &args))
}

/// Unloads a loaded kernel (`kexec -u`).
pub fn unload() -> Result<(), KexecError> {
    run("kexec", &["-u".to_string()])
}

/// Reboots into the loaded kernel: `systemctl kexec` where systemd is PID 1, else a direct
/// `kexec -e` after flushing the file systems.
pub fn reboot() -> Result<(), KexecError> {
    if Path::new("/run/systemd/system").is_dir() {
        run("systemctl", &["kexec".to_string()])
    } else {
        nix::unistd::sync();
        run("kexec", &["-e".to_string()])
    }
}

fn run(program: &str, args: &[String]) -> Result<(), KexecError> {
    let command = format!("{program} {}", args.join(" "));
    tracing::debug!("running {command}");
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| KexecError::Io {
            path: PathBuf::from(program),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr)
            .trim()
            .replace('\n', " | ");
        Err(KexecError::Command { command, stderr })
    }
}

/// One container the next boot restores.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PlanEntry {
    /// Its name.
    pub name: String,
    /// Its image directory.
    pub image_dir: PathBuf,
    /// The state root it ran under.
    pub root: PathBuf,
}

/// What `vpnhop kexec` leaves for the next boot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestorePlan {
    /// When it was written.
    pub created: DateTime<Utc>,
    /// The boot that wrote it.
    pub boot_id: String,
    /// The kernel it was left from.
    pub from_kernel: String,
    /// The kernel it expects to be restored under.
    pub to_kernel: String,
    /// The containers, in restore order.
    pub entries: Vec<PlanEntry>,
}

impl RestorePlan {
    /// A plan for `entries`, switching to `to_kernel`.
    pub fn new(entries: Vec<PlanEntry>, to_kernel: &str) -> RestorePlan {
        RestorePlan {
            created: Utc::now(),
            boot_id: proc::boot_id(),
            from_kernel: proc::kernel_release(),
            to_kernel: to_kernel.to_string(),
            entries,
        }
    }

    /// Writes the plan into `image_root` and flushes it to disk with everything else there.
    pub fn write(&self, image_root: &Path) -> Result<PathBuf, KexecError> {
        let path = image_root.join(PLAN_FILE);
        let data = serde_json::to_vec_pretty(self).map_err(|source| KexecError::Plan {
            path: path.clone(),
            source,
        })?;
        fsutil::write_atomic(&path, &data, 0o600, Durability::Durable).map_err(io_err(&path))?;
        fsutil::sync_fs(image_root).map_err(io_err(image_root))?;
        Ok(path)
    }

    /// The pending plan in `image_root`, if any.
    pub fn pending(image_root: &Path) -> Result<Option<RestorePlan>, KexecError> {
        let path = image_root.join(PLAN_FILE);
        match fs::read(&path) {
            Ok(data) => serde_json::from_slice(&data)
                .map(Some)
                .map_err(|source| KexecError::Plan { path, source }),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(io_err(&path)(err)),
        }
    }

    /// Marks the pending plan in `image_root` as followed, so a later ordinary boot does not
    /// restore stale images.
    pub fn mark_done(image_root: &Path) -> Result<(), KexecError> {
        let from = image_root.join(PLAN_FILE);
        fs::rename(&from, image_root.join(PLAN_DONE_FILE)).map_err(io_err(&from))?;
        fsutil::sync_dir(image_root).map_err(io_err(image_root))
    }

    /// Removes a plan that will not be followed (the reboot was abandoned).
    pub fn discard(image_root: &Path) {
        let _ = fs::remove_file(image_root.join(PLAN_FILE));
    }
}

/// Bytes available on the file system holding `dir` (or its nearest existing parent).
pub fn free_bytes(dir: &Path) -> Option<u64> {
    let mut probe = dir;
    while !probe.exists() {
        probe = probe.parent()?;
    }
    let stat = nix::sys::statvfs::statvfs(probe).ok()?;
    Some(stat.blocks_available() as u64 * stat.fragment_size() as u64)
}

/// The systemd unit that runs `restore --all` at boot.
pub fn restore_unit(vpnhop: &Path, criu: &Path, image_root: &Path) -> String {
    let bin_dir = vpnhop.parent().unwrap_or(Path::new("/"));
    format!(
        "[Unit]\n\
         Description=Restore the vpnhop containers that `vpnhop kexec` checkpointed\n\
         # The containers' host wiring needs the network; the images and binaries their disks.\n\
         Wants=network-online.target\n\
         After=network-online.target local-fs.target\n\
         RequiresMountsFor={root} {bin}\n\
         ConditionPathExists={root}/{plan}\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         ExecStart={vpnhop} --criu {criu} restore --all --image-root {root}\n\
         # The restored shims start in this unit's cgroup and must outlive it: the unit stays\n\
         # active after the restore, and stopping it signals no process but its main one.\n\
         RemainAfterExit=yes\n\
         KillMode=process\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        root = image_root.display(),
        bin = bin_dir.display(),
        plan = PLAN_FILE,
        vpnhop = vpnhop.display(),
        criu = criu.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_compare_by_their_numbers() {
        assert_eq!(
            compare_releases("6.1.0-57-amd64", "6.12.95+deb12-amd64"),
            Ordering::Less
        );
        assert_eq!(
            compare_releases("6.12.95+deb12-amd64", "6.12.9-amd64"),
            Ordering::Greater
        );
        assert_eq!(
            compare_releases("5.10.0-1-amd64", "5.10.0-1-amd64"),
            Ordering::Equal
        );
    }

    #[test]
    fn newest_other_kernel_skips_the_running_one() {
        let boot = tempfile::tempdir().expect("tempdir");
        for f in [
            "vmlinuz-6.1.0-57-amd64",
            "initrd.img-6.1.0-57-amd64",
            "vmlinuz-6.12.95+deb12-amd64",
            "initrd.img-6.12.95+deb12-amd64",
            "config-6.12.95+deb12-amd64",
        ] {
            fs::write(boot.path().join(f), b"").expect("write");
        }

        let k = newest_other_kernel(boot.path(), "6.12.95+deb12-amd64").expect("kernel");
        assert_eq!(k.release, "6.1.0-57-amd64");
        assert_eq!(
            k.initrd,
            Some(boot.path().join("initrd.img-6.1.0-57-amd64"))
        );

        let k = newest_other_kernel(boot.path(), "6.1.0-57-amd64").expect("kernel");
        assert_eq!(k.release, "6.12.95+deb12-amd64");

        fs::remove_file(boot.path().join("vmlinuz-6.1.0-57-amd64")).expect("rm");
        let err = newest_other_kernel(boot.path(), "6.12.95+deb12-amd64").expect_err("none");
        assert!(matches!(err, KexecError::NoKernel(_)), "{err}");
    }

    #[test]
    fn plan_is_pending_until_marked_done() {
        let root = tempfile::tempdir().expect("tempdir");
        assert!(RestorePlan::pending(root.path()).expect("read").is_none());

        let entry = PlanEntry {
            name: "vpn".into(),
            image_dir: "/i/vpn".into(),
            root: "/r".into(),
        };
        RestorePlan::new(vec![entry.clone()], "6.12")
            .write(root.path())
            .expect("write");
        let plan = RestorePlan::pending(root.path())
            .expect("read")
            .expect("pending");
        assert_eq!(plan.entries, vec![entry]);

        RestorePlan::mark_done(root.path()).expect("done");
        assert!(RestorePlan::pending(root.path()).expect("read").is_none());
        assert!(root.path().join(PLAN_DONE_FILE).is_file());
    }

    #[test]
    fn unit_runs_restore_all_after_the_network() {
        let unit = restore_unit(
            Path::new("/opt/v/bin/vpnhop"),
            Path::new("/c"),
            Path::new("/i"),
        );
        assert!(
            unit.contains("ExecStart=/opt/v/bin/vpnhop --criu /c restore --all --image-root /i")
        );
        assert!(unit.contains("After=network-online.target"));
        assert!(unit.contains("ConditionPathExists=/i/restore-plan.json"));
        assert!(unit.contains("RequiresMountsFor=/i /opt/v/bin"));
        // Without these, systemd kills the restored shims once the oneshot has finished.
        assert!(unit.contains("RemainAfterExit=yes"));
        assert!(unit.contains("KillMode=process"));
    }

    #[test]
    fn a_kernel_without_kexec_is_refused_early() {
        let dir = tempfile::tempdir().expect("tempdir");
        let flag = dir.path().join("kexec_loaded");
        assert_eq!(
            check_support(&flag).expect_err("no kexec").to_string(),
            "this kernel cannot kexec (`/sys/kernel/kexec_loaded` is missing); nothing was changed"
        );
        fs::write(&flag, b"0").expect("write");
        check_support(&flag).expect("kexec");
    }
}
