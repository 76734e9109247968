//! OCI bundles: loading and checking the user's bundle, deriving the spec as run, and
//! generating the OpenVPN bundle's `config.json` from `oci-spec` types.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    get_default_maskedpaths, get_default_readonly_paths, Arch, Capability, LinuxBuilder,
    LinuxCapabilitiesBuilder, LinuxDeviceBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder,
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscallBuilder, MountBuilder, PosixRlimitBuilder, PosixRlimitType,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};
use oci_spec::OciSpecError;
use thiserror::Error;

use crate::network::{NetError, PortMapping};

/// Annotation through which a bundle names the ports published when `run` gets no `--publish`.
pub const PUBLISH_ANNOTATION: &str = "org.vpnhop.publish";

/// Errors about a bundle.
#[derive(Debug, Error)]
pub enum BundleError {
    /// The bundle directory does not exist.
    #[error("bundle `{0}` not found")]
    NotFound(PathBuf),
    /// `config.json` is missing or malformed.
    #[error("bundle `{path}`: invalid config.json")]
    Config {
        /// The config file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: OciSpecError,
    },
    /// The spec lacks a part vpnhop needs.
    #[error("bundle `{path}`: config.json has no `{field}`")]
    Incomplete {
        /// The bundle.
        path: PathBuf,
        /// The missing field.
        field: &'static str,
    },
    /// `root.path` does not point at a directory.
    #[error("bundle `{0}`: root filesystem not found (run scripts/setup.sh to build it)")]
    NoRootfs(PathBuf),
    /// The spec asks for a device node the host does not have.
    #[error("device `{path}` (c {major}:{minor}) is missing on the host; load its kernel module")]
    MissingDevice {
        /// The device path.
        path: PathBuf,
        /// Its major number.
        major: i64,
        /// Its minor number.
        minor: i64,
    },
    /// The publish annotation does not parse.
    #[error("bundle `{path}`: annotation `{PUBLISH_ANNOTATION}`")]
    BadPublish {
        /// The bundle.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: NetError,
    },
    /// Writing a spec failed.
    #[error("writing spec `{path}`")]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: OciSpecError,
    },
}

/// A loaded and checked bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Absolute path of the bundle directory.
    pub path: PathBuf,
    /// Its `config.json`.
    pub spec: Spec,
    /// Absolute path of its root filesystem.
    pub rootfs: PathBuf,
}

impl Bundle {
    /// Loads `path/config.json` and checks what a run needs: the rootfs exists and every device
    /// node the spec asks for exists on the host.
    pub fn load(path: &Path) -> Result<Bundle, BundleError> {
        let path = fs::canonicalize(path).map_err(|_| BundleError::NotFound(path.to_path_buf()))?;
        let config = path.join("config.json");
        let spec = Spec::load(&config).map_err(|source| BundleError::Config {
            path: config,
            source,
        })?;

        let root = spec.root().as_ref().ok_or(BundleError::Incomplete {
            path: path.clone(),
            field: "root",
        })?;
        let rootfs = path.join(root.path());
        let rootfs = fs::canonicalize(&rootfs)
            .ok()
            .filter(|p| p.is_dir())
            .ok_or_else(|| BundleError::NoRootfs(rootfs.clone()))?;
        if spec.process().is_none() {
            return Err(BundleError::Incomplete {
                path,
                field: "process",
            });
        }

        check_host_devices(&spec)?;
        Ok(Bundle { path, spec, rootfs })
    }

    /// Ports the bundle asks to publish by default (its `org.vpnhop.publish` annotation, a
    /// comma-separated list of `--publish` values).
    pub fn default_ports(&self) -> Result<Vec<PortMapping>, BundleError> {
        let Some(value) = self
            .spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(PUBLISH_ANNOTATION))
        else {
            return Ok(Vec::new());
        };

        value
            .split(',')
            .map(|p| p.trim().parse())
            .collect::<Result<_, _>>()
            .map_err(|source| BundleError::BadPublish {
                path: self.path.clone(),
                source,
            })
    }

    /// The spec as run: absolute rootfs, the container's own cgroup path, and private mount
    /// propagation unless the bundle asks for another.
    ///
    /// libcontainer, like runc, makes the container's mounts slaves of the host's by default.
    /// Where the host's root is shared (systemd makes it so), CRIU then records that slavery in
    /// the images and can restore it only from a host mount with the same sharing set up, which
    /// a freshly booted host need not have ("Failed to copy sharing from source"). A private
    /// tree has no tie to the host's mounts to record.
    pub fn runtime_spec(&self, name: &str) -> Spec {
        let mut spec = self.spec.clone();

        if let Some(root) = spec.root_mut() {
            root.set_path(self.rootfs.clone());
        }
        if let Some(linux) = spec.linux_mut() {
            linux.set_cgroups_path(Some(cgroup_path(name)));
            if linux.rootfs_propagation().is_none() {
                linux.set_rootfs_propagation(Some(ROOTFS_PROPAGATION.to_string()));
            }
        }

        spec
    }
}

