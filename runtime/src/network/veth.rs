//! The veth pair that joins a container's network namespace to the bridge.

use std::net::IpAddr;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::netlink::Netlink;
use super::{NetError, Wiring};

/// Creates the veth pair of `wiring` with its inner end already in the network namespace `netns`
/// (a `/proc/PID/ns/net` path) under its final name and MAC, and its host end on the bridge and
/// up; then addresses the inner end and routes through the bridge. Equivalent to `ip link add
/// HOST master BR up type veth peer name eth0 address MAC netns PID`, then inside: `ip addr add
/// ADDR dev eth0; ip link set lo up; ip link set eth0 up; ip route add default via GW`.
///
/// One request makes the pair: moving an existing interface into another namespace, then
/// renaming it, costs the kernel several synchronisations, tens of milliseconds on `run`'s path.
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

    if host.link(&wiring.host_veth)?.is_some() {
        return Err(NetError::LinkExists(wiring.host_veth.clone()));
    }
    let bridge_index = host.index(&wiring.bridge)?;
    let ns_file = std::fs::File::open(netns).map_err(|source| NetError::Io {
        path: netns.to_path_buf(),
        source,
    })?;

    let mut peer = LinkUnspec::new_with_name(&wiring.inner_veth)
        .setns_by_fd(std::os::fd::AsRawFd::as_raw_fd(&ns_file));
    if let Some(mac) = wiring.inner_mac {
        peer = peer.address(mac.0.to_vec());
    }
    let pair = LinkVeth::new(&wiring.host_veth, &wiring.inner_veth)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
        .controller(bridge_index)
        .up()
        .build();
    host.run(host.handle().link().add(pair).execute())
        .map_err(err("creating veth pair", &wiring.host_veth))?;

    let inner = Netlink::in_netns(netns)?;
    let index = inner.index(&wiring.inner_veth)?;

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
