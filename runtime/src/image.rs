//! Checkpoint image directories: everything a restore needs besides the bundle.
//!
//! ```text
//! DIR/                 0700
//!   criu/              CRIU's images (memory pages hold the server's private keys)
//!   config.json        the container's spec as run
//!   container.json     name, id, bundle, host wiring, stdio descriptors, versions, times
//!   dump.log           CRIU's dump log
//!   manifest.json      SHA-256 of every file above; written last
//!   restored.json      written by a restore (not covered by the manifest)
//! ```
//!
//! A checkpoint is written into a sibling `.NAME.partial-PID` and renamed to `DIR` only once
//! complete, so a directory called `DIR` is never half-written; the manifest lets a restore
//! detect damage before CRIU runs.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::fsutil::{self, Durability};
use crate::network::Wiring;
use crate::proc;

/// Version of the image directory layout.
pub const FORMAT: u32 = 1;

/// Errors about image directories.
#[derive(Debug, Error)]
pub enum ImageError {
    /// The directory does not exist.
    #[error("image directory `{0}` not found")]
    NotFound(PathBuf),
    /// No manifest: the checkpoint did not complete or the directory was tampered with.
    #[error("image directory `{0}` is incomplete: manifest.json missing")]
    Incomplete(PathBuf),
    /// A file does not match the manifest.
    #[error("image directory `{dir}` is corrupt: `{file}` {problem}")]
    Corrupt {
        /// The image directory.
        dir: PathBuf,
        /// The file concerned, relative to it.
        file: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The layout version is not ours.
    #[error("image directory `{dir}` has format {found}; this vpnhop reads format {FORMAT}")]
    Format {
        /// The image directory.
        dir: PathBuf,
        /// The format found.
        found: u32,
    },
    /// A file could not be read or written.
    #[error("image file `{path}`")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A JSON file does not parse.
    #[error("image file `{path}` is malformed")]
    Json {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: serde_json::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Software versions recorded with a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Versions {
    /// vpnhop's version.
    pub vpnhop: String,
    /// CRIU's version.
    pub criu: String,
    /// The kernel the checkpoint was taken on.
    pub kernel: String,
}

/// The process a checkpoint or restore concerns, identified across pid reuse.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessRef {
    /// Boot the process belonged to.
    pub boot_id: String,
    /// Its host pid.
    pub pid: i32,
    /// Its start time in clock ticks.
    pub start: Option<u64>,
}

impl ProcessRef {
    /// Whether this process is alive now (same boot, same pid, same start time).
    pub fn is_alive(&self) -> bool {
        self.boot_id == proc::boot_id() && proc::is_alive(self.pid, self.start)
    }
}

/// `container.json`: what a restore needs to know about the container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageMeta {
    /// Layout version.
    pub format: u32,
    /// Container name at checkpoint time.
    pub name: String,
    /// Container id; the restored container keeps it.
    pub id: String,
    /// The bundle it was created from.
    pub bundle: PathBuf,
    /// When it was first created.
    pub created: DateTime<Utc>,
    /// When the checkpoint was taken.
    pub checkpointed: DateTime<Utc>,
    /// Host-side wiring to rebuild.
    pub wiring: Wiring,
    /// What fds 0, 1 and 2 of the init process were (e.g. `pipe:[1234]`), the keys of
    /// `--inherit-fd` at restore.
    pub stdio: Vec<String>,
    /// Versions of vpnhop, CRIU and the kernel.
    pub versions: Versions,
    /// The container's init at checkpoint time; if it still runs, the image must not be restored
    /// beside it.
    pub source: ProcessRef,
    /// Whether the container was left running.
    pub leave_running: bool,
    /// CRIU's network lock at dump; a restore must use the same.
    #[serde(default)]
    pub network_lock: crate::criu::NetworkLock,
    /// Which iptables tools CRIU was given at dump; a restore gives it the same. Images from
    /// before this field get the full set.
    #[serde(default)]
    pub iptables: crate::criu::Iptables,
}

/// `restored.json`: which process a restore produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoredMarker {
    /// The restored init.
    pub process: ProcessRef,
    /// Name it was restored under.
    pub name: String,
    /// State root it was restored into.
    pub root: PathBuf,
    /// When.
    pub restored: DateTime<Utc>,
}