/// Mount propagation of the container's root when the bundle names none: see
/// [`Bundle::runtime_spec`].
pub const ROOTFS_PROPAGATION: &str = "private";

/// Cgroup path of container `name`, relative to each hierarchy's root.
pub fn cgroup_path(name: &str) -> PathBuf {
    PathBuf::from(format!("/vpnhop/{name}"))
}

/// Writes `spec` as `dir/config.json` (pretty-printed, atomically), creating `dir`.
pub fn write_spec(dir: &Path, spec: &Spec) -> Result<(), BundleError> {
    let path = dir.join("config.json");
    let wrap = |e: std::io::Error| BundleError::Write {
        path: path.clone(),
        source: OciSpecError::Io(e),
    };

    fs::create_dir_all(dir).map_err(wrap)?;
    let mut json = serde_json::to_value(spec).map_err(|e| wrap(std::io::Error::other(e)))?;
    // oci-spec keeps capability sets in hash sets, which serialize in any order: sorted, the
    // same spec always gives the same file.
    if let Some(sets) = json
        .pointer_mut("/process/capabilities")
        .and_then(|c| c.as_object_mut())
    {
        for set in sets.values_mut().filter_map(|s| s.as_array_mut()) {
            set.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
        }
    }
    let mut data = serde_json::to_vec_pretty(&json).map_err(|e| wrap(std::io::Error::other(e)))?;
    data.push(b'\n');
    crate::fsutil::write_atomic(&path, &data, 0o644, crate::fsutil::Durability::Volatile)
        .map_err(wrap)
}

fn check_host_devices(spec: &Spec) -> Result<(), BundleError> {
    let devices = spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().clone())
        .unwrap_or_default();

    for dev in devices {
        if dev.typ() != LinuxDeviceType::C {
            continue;
        }
        let (major, minor) = (dev.major(), dev.minor());
        let present = fs::metadata(dev.path()).is_ok_and(|m| {
            m.file_type().is_char_device()
                && nix::sys::stat::major(m.rdev()) as i64 == major
                && nix::sys::stat::minor(m.rdev()) as i64 == minor
        });
        if !present {
            return Err(BundleError::MissingDevice {
                path: dev.path().clone(),
                major,
                minor,
            });
        }
    }
    Ok(())
}

