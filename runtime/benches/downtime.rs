//! The numbers users judge vpnhop by, measured side by side in one run.
//!
//! 1. Downtime: clients ping the server through the tunnel at 100 Hz while the server is
//!    checkpointed, its host "rebooted" (network namespace and state destroyed and rebuilt) and
//!    restored. Cycles alternate between vpnhop and the same cycle done by hand with plain
//!    commands (`criu dump`/`criu restore`, `ip`, `iptables`), so the ratio holds on a noisy
//!    machine.
//! 2. Start-up: `vpnhop run` against `runc run` of the same bundle, to OpenVPN's
//!    "Initialization Sequence Completed", alternating; and the shim's resident memory.
//!
//! It prints tables and writes JSON. Run it with `scripts/bench.sh` (root; see
//! docs/benchmarks.md). It is a program that measures, not a test: it asserts only that the
//! tunnel came back at all.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::fs;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use common::{now, sh_ok, Pinger, World};
use serde::Serialize;
use serde_json::Value;
use vpnhop::criu::stats::{self as criu_stats, DumpPhases, RestorePhases};
use vpnhop::shim::{CheckpointStats, RestoreStats};

/// 100 Hz: the gap is measured to 10 ms.
const PING_INTERVAL: &str = "0.01";

#[derive(Debug, Parser)]
#[command(about = "Client-visible downtime and start-up of vpnhop, against plain CRIU and runc")]
struct Args {
    /// Checkpoint/restore cycles per method.
    #[arg(long, default_value_t = 10)]
    cycles: usize,
    /// OpenVPN clients pinging through the tunnel (1 to 20).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=20))]
    clients: u8,
    /// Start-up runs per runtime.
    #[arg(long, default_value_t = 10)]
    starts: usize,
    /// Skip the hand-run CRIU cycles.
    #[arg(long)]
    no_baseline: bool,
    /// The CRIU of the hand-run cycles: by default upstream CRIU without vpnhop's patches or
    /// cache directory (`scripts/setup.sh --stock-criu`).
    #[arg(long, default_value = "/opt/vpnhop/criu-stock/sbin/criu")]
    baseline_criu: PathBuf,
    /// Skip the start-up comparison.
    #[arg(long)]
    no_startup: bool,
    /// Where to write the results as JSON.
    #[arg(long, default_value = "target/bench/downtime.json")]
    json: PathBuf,
    // `cargo bench` passes `--bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

/// One checkpoint/restore cycle.
#[derive(Debug, Clone, Serialize)]
struct Cycle {
    method: &'static str,
    /// Client-visible gap per client: last reply before the freeze to first reply after (ms).
    gaps_ms: Vec<f64>,
    /// Processes frozen, from CRIU's stats (ms).
    frozen_ms: Option<f64>,
    /// Wall time of the checkpoint command(s) (ms).
    checkpoint_ms: f64,
    /// The simulated reboot: namespace and state destroyed, namespace and LAN rebuilt (ms).
    reboot_ms: f64,
    /// Rebuilding the host side before CRIU runs (ms).
    host_ms: f64,
    /// Wall time of the restore command(s) (ms).
    restore_ms: f64,
    /// Wall time of `criu restore` alone (ms).
    criu_restore_ms: Option<f64>,
    /// From the restore command returning to the first reply (ms; negative: reply came first).
    first_reply_ms: f64,
    /// Size of the image directory (bytes).
    image_bytes: u64,
    /// CRIU's own phases of the dump, from its `stats-dump`.
    dump_phases: Option<DumpPhases>,
    /// CRIU's own phases of the restore, from its `stats-restore`.
    restore_phases: Option<RestorePhases>,
    /// vpnhop's own steps, from `--print-stats` (none for the hand-run recipe).
    steps: Option<Steps>,
}

/// vpnhop's steps around CRIU, as `checkpoint` and `restore --print-stats` report them (ms).
#[derive(Debug, Clone, Copy, Serialize)]
struct Steps {
    /// Wall time of `criu dump` inside the shim.
    criu_dump_ms: f64,
    /// Sealing the images: checksums, manifest, `syncfs`.
    seal_ms: f64,
    /// The CLI verifying the image before starting the shim.
    verify_ms: f64,
    /// Starting the shim to its ready line.
    shim_ms: f64,
    /// The shim's own restore work (host side, cgroups, CRIU).
    shim_restore_ms: f64,
    /// Bridge, forwarding, published ports, neighbour entry.
    wiring_ms: f64,
    /// Creating and entering the cgroups.
    cgroups_ms: f64,
}

/// One start-up.
#[derive(Debug, Clone, Serialize)]
struct Start {
    runtime: &'static str,
    /// From the command's start to OpenVPN's "Initialization Sequence Completed" (ms).
    ready_ms: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    machine: Machine,
    args: String,
    cycles: Vec<Cycle>,
    starts: Vec<Start>,
    shim_rss_kib: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Machine {
    kernel: String,
    cpus: usize,
    criu: String,
    nf_conntrack_buckets: Option<u64>,
}

fn main() {
    let args = Args::parse();
    if !common::privileged() {
        std::process::exit(1);
    }
    let machine = machine();
    println!(
        "machine: kernel {}, {} cpus, criu {}, nf_conntrack_buckets {:?}",
        machine.kernel, machine.cpus, machine.criu, machine.nf_conntrack_buckets
    );

    let mut cycles = Vec::new();
    if args.cycles > 0 {
        cycles = downtime(&args);
        print_cycles(&cycles);
        print_breakdown(&cycles);
    }

    let mut starts = Vec::new();
    let mut shim_rss_kib = None;
    if !args.no_startup && args.starts > 0 {
        (starts, shim_rss_kib) = startup(args.starts);
        print_starts(&starts, shim_rss_kib);
    }

    let report = Report {
        machine,
        args: std::env::args().skip(1).collect::<Vec<_>>().join(" "),
        cycles,
        starts,
        shim_rss_kib,
    };
    let json = common::repo().join(&args.json);
    if let Some(dir) = json.parent() {
        let _ = fs::create_dir_all(dir);
    }
    fs::write(&json, serde_json::to_vec_pretty(&report).expect("JSON")).expect("writing JSON");
    println!("\nJSON written to {}", json.display());
}

fn machine() -> Machine {
    let criu = Command::new(common::criu_bin()).arg("--version").output();
    let criu = criu
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    Machine {
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .into(),
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        criu: criu.trim_start_matches("Version: ").to_string(),
        nf_conntrack_buckets: fs::read_to_string("/sys/module/nf_conntrack/parameters/hashsize")
            .ok()
            .and_then(|s| s.trim().parse().ok()),
    }
}

/// Runs the cycles, alternating vpnhop and the hand-run recipe, each in a world of its own.
fn downtime(args: &Args) -> Vec<Cycle> {
    let clients = usize::from(args.clients);
    if !args.no_baseline && !args.baseline_criu.is_file() {
        eprintln!(
            "bench: no CRIU at {} for the hand-run cycles: run scripts/setup.sh --stock-criu, \
             or pass --baseline-criu or --no-baseline",
            args.baseline_criu.display()
        );
        std::process::exit(1);
    }
    let mut vpnhop = Bench::new("vpnhop", clients);
    let mut by_hand = (!args.no_baseline).then(|| Bench::new("plain-criu", clients));
    // vpnhop's checkpoint ends with a syncfs(2) of the image's file system: without this, the
    // first one also writes out what the build just left in the page cache.
    nix::unistd::sync();

    let mut cycles = Vec::new();
    for i in 0..args.cycles {
        let c = vpnhop.cycle_vpnhop();
        vpnhop.retire();
        println!(
            "cycle {:>2} vpnhop     gap {:>6.0} ms",
            i + 1,
            max(&c.gaps_ms)
        );
        cycles.push(c);

        if let Some(b) = by_hand.as_mut() {
            let c = b.cycle_by_hand(&args.baseline_criu);
            b.retire();
            println!(
                "cycle {:>2} plain-criu gap {:>6.0} ms",
                i + 1,
                max(&c.gaps_ms)
            );
            cycles.push(c);
        }
    }

    for bench in std::iter::once(&vpnhop).chain(by_hand.as_ref()) {
        for client in &bench.world.clients {
            println!(
                "{}: client {} completed {} handshake(s)",
                bench.method,
                client.addr,
                client.inits()
            );
        }
    }
    cycles
}

/// A server with its clients, cycled by one method.
struct Bench {
    method: &'static str,
    world: World,
    name: String,
    image: PathBuf,
    pingers: Vec<Pinger>,
    wiring: HandWiring,
    /// For the hand-run recipe: the restored init and the pipes standing in for the shim.
    by_hand: Option<HandRun>,
}

struct HandRun {
    pid: i32,
    _stdio: Vec<OwnedFd>,
}

/// What the hand-run recipe needs to know of the container's wiring, read once from
/// `vpnhop inspect` as an operator would note it down.
#[derive(Debug, Clone)]
struct HandWiring {
    bridge: String,
    prefix: u8,
    gateway: String,
    address: String,
    host_veth: String,
    rootfs: PathBuf,
}

impl Drop for Bench {
    fn drop(&mut self) {
        // A tree restored by hand belongs to no shim: kill it ourselves, by pid.
        if let Some(hand) = &self.by_hand {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(hand.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Bench {
    fn new(method: &'static str, clients: usize) -> Bench {
        let mut world = World::with_clients(clients);
        let name = world.name("bench");
        world.run_openvpn(&name);
        world.connect_clients();
        let pingers = world.start_pingers_every(PING_INTERVAL);
        for p in &pingers {
            assert!(
                p.wait_reply_after(now(), Duration::from_secs(10)),
                "no replies at start"
            );
        }
        let image = world.images().join(&name);
        let info = world.inspect(&name);
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let wiring = HandWiring {
            bridge: text(&info["bridge"]),
            prefix: 24,
            gateway: text(&info["gateway"]),
            address: text(&info["addresses"][0]),
            host_veth: text(&info["host_veth"]),
            rootfs: common::bundle()
                .join("rootfs")
                .canonicalize()
                .expect("rootfs"),
        };
        Bench {
            method,
            world,
            name,
            image,
            pingers,
            wiring,
            by_hand: None,
        }
    }

    /// `vpnhop checkpoint`, reboot, `vpnhop restore`.
    fn cycle_vpnhop(&mut self) -> Cycle {
        let image = self.image.to_str().expect("utf-8 path").to_string();
        self.world.prepare_reboot();

        let t0 = Instant::now();
        let out = self.world.ok(&[
            "checkpoint",
            "--print-stats",
            "--format",
            "json",
            "--image-dir",
            &image,
            &self.name,
        ]);
        let checkpoint_ms = ms(t0);
        let frozen_at = now();
        let dump: CheckpointStats =
            serde_json::from_str(out.lines().nth(1).unwrap_or("{}")).expect("checkpoint stats");

        let t1 = Instant::now();
        self.world.switch_host();
        let reboot_ms = ms(t1);

        let t2 = Instant::now();
        let out = self
            .world
            .ok(&["restore", "--print-stats", "--format", "json", &image]);
        let restore_ms = ms(t2);
        let restored_at = now();
        let rest: RestoreStats =
            serde_json::from_str(out.lines().nth(1).unwrap_or("{}")).expect("restore stats");

        Cycle {
            method: "vpnhop",
            frozen_ms: dump.frozen_ms,
            checkpoint_ms,
            reboot_ms,
            host_ms: rest.host_ms,
            restore_ms,
            criu_restore_ms: Some(rest.restore_ms),
            image_bytes: rest.image_bytes,
            dump_phases: dump.criu,
            restore_phases: rest.criu,
            steps: Some(Steps {
                criu_dump_ms: dump.dump_ms,
                seal_ms: dump.seal_ms,
                verify_ms: rest.verify_ms,
                shim_ms: rest.shim_ms,
                shim_restore_ms: rest.total_ms,
                wiring_ms: rest.wiring_ms,
                cgroups_ms: rest.cgroups_ms,
            }),
            ..self.gaps(frozen_at, restored_at)
        }
    }

    /// Ends a cycle: the old host goes, out of the measured time.
    fn retire(&mut self) {
        self.world.delete_retired();
    }

    /// The original recipe: `criu dump` of the tree, reboot, the host side rebuilt with `ip`,
    /// `sysctl` and `iptables`, and `criu restore` in a private mount namespace, all with
    /// CRIU's default options where the recipe has no reason to change them.
    fn cycle_by_hand(&mut self, criu: &Path) -> Cycle {
        let wiring = self.wiring.clone();
        self.world.prepare_reboot();
        let pid = match &self.by_hand {
            Some(h) => h.pid,
            None => self.world.inspect(&self.name)["pid"].as_i64().expect("pid") as i32,
        };
        let stdio: Vec<String> = (0..3)
            .map(|fd| fs::read_link(format!("/proc/{pid}/fd/{fd}")).expect("fd link"))
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        let _ = fs::remove_dir_all(&self.image);
        fs::create_dir_all(&self.image).expect("image dir");

        let t0 = Instant::now();
        let dump = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.world.srv))
            .arg(criu)
            .args([
                "dump",
                "--tree",
                &pid.to_string(),
                "-v4",
                "--log-file",
                "dump.log",
            ])
            .arg("--images-dir")
            .arg(&self.image)
            .output()
            .expect("criu dump");
        assert!(
            dump.status.success(),
            "criu dump failed: {}",
            tail(&self.image.join("dump.log"))
        );
        let checkpoint_ms = ms(t0);
        let frozen_at = now();
        self.by_hand = None;

        let t1 = Instant::now();
        self.world.switch_host();
        let reboot_ms = ms(t1);

        let srv = format!("--net=/run/netns/{}", self.world.srv);
        let t2 = Instant::now();
        let net = format!("nsenter {srv}");
        let addr = wiring.address;
        let gw = wiring.gateway;
        for cmd in [
            format!("{net} ip link add {} type bridge", wiring.bridge),
            format!(
                "{net} ip addr add {gw}/{} dev {}",
                wiring.prefix, wiring.bridge
            ),
            format!("{net} ip link set {} up", wiring.bridge),
            format!("{net} sysctl -qw net.ipv4.ip_forward=1"),
            format!(
                "{net} iptables -t nat -A PREROUTING -p udp --dport 1194 \
                 -j DNAT --to-destination {addr}:1194"
            ),
            format!(
                "{net} iptables -t nat -A POSTROUTING -s {addr} -p udp --sport 1194 \
                 ! -o {} -j MASQUERADE --to-ports 1194",
                wiring.bridge
            ),
        ] {
            sh_ok(&cmd);
        }
        let host_ms = ms(t2);

        // The shim's part, by hand: pipes for the restored tree's stdio.
        let (stdio_fds, keep) = pipes_for(&stdio);
        let pidfile = self.world.path("hand.pid");
        let _ = fs::remove_file(&pidfile);
        let t3 = Instant::now();
        let mut cmd = Command::new("nsenter");
        cmd.arg(&srv)
            .args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "mount --bind {root} {root} && exec {criu} restore -v4 --log-file restore.log \
                 --images-dir {img} --root {root} --restore-detached --pidfile {pidfile} \
                 --external veth[eth0]:{veth}@{bridge} {inherit}",
                root = wiring.rootfs.display(),
                criu = criu.display(),
                img = self.image.display(),
                pidfile = pidfile.display(),
                veth = wiring.host_veth,
                bridge = wiring.bridge,
                inherit = stdio
                    .iter()
                    .enumerate()
                    .map(|(i, key)| format!("--inherit-fd fd[{}]:{key}", 100 + i))
                    .collect::<Vec<_>>()
                    .join(" ")
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: dup2(2) on descriptors this process owns, between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                for (i, fd) in stdio_fds.iter().enumerate() {
                    if libc::dup2(*fd, 100 + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let out = cmd.output().expect("criu restore");
        let criu_restore_ms = ms(t3);
        assert!(
            out.status.success(),
            "criu restore failed: {} {}",
            String::from_utf8_lossy(&out.stderr),
            tail(&self.image.join("restore.log"))
        );
        let restored_at = now();
        let restore_ms = ms(t2);

        let pid: i32 = fs::read_to_string(&pidfile)
            .expect("pidfile")
            .trim()
            .parse()
            .expect("pid");
        self.by_hand = Some(HandRun { pid, _stdio: keep });

        // Without --work-dir, CRIU leaves its statistics beside the images.
        let dump_phases = criu_stats::read_dump(&self.image);
        Cycle {
            method: "plain-criu",
            frozen_ms: dump_phases.map(|p| p.frozen_ms),
            checkpoint_ms,
            reboot_ms,
            host_ms,
            restore_ms,
            criu_restore_ms: Some(criu_restore_ms),
            image_bytes: vpnhop::image::du(&self.image),
            dump_phases,
            restore_phases: criu_stats::read_restore(&self.image),
            steps: None,
            ..self.gaps(frozen_at, restored_at)
        }
    }

    /// Waits for every client's ping to come back and measures the gaps around `frozen_at`.
    fn gaps(&self, frozen_at: f64, restored_at: f64) -> Cycle {
        let mut gaps = Vec::new();
        let mut first_reply = f64::NEG_INFINITY;
        for p in &self.pingers {
            assert!(
                p.wait_reply_after(restored_at, Duration::from_secs(15)),
                "{}: the tunnel did not come back",
                self.method
            );
            let replies = p.replies();
            let last = replies
                .iter()
                .copied()
                .filter(|t| *t <= frozen_at)
                .fold(0.0, f64::max);
            let first = replies
                .iter()
                .copied()
                .find(|t| *t > frozen_at)
                .unwrap_or(f64::NAN);
            gaps.push((first - last) * 1e3);
            first_reply = first_reply.max(first);
        }
        Cycle {
            method: self.method,
            gaps_ms: gaps,
            frozen_ms: None,
            checkpoint_ms: 0.0,
            reboot_ms: 0.0,
            host_ms: 0.0,
            restore_ms: 0.0,
            criu_restore_ms: None,
            first_reply_ms: (first_reply - restored_at) * 1e3,
            image_bytes: 0,
            dump_phases: None,
            restore_phases: None,
            steps: None,
        }
    }
}

/// For each stdio key of the dumped init, a new pipe: the end the restored tree gets (returned
/// as raw descriptors for the child) and the ends we keep (returned owned, with the others).
fn pipes_for(keys: &[String]) -> (Vec<i32>, Vec<OwnedFd>) {
    let mut child = Vec::new();
    let mut keep = Vec::new();
    for (i, _) in keys.iter().enumerate() {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        // fd 0 reads; fds 1 and 2 write.
        let (theirs, ours) = if i == 0 { (r, w) } else { (w, r) };
        child.push(theirs.as_raw_fd());
        keep.push(theirs);
        if i > 0 {
            drain(ours);
        } else {
            keep.push(ours);
        }
    }
    (child, keep)
}

/// Reads and discards what the restored tree writes, as a shim would log it.
fn drain(fd: OwnedFd) {
    std::thread::spawn(move || {
        let mut f = fs::File::from(fd);
        let mut buf = [0u8; 4096];
        while matches!(f.read(&mut buf), Ok(n) if n > 0) {}
    });
}

fn tail(log: &Path) -> String {
    vpnhop::criu::log_tail(log)
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn stats(v: Vec<f64>) -> String {
    let finite: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if finite.is_empty() {
        return format!("{:>22}", "-");
    }
    let lo = finite.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:>6.0} ({:>5.0}–{:>5.0})", median(finite), lo, hi)
}

fn print_cycles(cycles: &[Cycle]) {
    println!("\nDOWNTIME (median (min–max), ms; gap over all clients)");
    println!(
        "{:<11} {:>22} {:>22} {:>22} {:>22} {:>22} {:>22} {:>22}",
        "method", "gap", "frozen", "checkpoint", "reboot-sim", "host", "criu restore", "restore"
    );
    let mut medians = Vec::new();
    for method in ["vpnhop", "plain-criu"] {
        let of: Vec<&Cycle> = cycles.iter().filter(|c| c.method == method).collect();
        if of.is_empty() {
            continue;
        }
        let col =
            |f: &dyn Fn(&Cycle) -> Option<f64>| stats(of.iter().filter_map(|c| f(c)).collect());
        let gaps: Vec<f64> = of.iter().flat_map(|c| c.gaps_ms.clone()).collect();
        medians.push((method, median(gaps.clone())));
        println!(
            "{:<11} {} {} {} {} {} {} {}",
            method,
            stats(gaps),
            col(&|c| c.frozen_ms),
            col(&|c| Some(c.checkpoint_ms)),
            col(&|c| Some(c.reboot_ms)),
            col(&|c| Some(c.host_ms)),
            col(&|c| c.criu_restore_ms),
            col(&|c| Some(c.restore_ms)),
        );
    }
    if let [(_, a), (_, b)] = medians.as_slice() {
        println!("ratio of median gaps vpnhop / plain-criu: {:.2}", a / b);
    }
    let worst = cycles
        .iter()
        .flat_map(|c| c.gaps_ms.iter().copied())
        .fold(0.0, f64::max);
    println!("worst gap of any cycle: {worst:.0} ms");
}

/// Where the gap goes: the median of each step, per method, in the order the steps happen.
/// Steps before the freeze are listed but are not part of what the client waits for.
fn print_breakdown(cycles: &[Cycle]) {
    type Step = fn(&Cycle) -> Option<f64>;
    let rows: [(&str, Step); 20] = [
        ("criu dump: start-up before the freeze *", |c| {
            let p = c.dump_phases?;
            Some(dump_wall(c)? - p.freezing_ms - p.frozen_ms)
        }),
        ("criu dump: freezing the tree", |c| {
            Some(c.dump_phases?.freezing_ms)
        }),
        ("criu dump: frozen, in all", |c| {
            Some(c.dump_phases?.frozen_ms)
        }),
        ("  memory: collecting pages", |c| {
            Some(c.dump_phases?.memdump_ms)
        }),
        ("  memory: writing pages", |c| {
            Some(c.dump_phases?.memwrite_ms)
        }),
        ("  the rest: namespaces, files, net, kill", |c| {
            let p = c.dump_phases?;
            Some(p.frozen_ms - p.memdump_ms - p.memwrite_ms)
        }),
        ("checkpoint: sealing the images", |c| Some(c.steps?.seal_ms)),
        ("checkpoint: rest of the command", |c| {
            let s = c.steps?;
            Some(c.checkpoint_ms - s.criu_dump_ms - s.seal_ms)
        }),
        ("reboot simulation (host switch)", |c| Some(c.reboot_ms)),
        ("restore: image verification", |c| Some(c.steps?.verify_ms)),
        ("restore: shim start-up", |c| {
            let s = c.steps?;
            Some(s.shim_ms - s.shim_restore_ms)
        }),
        ("restore: host wiring", |c| match c.steps {
            Some(s) => Some(s.wiring_ms),
            None => Some(c.host_ms),
        }),
        ("restore: cgroups", |c| Some(c.steps?.cgroups_ms)),
        ("criu restore: start-up before forking", |c| {
            let p = c.restore_phases?;
            Some(c.criu_restore_ms? - p.forking_ms - p.restore_ms)
        }),
        ("criu restore: forking the tree", |c| {
            Some(c.restore_phases?.forking_ms)
        }),
        ("criu restore: restoring the tasks", |c| {
            Some(c.restore_phases?.restore_ms)
        }),
        ("restore: rest in the shim", |c| {
            let s = c.steps?;
            // The wiring and the cgroups overlap; the host side as a whole is `host_ms`.
            Some(s.shim_restore_ms - c.host_ms - c.criu_restore_ms?)
        }),
        ("restore: rest of the command", |c| {
            let s = c.steps?;
            Some(c.restore_ms - s.verify_ms - s.shim_ms)
        }),
        ("first reply after the restore returned", |c| {
            Some(c.first_reply_ms)
        }),
        ("client-visible gap (median over clients)", |c| {
            Some(median(c.gaps_ms.clone()))
        }),
    ];

    println!("\nBREAKDOWN (median per step, ms; * = before the freeze, not in the gap)");
    println!("{:<44} {:>10} {:>10}", "step", "vpnhop", "plain-criu");
    for (label, step) in rows {
        let cell = |method: &str| {
            let v: Vec<f64> = cycles
                .iter()
                .filter(|c| c.method == method)
                .filter_map(step)
                .collect();
            if v.is_empty() {
                format!("{:>10}", "-")
            } else {
                format!("{:>10.1}", median(v))
            }
        };
        println!("{label:<44} {} {}", cell("vpnhop"), cell("plain-criu"));
    }
}

/// Wall time of `criu dump` alone: inside the shim for vpnhop, the whole command by hand.
fn dump_wall(c: &Cycle) -> Option<f64> {
    match c.steps {
        Some(s) => Some(s.criu_dump_ms),
        None => Some(c.checkpoint_ms),
    }
}

/// `vpnhop run` against `runc run` of the same bundle, alternating, in a namespace of their own.
fn startup(runs: usize) -> (Vec<Start>, Option<u64>) {
    let world = World::with_clients(1);
    let runc_root = world.path("runc");
    fs::create_dir_all(&runc_root).expect("runc root");
    let runc_bundle = runc_bundle(&world);
    let mut starts = Vec::new();
    let mut rss = None;

    for i in 0..runs {
        let name = world.name(&format!("start{i}"));
        let t0 = Instant::now();
        world.run_openvpn(&name);
        let log = world.root().join(&name).join("container.log");
        wait_for_line(&log, Duration::from_secs(20));
        starts.push(Start {
            runtime: "vpnhop",
            ready_ms: ms(t0),
        });
        if rss.is_none() {
            let shim = world.inspect(&name)["shim_pid"].as_i64().unwrap_or(0);
            rss = vm_rss_kib(shim);
        }
        world.ok(&["rm", "-f", &name]);

        let id = format!("runc{}-{i}", world.tag);
        let log = world.path(&format!("{id}.log"));
        let t0 = Instant::now();
        let status = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", world.srv))
            .arg("runc")
            .arg("--root")
            .arg(&runc_root)
            .args(["run", "-d", "--bundle"])
            .arg(&runc_bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&log).expect("log"))
            .stderr(Stdio::inherit())
            .status()
            .expect("runc run");
        assert!(status.success(), "runc run failed");
        wait_for_line(&log, Duration::from_secs(20));
        starts.push(Start {
            runtime: "runc",
            ready_ms: ms(t0),
        });
        let _ = Command::new("runc")
            .arg("--root")
            .arg(&runc_root)
            .args(["delete", "-f", &id])
            .status();
    }
    (starts, rss)
}

/// The OpenVPN bundle as Debian's runc (1.1) can run it: the same spec without the time
/// namespace, which that runc does not know, and with the root file system by absolute path.
fn runc_bundle(world: &World) -> PathBuf {
    let dir = world.path("runc-bundle");
    fs::create_dir_all(&dir).expect("runc bundle");
    let text = fs::read_to_string(common::bundle().join("config.json")).expect("config.json");
    let mut spec: Value = serde_json::from_str(&text).expect("config.json");

    if let Some(ns) = spec["linux"]["namespaces"].as_array_mut() {
        ns.retain(|n| n["type"] != "time");
    }
    let rootfs = common::bundle()
        .join("rootfs")
        .canonicalize()
        .expect("rootfs");
    spec["root"]["path"] = Value::String(rootfs.display().to_string());
    fs::write(
        dir.join("config.json"),
        serde_json::to_vec(&spec).expect("JSON"),
    )
    .expect("write");
    dir
}

fn wait_for_line(log: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let text = fs::read_to_string(log).unwrap_or_default();
        if text.contains("Initialization Sequence Completed") {
            return;
        }
        assert!(Instant::now() < deadline, "OpenVPN never got ready: {text}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn vm_rss_kib(pid: i64) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn print_starts(starts: &[Start], rss: Option<u64>) {
    println!("\nSTART-UP to \"Initialization Sequence Completed\" (median (min–max), ms)");
    for runtime in ["vpnhop", "runc"] {
        let v: Vec<f64> = starts
            .iter()
            .filter(|s| s.runtime == runtime)
            .map(|s| s.ready_ms)
            .collect();
        println!("{:<11} {} over {} runs", runtime, stats(v.clone()), v.len());
    }
    if let Some(kib) = rss {
        println!("shim resident memory: {kib} KiB");
    }
}
