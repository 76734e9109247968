//! End-to-end tests of `checkpoint` and `restore`: the tunnel of a connected client survives a
//! simulated reboot of the server host, and bad images or failing CRIU lose nothing.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::World;

/// Checkpoint, destroy everything but the image and the bundle, restore: several times over on
/// the same client sessions, which must never renegotiate.
#[test]
fn reboot_simulation_keeps_the_client_tunnels() {
    require_privileged!();
    let mut world = World::with_clients(2);
    let name = world.name("vpn");
    let image = world.images().join(&name);
    let image_arg = image.to_str().expect("utf-8 path");

    world.run_openvpn(&name);
    world.connect_clients();
    let pingers = world.start_pingers();
    for pinger in &pingers {
        assert!(
            pinger.wait_reply_after(common::now(), Duration::from_secs(5)),
            "no replies"
        );
    }

    // The container's addresses, routes and rules are its own: CRIU brings them back, and a
    // restore adds none and loses none.
    let addresses = |world: &World| {
        let net = world.in_container(&name);
        let out = common::sh(&format!(
            "{net} ip -o addr show | awk '{{print $2, $3, $4}}'; {net} ip route show table all; \
             {net} ip rule show; {net} ip -6 rule show"
        ));
        let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        lines.sort();
        lines
    };
    let at_start = addresses(&world);
    for expected in [
        "tun0 inet 10.8.0.1/24",
        "default via 198.51.100.1 dev eth0",
        "32766: from all lookup main",
    ] {
        assert!(
            at_start.iter().any(|a| a.starts_with(expected)),
            "{expected}: {at_start:?}"
        );
    }

    for cycle in 1..=3 {
        let before = world.inspect(&name);
        let (pid, shim) = (
            before["pid"].as_i64().expect("pid"),
            before["shim_pid"].as_i64().expect("shim"),
        );
        let start = common::now();

        let out = world.ok(&["checkpoint", "--image-dir", image_arg, &name]);
        assert_eq!(out.trim(), image_arg);
        assert!(image.join("manifest.json").is_file());

        world.reboot_server_host();
        // The shim answers once the images are safe, then removes the old host side and exits.
        assert!(
            common::gone_within(pid, Duration::from_secs(5)),
            "init {pid} survived"
        );
        assert!(
            common::gone_within(shim, Duration::from_secs(10)),
            "shim {shim} survived"
        );

        let out = world.ok(&["restore", image_arg]);
        assert_eq!(out.trim(), name);
        assert_eq!(world.status(&name).as_deref(), Some("running"));
        let restored_pid = world.inspect(&name)["pid"].as_i64().expect("pid");

        let resumed = common::now();
        for (pinger, client) in pingers.iter().zip(&world.clients) {
            assert!(
                pinger.wait_reply_after(resumed, Duration::from_secs(10)),
                "cycle {cycle}: ping from {} did not resume; client log:\n{}",
                client.addr,
                client.log()
            );
            println!(
                "cycle {cycle}: client {} gap {:.0} ms (server pid {pid} -> {restored_pid})",
                client.addr,
                pinger.max_gap_ms(start - 1.0)
            );
        }
        assert_eq!(addresses(&world), at_start, "cycle {cycle}");
    }

    for client in &world.clients {
        assert_eq!(
            client.inits(),
            1,
            "client {} renegotiated:\n{}",
            client.addr,
            client.log()
        );
    }
}