/// The `config.json` of `bundles/openvpn`: OpenVPN as PID 1 of new pid, net, mount, uts, ipc and
/// time namespaces, with `/dev/net/tun`, the capabilities OpenVPN needs and nothing else, a
/// read-only root and the default seccomp profile. `docs/security.md` explains each choice.
pub fn openvpn_spec() -> Result<Spec, OciSpecError> {
    let caps: std::collections::HashSet<Capability> =
        [Capability::NetAdmin, Capability::NetBindService]
            .into_iter()
            .collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(std::collections::HashSet::<Capability>::new())
        .ambient(std::collections::HashSet::<Capability>::new())
        .build()?;

    let process = ProcessBuilder::default()
        .terminal(false)
        .user(UserBuilder::default().uid(0u32).gid(0u32).build()?)
        .args(
            ["/usr/sbin/openvpn", "--config", "/etc/openvpn/server.conf"]
                .map(String::from)
                .to_vec(),
        )
        .env(vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".to_string()])
        .cwd("/")
        .capabilities(capabilities)
        .no_new_privileges(true)
        .rlimits(vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .hard(1024u64)
            .soft(1024u64)
            .build()?])
        .build()?;

    let mount = |dest: &str, typ: &str, source: &str, options: &[&str]| {
        MountBuilder::default()
            .destination(dest)
            .typ(typ)
            .source(source)
            .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
            .build()
    };
    // Only what the server needs, and no file system it could write to but the tmpfs on /dev
    // (which server.conf makes OpenVPN's `tmp-dir`: it refuses to start without a writable
    // one, and writes nothing there without scripts). Each tmpfs is one more `tar` that CRIU
    // runs while the clients wait, at dump and again at restore: no /tmp, /run, /dev/shm or
    // mqueue.
    // TODO: CRIU archives /dev (tar, sh, gzip) at every dump and extracts it at every restore,
    // about 11 ms of the clients' wait. Leaving it out of the images (an external mount) needs
    // the runtime to recreate the container's /dev exactly at restore, files written to it
    // included.
    let mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
            ],
        )?,
    ];

    let namespaces = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Time,
    ]
    .into_iter()
    .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
    .collect::<Result<Vec<_>, _>>()?;

    let tun = LinuxDeviceBuilder::default()
        .path("/dev/net/tun")
        .typ(LinuxDeviceType::C)
        .major(10)
        .minor(200)
        .file_mode(0o666u32)
        .uid(0u32)
        .gid(0u32)
        .build()?;
    let allow = |typ, major: Option<i64>, minor: Option<i64>| {
        let mut b = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(typ)
            .access("rwm");
        if let Some(major) = major {
            b = b.major(major);
        }
        if let Some(minor) = minor {
            b = b.minor(minor);
        }
        b.build()
    };
    let c = LinuxDeviceType::C;
    let device_rules = vec![
        LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()?,
        allow(c, Some(1), Some(3))?,    // null
        allow(c, Some(1), Some(5))?,    // zero
        allow(c, Some(1), Some(7))?,    // full
        allow(c, Some(1), Some(8))?,    // random
        allow(c, Some(1), Some(9))?,    // urandom
        allow(c, Some(5), Some(0))?,    // tty
        allow(c, Some(5), Some(2))?,    // ptmx
        allow(c, Some(136), None)?,     // pts
        allow(c, Some(10), Some(200))?, // net/tun
    ];

    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .devices(vec![tun])
        .resources(
            LinuxResourcesBuilder::default()
                .devices(device_rules)
                .pids(LinuxPidsBuilder::default().limit(128).build()?)
                .build()?,
        )
        // Masked directories (/proc/acpi) are empty read-only tmpfs mounts, which vpnhop's CRIU
        // neither archives nor extracts (docs/criu.md, "vpnhop's patches").
        .masked_paths(get_default_maskedpaths())
        .sysctl(sysctls())
        .readonly_paths(get_default_readonly_paths())
        .rootfs_propagation(ROOTFS_PROPAGATION)
        .seccomp(default_seccomp()?)
        .build()?;

    let annotations: HashMap<String, String> =
        [(PUBLISH_ANNOTATION.to_string(), "1194:1194/udp".to_string())]
            .into_iter()
            .collect();

    SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(true)
                .build()?,
        )
        .hostname("vpnhop")
        .process(process)
        .mounts(mounts)
        .linux(linux)
        .annotations(annotations)
        .build()
}

