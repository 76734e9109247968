//! CRIU's own account of where a dump or a restore spent its time: the `stats-dump` and
//! `stats-restore` files it leaves in its work directory.
//!
//! Each file holds CRIU's image magic numbers, a 32-bit length and one `StatsEntry` protobuf
//! message (`images/stats.proto` in CRIU's source). Only a handful of varint fields are read, so
//! a small decoder here spares a protobuf code generator and a copy of CRIU's schema.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Name of the dump statistics in CRIU's work directory.
pub const DUMP_STATS: &str = "stats-dump";
/// Name of the restore statistics in CRIU's work directory.
pub const RESTORE_STATS: &str = "stats-restore";

/// Phases of one `criu dump`, in ms, and the pages it wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct DumpPhases {
    /// Stopping every task of the tree (`freezing_time`).
    pub freezing_ms: f64,
    /// From the tree stopped to the dump written (`frozen_time`): what the clients wait for.
    pub frozen_ms: f64,
    /// Collecting the memory pages, within the frozen time (`memdump_time`).
    pub memdump_ms: f64,
    /// Writing them out, within the frozen time (`memwrite_time`).
    pub memwrite_ms: f64,
    /// Pages written (`pages_written`).
    pub pages_written: u64,
}

/// Phases of one `criu restore`, in ms, and the pages it restored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RestorePhases {
    /// Forking the tree with its pids (`forking_time`).
    pub forking_ms: f64,
    /// From the tree forked to every task restored (`restore_time`).
    pub restore_ms: f64,
    /// Pages restored (`pages_restored`).
    pub pages_restored: u64,
}

/// The phases of the last dump whose statistics CRIU left in `work_dir`.
pub fn read_dump(work_dir: &Path) -> Option<DumpPhases> {
    let data = fs::read(work_dir.join(DUMP_STATS)).ok()?;
    let entry = stats_entry(&data)?;
    let dump = field(entry, 1)?.bytes?;
    let us = |n| field(dump, n).and_then(|f| f.varint).unwrap_or(0) as f64 / 1e3;

    Some(DumpPhases {
        freezing_ms: us(1),
        frozen_ms: field(dump, 2)?.varint? as f64 / 1e3,
        memdump_ms: us(3),
        memwrite_ms: us(4),
        pages_written: field(dump, 7).and_then(|f| f.varint).unwrap_or(0),
    })
}

/// The phases of the last restore whose statistics CRIU left in `work_dir`.
pub fn read_restore(work_dir: &Path) -> Option<RestorePhases> {
    let data = fs::read(work_dir.join(RESTORE_STATS)).ok()?;
    let entry = stats_entry(&data)?;
    let restore = field(entry, 2)?.bytes?;

    Some(RestorePhases {
        forking_ms: field(restore, 3)?.varint? as f64 / 1e3,
        restore_ms: field(restore, 4)?.varint? as f64 / 1e3,
        pages_restored: field(restore, 5).and_then(|f| f.varint).unwrap_or(0),
    })
}

/// The `StatsEntry` message of a stats file. CRIU writes one or two magic words before the
/// length, depending on the image type; the length that ends exactly at the end of the file is
/// the right one.
fn stats_entry(data: &[u8]) -> Option<&[u8]> {
    [4usize, 8].into_iter().find_map(|off| {
        let len = u32::from_le_bytes(data.get(off..off + 4)?.try_into().ok()?) as usize;
        (off + 4 + len == data.len()).then(|| &data[off + 4..])
    })
}

/// One protobuf field: the value of a varint, or the payload of a length-delimited field.
struct Field<'a> {
    varint: Option<u64>,
    bytes: Option<&'a [u8]>,
}

/// Finds field `want` in a protobuf message. Fixed-size fields are skipped; groups, which CRIU
/// never writes, end the search.
fn field(mut buf: &[u8], want: u64) -> Option<Field<'_>> {
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let (number, wire) = (key >> 3, key & 7);
        let value = match wire {
            0 => Field {
                varint: Some(varint(&mut buf)?),
                bytes: None,
            },
            2 => {
                let len = varint(&mut buf)? as usize;
                let bytes = buf.get(..len)?;
                buf = &buf[len..];
                Field {
                    varint: None,
                    bytes: Some(bytes),
                }
            }
            1 | 5 => {
                buf = buf.get(if wire == 1 { 8 } else { 4 }..)?;
                Field {
                    varint: None,
                    bytes: None,
                }
            }
            _ => return None,
        };
        if number == want {
            return Some(value);
        }
    }
    None
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first()?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stats file as CRIU lays it out: two magic words, the length, the message.
    fn stats_file(dir: &Path, name: &str, entry: &[u8]) {
        let mut file = vec![1, 2, 3, 4, 5, 6, 7, 8];
        file.extend_from_slice(&(entry.len() as u32).to_le_bytes());
        file.extend_from_slice(entry);
        fs::write(dir.join(name), &file).expect("write stats");
    }

    #[test]
    fn dump_phases_are_read_from_a_stats_image() {
        // StatsEntry{ dump: { freezing_time: 5, frozen_time: 94000, memdump_time: 300,
        // memwrite_time: 1200, pages_scanned: 9, pages_written: 450 } }
        let dump = [
            0x08, 0x05, 0x10, 0xb0, 0xde, 0x05, 0x18, 0xac, 0x02, 0x20, 0xb0, 0x09, 0x28, 0x09,
            0x38, 0xc2, 0x03,
        ];
        let mut entry = vec![0x0a, dump.len() as u8];
        entry.extend_from_slice(&dump);
        let dir = tempfile::tempdir().expect("tempdir");
        stats_file(dir.path(), DUMP_STATS, &entry);

        let phases = read_dump(dir.path()).expect("dump phases");
        assert_eq!(
            phases,
            DumpPhases {
                freezing_ms: 0.005,
                frozen_ms: 94.0,
                memdump_ms: 0.3,
                memwrite_ms: 1.2,
                pages_written: 450,
            }
        );
        assert_eq!(read_restore(dir.path()), None);
    }

    #[test]
    fn restore_phases_are_read_from_a_stats_image() {
        // StatsEntry{ restore: { pages_compared: 0, pages_skipped_cow: 0, forking_time: 2500,
        // restore_time: 41000, pages_restored: 460 } }
        let restore = [
            0x08, 0x00, 0x10, 0x00, 0x18, 0xc4, 0x13, 0x20, 0xa8, 0xc0, 0x02, 0x28, 0xcc, 0x03,
        ];
        let mut entry = vec![0x12, restore.len() as u8];
        entry.extend_from_slice(&restore);
        let dir = tempfile::tempdir().expect("tempdir");
        stats_file(dir.path(), RESTORE_STATS, &entry);

        let phases = read_restore(dir.path()).expect("restore phases");
        assert_eq!(phases.forking_ms, 2.5);
        assert_eq!(phases.restore_ms, 41.0);
        assert_eq!(phases.pages_restored, 460);
    }

    #[test]
    fn a_truncated_stats_file_reads_as_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        stats_file(dir.path(), DUMP_STATS, &[0x0a, 0x06, 0x08, 0x05]);
        let path = dir.path().join(DUMP_STATS);
        let mut data = fs::read(&path).expect("read");
        data.truncate(data.len() - 1);
        fs::write(&path, data).expect("write");

        assert_eq!(read_dump(dir.path()), None);
    }
}