/// `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    files: BTreeMap<String, String>,
}

/// Names of the files of an image directory.
pub const CRIU_DIR: &str = "criu";
/// The spec as run.
pub const SPEC_FILE: &str = "config.json";
/// [`ImageMeta`].
pub const META_FILE: &str = "container.json";
/// The manifest.
pub const MANIFEST_FILE: &str = "manifest.json";
/// [`RestoredMarker`].
pub const RESTORED_FILE: &str = "restored.json";

/// An image directory.
#[derive(Debug, Clone)]
pub struct ImageDir {
    path: PathBuf,
}

impl ImageDir {
    /// The image directory at `path` (nothing is checked yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        ImageDir { path: path.into() }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// CRIU's image subdirectory.
    pub fn criu_dir(&self) -> PathBuf {
        self.path.join(CRIU_DIR)
    }

    /// Creates the directory (0700) and its CRIU subdirectory.
    pub fn create(&self) -> Result<(), ImageError> {
        fsutil::create_private_dir(&self.criu_dir()).map_err(io_err(&self.path))?;
        fsutil::create_private_dir(&self.path).map_err(io_err(&self.path))
    }

    /// Writes a JSON file of the image (0600).
    pub fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<(), ImageError> {
        let path = self.path.join(name);
        let data = serde_json::to_vec_pretty(value).map_err(|source| ImageError::Json {
            path: path.clone(),
            source,
        })?;
        // The image files reach the disk together, in `seal`.
        fsutil::write_atomic(&path, &data, 0o600, Durability::Volatile).map_err(io_err(&path))
    }

    /// Reads a JSON file of the image.
    pub fn read_json<T: for<'de> Deserialize<'de>>(&self, name: &str) -> Result<T, ImageError> {
        let path = self.path.join(name);
        let data = fs::read(&path).map_err(io_err(&path))?;
        serde_json::from_slice(&data).map_err(|source| ImageError::Json { path, source })
    }

    /// Hashes every file, writes the manifest last, and flushes it all to disk.
    pub fn seal(&self) -> Result<(), ImageError> {
        let mut files = BTreeMap::new();
        for rel in self.files()? {
            let path = self.path.join(&rel);
            files.insert(rel, sha256(&path)?);
        }
        self.write_json(
            MANIFEST_FILE,
            &Manifest {
                format: FORMAT,
                files,
            },
        )?;

        // One flush of the file system for every file and directory entry written.
        fsutil::sync_fs(&self.path).map_err(io_err(&self.path))
    }

    /// Checks the directory against its manifest and returns its metadata; nothing is modified.
    pub fn verify(&self) -> Result<ImageMeta, ImageError> {
        if !self.path.is_dir() {
            return Err(ImageError::NotFound(self.path.clone()));
        }
        if !self.path.join(MANIFEST_FILE).is_file() {
            return Err(ImageError::Incomplete(self.path.clone()));
        }

        let manifest: Manifest = self.read_json(MANIFEST_FILE)?;
        if manifest.format != FORMAT {
            return Err(ImageError::Format {
                dir: self.path.clone(),
                found: manifest.format,
            });
        }
        let corrupt = |file: &str, problem| ImageError::Corrupt {
            dir: self.path.clone(),
            file: file.to_string(),
            problem,
        };

        for (rel, expected) in &manifest.files {
            let path = self.path.join(rel);
            if !path.is_file() {
                return Err(corrupt(rel, "is missing"));
            }
            if sha256(&path)? != *expected {
                return Err(corrupt(rel, "does not match its checksum"));
            }
        }
        for rel in self.files()? {
            if !manifest.files.contains_key(&rel) {
                return Err(corrupt(&rel, "is not in the manifest"));
            }
        }

        let meta: ImageMeta = self.read_json(META_FILE)?;
        if meta.format != FORMAT {
            return Err(ImageError::Format {
                dir: self.path.clone(),
                found: meta.format,
            });
        }
        Ok(meta)
    }