/// The shim of a checkpointed container tears its host side down after answering. A restore
/// that follows at once, as in the benchmark's simulated reboot, may already have joined cgroups
/// of the same path: the teardown killed everything in them, the restored tree included. A
/// process put into the container's cgroup beside the tree stands in for that tree here.
#[test]
fn the_teardown_after_a_checkpoint_kills_nothing_in_the_cgroups() {
    require_privileged!();
    let mut world = World::new();
    let name = world.name("vpn");
    let image_arg = &world.image_arg(&name);

    world.run_openvpn(&name);
    let old_shim = world.inspect(&name)["shim_pid"].as_i64().expect("shim");
    let procs = ["pids", "unified"]
        .iter()
        .map(|h| format!("/sys/fs/cgroup/{h}/vpnhop/{name}/cgroup.procs"))
        .find(|p| std::path::Path::new(p).exists())
        .expect("the container's cgroup");
    let mut bystander = Command::new("sleep").arg("60").spawn().expect("sleep");
    let pid = bystander.id() as i64;
    fs::write(&procs, pid.to_string()).expect("joining the container's cgroup");

    world.ok(&["checkpoint", "--image-dir", image_arg, &name]);
    let old_gone = common::gone_within(old_shim, Duration::from_secs(10));
    let survived = bystander.try_wait().expect("try_wait").is_none();
    let _ = bystander.kill();
    let _ = bystander.wait();
    assert!(old_gone, "old shim {old_shim} survived");
    assert!(
        survived,
        "the teardown killed a process in the container's cgroups"
    );

    world.reboot_server_host();
    world.ok(&["restore", image_arg]);
    assert_eq!(world.status(&name).as_deref(), Some("running"));
}

/// A host whose root mount is shared (systemd's default) ties a container's mounts to the host's
/// unless the runtime makes them private; the images then recorded that tie, and a restore
/// on a freshly booted host failed with "Failed to copy sharing from source".
#[test]
fn restore_works_when_the_host_mounts_are_shared() {
    require_privileged!();
    let mut world = World::new();
    world.shared_mounts = true;
    let (name, image_arg) = world.serve();
    let image_arg = &image_arg;
    assert!(
        world.ping(3),
        "no reply through the tunnel before the checkpoint"
    );

    world.ok(&["checkpoint", "--image-dir", image_arg, &name]);
    world.reboot_server_host();
    let out = world.ok(&["restore", image_arg]);
    assert_eq!(out.trim(), name);

    assert_eq!(world.status(&name).as_deref(), Some("running"));
    world.assert_tunnel_kept();
}

/// A host that tracks connections before the restore (any firewall does) records the clients'
/// first packets as flows without NAT, and each packet keeps such a flow alive: the clients'
/// packets went to the host's own port, bounced as "port unreachable", and the restored server
/// never heard from them again. Seen in the kexec guest, where loading the NAT modules left a
/// window before the rules were committed.
#[test]
fn flows_tracked_before_the_restore_reach_the_restored_server() {
    require_privileged!();
    let mut world = World::new();
    let (name, image_arg) = world.serve();
    let image_arg = &image_arg;
    let pingers = world.start_pingers();
    assert!(
        pingers[0].wait_reply_after(common::now(), Duration::from_secs(5)),
        "no replies before the checkpoint"
    );

    world.ok(&["checkpoint", "--image-dir", image_arg, &name]);
    world.prepare_reboot();
    world.switch_host();
    world.delete_retired();

    // The new host's firewall tracks connections from the start; wait for the client's
    // packets to be tracked there, without NAT, before anything of vpnhop exists.
    let net = format!("nsenter --net=/run/netns/{}", world.srv);
    common::sh_ok(&format!(
        "{net} nft add table ip firewall && \
         {net} nft add chain ip firewall input '{{ type filter hook input priority 0; }}' && \
         {net} nft add rule ip firewall input ct state new counter"
    ));
    let tracked = (0..100).any(|_| {
        let out = common::sh(&format!(
            "{net} conntrack -L -p udp --orig-port-dst 1194 2>/dev/null"
        ));
        std::thread::sleep(Duration::from_millis(50));
        String::from_utf8_lossy(&out.stdout).contains("dport=1194")
    });
    assert!(
        tracked,
        "the client's packets were never tracked on the new host"
    );

    world.ok(&["restore", image_arg]);
    let resumed = common::now();
    assert!(
        pingers[0].wait_reply_after(resumed, Duration::from_secs(10)),
        "ping did not resume through the restored server; client log:\n{}",
        world.client_log()
    );
    assert_eq!(world.client_inits(), 1, "{}", world.client_log());
}

