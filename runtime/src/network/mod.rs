//! Host-side wiring of a container: a bridge, a veth pair and published ports.
//!
//! This module owns everything the runtime creates outside the container: the bridge with the
//! gateway address, the host end of each veth pair, one nftables table per container with its
//! DNAT and SNAT rules, and `net.ipv4.ip_forward`. Links, addresses and routes go through
//! `rtnetlink`; netfilter rules through the `nftables` crate (the `nft` JSON interface). What is
//! created is recorded in a [`Wiring`] kept in the container's state and its checkpoint images,
//! so that `rm` removes exactly that and `restore` rebuilds exactly that.

mod bridge;
mod conntrack;
mod netlink;
mod ports;
mod veth;

use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use bridge::{bridge_in_use, remove_bridge, seed_gateway_neighbour};
pub use conntrack::{flush_stale_flows, Flush, CONNTRACK};
pub use ports::{
    install_ports, remove_inet_table_in, remove_ports, start_install_ports, PendingPorts,
};
pub use veth::{attach_container, link_exists, remove_host_veth, wait_link_gone};

/// Errors of the network wiring.
#[derive(Debug, Error)]
pub enum NetError {
    /// A netlink request failed.
    #[error("{op} `{object}`")]
    Netlink {
        /// What was being done, e.g. "creating bridge".
        op: &'static str,
        /// The interface or address concerned.
        object: String,
        /// The kernel's answer.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// An interface we rely on does not exist.
    #[error("network interface `{0}` not found")]
    LinkNotFound(String),
    /// A link that must be created already exists.
    #[error("network interface `{0}` already exists")]
    LinkExists(String),
    /// A link did not go away in time.
    #[error("network interface `{0}` still exists after deletion")]
    LinkLingers(String),
    /// Entering or opening a network namespace failed.
    #[error("network namespace `{path}`")]
    Netns {
        /// The namespace file.
        path: PathBuf,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// A file under /proc/sys or /proc/PID/ns could not be used.
    #[error("`{path}`")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// Applying or deleting netfilter rules failed.
    #[error("nftables table `{table}`")]
    Nft {
        /// The table.
        table: String,
        /// The nft error.
        #[source]
        source: Box<nftables::helper::NftablesError>,
    },
    /// The subnet has no address left for another container.
    #[error("no free address left in subnet `{0}`")]
    NoFreeAddress(Ipv4Cidr),
    /// `nft` refused the container's table; `reason` is the first line it printed.
    #[error("nftables table `{table}`: nft failed: {reason}")]
    NftRefused {
        /// The table.
        table: String,
        /// What nft printed, first line.
        reason: String,
    },
    /// A subnet written by the user does not parse.
    #[error("invalid subnet `{0}`: expected IPV4/PREFIX with a prefix of 8 to 30")]
    BadSubnet(String),
    /// A bridge is already in use with another subnet.
    #[error("bridge `{bridge}` has subnet {existing} (container `{other}`), not {wanted}")]
    SubnetMismatch {
        /// The bridge.
        bridge: String,
        /// Its subnet.
        existing: Ipv4Cidr,
        /// The subnet asked for.
        wanted: Ipv4Cidr,
        /// A container using it.
        other: String,
    },
    /// Another container has this address on the bridge.
    #[error("address {address} on bridge `{bridge}` is taken by container `{other}`")]
    AddressInUse {
        /// The address.
        address: Ipv4Addr,
        /// The bridge.
        bridge: String,
        /// The container holding it.
        other: String,
    },
    /// Another container publishes this port.
    #[error("port {port} is already published by container `{other}`")]
    PortInUse {
        /// The mapping asked for.
        port: PortMapping,
        /// The container holding it.
        other: String,
    },
    /// A `--publish` value does not parse.
    #[error("invalid port mapping `{0}`: expected [HOSTIP:]HOSTPORT:CTRPORT[/udp|/tcp]")]
    BadPort(String),
}

/// An IPv4 network and prefix length, written `198.51.100.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Cidr {
    /// The network address.
    pub network: Ipv4Addr,
    /// The prefix length.
    pub prefix: u8,
}

impl Ipv4Cidr {
    /// The `n`th address of the network (1 is the first host address).
    pub fn host(&self, n: u32) -> Option<Ipv4Addr> {
        let size = 1u32 << (32 - self.prefix);
        (n > 0 && n < size - 1).then(|| Ipv4Addr::from(u32::from(self.network) + n))
    }

