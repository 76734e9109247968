//! Published ports: one nftables table per container with its DNAT and SNAT rules.
//!
//! DNAT sends what arrives at the host port to the container. The SNAT rule matters after a
//! restore: the conntrack table is empty then, and the restored server is the first to speak to
//! its clients, so without it they would see packets from the container's private address.
//! A table per container makes removal one atomic `delete table`.

use std::borrow::Cow;
use std::io::{self, Write};
use std::process::{Child, Command, Stdio};

use nftables::batch::Batch;
use nftables::expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField};
use nftables::helper::{apply_ruleset, NftablesError};
use nftables::schema::{Chain, NfListObject, Rule, Table};
use nftables::stmt::{Match, Operator, Statement, NAT};
use nftables::types::{NfChainType, NfFamily, NfHook};

use super::{NetError, Wiring};

/// The `nft` binary, looked up on `PATH` (as the `nftables` crate does).
const NFT: &str = "nft";

/// `nft` could not be run, or talked to.
fn nft_io(inner: io::Error) -> NftablesError {
    NftablesError::NftExecution {
        program: NFT.into(),
        inner,
    }
}

fn field(protocol: &'static str, name: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed(protocol),
            field: Cow::Borrowed(name),
        },
    )))
}

fn matches(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn text(s: String) -> Expression<'static> {
    Expression::String(Cow::Owned(s))
}

fn chain(table: &str, name: &'static str, hook: NfHook, prio: i32) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family: NfFamily::IP,
        table: Cow::Owned(table.to_string()),
        name: Cow::Borrowed(name),
        _type: Some(NfChainType::NAT),
        hook: Some(hook),
        prio: Some(prio),
        ..Chain::default()
    })
}

fn rule(table: &str, chain: &'static str, expr: Vec<Statement<'static>>) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: NfFamily::IP,
        table: Cow::Owned(table.to_string()),
        chain: Cow::Borrowed(chain),
        expr: Cow::Owned(expr),
        handle: None,
        index: None,
        comment: None,
    })
}

/// The rule set of `wiring`, equivalent to:
///
/// ```text
/// table ip vpnhop_ID {
///   chain prerouting  { type nat hook prerouting priority -100;
///                       [ip daddr HOSTIP] udp dport HOSTPORT dnat to ADDR:CTRPORT }
///   chain postrouting { type nat hook postrouting priority 100;
///                       ip saddr ADDR udp sport CTRPORT oifname != BRIDGE
///                       snat to HOSTIP:HOSTPORT | masquerade to :HOSTPORT }
/// }
/// ```
///
/// The batch first deletes a table of that name left by an earlier run (`add` then `delete`
/// makes that succeed whether or not it exists), so the whole replacement is one atomic
/// transaction and one `nft` process.
pub(crate) fn ruleset(wiring: &Wiring) -> Batch<'static> {
    let table = wiring.nft_table.as_str();
    let mut batch = Batch::new();

    let table_obj = NfListObject::Table(Table {
        family: NfFamily::IP,
        name: Cow::Owned(table.to_string()),
        handle: None,
    });
    batch.add(table_obj.clone());
    batch.delete(table_obj.clone());
    batch.add(table_obj);
    batch.add(chain(table, "prerouting", NfHook::Prerouting, -100));
    batch.add(chain(table, "postrouting", NfHook::Postrouting, 100));

    for port in &wiring.ports {
        let proto = port.protocol.as_str();

        let mut dnat = Vec::new();
        if let Some(ip) = port.host_ip {
            dnat.push(matches(
                field("ip", "daddr"),
                Operator::EQ,
                text(ip.to_string()),
            ));
        }
        dnat.push(matches(
            field(proto, "dport"),
            Operator::EQ,
            Expression::Number(port.host_port.into()),
        ));
        dnat.push(Statement::DNAT(Some(NAT {
            addr: Some(text(wiring.address.to_string())),
            family: None,
            port: Some(Expression::Number(port.container_port.into())),
            flags: None,
        })));
        batch.add(rule(table, "prerouting", dnat));

        let mut snat = vec![
            matches(
                field("ip", "saddr"),
                Operator::EQ,
                text(wiring.address.to_string()),
            ),
            matches(
                field(proto, "sport"),
                Operator::EQ,
                Expression::Number(port.container_port.into()),
            ),
            matches(
                Expression::Named(NamedExpression::Meta(Meta {
                    key: MetaKey::Oifname,
                })),
                Operator::NEQ,
                text(wiring.bridge.clone()),
            ),
        ];
        let to_port = Some(Expression::Number(port.host_port.into()));
        snat.push(match port.host_ip {
            Some(ip) => Statement::SNAT(Some(NAT {
                addr: Some(text(ip.to_string())),
                family: None,
                port: to_port,
                flags: None,
            })),
            None => Statement::Masquerade(Some(NAT {
                addr: None,
                family: None,
                port: to_port,
                flags: None,
            })),
        });
        batch.add(rule(table, "postrouting", snat));
    }

    batch
}

