//! The protocol between `vpnhop` and a container's shim, and the client side of it.
//!
//! The shim serves a Unix stream socket (`shim.sock` in the container's state directory). A
//! client writes one JSON request line and reads one JSON response line. Requests are answered
//! one at a time, so verbs on one container never interleave inside the shim either. At start
//! the shim writes one [`Ready`] line to its stdout, which `vpnhop` reads to learn whether the
//! container came up.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::criu::stats::{DumpPhases, RestorePhases};

/// Errors talking to a shim.
#[derive(Debug, Error)]
pub enum ShimError {
    /// The socket could not be reached: the shim is gone.
    #[error("shim of container `{name}` is not running (socket `{socket}`)")]
    Unreachable {
        /// The container.
        name: String,
        /// The socket path.
        socket: PathBuf,
        /// The connect error.
        #[source]
        source: io::Error,
    },
    /// The exchange broke off.
    #[error("talking to the shim of container `{name}`")]
    Io {
        /// The container.
        name: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The answer does not parse.
    #[error("malformed answer from the shim of container `{name}`")]
    Malformed {
        /// The container.
        name: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
}

/// A request to a shim.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Is the container alive? Answered with [`Response::Running`] or [`Response::Exited`].
    Status,
    /// SIGTERM the init, SIGKILL after `timeout_secs`, wait for it to exit.
    Stop {
        /// Grace period in seconds.
        timeout_secs: u64,
    },
    /// Dump the container into `image_dir`.
    Checkpoint {
        /// The `criu` binary to use.
        criu: PathBuf,
        /// Final image directory.
        image_dir: PathBuf,
        /// Keep the container running afterwards.
        leave_running: bool,
    },
}

/// Timings and size of a checkpoint.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct CheckpointStats {
    /// Time the container's processes were frozen, from CRIU's stats (ms), when readable.
    pub frozen_ms: Option<f64>,
    /// CRIU's own phases of the dump, when its statistics were readable.
    #[serde(default)]
    pub criu: Option<DumpPhases>,
    /// Wall time of `criu dump` (ms).
    pub dump_ms: f64,
    /// Sealing the images after the dump: log copy, checksums, manifest, `syncfs` (ms).
    #[serde(default)]
    pub seal_ms: f64,
    /// Wall time of the whole checkpoint verb in the shim (ms).
    pub total_ms: f64,
    /// Bytes in the image directory.
    pub image_bytes: u64,
}

/// Timings of a restore.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct RestoreStats {
    /// Verifying the image directory against its manifest, in the CLI (ms).
    #[serde(default)]
    pub verify_ms: f64,
    /// From starting the shim to its ready line, in the CLI (ms): all of the shim's work below
    /// plus its start-up.
    #[serde(default)]
    pub shim_ms: f64,
    /// Rebuilding the host side CRIU needs: bridge, cgroups (ms).
    pub host_ms: f64,
    /// The netlink part of `host_ms`: bridge, forwarding, neighbour entry (ms). The cgroups are
    /// set up beside it.
    #[serde(default)]
    pub wiring_ms: f64,
    /// The cgroup part of `host_ms`: creating the container's cgroups and entering them (ms).
    #[serde(default)]
    pub cgroups_ms: f64,
    /// From the start of the host side to the published ports' rules in place (ms): `nft`
    /// starts with the host side and finishes while CRIU restores.
    #[serde(default)]
    pub ports_ms: f64,
    /// Wall time of `criu restore` (ms).
    pub restore_ms: f64,
    /// CRIU's own phases of the restore, when its statistics were readable.
    #[serde(default)]
    pub criu: Option<RestorePhases>,
    /// Wall time of the whole restore in the shim (ms).
    pub total_ms: f64,
    /// Bytes in the image directory.
    pub image_bytes: u64,
}

/// A shim's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// The container runs with this init pid.
    Running {
        /// Host pid of the init.
        pid: i32,
    },
    /// The container's init has exited.
    Exited {
        /// Its exit code (128+N for signal N).
        exit_code: i32,
    },
    /// A checkpoint was written.
    Checkpointed {
        /// Where.
        image_dir: PathBuf,
        /// How long it took.
        stats: CheckpointStats,
    },
    /// The request failed; the message names the object.
    Error {
        /// One line.
        message: String,
    },
}

/// What the shim reports once on its stdout at start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Ready {
    /// The container runs.
    Started {
        /// Host pid of the init.
        pid: i32,
        /// Restore timings, for a restore.
        restore: Option<RestoreStats>,
    },
    /// It could not be created or restored; everything created was removed.
    Failed {
        /// One line.
        message: String,
    },
}

/// Sends `request` to the shim of `name` listening on `socket` and returns its answer.
pub fn call(name: &str, socket: &Path, request: &Request) -> Result<Response, ShimError> {
    let stream = UnixStream::connect(socket).map_err(|source| ShimError::Unreachable {
        name: name.to_string(),
        socket: socket.to_path_buf(),
        source,
    })?;
    let io_err = |source| ShimError::Io {
        name: name.to_string(),
        source,
    };

    // A stop may take its whole grace period; a checkpoint a few seconds.
    stream
        .set_read_timeout(Some(Duration::from_secs(600)))
        .map_err(io_err)?;
    let mut line = serde_json::to_string(request).map_err(|source| ShimError::Malformed {
        name: name.to_string(),
        source,
    })?;
    line.push('\n');
    (&stream).write_all(line.as_bytes()).map_err(io_err)?;

    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(io_err)?;
    serde_json::from_str(&answer).map_err(|source| ShimError::Malformed {
        name: name.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_json_lines() {
        let req = Request::Checkpoint {
            criu: "/c".into(),
            image_dir: "/img".into(),
            leave_running: true,
        };
        let text = serde_json::to_string(&req).expect("json");
        assert_eq!(
            text,
            r#"{"op":"checkpoint","criu":"/c","image_dir":"/img","leave_running":true}"#
        );

        let back: Request = serde_json::from_str(&text).expect("parse");
        assert!(matches!(
            back,
            Request::Checkpoint {
                leave_running: true,
                ..
            }
        ));
    }

    #[test]
    fn unreachable_shim_names_the_container() {
        let err = call("vpn", Path::new("/nonexistent/shim.sock"), &Request::Status)
            .expect_err("no shim");
        assert!(
            err.to_string()
                .starts_with("shim of container `vpn` is not running"),
            "{err}"
        );
    }
}
