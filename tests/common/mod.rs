//! Test world for the end-to-end tests: a "server host" network namespace (203.0.113.1/24) and
//! one or more "client" namespaces (203.0.113.10, .11, ...) plugged into a LAN namespace, a
//! private state root and image directory, and OpenVPN clients. Everything is created by the
//! test and removed on drop, also when it fails. Nothing touches the machine's root network
//! namespace. The benchmark (`runtime/benches/downtime.rs`) builds its worlds with this too.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Set by scripts/test.sh: a test that would skip fails instead.
pub const REQUIRE_ENV: &str = "VPNHOP_REQUIRE_PRIVILEGED";

/// The `vpnhop` binary under test.
pub fn vpnhop_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vpnhop"))
}

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repo root")
}

/// The OpenVPN bundle.
pub fn bundle() -> PathBuf {
    repo().join("bundles/openvpn")
}

/// The CRIU the runtime uses.
pub fn criu_bin() -> PathBuf {
    std::env::var_os("VPNHOP_CRIU")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/vpnhop/criu/sbin/criu"))
}

/// Whether the end-to-end tests can run here; says why not, or panics under scripts/test.sh.
pub fn privileged() -> bool {
    let mut missing = Vec::new();
    if !nix::unistd::Uid::effective().is_root() {
        missing.push("root".to_string());
    }
    if !criu_bin().is_file() {
        missing.push(format!("CRIU at {}", criu_bin().display()));
    }
    if !Path::new("/usr/sbin/openvpn").is_file() {
        missing.push("/usr/sbin/openvpn".to_string());
    }
    if !bundle().join("rootfs/usr/sbin/openvpn").is_file()
        || !bundle().join("client.ovpn").is_file()
    {
        missing.push("the built bundle (bundles/openvpn/build.sh)".to_string());
    }
    if !vpnhop_bin().with_file_name("vpnhop-shim").is_file() {
        missing.push("target/*/vpnhop-shim (cargo build --workspace)".to_string());
    }

    if missing.is_empty() {
        return true;
    }
    let why = format!("needs {}", missing.join(", "));
    if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
        panic!("{REQUIRE_ENV}=1 but this end-to-end test {why}");
    }
    eprintln!("skipping end-to-end test: {why} (scripts/test.sh sets everything up)");
    false
}