/// The connections a container's own firewall tracks are part of its network namespace: they
/// come back with it. vpnhop's CRIU skips the walk of the host-wide conntrack table only for a
/// namespace that tracks nothing (as every other test's does); this one tracks a flow that no
/// traffic refreshes or recreates, so only the dump can have brought it back.
#[test]
fn connections_the_container_tracks_survive_a_restore() {
    require_privileged!();
    let mut world = World::new();
    let (name, image_arg) = world.serve();
    let image_arg = &image_arg;

    let net = world.in_container(&name);
    common::sh_ok(&format!(
        "{net} conntrack -I -p udp -s 192.0.2.7 -d 192.0.2.8 --sport 4000 --dport 4001 \
         --timeout 600 --mark 7"
    ));
    let tracked = |net: &str| {
        let out = common::sh(&format!("{net} conntrack -L --mark 7 2>/dev/null"));
        String::from_utf8_lossy(&out.stdout).contains("sport=4000 dport=4001")
    };
    assert!(
        tracked(&net),
        "the flow was not tracked before the checkpoint"
    );

    world.ok(&["checkpoint", "--image-dir", image_arg, &name]);
    world.reboot_server_host();
    world.ok(&["restore", image_arg]);

    assert!(
        tracked(&world.in_container(&name)),
        "the restored container lost its tracked flow"
    );
    world.assert_tunnel_kept();
}