    /// Number of host addresses.
    pub fn hosts(&self) -> u32 {
        (1u32 << (32 - self.prefix)) - 2
    }
}

impl FromStr for Ipv4Cidr {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NetError::BadSubnet(s.to_string());
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix) {
            return Err(bad());
        }

        let mask = u32::MAX << (32 - prefix);
        Ok(Ipv4Cidr {
            network: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }
}

impl TryFrom<String> for Ipv4Cidr {
    type Error = NetError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Ipv4Cidr> for String {
    fn from(c: Ipv4Cidr) -> String {
        c.to_string()
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// UDP, what OpenVPN uses here.
    Udp,
    /// TCP.
    Tcp,
}

impl Protocol {
    fn as_str(self) -> &'static str {
        match self {
            Protocol::Udp => "udp",
            Protocol::Tcp => "tcp",
        }
    }
}

/// One `--publish [HOSTIP:]HOSTPORT:CTRPORT/PROTO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// Host address to match; any local address when absent.
    pub host_ip: Option<Ipv4Addr>,
    /// Port on the host.
    pub host_port: u16,
    /// Port inside the container.
    pub container_port: u16,
    /// Transport protocol.
    pub protocol: Protocol,
}

impl FromStr for PortMapping {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || NetError::BadPort(s.to_string());
        let (ports, protocol) = match s.rsplit_once('/') {
            Some((ports, "udp")) => (ports, Protocol::Udp),
            Some((ports, "tcp")) => (ports, Protocol::Tcp),
            Some(_) => return Err(bad()),
            None => (s, Protocol::Udp),
        };

        let parts: Vec<&str> = ports.split(':').collect();
        let (host_ip, host_port, container_port) = match parts.as_slice() {
            [host, ctr] => (None, *host, *ctr),
            [ip, host, ctr] => (Some(ip.parse().map_err(|_| bad())?), *host, *ctr),
            _ => return Err(bad()),
        };

        let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad);
        Ok(PortMapping {
            host_ip,
            host_port: port(host_port)?,
            container_port: port(container_port)?,
            protocol,
        })
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(ip) = self.host_ip {
            write!(f, "{ip}:")?;
        }
        write!(
            f,
            "{}:{}/{}",
            self.host_port,
            self.container_port,
            self.protocol.as_str()
        )
    }
}

/// Everything the runtime creates on the host for one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wiring {
    /// Bridge the host end is attached to.
    pub bridge: String,
    /// Subnet of the bridge.
    pub subnet: Ipv4Cidr,
    /// The bridge's own address, the container's default gateway.
    pub gateway: Ipv4Addr,
    /// The container's address on the bridge.
    pub address: Ipv4Addr,
    /// Host end of the veth pair.
    pub host_veth: String,
    /// Container end of the veth pair.
    pub inner_veth: String,
    /// Published ports.
    pub ports: Vec<PortMapping>,
    /// nftables table holding this container's rules (family `ip`).
    pub nft_table: String,
    /// MAC address of the container's end, fixed at creation so that the host can know it
    /// before a restored container has said a word (see [`prepare_host`]).
    #[serde(default)]
    pub inner_mac: Option<Mac>,
}

/// A locally administered unicast MAC address, written `02:00:5e:00:53:01`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// A stable address derived from `seed` (a container id or a bridge name).
    pub fn derived(seed: &str) -> Mac {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(seed.as_bytes());
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&digest[..6]);
        // Locally administered, unicast.
        mac[0] = (mac[0] & 0xfc) | 0x02;
        Mac(mac)
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl TryFrom<String> for Mac {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        let bytes: Vec<u8> = s
            .split(':')
            .map(|b| u8::from_str_radix(b, 16))
            .collect::<Result<_, _>>()
            .map_err(|_| format!("invalid MAC address `{s}`"))?;
        let mac: [u8; 6] = bytes
            .try_into()
            .map_err(|_| format!("invalid MAC address `{s}`"))?;
        Ok(Mac(mac))
    }
}

impl From<Mac> for String {
    fn from(m: Mac) -> String {
        m.to_string()
    }
}

