//! End-to-end tests of `run` and the verbs around it, as root, in namespaces the test creates.

mod common;

use std::fs;
use std::time::Duration;

use common::World;

#[test]
fn run_serves_a_client_and_rm_leaves_nothing_behind() {
    require_privileged!();
    let mut world = World::new();
    let name = world.name("vpn");

    world.run_openvpn(&name);
    assert_eq!(world.status(&name).as_deref(), Some("running"));
    world.connect_client();
    assert!(world.ping(3), "no reply through the tunnel");

    let info = world.inspect(&name);
    let pid = info["pid"].as_i64().expect("pid");
    let shim = info["shim_pid"].as_i64().expect("shim pid");
    assert_eq!(info["status"], "running");
    assert_eq!(info["addresses"][0], "198.51.100.2");
    assert_eq!(info["published_ports"][0]["host_port"], 1194);
    assert!(info["pids"]
        .as_array()
        .is_some_and(|p| p.iter().any(|x| x.as_i64() == Some(pid))));
    assert_eq!(info["netns"], format!("/proc/{pid}/ns/net"));

    let logs = world.ok(&["logs", &name]);
    assert!(logs.contains("Initialization Sequence Completed"), "{logs}");
    assert!(
        !world.server_nft_tables().is_empty(),
        "no published-port rules"
    );

    world.ok(&["stop", "-t", "5", &name]);
    assert_eq!(world.status(&name).as_deref(), Some("stopped"));
    assert!(
        !common::alive(pid) && !common::alive(shim),
        "processes survived stop"
    );

    world.ok(&["rm", &name]);
    assert_eq!(world.status(&name), None);
    assert!(!world.root().join(&name).exists(), "state left behind");
    assert_eq!(
        world.server_links(),
        Vec::<String>::new(),
        "links left behind"
    );
    assert_eq!(world.server_nft_tables(), "", "netfilter rules left behind");
    assert!(!common::has_cgroup(&name), "cgroups left behind");
}

#[test]
fn rm_refuses_a_running_container_unless_forced() {
    require_privileged!();
    let world = World::new();
    let name = world.name("vpn");
    world.run_openvpn(&name);

    let err = world.fails(&["rm", &name]);
    assert!(
        err.contains(&format!("container `{name}` is running")),
        "{err}"
    );
    assert_eq!(world.status(&name).as_deref(), Some("running"));

    world.ok(&["rm", "-f", &name]);
    assert_eq!(world.status(&name), None);
    assert!(!common::has_cgroup(&name));
}

#[test]
fn bad_input_is_one_clear_line_and_leaves_nothing() {
    require_privileged!();
    let world = World::new();
    let name = world.name("vpn");

    // A bundle that does not exist.
    let err = world.fails(&["run", "-d", "--name", &name, "/nonexistent/bundle"]);
    assert_eq!(err, "vpnhop: bundle `/nonexistent/bundle` not found");

    // A malformed config.json.
    let broken = world.path("broken");
    fs::create_dir_all(broken.join("rootfs")).expect("broken bundle");
    fs::write(broken.join("config.json"), "{ not json").expect("config");
    let err = world.fails(&["run", "-d", "--name", &name, broken.to_str().expect("path")]);
    assert!(err.contains("invalid config.json"), "{err}");
    assert!(err.contains(&broken.display().to_string()), "{err}");

    // A malformed --publish is a usage error.
    let out = world.vpnhop(&["run", "-d", "-p", "nonsense", "bundles/openvpn"]);
    assert_eq!(out.status.code(), Some(2));

    // No /dev/net/tun on the host side: hidden under an empty tmpfs in a private mount ns.
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", world.srv))
        .args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs none /dev/net && exec {} --root {} run -d --name {name} {}",
            common::vpnhop_bin().display(),
            world.root().display(),
            common::bundle().display()
        ))
        .output()
        .expect("run without tun");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        err,
        "vpnhop: device `/dev/net/tun` (c 10:200) is missing on the host; load its kernel module"
    );

    // Nothing of the failed attempts remains.
    assert_eq!(world.status(&name), None);
    assert_eq!(world.server_links(), Vec::<String>::new());
    assert!(!common::has_cgroup(&name));

    // A name already in use.
    world.run_openvpn(&name);
    let err = world.fails(&["run", "-d", "--name", &name, "bundles/openvpn"]);
    assert_eq!(
        err,
        format!("vpnhop: container name `{name}` is already in use")
    );
    assert_eq!(
        world.status(&name).as_deref(),
        Some("running"),
        "the first one was harmed"
    );

    // Verbs on a container that does not exist.
    let err = world.fails(&["stop", "nosuch"]);
    assert_eq!(err, "vpnhop: no such container `nosuch`");
}

#[test]
fn attached_run_exits_with_the_container() {
    require_privileged!();
    let world = World::new();
    let name = world.name("vpn");

    // Attached: `run` follows the output until the container stops; stop it from outside.
    let root = world.root();
    let srv = world.srv.clone();
    let bin = common::vpnhop_bin();
    let bundle = common::bundle();
    let n = name.clone();
    let attached = std::thread::spawn(move || {
        std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{srv}"))
            .arg(bin)
            .arg("--root")
            .arg(root)
            .args(["run", "--name", &n, "--subnet", "198.51.100.0/24"])
            .arg(bundle)
            .output()
            .expect("attached run")
    });

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while world.status(&name).as_deref() != Some("running") {
        assert!(std::time::Instant::now() < deadline, "container never ran");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    world.ok(&["stop", &name]);

    let out = attached.join().expect("thread");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with(&name), "{stdout}");
    assert!(
        stdout.contains("Initialization Sequence Completed"),
        "{stdout}"
    );
    // OpenVPN exits 0 on SIGTERM.
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
