//! The container state store under the runtime root (`--root`, default `/run/vpnhop`).
//!
//! One directory per container holds `state.json` (written atomically: temporary file, then
//! rename), the shim's control socket, the container log and the shim's own log. Verbs that
//! change a container take its `ops.lock` for their whole run, so two of them never interleave;
//! allocation of names and addresses takes the root's lock.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::fsutil::{self, Durability};
use crate::network::Wiring;
use crate::proc;

/// Errors of the state store.
#[derive(Debug, Error)]
pub enum StateError {
    /// No directory for this name under the root.
    #[error("no such container `{0}`")]
    NotFound(String),
    /// The name is taken.
    #[error("container name `{0}` is already in use")]
    AlreadyExists(String),
    /// A file or directory of the store could not be read or written.
    #[error("state `{path}`")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// `state.json` is not what we wrote.
    #[error("state `{path}` is corrupt")]
    Corrupt {
        /// The state file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A lock could not be taken.
    #[error("locking `{path}`")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The errno of flock(2).
        #[source]
        source: nix::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Life-cycle status of a container, as `ps` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The shim is setting it up.
    Creating,
    /// Its init process runs.
    Running,
    /// Its init process exited or was killed.
    Stopped,
    /// It was dumped by `checkpoint` and no longer runs here.
    Checkpointed,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Status::Creating => "creating",
            Status::Running => "running",
            Status::Stopped => "stopped",
            Status::Checkpointed => "checkpointed",
        };
        f.write_str(s)
    }
}

/// Everything the runtime knows about one container; `inspect` prints it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerState {
    /// User-visible name, unique under the root.
    pub name: String,
    /// Stable id; survives checkpoint and restore, names the veth and the netfilter table.
    pub id: String,
    /// What the runtime last recorded.
    pub status: Status,
    /// The bundle the container was created from.
    pub bundle: PathBuf,
    /// When `run` created it.
    pub created: DateTime<Utc>,
    /// When its init process started (or was restored).
    pub started: Option<DateTime<Utc>>,
    /// When it stopped.
    pub finished: Option<DateTime<Utc>>,
    /// Host pid of the container's init process.
    pub pid: Option<i32>,
    /// Start time of `pid`, to tell it from a later process with the same pid.
    pub pid_start: Option<u64>,
    /// Pid of the container's shim.
    pub shim_pid: Option<i32>,
    /// Start time of `shim_pid`.
    pub shim_start: Option<u64>,
    /// Exit status of the init process (128+N for a signal).
    pub exit_code: Option<i32>,
    /// Host-side wiring, exactly as created, so that `rm` and `restore` can undo or redo it.
    pub network: Wiring,
    /// Image directory this container was restored from.
    pub restored_from: Option<PathBuf>,
    /// Image directory of its last checkpoint.
    pub checkpoint: Option<PathBuf>,
}

impl ContainerState {
    /// The status as observed now: a container recorded as running whose init process is gone
    /// (the shim died, or the machine rebooted) shows as stopped.
    pub fn observed_status(&self) -> Status {
        match (self.status, self.pid) {
            (Status::Running, Some(pid)) if !proc::is_alive(pid, self.pid_start) => Status::Stopped,
            (status, _) => status,
        }
    }

    /// Whether the shim that monitors this container still runs.
    pub fn shim_alive(&self) -> bool {
        self.shim_pid
            .is_some_and(|pid| proc::is_alive(pid, self.shim_start))
    }
}