impl Wiring {
    /// Plans the wiring of container `id`: names derived from the id, the first address of
    /// `subnet` not in `used` (the gateway takes the first host address).
    pub fn plan(
        id: &str,
        bridge: &str,
        subnet: Ipv4Cidr,
        used: &[Ipv4Addr],
        ports: Vec<PortMapping>,
    ) -> Result<Wiring, NetError> {
        let gateway = subnet.host(1).ok_or(NetError::NoFreeAddress(subnet))?;
        let address = (2..=subnet.hosts())
            .filter_map(|n| subnet.host(n))
            .find(|a| !used.contains(a))
            .ok_or(NetError::NoFreeAddress(subnet))?;
        let short = &id[..10.min(id.len())];

        Ok(Wiring {
            bridge: bridge.to_string(),
            subnet,
            gateway,
            address,
            host_veth: format!("vh{short}"),
            inner_veth: "eth0".to_string(),
            ports,
            nft_table: format!("vpnhop_{short}"),
            inner_mac: Some(Mac::derived(id)),
        })
    }
}

/// Checks that `wiring` can live beside the wirings of `others` (name, wiring) on this host: a
/// bridge keeps the subnet it was made with, and addresses and published ports are not shared.
pub fn check_conflicts<'a>(
    wiring: &Wiring,
    others: impl IntoIterator<Item = (&'a str, &'a Wiring)>,
) -> Result<(), NetError> {
    for (other, theirs) in others {
        if theirs.bridge == wiring.bridge {
            if theirs.subnet != wiring.subnet {
                return Err(NetError::SubnetMismatch {
                    bridge: wiring.bridge.clone(),
                    existing: theirs.subnet,
                    wanted: wiring.subnet,
                    other: other.to_string(),
                });
            }
            if theirs.address == wiring.address {
                return Err(NetError::AddressInUse {
                    address: wiring.address,
                    bridge: wiring.bridge.clone(),
                    other: other.to_string(),
                });
            }
        }

        let clash = wiring.ports.iter().find(|p| {
            theirs
                .ports
                .iter()
                .any(|q| q.host_port == p.host_port && q.protocol == p.protocol)
        });
        if let Some(port) = clash {
            return Err(NetError::PortInUse {
                port: *port,
                other: other.to_string(),
            });
        }
    }
    Ok(())
}

/// Brings up `lo` in the current network namespace if it is down: CRIU binds sockets on it to
/// probe the kernel, and fails in a namespace where it is down (a fresh `ip netns add` one).
pub fn ensure_loopback_up() -> Result<(), NetError> {
    ensure_loopback_up_with(&netlink::Netlink::current()?)
}

fn ensure_loopback_up_with(nl: &netlink::Netlink) -> Result<(), NetError> {
    let Some(lo) = nl.link("lo")? else {
        return Err(NetError::LinkNotFound("lo".to_string()));
    };
    let up = lo
        .header
        .flags
        .contains(rtnetlink::packet_route::link::LinkFlags::Up);
    if up {
        return Ok(());
    }

    let msg = rtnetlink::LinkUnspec::new_with_index(lo.header.index)
        .up()
        .build();
    nl.run(nl.handle().link().set(msg).execute())
        .map_err(|source| NetError::Netlink {
            op: "bringing up",
            object: "lo".to_string(),
            source: Box::new(source),
        })
}

/// The host side a container needs in the current network namespace, over one netlink
/// connection: its bridge with the gateway address, IPv4 forwarding, `lo` up (for CRIU), and with
/// `seed` the container's neighbour entry on the bridge, so that the first packets for a restored
/// container need no ARP.
pub fn prepare_host(wiring: &Wiring, seed: bool) -> Result<(), NetError> {
    let nl = netlink::Netlink::current()?;
    bridge::ensure_bridge(&nl, wiring)?;
    enable_forwarding()?;
    ensure_loopback_up_with(&nl)?;
    if seed {
        bridge::seed_neighbour(&nl, wiring)?;
    }
    Ok(())
}

