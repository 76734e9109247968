//! `checkpoint`, shim side: dump the container into a sealed image directory.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::Utc;
use nix::fcntl::{renameat2, RenameFlags};
use nix::sys::signal::Signal;

use super::{io_err, ms_since, ContainerError};
use crate::criu::{self, Criu, DumpOptions, Iptables, NetworkLock, DUMP_LOG};
use crate::fsutil;
use crate::image::{self, ImageDir, ImageMeta, ProcessRef, Versions, FORMAT, META_FILE, SPEC_FILE};
use crate::network;
use crate::proc;
use crate::shim::CheckpointStats;
use crate::state::{ContainerState, Store};

/// Dumps the running container of `state` into `image_dir`.
///
/// The images are written into a sibling `.NAME.partial-PID` directory that is renamed to
/// `image_dir` only once sealed, so `image_dir` is never half-written and a previous checkpoint
/// there is replaced only by a complete one. Unless `leave_running`, CRIU leaves the tree
/// stopped and the caller kills it. If CRIU fails, it resumes the tree itself; if CRIU succeeds
/// but the images cannot be sealed, the tree is resumed here. Either way the container keeps
/// running and the partial directory is removed (CRIU's log stays in the state directory).
pub fn checkpoint(
    store: &Store,
    state: &ContainerState,
    criu: &Criu,
    image_dir: &Path,
    leave_running: bool,
) -> Result<CheckpointStats, ContainerError> {
    let started = Instant::now();
    let name = &state.name;
    let pid = state
        .pid
        .ok_or_else(|| ContainerError::NotRunning(name.clone()))?;

    // The keys under which the init's stdio pipes are handed back at restore (`--inherit-fd`).
    let stdio = (0..3)
        .map(|fd| {
            let link = PathBuf::from(format!("/proc/{pid}/fd/{fd}"));
            fs::read_link(&link)
                .map(|t| t.to_string_lossy().into_owned())
                .map_err(io_err(link))
        })
        .collect::<Result<Vec<_>, _>>()?;

    let parent = image_dir.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(parent).map_err(io_err(parent))?;
    let partial = ImageDir::new(parent.join(format!(".{name}.partial-{}", std::process::id())));
    let _ = fs::remove_dir_all(partial.path());
    partial.create()?;

    let timing = match write_images(store, state, criu, &partial, pid, stdio, leave_running) {
        Ok(timing) => timing,
        Err(Failure { error, dumped }) => {
            if dumped && !leave_running {
                resume(store, state, pid);
            }
            let _ = fs::remove_dir_all(partial.path());
            return Err(error);
        }
    };

    if let Err(error) = replace_dir(partial.path(), image_dir) {
        if !leave_running {
            resume(store, state, pid);
        }
        let _ = fs::remove_dir_all(partial.path());
        return Err(error);
    }
    let criu_phases = criu::stats::read_dump(&store.criu_work(name));
    let stats = CheckpointStats {
        frozen_ms: criu_phases.map(|p| p.frozen_ms),
        criu: criu_phases,
        dump_ms: timing.dump_ms,
        seal_ms: timing.seal_ms,
        total_ms: ms_since(started),
        image_bytes: image::du(image_dir),
    };
    tracing::info!(
        container = %name,
        image_dir = %image_dir.display(),
        frozen_ms = stats.frozen_ms,
        "dump written"
    );
    Ok(stats)
}

/// A failed checkpoint step, and whether CRIU had already dumped (and stopped) the tree.
struct Failure {
    error: ContainerError,
    dumped: bool,
}

impl<E: Into<ContainerError>> From<E> for Failure {
    fn from(error: E) -> Self {
        Failure {
            error: error.into(),
            dumped: false,
        }
    }
}

/// Wall times of the two steps of [`write_images`] (ms).
struct DumpTiming {
    dump_ms: f64,
    seal_ms: f64,
}

