//! `vpnhop ps`.

use clap::ValueEnum;
use serde::Serialize;
use vpnhop::state::ContainerState;

use crate::Globals;

/// Output formats of listing verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    /// Aligned columns for people.
    #[default]
    Table,
    /// JSON for scripts.
    Json,
}

/// Arguments of `ps`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Debug, Serialize)]
struct Row {
    name: String,
    id: String,
    status: String,
    pid: Option<i32>,
    address: String,
    ports: Vec<String>,
    created: String,
}

impl From<&ContainerState> for Row {
    fn from(s: &ContainerState) -> Row {
        Row {
            name: s.name.clone(),
            id: s.id.clone(),
            status: s.observed_status().to_string(),
            pid: s
                .pid
                .filter(|_| s.observed_status() == vpnhop::state::Status::Running),
            address: s.network.address.to_string(),
            ports: s.network.ports.iter().map(|p| p.to_string()).collect(),
            created: s.created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }
    }
}

/// Lists the containers of the state root.
pub fn run(g: &Globals, args: Args) -> anyhow::Result<()> {
    let rows: Vec<Row> = g.store.list()?.iter().map(Row::from).collect();

    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Format::Table => {
            println!(
                "{:<20} {:<12} {:<12} {:>8} {:<15} {:<22} CREATED",
                "NAME", "ID", "STATUS", "PID", "ADDRESS", "PORTS"
            );
            for r in rows {
                println!(
                    "{:<20} {:<12} {:<12} {:>8} {:<15} {:<22} {}",
                    r.name,
                    &r.id[..12.min(r.id.len())],
                    r.status,
                    r.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                    r.address,
                    r.ports.join(","),
                    r.created
                );
            }
        }
    }
    Ok(())
}