/// Skips the calling test (with a reason) unless the end-to-end environment is there.
#[macro_export]
macro_rules! require_privileged {
    () => {
        if !common::privileged() {
            return;
        }
    };
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs `cmd` with sh.
pub fn sh(cmd: &str) -> Output {
    Command::new("sh").arg("-c").arg(cmd).output().expect("sh")
}

/// Runs `cmd` with sh and insists on success.
pub fn sh_ok(cmd: &str) {
    let out = sh(cmd);
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running `ping -D` through the tunnel, its replies logged with timestamps.
#[derive(Debug)]
pub struct Pinger {
    child: Child,
    log: PathBuf,
}

impl Pinger {
    /// Timestamps (s since epoch) of the replies so far.
    pub fn replies(&self) -> Vec<f64> {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter(|l| l.contains("bytes from"))
            .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
            .collect()
    }

    /// Waits until a reply arrives later than `after` (s since epoch).
    pub fn wait_reply_after(&self, after: f64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.replies().iter().any(|t| *t > after) {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Largest interval between consecutive replies received after `after`, in ms.
    pub fn max_gap_ms(&self, after: f64) -> f64 {
        let replies: Vec<f64> = self.replies().into_iter().filter(|t| *t >= after).collect();
        replies
            .windows(2)
            .map(|w| (w[1] - w[0]) * 1e3)
            .fold(0.0, f64::max)
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Seconds since the epoch now.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// One OpenVPN client host: its network namespace, its link to the server host's LAN, and the
/// client process.
#[derive(Debug)]
pub struct ClientHost {
    /// Network namespace.
    pub ns: String,
    /// Its address on the LAN.
    pub addr: String,
    /// LAN end of its link (on the bridge).
    veth_srv: String,
    /// Its own end.
    veth_cli: String,
    log: PathBuf,
    process: Option<Child>,
}

impl ClientHost {
    /// The client's log.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How often the client completed its initialization (1 = never renegotiated).
    pub fn inits(&self) -> usize {
        self.log()
            .matches("Initialization Sequence Completed")
            .count()
    }

    /// Starts pinging the server's tunnel address every `interval` seconds from this client.
    pub fn start_pinger(&self, log: PathBuf, interval: &str) -> Pinger {
        let child = Command::new("ip")
            .args([
                "netns", "exec", &self.ns, "ping", "-D", "-i", interval, "10.8.0.1",
            ])
            .stdout(fs::File::create(&log).expect("ping log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("starting ping");
        Pinger { child, log }
    }
}

/// The namespaces, directories and processes of one test: a "server host" (203.0.113.1/24) and
/// one or more client hosts (203.0.113.10, .11, ...) on one LAN.
#[derive(Debug)]
pub struct World {
    /// Short unique tag, part of every name.
    pub tag: String,
    /// Server-host network namespace (a new one after each simulated reboot).
    pub srv: String,
    /// The LAN: a namespace holding the bridge `lan0` that every host is plugged into, like a
    /// physical switch that stays up while the server reboots.
    lan: String,
    /// The client hosts.
    pub clients: Vec<ClientHost>,
    /// Reboots so far: part of the server host's namespace name.
    generation: u32,
    /// The next server host, built ahead of a reboot.
    next: Option<String>,
    /// Server hosts of earlier boots, deleted once they are out of the way.
    retired: Vec<String>,
    /// Run every vpnhop command in a mount namespace of its own whose mounts are shared, as
    /// systemd sets up a host (this machine's are private).
    pub shared_mounts: bool,
    work: TempDir,
}

impl World {
    /// A server host and one client host.
    pub fn new() -> World {
        World::with_clients(1)
    }

    /// A server host and `n` client hosts (at most 100).
    pub fn with_clients(n: usize) -> World {
        let id = COUNTER.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}{id}", std::process::id() % 100_000);
        let work = tempfile::Builder::new()
            .prefix("vpnhop-test-")
            .tempdir()
            .expect("tempdir");
        let clients = (0..n)
            .map(|i| ClientHost {
                ns: format!("vpnhop-t{tag}-c{i}"),
                addr: format!("203.0.113.{}", 10 + i),
                veth_srv: format!("t{tag}s{i}"),
                veth_cli: format!("t{tag}c{i}"),
                log: work.path().join(format!("client{i}.log")),
                process: None,
            })
            .collect();
        let world = World {
            srv: format!("vpnhop-t{tag}-srv0"),
            lan: format!("vpnhop-t{tag}-lan"),
            tag,
            clients,
            generation: 0,
            next: None,
            retired: Vec::new(),
            shared_mounts: false,
            work,
        };

        sh_ok(&format!(
            "ip netns add {0} && ip -n {0} link add lan0 type bridge && ip -n {0} link set lan0 up",
            world.lan
        ));
        for c in &world.clients {
            sh_ok(&format!(
                "ip netns add {0} && ip -n {0} link set lo up",
                c.ns
            ));
        }
        world.link_clients();
        world.build_host(&world.srv, 0);
        world.plug(0);
        fs::create_dir_all(world.images()).expect("image root");
        world
    }

    /// A server host of boot `generation`: its namespace and its network card, `uplink`, whose
    /// other end `tTAGpGEN` waits in the LAN namespace to be plugged in. The card keeps address
    /// and MAC across reboots, as a real host's does, so the clients' caches stay right.
    fn build_host(&self, ns: &str, generation: u32) {
        let port = format!("t{}p{generation}", self.tag);
        sh_ok(&format!(
            "ip netns add {ns} && ip -n {ns} link set lo up && \
             ip link add uplink netns {ns} address 02:00:5e:00:53:01 type veth \
                peer {port} netns {lan} && \
             ip -n {ns} addr add 203.0.113.1/24 dev uplink && ip -n {ns} link set uplink up && \
             ip -n {lan} link set {port} up",
            lan = self.lan
        ));
    }

    /// Plugs the server host of boot `generation` into the LAN.
    fn plug(&self, generation: u32) {
        ip_batch(
            &self.lan,
            &format!("link set t{}p{generation} master lan0\n", self.tag),
        );
    }

    /// One link per client host into the LAN.
    fn link_clients(&self) {
        for c in &self.clients {
            sh_ok(&format!(
                "ip link add {s} netns {lan} type veth peer {cv} netns {cli} && \
                 ip -n {lan} link set {s} master lan0 up && \
                 ip -n {cli} addr add {addr}/24 dev {cv} && ip -n {cli} link set {cv} up",
                s = c.veth_srv,
                cv = c.veth_cli,
                lan = self.lan,
                cli = c.ns,
                addr = c.addr
            ));
        }
    }

    /// The state root (`--root`).
    pub fn root(&self) -> PathBuf {
        self.work.path().join("root")
    }

    /// Where images go.
    pub fn images(&self) -> PathBuf {
        self.work.path().join("images")
    }

    /// The image directory of container `name`, as an argument for `checkpoint` and `restore`.
    pub fn image_arg(&self, name: &str) -> String {
        let image = self.images().join(name);
        image.to_str().expect("utf-8 path").to_string()
    }

    /// OpenVPN running as container "vpn…" with its clients connected; returns the container's
    /// name and its image directory.
    pub fn serve(&mut self) -> (String, String) {
        let name = self.name("vpn");
        let image_arg = self.image_arg(&name);
        self.run_openvpn(&name);
        self.connect_clients();
        (name, image_arg)
    }

    /// `nsenter --net=…` into the network namespace of container `name`, as a command prefix.
    pub fn in_container(&self, name: &str) -> String {
        let pid = self.inspect(name)["pid"].as_i64().expect("pid");
        format!("nsenter --net=/proc/{pid}/ns/net")
    }

    /// The restored tunnel answers, and the client never renegotiated.
    pub fn assert_tunnel_kept(&self) {
        assert!(self.ping(3), "no reply through the restored tunnel");
        assert_eq!(self.client_inits(), 1, "{}", self.client_log());
    }

    /// A scratch path.
    pub fn path(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    /// A container name unique to this test (cgroup paths are host-wide).
    pub fn name(&self, base: &str) -> String {
        format!("{base}-{}", self.tag)
    }

    /// Runs `vpnhop --root ROOT ARGS` in the server host.
    pub fn vpnhop(&self, args: &[&str]) -> Output {
        self.vpnhop_with(&[], args)
    }

    /// Like [`World::vpnhop`] with global flags before the verb.
    pub fn vpnhop_with(&self, globals: &[&str], args: &[&str]) -> Output {
        self.vpnhop_env(&[], globals, args)
    }

    /// Like [`World::vpnhop_with`] with environment variables for vpnhop and its shim.
    pub fn vpnhop_env(&self, env: &[(&str, &str)], globals: &[&str], args: &[&str]) -> Output {
        let mut cmd = Command::new("nsenter");
        cmd.envs(env.iter().copied());
        cmd.arg(format!("--net=/run/netns/{}", self.srv));
        if self.shared_mounts {
            cmd.args(["unshare", "--mount", "--propagation", "shared"]);
        }
        cmd.arg(vpnhop_bin())
            .arg("--root")
            .arg(self.root())
            .args(globals)
            .args(args)
            .current_dir(repo())
            .stdin(Stdio::null())
            .output()
            .expect("running vpnhop")
    }

    /// Runs vpnhop and insists on success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.vpnhop(args);
        assert!(
            out.status.success(),
            "vpnhop {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs vpnhop, insists on failure with exit code 1 and a one-line error; returns it.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.vpnhop(args);
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        assert_eq!(
            out.status.code(),
            Some(1),
            "vpnhop {args:?}: stderr {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
        assert!(stderr.starts_with("vpnhop: "), "{stderr}");
        stderr
    }

    /// `vpnhop inspect NAME` as JSON.
    pub fn inspect(&self, name: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["inspect", name])).expect("inspect JSON")
    }

    /// Status of `name` as `ps --format json` shows it.
    pub fn status(&self, name: &str) -> Option<String> {
        let rows: serde_json::Value =
            serde_json::from_str(&self.ok(&["ps", "--format", "json"])).expect("ps JSON");
        rows.as_array()?
            .iter()
            .find(|r| r["name"] == name)
            .and_then(|r| r["status"].as_str().map(String::from))
    }

    /// Starts `run -d` of the OpenVPN bundle publishing 1194/udp.
    pub fn run_openvpn(&self, name: &str) {
        let bundle = bundle();
        self.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--subnet",
            "198.51.100.0/24",
            bundle.to_str().expect("utf-8 path"),
        ]);
    }

    /// Starts the OpenVPN client of every client host and waits for their tunnels.
    pub fn connect_clients(&mut self) {
        for c in &mut self.clients {
            let child = Command::new("ip")
                .args(["netns", "exec", &c.ns, "openvpn", "--config"])
                .arg(bundle().join("client.ovpn"))
                .args(["--remote", "203.0.113.1", "1194", "--log"])
                .arg(&c.log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting the OpenVPN client");
            c.process = Some(child);
        }

        let deadline = Instant::now() + Duration::from_secs(30);
        for c in &self.clients {
            while c.inits() == 0 {
                assert!(
                    Instant::now() < deadline,
                    "client did not connect: {}",
                    c.log()
                );
                thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Connects the (first) client.
    pub fn connect_client(&mut self) {
        self.connect_clients();
    }

    /// The first client's log.
    pub fn client_log(&self) -> String {
        self.clients[0].log()
    }

    /// How often the first client completed its initialization (1 = never renegotiated).
    pub fn client_inits(&self) -> usize {
        self.clients[0].inits()
    }

    /// Pings the server's tunnel address `count` times from the first client; true if any
    /// reply came.
    pub fn ping(&self, count: u32) -> bool {
        let ns = &self.clients[0].ns;
        sh(&format!(
            "ip netns exec {ns} ping -c {count} -i 0.2 -W 1 10.8.0.1"
        ))
        .status
        .success()
    }

    /// Starts pinging the server through the tunnel at 20 Hz from the first client.
    pub fn start_pinger(&self) -> Pinger {
        self.start_pingers().remove(0)
    }

    /// One pinger per client host, at 20 Hz.
    pub fn start_pingers(&self) -> Vec<Pinger> {
        self.start_pingers_every("0.05")
    }

    /// One pinger per client host, every `interval` seconds.
    pub fn start_pingers_every(&self, interval: &str) -> Vec<Pinger> {
        self.clients
            .iter()
            .map(|c| {
                let n = COUNTER.fetch_add(1, Ordering::SeqCst);
                c.start_pinger(self.path(&format!("ping-{n}.log")), interval)
            })
            .collect()
    }

    /// A reboot, as far as the server host goes: [`World::prepare_reboot`], then
    /// [`World::switch_host`], and the old host deleted at once.
    pub fn reboot_server_host(&mut self) {
        self.prepare_reboot();
        self.switch_host();
        self.delete_retired();
    }

    /// Builds the server host of the next boot: a fresh namespace with its LAN bridge, nothing
    /// else. Done ahead of the checkpoint, as a real machine's next boot has its network up
    /// before the restore runs; keeping it out of the measured gap.
    pub fn prepare_reboot(&mut self) {
        let next = format!("vpnhop-t{}-srv{}", self.tag, self.generation + 1);
        self.build_host(&next, self.generation + 1);
        self.next = Some(next);
    }

    /// The reboot itself: in one `ip` batch on the LAN, the old server host is unplugged and
    /// the prepared one plugged in; the state root is wiped. The old host (its bridge, veths and
    /// rules) is retired, out of service; only the image directory and the bundle carry over.
    /// The clients' own links never go down, as on a real network.
    pub fn switch_host(&mut self) {
        let next = self.next.take().expect("prepare_reboot first");
        let (old, new) = (self.generation, self.generation + 1);
        ip_batch(
            &self.lan,
            &format!(
                "link set t{tag}p{old} nomaster down\nlink set t{tag}p{new} master lan0\n",
                tag = self.tag
            ),
        );
        let _ = fs::remove_dir_all(self.root());

        self.retired.push(std::mem::replace(&mut self.srv, next));
        self.generation = new;
    }

    /// Deletes the namespaces of earlier boots.
    pub fn delete_retired(&mut self) {
        for ns in self.retired.drain(..) {
            let _ = sh(&format!("ip netns del {ns}"));
        }
    }

    /// Links of the server host other than lo and the LAN.
    pub fn server_links(&self) -> Vec<String> {
        let out = sh(&format!("ip -n {} -o link show", self.srv));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                l.split(": ")
                    .nth(1)
                    .map(|n| n.split('@').next().unwrap_or(n).to_string())
            })
            .filter(|n| n != "lo" && n != "uplink")
            .collect()
    }

    /// nftables tables of the server host.
    pub fn server_nft_tables(&self) -> String {
        let out = sh(&format!(
            "nsenter --net=/run/netns/{} nft list tables",
            self.srv
        ));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// Runs `ip -n NS -batch -` with `commands`.
fn ip_batch(ns: &str, commands: &str) {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("ip -batch");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(commands.as_bytes())
        .expect("batch");
    assert!(
        child.wait().expect("ip").success(),
        "ip -n {ns} -batch failed: {commands}"
    );
}

/// Whether a process with this pid exists and is not a zombie (this host's init may take a
/// while to reap orphans).
pub fn alive(pid: i64) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rfind(')').map(|i| !stat[i + 2..].starts_with('Z')))
        .unwrap_or(false)
}

/// Waits up to `timeout` for process `pid` to be gone; true if it went.
pub fn gone_within(pid: i64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Whether container `name` still has a cgroup in any hierarchy.
pub fn has_cgroup(name: &str) -> bool {
    ["memory", "devices", "pids", "cpuset", "freezer"]
        .iter()
        .any(|c| Path::new(&format!("/sys/fs/cgroup/{c}/vpnhop/{name}")).exists())
}

/// The cgroups `vpnhop/*-TAG` of every hierarchy: those of this world's containers.
fn cgroups_of(tag: &str) -> Vec<PathBuf> {
    let suffix = format!("-{tag}");
    let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") else {
        return Vec::new();
    };
    hierarchies
        .flatten()
        .filter_map(|h| fs::read_dir(h.path().join("vpnhop")).ok())
        .flat_map(|groups| groups.flatten().map(|g| g.path()))
        .filter(|g| g.to_string_lossy().ends_with(&suffix))
        .collect()
}

/// Kills, by pid, whatever still runs in this world's cgroups (a container `rm -f` could not
/// remove, say), then removes the cgroups, and `vpnhop` itself where no container is left in it.
fn remove_cgroups_of(tag: &str) {
    let groups = cgroups_of(tag);
    let mut killed = false;
    for group in &groups {
        let procs = fs::read_to_string(group.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            eprintln!(
                "test cleanup: killing pid {pid}, left in {}",
                group.display()
            );
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            killed = true;
        }
    }
    if killed {
        std::thread::sleep(Duration::from_millis(300));
    }

    for group in &groups {
        let _ = fs::remove_dir(group);
        if let Some(parent) = group.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for c in &mut self.clients {
            if let Some(mut client) = c.process.take() {
                let _ = client.kill();
                let _ = client.wait();
            }
        }

        // Remove our containers while the namespace still exists, then the namespaces.
        if let Ok(entries) = fs::read_dir(self.root()) {
            for entry in entries.flatten().filter(|e| e.path().is_dir()) {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !name.starts_with('.') {
                    let out = self.vpnhop(&["rm", "-f", &name]);
                    if !out.status.success() {
                        eprintln!(
                            "test cleanup: rm -f {name}: {}",
                            String::from_utf8_lossy(&out.stderr).trim()
                        );
                    }
                }
            }
        }
        // Containers whose state went with a simulated reboot, or whose tree was restored by
        // hand, have no entry left for `rm`: their cgroups go here.
        remove_cgroups_of(&self.tag);
        self.delete_retired();
        let _ = sh(&format!("ip netns del {}", self.srv));
        let _ = sh(&format!("ip netns del {}", self.lan));
        if let Some(next) = self.next.take() {
            let _ = sh(&format!("ip netns del {next}"));
        }
        for c in &self.clients {
            let _ = sh(&format!("ip netns del {}", c.ns));
        }
    }
}