fn write_images(
    store: &Store,
    state: &ContainerState,
    criu: &Criu,
    image: &ImageDir,
    pid: i32,
    stdio: Vec<String>,
    leave_running: bool,
) -> Result<DumpTiming, Failure> {
    let spec_src = store.runtime_bundle(&state.name).join(SPEC_FILE);
    let spec_dst = image.path().join(SPEC_FILE);
    fs::copy(&spec_src, &spec_dst).map_err(|source| ContainerError::Copy {
        from: spec_src.clone(),
        to: spec_dst.clone(),
        source,
    })?;
    fs::set_permissions(&spec_dst, fs::Permissions::from_mode(0o600)).map_err(io_err(&spec_dst))?;

    let meta = ImageMeta {
        format: FORMAT,
        name: state.name.clone(),
        id: state.id.clone(),
        bundle: state.bundle.clone(),
        created: state.created,
        checkpointed: Utc::now(),
        wiring: state.network.clone(),
        stdio,
        versions: Versions {
            vpnhop: env!("CARGO_PKG_VERSION").to_string(),
            criu: criu.version().to_string(),
            kernel: proc::kernel_release(),
        },
        source: ProcessRef {
            boot_id: proc::boot_id(),
            pid,
            start: state.pid_start,
        },
        leave_running,
        network_lock: NetworkLock::for_tree(pid),
        iptables: Iptables::for_tree(pid),
    };
    image.write_json(META_FILE, &meta)?;

    network::ensure_loopback_up()?;

    // CRIU's log goes to the state directory, where it outlives a failed dump.
    let work = store.criu_work(&state.name);
    fsutil::create_private_dir(&work).map_err(io_err(&work))?;
    let took = criu.dump(&DumpOptions {
        pid,
        images_dir: image.criu_dir(),
        work_dir: work.clone(),
        leave_running,
        network_lock: meta.network_lock,
        iptables: meta.iptables,
        external_mounts: Vec::new(),
    })?;
    let dumped = |error: ContainerError| Failure {
        error,
        dumped: true,
    };
    let after_dump = Instant::now();

    let (from, to) = (work.join(DUMP_LOG), image.path().join(DUMP_LOG));
    fs::copy(&from, &to).map_err(|source| dumped(ContainerError::Copy { from, to, source }))?;

    // Everything reaches the disk before the directory gets its final name: after a reboot
    // it is all a restore has.
    image.seal().map_err(|e| dumped(e.into()))?;
    let seal_ms = ms_since(after_dump);
    tracing::debug!(container = %state.name, seal_ms, "images sealed");
    Ok(DumpTiming {
        dump_ms: took.as_secs_f64() * 1e3,
        seal_ms,
    })
}

/// Undoes `--leave-stopped` after a dump whose images could not be kept: lifts CRIU's network
/// lock (an `inet` table in the container's namespace) and continues every process of the
/// container.
fn resume(store: &Store, state: &ContainerState, pid: i32) {
    // Deleting the lock table is harmless where there is none (`--network-lock skip`).
    let netns = PathBuf::from(format!("/proc/{pid}/ns/net"));
    match criu::run_id(&store.criu_work(&state.name).join(DUMP_LOG)) {
        Some(id) => {
            if let Err(err) = network::remove_inet_table_in(&netns, &criu::lock_table(&id)) {
                tracing::error!(container = %state.name, "lifting CRIU's network lock: {err}");
            }
        }
        None => tracing::error!(container = %state.name, "no CRIU run id: network stays locked"),
    }

    for task in super::pids(&state.name) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(task), Signal::SIGCONT);
    }
    tracing::warn!(container = %state.name, "checkpoint abandoned, container resumed");
}

/// Renames the complete `partial` directory to `dst`. An older checkpoint at `dst` is swapped
/// out in one atomic exchange and removed afterwards, so `dst` always names a complete image.
fn replace_dir(partial: &Path, dst: &Path) -> Result<(), ContainerError> {
    let parent = dst.parent().unwrap_or(Path::new("/"));

    if dst.exists() {
        renameat2(None, partial, None, dst, RenameFlags::RENAME_EXCHANGE)
            .map_err(|errno| io_err(dst)(std::io::Error::from_raw_os_error(errno as i32)))?;
        // `partial` now holds the old checkpoint.
        let _ = fs::remove_dir_all(partial);
    } else {
        fs::rename(partial, dst).map_err(io_err(dst))?;
    }

    fsutil::sync_dir(parent).map_err(io_err(parent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacing_keeps_only_the_new_checkpoint() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dst = tmp.path().join("img");
        let partial = tmp.path().join(".img.partial");
        fs::create_dir(&dst).expect("old");
        fs::write(dst.join("old"), b"1").expect("old file");
        fs::create_dir(&partial).expect("new");
        fs::write(partial.join("new"), b"2").expect("new file");

        replace_dir(&partial, &dst).expect("replace");
        assert!(dst.join("new").exists() && !dst.join("old").exists());
        assert_eq!(fs::read_dir(tmp.path()).expect("ls").count(), 1);
    }
}