/// CRIU starts before the published ports' rules are in: if `nft` then fails, the restored tree
/// must not be left running unreachable. The restore fails naming the table, the tree is killed,
/// and the image restores once `nft` works again.
#[test]
fn a_restore_whose_ports_fail_kills_the_restored_tree_and_keeps_the_image() {
    require_privileged!();
    let mut world = World::new();
    let (name, image_arg) = world.serve();
    let image_arg = &image_arg;
    let old_shim = world.inspect(&name)["shim_pid"].as_i64().expect("shim");
    world.ok(&["checkpoint", "--image-dir", image_arg, &name]);
    // Only the restore's `nft` may fail: the old shim's teardown runs `nft` too, and a restore
    // that meets its entry removes that entry with `nft` first.
    assert!(
        common::gone_within(old_shim, Duration::from_secs(10)),
        "old shim {old_shim} survived"
    );
    world.reboot_server_host();

    let bin = world.path("failing-nft");
    fs::create_dir_all(&bin).expect("dir");
    let nft = bin.join("nft");
    fs::write(
        &nft,
        "#!/bin/sh\necho 'Error: injected failure' >&2\nexit 1\n",
    )
    .expect("nft");
    fs::set_permissions(&nft, fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let out = world.vpnhop_env(&[("PATH", &path)], &[], &["restore", image_arg]);
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    assert!(err.contains("injected failure"), "{err}");

    let pidfile = world
        .root()
        .join(".failed")
        .join(&name)
        .join("criu/restored.pid");
    let pid: i64 = fs::read_to_string(&pidfile)
        .expect("CRIU restored the tree before nft failed")
        .trim()
        .parse()
        .expect("pid");
    assert!(
        common::gone_within(pid, Duration::from_secs(5)),
        "restored init {pid} left running without its ports"
    );

    world.ok(&["restore", image_arg]);
    assert_eq!(world.status(&name).as_deref(), Some("running"));
    world.assert_tunnel_kept();
}

/// `--leave-running`: the container keeps serving during and after the dump, and its image can
/// not be restored beside it.
#[test]
fn leave_running_keeps_serving_and_refuses_a_twin() {
    require_privileged!();
    let mut world = World::new();
    let name = world.name("vpn");
    let image_arg = &world.image_arg(&name);

    // A server host whose loopback is down, as in a fresh `ip netns add`: CRIU needs it up.
    common::sh_ok(&format!("ip -n {} link set lo down", world.srv));

    world.run_openvpn(&name);
    world.connect_client();
    let pinger = world.start_pinger();
    let start = common::now();

    let out = world.ok(&[
        "checkpoint",
        "--leave-running",
        "--print-stats",
        "--format",
        "json",
        "--image-dir",
        image_arg,
        &name,
    ]);
    let stats: serde_json::Value =
        serde_json::from_str(out.lines().nth(1).expect("stats line")).expect("stats JSON");
    assert!(
        stats["dump_ms"].as_f64().is_some_and(|ms| ms > 0.0),
        "{stats}"
    );
    assert!(
        stats["image_bytes"].as_u64().is_some_and(|b| b > 0),
        "{stats}"
    );

    assert_eq!(world.status(&name).as_deref(), Some("running"));
    assert!(
        pinger.wait_reply_after(common::now(), Duration::from_secs(5)),
        "tunnel broke"
    );
    println!("leave-running gap {:.0} ms", pinger.max_gap_ms(start));
    assert_eq!(world.client_inits(), 1);

    let err = world.fails(&["restore", "--name", &world.name("twin"), image_arg]);
    assert!(
        err.contains("still runs") && err.contains("second copy is refused"),
        "{err}"
    );
    assert_eq!(world.status(&world.name("twin")), None);
}

/// A second restore of an image whose restored container runs is refused, and so is a restore
/// under a name that another container holds.
#[test]
fn second_restore_and_taken_names_are_refused() {
    require_privileged!();
    let world = World::new();
    let name = world.name("vpn");
    let other = world.name("other");
    let image_arg = &world.image_arg(&name);

    world.run_openvpn(&name);
    world.ok(&["checkpoint", "--image-dir", image_arg, &name]);
    assert_eq!(world.status(&name).as_deref(), Some("checkpointed"));

    // Another container holds the name asked for.
    world.ok(&[
        "run",
        "-d",
        "--name",
        &other,
        "-p",
        "1195:1194/udp",
        "--subnet",
        "198.51.100.0/24",
        "bundles/openvpn",
    ]);
    let err = world.fails(&["restore", "--name", &other, image_arg]);
    assert_eq!(
        err,
        format!("vpnhop: container name `{other}` is already in use; pass --name to restore under another")
    );

    // Restoring over its own checkpointed entry works once; then it runs and a second one is
    // refused.
    world.ok(&["restore", image_arg]);
    assert_eq!(world.status(&name).as_deref(), Some("running"));
    let err = world.fails(&["restore", "--name", &world.name("again"), image_arg]);
    assert!(
        err.contains("already restored as container") && err.contains("refused"),
        "{err}"
    );
    assert_eq!(world.status(&other).as_deref(), Some("running"));
}

/// Damaged image directories are detected before CRIU runs and are never modified.
#[test]
fn corrupt_and_partial_images_are_refused_untouched() {
    require_privileged!();
    let world = World::new();
    let name = world.name("vpn");
    let image = world.images().join(&name);

    world.run_openvpn(&name);
    world.ok(&[
        "checkpoint",
        "--leave-running",
        "--image-dir",
        image.to_str().expect("path"),
        &name,
    ]);
    world.ok(&["rm", "-f", &name]);

    // A truncated image file.
    let truncated = world.images().join("truncated");
    copy_dir(&image, &truncated);
    let pages = fs::read_dir(truncated.join("criu"))
        .expect("criu dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("pages-"))
        })
        .expect("a pages image");
    let len = fs::metadata(&pages).expect("stat").len();
    fs::OpenOptions::new()
        .write(true)
        .open(&pages)
        .expect("open")
        .set_len(len / 2)
        .expect("truncate");
    let listing = listing(&truncated);
    let err = world.fails(&["restore", truncated.to_str().expect("path")]);
    assert!(
        err.contains("is corrupt") && err.contains("does not match its checksum"),
        "{err}"
    );
    assert_eq!(
        listing,
        self::listing(&truncated),
        "the image directory was modified"
    );

    // A directory without its manifest (a checkpoint that never completed).
    let partial = world.images().join("partial");
    copy_dir(&image, &partial);
    fs::remove_file(partial.join("manifest.json")).expect("rm manifest");
    let listing = self::listing(&partial);
    let err = world.fails(&["restore", partial.to_str().expect("path")]);
    assert_eq!(
        err,
        format!(
            "vpnhop: image directory `{}` is incomplete: manifest.json missing",
            partial.display()
        )
    );
    assert_eq!(
        listing,
        self::listing(&partial),
        "the image directory was modified"
    );

    // Nothing was created for either attempt.
    assert_eq!(world.status(&name), None);
    assert_eq!(world.server_links(), Vec::<String>::new());
    assert_eq!(world.server_nft_tables(), "");

    // The intact image still restores.
    world.ok(&["restore", image.to_str().expect("path")]);
    assert_eq!(world.status(&name).as_deref(), Some("running"));
}