/// The state root.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// A store rooted at `root`; nothing is created until a container is.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Store { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory of container `name`.
    pub fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Control socket of `name`'s shim.
    pub fn socket(&self, name: &str) -> PathBuf {
        self.dir(name).join("shim.sock")
    }

    /// The container's stdout and stderr, as kept by the shim.
    pub fn container_log(&self, name: &str) -> PathBuf {
        self.dir(name).join("container.log")
    }

    /// The shim's own log.
    pub fn shim_log(&self, name: &str) -> PathBuf {
        self.dir(name).join("shim.log")
    }

    /// The bundle as run: the user's spec plus what the runtime sets (cgroups path, rootfs).
    pub fn runtime_bundle(&self, name: &str) -> PathBuf {
        self.dir(name).join("bundle")
    }

    /// libcontainer's own state directory for `name`.
    pub fn libcontainer_root(&self, name: &str) -> PathBuf {
        self.dir(name).join("libcontainer")
    }

    /// Scratch directory for CRIU's logs and work files.
    pub fn criu_work(&self, name: &str) -> PathBuf {
        self.dir(name).join("criu")
    }

    /// Creates the directory of a new container and its first state, failing if the name is taken.
    pub fn create(&self, state: &ContainerState) -> Result<(), StateError> {
        fsutil::create_private_dir(&self.root).map_err(io_err(&self.root))?;

        let dir = self.dir(&state.name);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                return Err(StateError::AlreadyExists(state.name.clone()))
            }
            Err(err) => return Err(io_err(&dir)(err)),
        }

        self.save(state)
    }

    /// Reads the state of `name`.
    pub fn load(&self, name: &str) -> Result<ContainerState, StateError> {
        let path = self.dir(name).join("state.json");
        let data = match fs::read(&path) {
            Ok(data) => data,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(StateError::NotFound(name.to_string()))
            }
            Err(err) => return Err(io_err(&path)(err)),
        };

        serde_json::from_slice(&data).map_err(|source| StateError::Corrupt { path, source })
    }

    /// Replaces the state of a container atomically.
    pub fn save(&self, state: &ContainerState) -> Result<(), StateError> {
        let path = self.dir(&state.name).join("state.json");
        let data = serde_json::to_vec_pretty(state).map_err(|source| StateError::Corrupt {
            path: path.clone(),
            source,
        })?;

        fsutil::write_atomic(&path, &data, 0o600, Durability::Volatile).map_err(io_err(&path))
    }

    /// All containers with a readable state, sorted by creation time.
    pub fn list(&self) -> Result<Vec<ContainerState>, StateError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(io_err(&self.root)(err)),
        };

        let mut states = Vec::new();
        for entry in entries.flatten() {
            // Dot directories (`.failed`) hold no live container.
            if !entry.path().is_dir() || entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            match self.load(&name) {
                Ok(state) => states.push(state),
                Err(StateError::NotFound(_)) => {}
                Err(err) => tracing::warn!(container = %name, "skipping unreadable state: {err}"),
            }
        }

        states.sort_by_key(|s| s.created);
        Ok(states)
    }

    /// Removes the directory of `name` and everything in it, and the logs of a failed attempt
    /// kept under that name.
    pub fn remove(&self, name: &str) -> Result<(), StateError> {
        let _ = fs::remove_dir_all(self.root.join(".failed").join(name));
        let dir = self.dir(name);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(io_err(&dir)(err)),
        }
    }

    /// After a failed `run` or `restore`: moves the container's directory, logs included, to
    /// `ROOT/.failed/NAME` (replacing an older one) so the name is free again; returns where.
    pub fn keep_failed(&self, name: &str) -> Result<PathBuf, StateError> {
        let failed = self.root.join(".failed");
        fs::create_dir_all(&failed).map_err(io_err(&failed))?;

        let dst = failed.join(name);
        let _ = fs::remove_dir_all(&dst);
        let src = self.dir(name);
        fs::rename(&src, &dst).map_err(io_err(&src))?;
        Ok(dst)
    }

    /// Takes the per-container operation lock, waiting for a verb already under way.
    pub fn lock(&self, name: &str) -> Result<Flock<File>, StateError> {
        let dir = self.dir(name);
        if !dir.is_dir() {
            return Err(StateError::NotFound(name.to_string()));
        }
        lock_file(&dir.join("ops.lock"))
    }

    /// Takes the root lock that serializes name and address allocation.
    pub fn lock_root(&self) -> Result<Flock<File>, StateError> {
        fsutil::create_private_dir(&self.root).map_err(io_err(&self.root))?;
        lock_file(&self.root.join(".lock"))
    }
}

fn lock_file(path: &Path) -> Result<Flock<File>, StateError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;

    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, source)| StateError::Lock {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::tests::sample_wiring;

    fn sample(name: &str) -> ContainerState {
        ContainerState {
            name: name.to_string(),
            id: "0123456789abcdef0123456789abcdef".to_string(),
            status: Status::Running,
            bundle: PathBuf::from("/b"),
            created: Utc::now(),
            started: None,
            finished: None,
            pid: None,
            pid_start: None,
            shim_pid: None,
            shim_start: None,
            exit_code: None,
            network: sample_wiring(),
            restored_from: None,
            checkpoint: None,
        }
    }

    #[test]
    fn create_refuses_a_name_in_use() {
        let root = tempfile::tempdir().expect("tempdir");
        let store = Store::new(root.path());

        store.create(&sample("vpn")).expect("first create");
        let err = store.create(&sample("vpn")).expect_err("second create");
        assert!(matches!(err, StateError::AlreadyExists(_)), "{err}");
    }

    #[test]
    fn save_load_and_list_round_trip() {
        let root = tempfile::tempdir().expect("tempdir");
        let store = Store::new(root.path());
        store.create(&sample("a")).expect("create a");
        store.create(&sample("b")).expect("create b");

        let mut b = store.load("b").expect("load");
        b.status = Status::Stopped;
        store.save(&b).expect("save");

        let names: Vec<_> = store
            .list()
            .expect("list")
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(store.load("b").expect("load").status, Status::Stopped);
        assert!(matches!(store.load("c"), Err(StateError::NotFound(_))));
    }

    #[test]
    fn running_container_without_a_live_init_shows_as_stopped() {
        let mut state = sample("x");
        state.pid = Some(i32::MAX - 1);
        assert_eq!(state.observed_status(), Status::Stopped);
    }
}
