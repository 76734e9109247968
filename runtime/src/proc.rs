//! Facts about processes and the running kernel read from `/proc`.

use std::fs;

use nix::sys::signal::kill;
use nix::unistd::Pid;

/// Start time of `pid` in clock ticks since boot (field 22 of `/proc/PID/stat`); together with
/// the pid and the boot id it names one process for good, across pid reuse.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last `)`.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is alive and still the process that started at `start` (when given). A zombie
/// counts as dead: its parent may take a while to reap it. So does a process that is exiting or
/// has SIGKILL pending: it never runs its own code again, though closing its files (a tun
/// device among them) can take a while.
pub fn is_alive(pid: i32, start: Option<u64>) -> bool {
    if pid <= 0 || kill(Pid::from_raw(pid), None).is_err() || is_zombie(pid) || is_dying(pid) {
        return false;
    }

    match (start, start_time(pid)) {
        (Some(expected), Some(actual)) => expected == actual,
        (Some(_), None) => false,
        (None, _) => true,
    }
}

/// Whether `pid` has exited but not yet been reaped.
pub fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rfind(')').map(|i| stat[i + 2..].starts_with('Z')))
        .unwrap_or(false)
}

/// Whether `pid` is on its way out: exiting (`PF_EXITING` in field 9 of `/proc/PID/stat`) or
/// with SIGKILL pending for it or its thread group (`SigPnd`, `ShdPnd` in `/proc/PID/status`).
pub fn is_dying(pid: i32) -> bool {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    dying(&stat, &status)
}

fn dying(stat: &str, status: &str) -> bool {
    const PF_EXITING: u64 = 0x4;
    const SIGKILL_BIT: u64 = 1 << (libc::SIGKILL - 1);

    let exiting = stat
        .rfind(')')
        .and_then(|i| stat.get(i + 2..))
        .and_then(|rest| rest.split_whitespace().nth(6)?.parse::<u64>().ok())
        .is_some_and(|flags| flags & PF_EXITING != 0);
    let killed = status
        .lines()
        .filter_map(|l| {
            l.strip_prefix("SigPnd:")
                .or_else(|| l.strip_prefix("ShdPnd:"))
        })
        .filter_map(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .any(|mask| mask & SIGKILL_BIT != 0);
    exiting || killed
}

/// Resident memory of `pid` in bytes (VmRSS).
pub fn rss_bytes(pid: i32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib << 10)
}

/// The kernel's id of this boot: distinguishes a process of this boot from one of an earlier boot.
pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// `uname -r`.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_with_its_start_time() {
        let me = std::process::id() as i32;
        let start = start_time(me).expect("start time of self");
        assert!(is_alive(me, Some(start)));
        assert!(!is_alive(me, Some(start + 1)));
        assert!(!is_zombie(me));
    }

    /// A checkpointed container's init was still closing its tun device when a restore that
    /// followed at once looked at it, and the restore refused "a second copy".
    #[test]
    fn exiting_or_killed_processes_are_dying() {
        let stat = |flags: u64| format!("42 (open vpn) R 1 42 42 0 -1 {flags} 0 0");
        let status =
            |pnd: &str, shd: &str| format!("Name:\topenvpn\nSigPnd:\t{pnd}\nShdPnd:\t{shd}\n");

        assert!(!dying(
            &stat(0x400100),
            &status("0000000000000000", "0000000000000000")
        ));
        assert!(dying(
            &stat(0x400104),
            &status("0000000000000000", "0000000000000000")
        ));
        assert!(dying(
            &stat(0x400100),
            &status("0000000000000100", "0000000000000000")
        ));
        assert!(dying(
            &stat(0x400100),
            &status("0000000000000000", "0000000000000100")
        ));
        // SIGTERM pending is no death sentence.
        assert!(!dying(
            &stat(0x400100),
            &status("0000000000004000", "0000000000000000")
        ));
        assert!(!is_dying(std::process::id() as i32));
    }

    #[test]
    fn own_resident_memory_is_read() {
        let rss = rss_bytes(std::process::id() as i32).expect("VmRSS");
        assert!(rss > 0 && rss % 1024 == 0, "{rss}");
        assert_eq!(rss_bytes(-1), None);
    }

    #[test]
    fn boot_id_is_read() {
        assert_eq!(boot_id().len(), 36);
    }
}