/// CRIU missing, or failing after it froze the container: a clear error, and the container keeps
/// running and serving.
#[test]
fn failing_criu_leaves_the_container_running() {
    require_privileged!();
    let mut world = World::new();
    let name = world.name("vpn");
    let image = world.images().join(&name);
    let image_arg = image.to_str().expect("utf-8 path");

    world.run_openvpn(&name);
    world.connect_client();

    let out = world.vpnhop_with(
        &["--criu", "/nonexistent/criu"],
        &["checkpoint", "--image-dir", image_arg, &name],
    );
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        err,
        "vpnhop: criu `/nonexistent/criu` not found: run scripts/setup.sh or pass --criu"
    );

    // A CRIU whose dump fails once the tree is frozen: an action script that fails at the
    // network-lock step.
    let script = world.path("fail-at-lock.sh");
    fs::write(
        &script,
        "#!/bin/sh\n[ \"$CRTOOLS_SCRIPT_ACTION\" = network-lock ] && exit 1\nexit 0\n",
    )
    .expect("script");
    let wrapper = world.path("criu-failing");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ \"$1\" = dump ]; then exec {} \"$@\" --action-script {}; fi\nexec {} \"$@\"\n",
            common::criu_bin().display(),
            script.display(),
            common::criu_bin().display()
        ),
    )
    .expect("wrapper");
    for path in [&script, &wrapper] {
        fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    let wrapper_arg = wrapper.to_str().expect("path");
    let out = world.vpnhop_with(
        &["--criu", wrapper_arg],
        &["checkpoint", "--image-dir", image_arg, &name],
    );
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.starts_with("vpnhop: criu dump failed"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!image.exists(), "a failed dump left an image directory");

    assert_eq!(world.status(&name).as_deref(), Some("running"));
    assert!(
        world.ping(3),
        "the container stopped serving after the failed dump"
    );
    assert_eq!(world.client_inits(), 1);

    // A dump that succeeds but whose images cannot be kept (the directory made immutable behind
    // CRIU's back): the stopped, network-locked container must be resumed.
    let sealer = world.path("criu-unsealable");
    fs::write(
        &sealer,
        format!(
            // CRIU (and so this wrapper) may run with a PATH of CRIU's helpers only.
            "#!/bin/sh\nPATH=/usr/sbin:/usr/bin:/sbin:/bin\n{criu} \"$@\" || exit $?\n\
             if [ \"$1\" = dump ]; then\n\
               while [ $# -gt 0 ]; do [ \"$1\" = --images-dir ] && chattr +i \"$(dirname \"$2\")\"; shift; done\n\
             fi\n",
            criu = common::criu_bin().display()
        ),
    )
    .expect("sealer");
    fs::set_permissions(&sealer, fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = world.vpnhop_with(
        &["--criu", sealer.to_str().expect("path")],
        &["checkpoint", "--image-dir", image_arg, &name],
    );
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    for leftover in fs::read_dir(world.images()).expect("images").flatten() {
        let _ = Command::new("chattr")
            .arg("-i")
            .arg(leftover.path())
            .status();
        let _ = fs::remove_dir_all(leftover.path());
    }
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(world.status(&name).as_deref(), Some("running"));
    assert!(
        world.ping(3),
        "the container was not resumed after an unsealable dump ({err}); shim log:\n{}",
        fs::read_to_string(world.root().join(&name).join("shim.log")).unwrap_or_default()
    );
    assert_eq!(world.client_inits(), 1, "{}", world.client_log());

    // And the real thing still works afterwards.
    world.ok(&[
        "checkpoint",
        "--leave-running",
        "--image-dir",
        image_arg,
        &name,
    ]);
    assert!(image.join("manifest.json").is_file());
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(status.success());
}

/// Names, sizes and modification times of every file under `dir`.
fn listing(dir: &std::path::Path) -> Vec<(String, u64, i64)> {
    let mut out = Vec::new();
    for sub in [dir.to_path_buf(), dir.join("criu")] {
        for entry in fs::read_dir(&sub).expect("readdir").flatten() {
            let meta = entry.metadata().expect("stat");
            if meta.is_file() {
                use std::os::unix::fs::MetadataExt;
                out.push((
                    entry.path().display().to_string(),
                    meta.len(),
                    meta.mtime_nsec(),
                ));
            }
        }
    }
    out.sort();
    out
}

/// The boot-time half of `vpnhop kexec`: `restore --all` follows the plan once, into the state
/// root each container ran under, and marks it done so a later boot does not repeat it.
#[test]
fn restore_all_follows_the_plan_once() {
    require_privileged!();
    let mut world = World::new();
    let name = world.name("vpn");
    let image = world.images().join(&name);

    world.run_openvpn(&name);
    world.connect_client();
    world.ok(&[
        "checkpoint",
        "--image-dir",
        image.to_str().expect("path"),
        &name,
    ]);

    let plan = serde_json::json!({
        "created": "2026-01-01T00:00:00Z",
        "boot_id": "x",
        "from_kernel": "a",
        "to_kernel": "b",
        "entries": [{ "name": name, "image_dir": image, "root": world.root() }],
    });
    fs::write(world.images().join("restore-plan.json"), plan.to_string()).expect("plan");
    world.reboot_server_host();

    let images = world.images();
    let root = images.to_str().expect("path");
    let out = world.ok(&["restore", "--all", "--image-root", root]);
    assert_eq!(out.trim(), name);
    assert_eq!(world.status(&name).as_deref(), Some("running"));
    world.assert_tunnel_kept();
    assert!(!images.join("restore-plan.json").exists());
    assert!(images.join("restore-plan.done.json").exists());

    let out = world.ok(&["restore", "--all", "--image-root", root]);
    assert!(out.starts_with("no pending restore plan"), "{out}");
}

/// On a kernel without kexec (this development machine), `vpnhop kexec` says so in one line and
/// changes nothing.
#[test]
fn kexec_refuses_on_a_kernel_without_kexec() {
    require_privileged!();
    if std::path::Path::new("/sys/kernel/kexec_loaded").exists() {
        eprintln!(
            "this kernel has kexec: the refusal is not exercised here (tests/guest/kexec.sh)"
        );
        return;
    }
    let world = World::new();
    let name = world.name("vpn");
    world.run_openvpn(&name);

    for args in [&["kexec"][..], &["kexec", "--dry-run"][..]] {
        let err = world.fails(args);
        assert_eq!(
            err,
            "vpnhop: this kernel cannot kexec (`/sys/kernel/kexec_loaded` is missing); nothing was changed"
        );
    }
    assert_eq!(world.status(&name).as_deref(), Some("running"));
    assert!(!world.images().join("restore-plan.json").exists());
}