/// Installs the container's table, replacing one of the same name left by an earlier run.
pub fn install_ports(wiring: &Wiring) -> Result<(), NetError> {
    start_install_ports(wiring)?.wait()
}

/// An `nft` run installing a container's table; [`PendingPorts::wait`] collects it, and so does
/// dropping it (on an early return), so that no `nft` process is left unreaped.
#[derive(Debug)]
pub struct PendingPorts {
    table: String,
    child: Option<Child>,
}

/// Starts installing the container's table (`nft -j -f -` with the rule set of [`ruleset`] on
/// its stdin) and returns without waiting, so that the caller can prepare the rest of the host
/// meanwhile.
pub fn start_install_ports(wiring: &Wiring) -> Result<PendingPorts, NetError> {
    let table = wiring.nft_table.clone();
    let failed = |source| NetError::Nft {
        table: table.clone(),
        source: Box::new(source),
    };
    let payload =
        serde_json::to_vec(&ruleset(wiring).to_nftables()).map_err(NftablesError::NftInvalidJson);
    let payload = payload.map_err(failed)?;

    let spawned = Command::new(NFT)
        .args(["-j", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = spawned.map_err(|inner| failed(nft_io(inner)))?;
    // A rule set of a few ports fits in the pipe: this write does not wait for `nft`. An `nft`
    // that exits without reading it (it failed at once) breaks the pipe; what it says about its
    // failure is for `wait` to report.
    if let Some(mut stdin) = child.stdin.take() {
        let written = stdin.write_all(&payload);
        drop(stdin);
        match written {
            Err(inner) if inner.kind() != std::io::ErrorKind::BrokenPipe => {
                let _ = child.wait();
                return Err(failed(nft_io(inner)));
            }
            _ => {}
        }
    }
    Ok(PendingPorts {
        table: wiring.nft_table.clone(),
        child: Some(child),
    })
}

impl PendingPorts {
    /// Waits for `nft`; an error carries what it printed.
    pub fn wait(mut self) -> Result<(), NetError> {
        let Some(child) = self.child.take() else {
            return Ok(());
        };
        let failed = |source| NetError::Nft {
            table: self.table.clone(),
            source: Box::new(source),
        };

        let output = child
            .wait_with_output()
            .map_err(|inner| failed(nft_io(inner)))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let reason = stderr
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .map_or_else(|| output.status.to_string(), str::to_string);
            return Err(NetError::NftRefused {
                table: self.table.clone(),
                reason,
            });
        }
        tracing::debug!(table = %self.table, "ports published");
        Ok(())
    }
}

impl Drop for PendingPorts {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }
}

/// Deletes the container's table if it exists (equivalent to `nft delete table ip NAME`).
pub fn remove_ports(wiring: &Wiring) -> Result<(), NetError> {
    let mut batch = Batch::new();
    // `add` before `delete` makes the deletion succeed whether or not the table exists.
    let table = NfListObject::Table(Table {
        family: NfFamily::IP,
        name: Cow::Owned(wiring.nft_table.clone()),
        handle: None,
    });
    batch.add(table.clone());
    batch.delete(table);

    apply_ruleset(&batch.to_nftables()).map_err(|source: NftablesError| NetError::Nft {
        table: wiring.nft_table.clone(),
        source: Box::new(source),
    })
}

/// Deletes table `inet NAME` inside the network namespace `netns` (a `/proc/PID/ns/net` path),
/// if it exists (equivalent to `nsenter --net=NETNS nft delete table inet NAME`).
pub fn remove_inet_table_in(netns: &std::path::Path, name: &str) -> Result<(), NetError> {
    let table = NfListObject::Table(Table {
        family: NfFamily::INet,
        name: Cow::Owned(name.to_string()),
        handle: None,
    });
    let mut batch = Batch::new();
    batch.add(table.clone());
    batch.delete(table);

    let payload = serde_json::to_string(&batch.to_nftables()).unwrap_or_default();
    let net = format!("--net={}", netns.display());
    nftables::helper::apply_ruleset_raw(&payload, Some("nsenter"), [net.as_str(), "nft"])
        .map(|_| ())
        .map_err(|source| NetError::Nft {
            table: name.to_string(),
            source: Box::new(source),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::tests::sample_wiring;

    #[test]
    fn ruleset_has_dnat_and_return_snat_per_port() {
        let json = serde_json::to_string(&ruleset(&sample_wiring()).to_nftables()).expect("json");
        assert!(json.contains("\"dnat\""), "{json}");
        assert!(json.contains("\"masquerade\""), "{json}");
        assert!(json.contains("198.51.100.2"), "{json}");
        assert!(json.contains("vpnhop_0123456789"), "{json}");
    }

    #[test]
    fn host_ip_turns_masquerade_into_snat() {
        let mut wiring = sample_wiring();
        wiring.ports = vec!["203.0.113.1:1194:1194/udp".parse().expect("port")];
        let json = serde_json::to_string(&ruleset(&wiring).to_nftables()).expect("json");
        assert!(
            json.contains("\"snat\"") && !json.contains("masquerade"),
            "{json}"
        );
        assert!(json.contains("203.0.113.1"), "{json}");
    }
}