/// Kernel settings of the container's network namespace.
///
/// No IPv6 on the devices created once the container runs (`default` covers `tun0`): the tun
/// device has no hardware address, so the kernel gives it a new random link-local address each
/// time it comes up, and CRIU restores the old ones as well; every restore left one more on
/// `tun0`. The bundle's tunnel is IPv4; a bundle with an IPv6 tunnel (`server-ipv6`) must drop
/// this setting and accept the growing list.
fn sysctls() -> HashMap<String, String> {
    [("net.ipv6.conf.default.disable_ipv6", "1")]
        .into_iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

/// The default seccomp profile: everything refused with EPERM except an allow list of system
/// calls an ordinary service uses, in the spirit of the profiles of Docker and Podman. Module
/// loading, kexec, mounting, namespace changes, ptrace, BPF, keyrings and clock setting are
/// absent from it; `clone` may not create namespaces; `clone3`, whose flags live in memory a
/// filter cannot read, answers ENOSYS so that the C library falls back to `clone`.
pub fn default_seccomp() -> Result<LinuxSeccomp, OciSpecError> {
    let names = SECCOMP_ALLOW
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>();
    let allowed = LinuxSyscallBuilder::default()
        .names(names)
        .action(LinuxSeccompAction::ScmpActAllow)
        .build()?;

    let namespace_flags = (libc::CLONE_NEWNS
        | libc::CLONE_NEWCGROUP
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUSER
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET) as u64;
    let clone_without_namespaces = LinuxSyscallBuilder::default()
        .names(vec!["clone".to_string()])
        .action(LinuxSeccompAction::ScmpActAllow)
        .args(vec![LinuxSeccompArgBuilder::default()
            .index(0usize)
            .value(namespace_flags)
            .value_two(0u64)
            .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
            .build()?])
        .build()?;
    let clone3_enosys = LinuxSyscallBuilder::default()
        .names(vec!["clone3".to_string()])
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(libc::ENOSYS as u32)
        .build()?;

    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(libc::EPERM as u32)
        .architectures(vec![
            Arch::ScmpArchX86_64,
            Arch::ScmpArchX86,
            Arch::ScmpArchX32,
        ])
        .syscalls(vec![allowed, clone_without_namespaces, clone3_enosys])
        .build()
}

const SECCOMP_ALLOW: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "alarm",
    "arch_prctl",
    "bind",
    "brk",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "clock_getres",
    "clock_gettime",
    "clock_nanosleep",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fallocate",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchown",
    "fchownat",
    "fcntl",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fstat",
    "fstatfs",
    "fsync",
    "ftruncate",
    "futex",
    "futex_waitv",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "geteuid",
    "getgid",
    "getgroups",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresuid",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "gettid",
    "gettimeofday",
    "getuid",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "kill",
    "lchown",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "lseek",
    "lstat",
    "madvise",
    "membarrier",
    "memfd_create",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedsend",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "nanosleep",
    "newfstatat",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "poll",
    "ppoll",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "pselect6",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recvfrom",
    "recvmmsg",
    "recvmsg",
    "remap_file_pages",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "sendfile",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsuid",
    "setgid",
    "setgroups",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setresgid",
    "setresuid",
    "setreuid",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_tid_address",
    "setuid",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "socket",
    "socketpair",
    "splice",
    "stat",
    "statfs",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_settime",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_settime",
    "times",
    "tkill",
    "truncate",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimes",
    "vfork",
    "wait4",
    "waitid",
    "write",
    "writev",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_openvpn_config_is_the_generated_one() {
        let committed =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../bundles/openvpn/config.json");
        let committed = Spec::load(&committed).expect("bundles/openvpn/config.json loads");
        let generated = openvpn_spec().expect("spec builds");

        // Compared as specs, not as JSON text: capability sets serialize in any order.
        assert!(
            committed == generated,
            "bundles/openvpn/config.json is stale: regenerate it with `vpnhop spec --bundle`"
        );
    }

    #[test]
    fn openvpn_spec_has_a_time_namespace_and_no_namespace_paths() {
        let spec = openvpn_spec().expect("spec");
        let namespaces = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().clone())
            .expect("ns");

        assert!(namespaces
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::Time));
        assert!(namespaces
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::Network));
        // A namespace given by path would be external to CRIU, and a tun device cannot be
        // restored into an external network namespace.
        assert!(namespaces.iter().all(|n| n.path().is_none()));
    }

    #[test]
    fn seccomp_lets_clone_create_no_namespace() {
        let seccomp = default_seccomp().expect("seccomp");
        let syscalls = seccomp.syscalls().clone().expect("syscalls");
        let clone = syscalls
            .iter()
            .find(|s| s.names() == &["clone".to_string()])
            .expect("a rule for clone");
        let arg = &clone.args().clone().expect("clone has an argument filter")[0];

        assert_eq!(arg.op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
        assert_ne!(arg.value() & libc::CLONE_NEWUSER as u64, 0);
        assert_ne!(arg.value() & libc::CLONE_NEWNET as u64, 0);
        assert_eq!(arg.value_two(), Some(0));
        assert!(!SECCOMP_ALLOW.contains(&"clone") && !SECCOMP_ALLOW.contains(&"clone3"));
    }

    #[test]
    fn missing_config_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Bundle::load(dir.path()).expect_err("no config.json");
        assert!(err.to_string().contains("invalid config.json"), "{err}");

        let err = Bundle::load(&dir.path().join("absent")).expect_err("no bundle");
        assert!(err.to_string().starts_with("bundle `"), "{err}");
    }

    #[test]
    fn default_ports_come_from_the_annotation() {
        let bundle = Bundle {
            path: PathBuf::from("/b"),
            spec: openvpn_spec().expect("spec"),
            rootfs: PathBuf::from("/b/rootfs"),
        };
        let ports = bundle.default_ports().expect("ports");
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].to_string(), "1194:1194/udp");
    }

    /// A container whose root is a slave of a shared host mount (systemd's default) was dumped
    /// with that tie, and its restore failed in a freshly booted guest ("Failed to copy sharing
    /// from source"): a bundle naming no propagation runs private.
    #[test]
    fn mounts_are_private_unless_the_bundle_says_otherwise() {
        let mut spec = openvpn_spec().expect("spec");
        let propagation = |spec: &Spec| {
            spec.linux()
                .as_ref()
                .and_then(|l| l.rootfs_propagation().clone())
        };
        assert_eq!(propagation(&spec).as_deref(), Some("private"));

        if let Some(linux) = spec.linux_mut() {
            linux.set_rootfs_propagation(None);
        }
        let mut bundle = Bundle {
            path: PathBuf::from("/b"),
            spec,
            rootfs: PathBuf::from("/b/rootfs"),
        };
        assert_eq!(
            propagation(&bundle.runtime_spec("vpn")).as_deref(),
            Some("private")
        );

        if let Some(linux) = bundle.spec.linux_mut() {
            linux.set_rootfs_propagation(Some("slave".to_string()));
        }
        assert_eq!(
            propagation(&bundle.runtime_spec("vpn")).as_deref(),
            Some("slave")
        );
    }
}
