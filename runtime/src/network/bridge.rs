//! The bridge every container's host-side veth end is attached to.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::{LinkBridge, LinkUnspec};

use super::netlink::Netlink;
use super::{Mac, NetError, Wiring};

fn is_errno(err: &rtnetlink::Error, errno: i32) -> bool {
    matches!(err, rtnetlink::Error::NetlinkError(msg) if msg.code.map(|c| c.get()) == Some(-errno))
}

/// Creates the bridge of `wiring` with its gateway address and brings it up; a bridge that
/// already exists is reused (equivalent to `ip link add NAME type bridge; ip addr add GW/LEN dev
/// NAME; ip link set NAME up`).
pub(crate) fn ensure_bridge(nl: &Netlink, wiring: &Wiring) -> Result<(), NetError> {
    let name = &wiring.bridge;

    if nl.link(name)?.is_none() {
        // A stable MAC, like a real host's card: neighbours' caches stay right across a reboot.
        let mac = Mac::derived(name);
        let msg = LinkBridge::new(name).address(mac.0.to_vec()).build();
        nl.run(nl.handle().link().add(msg).execute())
            .map_err(|source| NetError::Netlink {
                op: "creating bridge",
                object: name.clone(),
                source: Box::new(source),
            })?;
        tracing::debug!(bridge = %name, "bridge created");
    }
    let index = nl.index(name)?;

    let gateway = IpAddr::V4(wiring.gateway);
    let add = nl
        .handle()
        .address()
        .add(index, gateway, wiring.subnet.prefix)
        .execute();
    match nl.run(add) {
        Ok(()) => {}
        Err(err) if is_errno(&err, libc::EEXIST) => {}
        Err(source) => {
            return Err(NetError::Netlink {
                op: "adding gateway address to",
                object: name.clone(),
                source: Box::new(source),
            })
        }
    }

    let up = LinkUnspec::new_with_index(index).up().build();
    nl.run(nl.handle().link().set(up).execute())
        .map_err(|source| NetError::Netlink {
            op: "bringing up",
            object: name.clone(),
            source: Box::new(source),
        })
}

/// Tells the host the container's MAC address before the container can answer ARP itself
/// (equivalent to `ip neigh replace ADDR lladdr MAC dev BRIDGE nud reachable`).
///
/// After a restore, the first packets for the container arrive while CRIU is still bringing it
/// up; an ARP request sent then goes unanswered, and the kernel only asks again a second later.
/// With the entry in place the packets go out at once.
pub(crate) fn seed_neighbour(nl: &Netlink, wiring: &Wiring) -> Result<(), NetError> {
    let Some(mac) = wiring.inner_mac else {
        return Ok(());
    };
    let index = nl.index(&wiring.bridge)?;
    replace_neighbour(nl, index, wiring.address, &mac.0)
        .map_err(neighbour_err("adding neighbour entry for", wiring.address))
}

/// Tells the restored container the gateway's MAC address (the bridge's), in its network
/// namespace `netns` (a `/proc/PID/ns/net` path); equivalent to `nsenter --net=NETNS ip neigh
/// replace GW lladdr BRIDGE_MAC dev eth0 nud reachable`.
///
/// CRIU restores no neighbour entries, so the restored server must ask for the gateway before
/// its first reply can leave. It resumes as soon as CRIU has put the host end of its veth on the
/// bridge, and the bridge forwards through that port only once the kernel has noticed the
/// link's carrier, a moment later. An ARP request sent in between is lost, and the kernel asks
/// again only a second later, with the replies queued behind it: the occasional one-second
/// stall after a restore. Writing the entry releases them at once.
pub fn seed_gateway_neighbour(wiring: &Wiring, netns: &Path) -> Result<(), NetError> {
    let host = Netlink::current()?;
    let Some(bridge) = host.link(&wiring.bridge)? else {
        return Err(NetError::LinkNotFound(wiring.bridge.clone()));
    };
    let Some(mac) = bridge.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(mac) => Some(mac.clone()),
        _ => None,
    }) else {
        return Ok(());
    };

    let inner = Netlink::in_netns(netns)?;
    let index = inner.index(&wiring.inner_veth)?;
    replace_neighbour(&inner, index, wiring.gateway, &mac).map_err(neighbour_err(
        "adding the container's neighbour entry for",
        wiring.gateway,
    ))
}

/// `ip neigh replace ADDR lladdr MAC dev INDEX nud reachable` on the connection `nl`.
fn replace_neighbour(
    nl: &Netlink,
    index: u32,
    addr: Ipv4Addr,
    mac: &[u8],
) -> Result<(), rtnetlink::Error> {
    let request = nl
        .handle()
        .neighbours()
        .add(index, IpAddr::V4(addr))
        .link_layer_address(mac)
        .state(NeighbourState::Reachable)
        .replace()
        .execute();
    nl.run(request)
}

fn neighbour_err(op: &'static str, addr: Ipv4Addr) -> impl FnOnce(rtnetlink::Error) -> NetError {
    move |source| NetError::Netlink {
        op,
        object: addr.to_string(),
        source: Box::new(source),
    }
}

/// Whether any interface is still attached to bridge `name`; false when it does not exist.
pub fn bridge_in_use(name: &str) -> Result<bool, NetError> {
    let nl = Netlink::current()?;
    match nl.link(name)? {
        Some(link) => Ok(!nl.ports_of(link.header.index)?.is_empty()),
        None => Ok(false),
    }
}

/// Deletes bridge `name` if it exists (equivalent to `ip link del NAME`).
pub fn remove_bridge(name: &str) -> Result<(), NetError> {
    let nl = Netlink::current()?;
    let Some(link) = nl.link(name)? else {
        return Ok(());
    };

    nl.run(nl.handle().link().del(link.header.index).execute())
        .map_err(|source| NetError::Netlink {
            op: "deleting bridge",
            object: name.to_string(),
            source: Box::new(source),
        })
}
