//! Small file-system helpers: atomic writes and flushes to disk.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// How far a write must reach before it counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The page cache: runtime state, which a reboot discards anyway, or files flushed later
    /// together with others ([`sync_fs`]).
    Volatile,
    /// The disk (fsync) before the rename.
    Durable,
}

/// Writes `data` to `path` atomically: a temporary file beside it, then rename, so a reader
/// sees the old content or the new one, never half of it.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32, durability: Durability) -> io::Result<()> {
    let tmp = tmp_path(path);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(data)?;
        if durability == Durability::Durable {
            file.sync_all()?;
        }
        fs::rename(&tmp, path)
    })();

    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Flushes a directory's entries to disk, so a rename inside it survives a reboot.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Flushes the whole file system holding `path` to disk (syncfs(2)): one call for a directory
/// of many files, where an fsync per file would wait for the journal again and again.
pub fn sync_fs(path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    nix::unistd::syncfs(file.as_raw_fd()).map_err(io::Error::from)
}

/// Creates `dir` (and its parents) and restricts it to its owner.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp.{}", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_content_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");

        write_atomic(&path, b"old", 0o600, Durability::Durable).expect("first write");
        write_atomic(&path, b"new", 0o600, Durability::Volatile).expect("second write");
        sync_fs(dir.path()).expect("syncfs");

        assert_eq!(fs::read(&path).expect("read"), b"new");
        let entries: Vec<_> = fs::read_dir(dir.path()).expect("readdir").collect();
        assert_eq!(entries.len(), 1, "temporary file left behind");
        let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