    /// The restore marker, if a restore left one.
    pub fn restored_marker(&self) -> Option<RestoredMarker> {
        self.read_json(RESTORED_FILE).ok()
    }

    /// Files covered by the manifest: everything but the manifest and the restore marker.
    fn files(&self) -> Result<Vec<String>, ImageError> {
        let mut out = Vec::new();
        for dir in [self.path.clone(), self.criu_dir()] {
            let entries = fs::read_dir(&dir).map_err(io_err(&dir))?;
            for entry in entries {
                let entry = entry.map_err(io_err(&dir))?;
                if !entry.file_type().map_err(io_err(&dir))?.is_file() {
                    continue;
                }
                let rel = entry
                    .path()
                    .strip_prefix(&self.path)
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if rel != MANIFEST_FILE && rel != RESTORED_FILE {
                    out.push(rel);
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

fn sha256(path: &Path) -> Result<String, ImageError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Total size in bytes of the files under `dir`.
pub fn du(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => du(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::tests::sample_wiring;

    fn sample_meta() -> ImageMeta {
        ImageMeta {
            format: FORMAT,
            name: "vpn".into(),
            id: "0123456789abcdef".into(),
            bundle: "/b".into(),
            created: Utc::now(),
            checkpointed: Utc::now(),
            wiring: sample_wiring(),
            stdio: vec!["pipe:[1]".into(), "pipe:[2]".into(), "pipe:[3]".into()],
            versions: Versions {
                vpnhop: "0".into(),
                criu: "4".into(),
                kernel: "6".into(),
            },
            source: ProcessRef {
                boot_id: "x".into(),
                pid: 1,
                start: None,
            },
            leave_running: false,
            network_lock: crate::criu::NetworkLock::Skip,
            iptables: crate::criu::Iptables::None,
        }
    }

    fn sealed() -> (tempfile::TempDir, ImageDir) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let image = ImageDir::new(tmp.path().join("img"));
        image.create().expect("create");
        fs::write(image.criu_dir().join("pages-1.img"), b"secret pages").expect("write");
        image.write_json(META_FILE, &sample_meta()).expect("meta");
        image.seal().expect("seal");
        (tmp, image)
    }

    #[test]
    fn sealed_directory_verifies() {
        let (_tmp, image) = sealed();
        assert_eq!(image.verify().expect("verify").name, "vpn");
    }

    #[test]
    fn missing_manifest_is_incomplete_and_nothing_is_deleted() {
        let (_tmp, image) = sealed();
        fs::remove_file(image.path().join(MANIFEST_FILE)).expect("rm");

        let err = image.verify().expect_err("incomplete");
        assert!(matches!(err, ImageError::Incomplete(_)), "{err}");
        assert!(image.criu_dir().join("pages-1.img").exists());
    }

    #[test]
    fn truncated_image_file_is_corrupt() {
        let (_tmp, image) = sealed();
        fs::write(image.criu_dir().join("pages-1.img"), b"secret").expect("truncate");

        let err = image.verify().expect_err("corrupt");
        assert_eq!(
            err.to_string(),
            format!(
                "image directory `{}` is corrupt: `criu/pages-1.img` does not match its checksum",
                image.path().display()
            )
        );
    }

    #[test]
    fn restore_marker_does_not_break_the_manifest() {
        let (_tmp, image) = sealed();
        let marker = RestoredMarker {
            process: ProcessRef {
                boot_id: proc::boot_id(),
                pid: 1,
                start: None,
            },
            name: "vpn".into(),
            root: "/run/vpnhop".into(),
            restored: Utc::now(),
        };
        image.write_json(RESTORED_FILE, &marker).expect("marker");
        image.verify().expect("still verifies");
    }

    #[test]
    fn image_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let (_tmp, image) = sealed();
        let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(image.path()), 0o700);
        assert_eq!(mode(&image.path().join(MANIFEST_FILE)), 0o600);
    }
}