/// Turns on IPv4 forwarding in the current network namespace, as every bridge-based runtime
/// must for DNAT to a container to work.
fn enable_forwarding() -> Result<(), NetError> {
    let path = PathBuf::from("/proc/sys/net/ipv4/ip_forward");
    if std::fs::read_to_string(&path)
        .map(|v| v.trim() == "1")
        .unwrap_or(false)
    {
        return Ok(());
    }

    std::fs::write(&path, "1").map_err(|source| NetError::Io { path, source })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample_wiring() -> Wiring {
        Wiring::plan(
            "0123456789abcdef",
            "vpnhop0",
            "198.51.100.0/24".parse().expect("cidr"),
            &[],
            vec!["1194:1194/udp".parse().expect("port")],
        )
        .expect("plan")
    }

    #[test]
    fn subnet_parses_and_normalizes() {
        let c: Ipv4Cidr = "198.51.100.7/24".parse().expect("parse");
        assert_eq!(c.to_string(), "198.51.100.0/24");
        assert_eq!(c.host(1), Some(Ipv4Addr::new(198, 51, 100, 1)));
        assert_eq!(c.host(255), None);
        assert!("198.51.100.0/31".parse::<Ipv4Cidr>().is_err());
        assert!("nonsense".parse::<Ipv4Cidr>().is_err());
    }

    #[test]
    fn port_mappings_parse_in_all_forms() {
        let p: PortMapping = "1194:1194/udp".parse().expect("short");
        assert_eq!(
            (p.host_ip, p.host_port, p.container_port),
            (None, 1194, 1194)
        );
        let p: PortMapping = "203.0.113.1:51194:1194/udp".parse().expect("with ip");
        assert_eq!(p.host_ip, Some(Ipv4Addr::new(203, 0, 113, 1)));
        assert_eq!(p.to_string(), "203.0.113.1:51194:1194/udp");
        let p: PortMapping = "80:8080/tcp".parse().expect("tcp");
        assert_eq!(p.protocol, Protocol::Tcp);
        for bad in [
            "1194",
            "0:1194/udp",
            "1194:1194/sctp",
            "x:1:2/udp",
            "70000:1/udp",
        ] {
            assert!(bad.parse::<PortMapping>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn plan_skips_gateway_and_used_addresses() {
        let subnet: Ipv4Cidr = "198.51.100.0/24".parse().expect("cidr");
        let used = [Ipv4Addr::new(198, 51, 100, 2)];
        let w = Wiring::plan("abcdef0123456789", "br", subnet, &used, vec![]).expect("plan");
        assert_eq!(w.gateway, Ipv4Addr::new(198, 51, 100, 1));
        assert_eq!(w.address, Ipv4Addr::new(198, 51, 100, 3));
        assert_eq!(w.host_veth, "vhabcdef0123");
        assert!(
            w.host_veth.len() <= 15,
            "interface names are limited to 15 bytes"
        );
    }

    #[test]
    fn conflicts_name_the_other_container() {
        let mine = sample_wiring();
        let mut theirs = sample_wiring();
        theirs.ports = vec![];
        let err = check_conflicts(&mine, [("a", &theirs)]).expect_err("same address");
        assert!(matches!(err, NetError::AddressInUse { .. }), "{err}");

        theirs.address = Ipv4Addr::new(198, 51, 100, 9);
        check_conflicts(&mine, [("a", &theirs)]).expect("no conflict");

        theirs.ports = mine.ports.clone();
        let err = check_conflicts(&mine, [("a", &theirs)]).expect_err("same port");
        assert_eq!(
            err.to_string(),
            "port 1194:1194/udp is already published by container `a`"
        );

        theirs.subnet = "192.0.2.0/24".parse().expect("cidr");
        let err = check_conflicts(&mine, [("a", &theirs)]).expect_err("other subnet");
        assert!(matches!(err, NetError::SubnetMismatch { .. }), "{err}");
    }

    #[test]
    fn derived_macs_are_stable_local_unicast() {
        let a = Mac::derived("0123456789abcdef");
        assert_eq!(a, Mac::derived("0123456789abcdef"));
        assert_ne!(a, Mac::derived("fedcba9876543210"));
        assert_eq!(a.0[0] & 0x03, 0x02, "not locally administered unicast: {a}");
        assert_eq!(Mac::try_from(a.to_string()), Ok(a));
        assert!(Mac::try_from("02:00".to_string()).is_err());
    }

    #[test]
    fn plan_fails_when_the_subnet_is_full() {
        let subnet: Ipv4Cidr = "198.51.100.0/30".parse().expect("cidr");
        let used = [Ipv4Addr::new(198, 51, 100, 2)];
        assert!(matches!(
            Wiring::plan("abcdef0123456789", "br", subnet, &used, vec![]),
            Err(NetError::NoFreeAddress(_))
        ));
    }
}
