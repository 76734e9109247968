//! The container's cgroups, managed with libcgroups as libcontainer does at create time.

use std::fs;
use std::path::{Path, PathBuf};

use libcgroups::common::{
    create_cgroup_manager, AnyCgroupManager, CgroupConfig, CgroupManager, ControllerOpt,
};
use nix::unistd::Pid;
use oci_spec::runtime::Spec;

use super::ContainerError;
use crate::bundle::cgroup_path;

fn cgroup_err(
    name: &str,
) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> ContainerError {
    let path = cgroup_path(name);
    move |source| ContainerError::Cgroup { path, source }
}

fn manager(name: &str) -> Result<AnyCgroupManager, ContainerError> {
    create_cgroup_manager(CgroupConfig {
        cgroup_path: cgroup_path(name),
        systemd_cgroup: false,
        container_name: name.to_string(),
    })
    .map_err(|e| cgroup_err(name)(Box::new(e)))
}

/// Kills whatever is left in the container's cgroups and deletes them, and the common `vpnhop`
/// parent of each hierarchy once no container is left in it.
pub(crate) fn remove(name: &str) -> Result<(), ContainerError> {
    manager(name)?
        .remove()
        .map_err(|e| cgroup_err(name)(Box::new(e)))?;

    let path = cgroup_path(name);
    let parent = path.parent().unwrap_or(Path::new("/vpnhop"));
    let relative = parent.strip_prefix("/").unwrap_or(parent);
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for mount in cgroup_mounts(&mountinfo) {
        // Fails harmlessly while another container still has its cgroup there.
        let _ = fs::remove_dir(mount.join(relative));
    }
    Ok(())
}

/// Checks that the cgroup hierarchies are where libcgroups looks for them. `ip netns exec`
/// mounts a fresh sysfs over /sys, hiding them: run vpnhop with `nsenter --net` there.
pub fn check_cgroups() -> Result<(), ContainerError> {
    libcgroups::common::get_cgroup_setup()
        .map(|_| ())
        .map_err(|e| ContainerError::NoCgroups {
            source: Box::new(e),
        })
}

fn cgroup_mounts(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let fstype = post.split_whitespace().next()?;
            if matches!(fstype, "cgroup" | "cgroup2") {
                Some(PathBuf::from(pre.split_whitespace().nth(4)?))
            } else {
                None
            }
        })
        .collect()
}

/// Host pids of every process in the container's cgroups.
pub fn pids(name: &str) -> Vec<i32> {
    manager(name)
        .ok()
        .and_then(|m| m.get_all_pids().ok())
        .map(|pids| pids.into_iter().map(|p| p.as_raw()).collect())
        .unwrap_or_default()
}

/// Where the calling process sits now: the `cgroup.procs` file of each of its hierarchies.
pub(crate) struct Placement(Vec<PathBuf>);

/// Creates the container's cgroups with the spec's device rules and moves the calling process
/// into them, so that a child it forks (CRIU) and the tree that child restores start there.
/// Returns where the caller was, for [`leave`].
///
/// CRIU could create the cgroups itself, but its creation of v1 cpuset cgroups fails on this
/// kind of host (cpuset.cpus and cpuset.mems must be filled first), which libcgroups handles.
pub(crate) fn enter(name: &str, spec: &Spec) -> Result<Placement, ContainerError> {
    let before = placement().map_err(|e| cgroup_err(name)(Box::new(e)))?;
    let manager = manager(name)?;

    // TODO: moving a whole process takes cgroup_threadgroup_rwsem for writing, which waits for
    // an RCU grace period (up to ~16 ms here, in the clients' wait) unless the hierarchies are
    // mounted with `favordynmods`. Moving only the thread that forks CRIU (the v1 `tasks` file)
    // would not wait, but libcgroups moves processes (`cgroup.procs`).
    manager
        .add_task(Pid::this())
        .map_err(|e| cgroup_err(name)(Box::new(e)))?;
    if let Some(resources) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) {
        let opt = ControllerOpt {
            resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        };
        manager
            .apply(&opt)
            .map_err(|e| cgroup_err(name)(Box::new(e)))?;
    }

    Ok(before)
}

/// Moves the calling process back to where [`enter`] found it.
pub(crate) fn leave(name: &str, placement: &Placement) -> Result<(), ContainerError> {
    let pid = std::process::id().to_string();
    for procs in &placement.0 {
        fs::write(procs, &pid).map_err(|e| cgroup_err(name)(Box::new(e)))?;
    }
    Ok(())
}

/// Reads /proc/self/cgroup and /proc/self/mountinfo into the `cgroup.procs` files of the
/// caller's current cgroups, one per mounted hierarchy.
fn placement() -> std::io::Result<Placement> {
    let cgroups = fs::read_to_string("/proc/self/cgroup")?;
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    let mut files = Vec::new();

    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if let Some(mount) = hierarchy_mount(&mountinfo, controllers) {
            let file = mount
                .join(path.trim_start_matches('/'))
                .join("cgroup.procs");
            if file.exists() {
                files.push(file);
            }
        }
    }
    Ok(Placement(files))
}

/// Mount point of the cgroup hierarchy holding `controllers` (empty for cgroup2).
fn hierarchy_mount(mountinfo: &str, controllers: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        let mount_point = pre.split_whitespace().nth(4)?;
        let mut post = post.split_whitespace();
        let fstype = post.next()?;
        let options = post.nth(1).unwrap_or("");

        let matches = match fstype {
            "cgroup2" => controllers.is_empty(),
            "cgroup" => {
                !controllers.is_empty()
                    && controllers
                        .split(',')
                        .all(|c| options.split(',').any(|o| o == c))
            }
            _ => false,
        };
        matches.then(|| Path::new(mount_point).to_path_buf())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
30 25 0:26 / /sys/fs/cgroup/cpuset rw,nosuid - cgroup cgroup rw,cpuset
31 25 0:27 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,xattr,name=systemd
32 25 0:28 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
33 25 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct";

    #[test]
    fn hierarchies_are_found_by_controller() {
        let m = |c| hierarchy_mount(MOUNTINFO, c).map(|p| p.display().to_string());
        assert_eq!(m("cpuset").as_deref(), Some("/sys/fs/cgroup/cpuset"));
        assert_eq!(m("name=systemd").as_deref(), Some("/sys/fs/cgroup/systemd"));
        assert_eq!(m("").as_deref(), Some("/sys/fs/cgroup/unified"));
        assert_eq!(
            m("cpu,cpuacct").as_deref(),
            Some("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert_eq!(m("memory"), None);
    }
}
