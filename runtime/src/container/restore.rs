//! `restore`, shim side: rebuild the host side and let CRIU bring the container back as a child
//! of this shim.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Instant;

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::Spec;

use super::{cgroups, io_err, ms_since, stdio_pipes, ContainerError, ShimStdio};
use crate::bundle::{cgroup_path, write_spec, BundleError};
use crate::criu::{self, Criu, RestoreOptions};
use crate::fsutil;
use crate::image::{self, ImageDir, ImageMeta, SPEC_FILE};
use crate::network::{self, NetError};
use crate::shim::RestoreStats;
use crate::state::{ContainerState, Store};

/// First descriptor number under which the container's stdio ends are handed to CRIU.
const INHERIT_FD_BASE: i32 = 100;

/// Restores the container of `state` from `image` (already verified into `meta`); returns the
/// restored init's host pid, the shim's ends of its new stdio pipes, and timings.
///
/// Must run in the shim, a child subreaper: CRIU restores detached and the restored init is
/// re-parented to the shim when CRIU exits. The image directory is only read (the shim adds its
/// restore marker afterwards). On failure the caller removes the host side with
/// [`super::cleanup`].
pub fn restore(
    store: &Store,
    state: &ContainerState,
    criu: &Criu,
    image: &ImageDir,
    meta: &ImageMeta,
) -> Result<(i32, ShimStdio, RestoreStats), ContainerError> {
    let started = Instant::now();
    let name = &state.name;
    let wiring = &state.network;

    let spec_path = image.path().join(SPEC_FILE);
    let mut spec = Spec::load(&spec_path).map_err(|source| BundleError::Config {
        path: spec_path.clone(),
        source,
    })?;
    // Restored under another name, the container gets that name's cgroups.
    if let Some(linux) = spec.linux_mut() {
        linux.set_cgroups_path(Some(cgroup_path(name)));
    }
    write_spec(&store.runtime_bundle(name), &spec)?;
    let rootfs = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .filter(|p| p.is_dir())
        .ok_or_else(|| BundleError::NoRootfs(meta.bundle.join("rootfs")))?;

    // CRIU recreates the veth pair itself; a leftover host end would make that fail late.
    if network::link_exists(&wiring.host_veth)? {
        return Err(NetError::LinkExists(wiring.host_veth.clone()).into());
    }

    let work = store.criu_work(name);
    fsutil::create_private_dir(&work).map_err(io_err(&work))?;
    let pidfile = work.join("restored.pid");
    let _ = fs::remove_file(&pidfile);

    let (shim_ends, container_ends) = stdio_pipes(name)?;
    let raw = [
        container_ends.stdin.as_raw_fd(),
        container_ends.stdout.as_raw_fd(),
        container_ends.stderr.as_raw_fd(),
    ];
    let mut inherit_fds = Vec::new();
    for (i, key) in meta.stdio.iter().enumerate().take(3) {
        if key.starts_with("pipe:") && !inherit_fds.iter().any(|(_, k)| k == key) {
            inherit_fds.push((INHERIT_FD_BASE + i as i32, key.clone()));
        }
    }

    // Three independent parts of the host side at once: `nft` in a child process, the cgroups
    // (libcgroups takes about as long) on a thread of their own, the netlink work here. The
    // thread moves the whole shim into the container's cgroups, and nothing forks until it is
    // done: only what starts afterwards (the conntrack deletion, CRIU and its tree) is in them.
    // Nothing between here and CRIU may fail without leaving them again.
    let host_started = Instant::now();
    let ports = network::start_install_ports(wiring)?;
    let (entered, wired) = thread::scope(|scope| {
        let entering = scope.spawn(|| {
            let since = Instant::now();
            cgroups::enter(name, &spec).map(|placement| (placement, ms_since(since)))
        });
        let wired = network::prepare_host(wiring, true)
            .map(|()| ms_since(host_started))
            .map_err(ContainerError::from);
        let entered = entering
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (entered, wired)
    });
    let (placement, cgroups_ms) = entered?;
    let wiring_ms = match wired {
        Ok(ms) => ms,
        Err(err) => {
            let _ = cgroups::leave(name, &placement);
            return Err(err);
        }
    };
    let host_ms = ms_since(started);
    tracing::debug!(container = %name, host_ms, wiring_ms, cgroups_ms, "host side ready");

    let opts = RestoreOptions {
        images_dir: image.criu_dir(),
        work_dir: work.clone(),
        root: rootfs.clone(),
        pidfile: pidfile.clone(),
        veths: vec![(
            wiring.inner_veth.clone(),
            wiring.host_veth.clone(),
            wiring.bridge.clone(),
        )],
        inherit_fds,
        external_mounts: Vec::new(),
        network_lock: meta.network_lock,
        iptables: meta.iptables,
    };

    // CRIU needs the bridge, not the published ports: `nft` finishes while CRIU restores (it
    // takes a fraction of CRIU's time), instead of before CRIU starts. A client packet that comes
    // before the rules is answered "port unreachable" and tracked without NAT, as on any host
    // before the restore; the deletion of stale flows, started once the rules are in, covers
    // both. The deletion walks the conntrack table and is collected after CRIU.
    let (result, published, flush) = thread::scope(|scope| {
        let restoring = scope.spawn(|| {
            criu.restore(&opts, |cmd| {
                let rootfs = rootfs.clone();
                // SAFETY: between fork and exec the child only makes system calls (unshare,
                // mount, dup2) on data prepared before the fork; nix formats short paths on the
                // stack.
                unsafe {
                    cmd.pre_exec(move || prepare_child(&rootfs, raw));
                }
                Ok(())
            })
        });
        let published = ports.wait().map(|()| ms_since(host_started));
        let flush = published
            .is_ok()
            .then(|| network::flush_stale_flows(wiring));
        let result = restoring
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (result, published, flush)
    });
    let left = cgroups::leave(name, &placement);
    drop(container_ends);
    if let Some(flush) = flush {
        flush.wait();
    }
    let took = result?;
    left?;

    let pid_text = fs::read_to_string(&pidfile).map_err(io_err(&pidfile))?;
    let pid: i32 = pid_text
        .trim()
        .parse()
        .map_err(|_| ContainerError::NotRunning(name.clone()))?;

    // Without its published ports the container would run unreachable: take the restored tree
    // down again (its init's death ends the pid namespace). The images are untouched.
    let ports_ms = match published {
        Ok(ms) => ms,
        Err(err) => {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            return Err(err.into());
        }
    };

    // The tree already runs: a failure here costs at most a second's ARP retry, not the
    // restore.
    let netns = PathBuf::from(format!("/proc/{pid}/ns/net"));
    if let Err(err) = network::seed_gateway_neighbour(wiring, &netns) {
        tracing::warn!(container = %name, "seeding the gateway's neighbour entry: {err}");
    }

    let stats = RestoreStats {
        host_ms,
        wiring_ms,
        cgroups_ms,
        ports_ms,
        restore_ms: took.as_secs_f64() * 1e3,
        criu: criu::stats::read_restore(&work),
        total_ms: ms_since(started),
        image_bytes: image::du(image.path()),
        ..RestoreStats::default()
    };
    tracing::info!(container = %name, pid, restore_ms = stats.restore_ms, "restored");
    Ok((pid, shim_ends, stats))
}

/// In CRIU's child: a private mount namespace in which the rootfs is a mount point (CRIU's
/// `--root` must be one), and the container's stdio ends at known descriptor numbers.
fn prepare_child(rootfs: &Path, stdio: [i32; 3]) -> std::io::Result<()> {
    unshare(CloneFlags::CLONE_NEWNS)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    mount(
        Some(rootfs),
        rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )?;

    for (i, fd) in stdio.iter().enumerate() {
        // SAFETY: dup2(2) on descriptors this process owns.
        if unsafe { libc::dup2(*fd, INHERIT_FD_BASE + i as i32) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
