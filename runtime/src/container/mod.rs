//! Container life-cycle operations, one file per verb.
//!
//! `create` and `restore` run in the shim, which becomes the parent of the container's init;
//! `checkpoint` runs in the shim too, which owns the container while CRIU dumps it; `cleanup`
//! removes the host side and runs wherever a container is removed. libcontainer creates the
//! container; CRIU dumps and restores it; the wiring comes from [`crate::network`].

mod cgroups;
mod checkpoint;
mod cleanup;
mod create;
mod restore;

use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Instant;

use thiserror::Error;

pub use cgroups::{check_cgroups, pids};
pub use checkpoint::checkpoint;
pub use cleanup::{cleanup, teardown_after_exit};
pub use create::create;
pub use restore::restore;

use crate::bundle::BundleError;
use crate::criu::CriuError;
use crate::image::ImageError;
use crate::network::NetError;
use crate::state::StateError;

/// Errors of container operations.
#[derive(Debug, Error)]
pub enum ContainerError {
    /// The state store.
    #[error(transparent)]
    State(#[from] StateError),
    /// The bundle.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The host-side wiring.
    #[error(transparent)]
    Net(#[from] NetError),
    /// CRIU.
    #[error(transparent)]
    Criu(#[from] CriuError),
    /// The image directory.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// libcontainer refused or failed.
    #[error("creating container `{name}`")]
    Libcontainer {
        /// The container.
        name: String,
        /// libcontainer's error.
        #[source]
        source: Box<libcontainer::error::LibcontainerError>,
    },
    /// A cgroup operation failed.
    #[error("cgroup `{path}`")]
    Cgroup {
        /// The cgroup path.
        path: PathBuf,
        /// libcgroups' error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No cgroup hierarchy where libcgroups expects one.
    #[error(
        "no cgroup hierarchy at `/sys/fs/cgroup` (under `ip netns exec`, which remounts /sys? \
         use `nsenter --net=/run/netns/NAME` instead)"
    )]
    NoCgroups {
        /// libcgroups' error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A system call on behalf of the container failed.
    #[error("{op} for container `{name}`")]
    Sys {
        /// What was being done.
        op: &'static str,
        /// The container.
        name: String,
        /// The errno.
        #[source]
        source: nix::Error,
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
    /// A file could not be copied.
    #[error("copying `{from}` to `{to}`")]
    Copy {
        /// The source.
        from: PathBuf,
        /// The destination.
        to: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The container has no init process on record.
    #[error("container `{0}` has no running process")]
    NotRunning(String),
}

/// The shim's ends of the container's stdio pipes.
#[derive(Debug)]
pub struct ShimStdio {
    /// Write end of the container's stdin; never written, kept so stdin stays open.
    pub stdin: OwnedFd,
    /// Read end of the container's stdout.
    pub stdout: OwnedFd,
    /// Read end of the container's stderr.
    pub stderr: OwnedFd,
}

/// The container's ends of its stdio pipes.
#[derive(Debug)]
pub(crate) struct ContainerStdio {
    pub(crate) stdin: OwnedFd,
    pub(crate) stdout: OwnedFd,
    pub(crate) stderr: OwnedFd,
}

/// Three pipes: the container gets one end of each, the shim the other.
pub(crate) fn stdio_pipes(name: &str) -> Result<(ShimStdio, ContainerStdio), ContainerError> {
    let pipe = || {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|source| ContainerError::Sys {
            op: "creating stdio pipes",
            name: name.to_string(),
            source,
        })
    };
    let (stdin_r, stdin_w) = pipe()?;
    let (stdout_r, stdout_w) = pipe()?;
    let (stderr_r, stderr_w) = pipe()?;

    Ok((
        ShimStdio {
            stdin: stdin_w,
            stdout: stdout_r,
            stderr: stderr_r,
        },
        ContainerStdio {
            stdin: stdin_r,
            stdout: stdout_w,
            stderr: stderr_w,
        },
    ))
}

/// Milliseconds since `start`, as the verbs' statistics report them.
fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}

fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> ContainerError {
    let path = path.into();
    move |source| ContainerError::Io { path, source }
}
