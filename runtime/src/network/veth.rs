//! The veth pair that joins a container's network namespace to the bridge.

use std::net::IpAddr;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use rtnetlink::{LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::netlink::Netlink;
use super::{NetError, Wiring};

/// Creates the veth pair of `wiring`, moves its inner end into the network namespace `netns`
/// (a `/proc/PID/ns/net` path), addresses it and routes through the bridge (equivalent to
/// `ip link add HOST type veth peer TMP; ip link set TMP netns PID; ip link set HOST master BR
/// up`, then inside: `ip link set TMP name eth0; ip addr add ADDR dev eth0; ip link set lo up;
/// ip link set eth0 up; ip route add default via GW`).
pub fn attach_container(wiring: &Wiring, netns: &Path) -> Result<(), NetError> {
    let host = Netlink::current()?;
    let err = |op, object: &str| {
        let object = object.to_string();
        move |source| NetError::Netlink {
            op,
            object,
            source: Box::new(source),
        }
    };

    // The peer gets a temporary name unique on the host; it becomes `eth0` once inside.
    let tmp_peer = format!("vc{}", &wiring.host_veth[2..]);
    if host.link(&wiring.host_veth)?.is_some() {
        return Err(NetError::LinkExists(wiring.host_veth.clone()));
    }
    let pair = LinkVeth::new(&wiring.host_veth, &tmp_peer).build();
    host.run(host.handle().link().add(pair).execute())
        .map_err(err("creating veth pair", &wiring.host_veth))?;

    let ns_file = std::fs::File::open(netns).map_err(|source| NetError::Io {
        path: netns.to_path_buf(),
        source,
    })?;
    let peer_index = host.index(&tmp_peer)?;
    let move_peer = LinkUnspec::new_with_index(peer_index)
        .setns_by_fd(std::os::fd::AsRawFd::as_raw_fd(&ns_file))
        .build();
    host.run(host.handle().link().set(move_peer).execute())
        .map_err(err("moving into the container", &tmp_peer))?;

    let bridge_index = host.index(&wiring.bridge)?;
    let host_index = host.index(&wiring.host_veth)?;
    let attach = LinkUnspec::new_with_index(host_index)
        .controller(bridge_index)
        .up()
        .build();
    host.run(host.handle().link().set(attach).execute())
        .map_err(err("attaching to bridge", &wiring.host_veth))?;

    let inner = Netlink::in_netns(netns)?;
    let index = inner.index(&tmp_peer)?;
    let mut rename = LinkUnspec::new_with_index(index).name(wiring.inner_veth.clone());
    if let Some(mac) = wiring.inner_mac {
        rename = rename.address(mac.0.to_vec());
    }
    let rename = rename.build();
    inner
        .run(inner.handle().link().set(rename).execute())
        .map_err(err("renaming", &tmp_peer))?;

    let addr = IpAddr::V4(wiring.address);
    inner
        .run(
            inner
                .handle()
                .address()
                .add(index, addr, wiring.subnet.prefix)
                .execute(),
        )
        .map_err(err("adding address to", &wiring.inner_veth))?;

    let lo = inner.index("lo")?;
    for link in [lo, index] {
        let up = LinkUnspec::new_with_index(link).up().build();
        inner
            .run(inner.handle().link().set(up).execute())
            .map_err(err("bringing up", &wiring.inner_veth))?;
    }

    let route = RouteMessageBuilder::<std::net::Ipv4Addr>::new()
        .gateway(wiring.gateway)
        .build();
    inner
        .run(inner.handle().route().add(route).execute())
        .map_err(err("adding default route via", &wiring.gateway.to_string()))?;

    tracing::debug!(veth = %wiring.host_veth, address = %wiring.address, "container attached");
    Ok(())
}

/// Whether a link called `name` exists in the current network namespace.
pub fn link_exists(name: &str) -> Result<bool, NetError> {
    Ok(Netlink::current()?.link(name)?.is_some())
}

/// Deletes the host end of a veth pair if it is still there (equivalent to `ip link del NAME`).
pub fn remove_host_veth(name: &str) -> Result<(), NetError> {
    let nl = Netlink::current()?;
    let Some(link) = nl.link(name)? else {
        return Ok(());
    };

    match nl.run(nl.handle().link().del(link.header.index).execute()) {
        Ok(()) => Ok(()),
        // It may vanish on its own when the container's namespace is torn down meanwhile.
        Err(rtnetlink::Error::NetlinkError(msg))
            if msg.code.map(|c| c.get()) == Some(-libc::ENODEV) =>
        {
            Ok(())
        }
        Err(source) => Err(NetError::Netlink {
            op: "deleting veth",
            object: name.into(),
            source: Box::new(source),
        }),
    }
}

/// Waits until link `name` is gone: a veth disappears only when the kernel has finished tearing
/// down the namespace of its peer, which happens asynchronously after the last process left it.
pub fn wait_link_gone(name: &str, timeout: Duration) -> Result<(), NetError> {
    let nl = Netlink::current()?;
    let deadline = Instant::now() + timeout;

    while nl.link(name)?.is_some() {
        if Instant::now() >= deadline {
            return Err(NetError::LinkLingers(name.to_string()));
        }
        thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}
