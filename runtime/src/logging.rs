//! Log set-up shared by `vpnhop` and `vpnhop-shim`: runc's `--log`/`--log-format` pair.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Mutex;

use clap::ValueEnum;
use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

/// Format of the runtime's own log, as runc's `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Verbosity of the runtime's own log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Failures only.
    Error,
    /// Failures and warnings.
    #[default]
    Warn,
    /// One line per lifecycle milestone.
    Info,
    /// Also every external command and netlink request.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The level's name as `tracing` filters spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// Installs the global subscriber: to `file` (appending) when given, else to stderr.
///
/// Only our own crates log at the chosen level; dependencies stay at `warn` so that
/// libcontainer's internals do not drown the lifecycle lines.
pub fn init(file: Option<&Path>, format: LogFormat, level: LogLevel) -> std::io::Result<()> {
    let directive = format!(
        "warn,libcgroups=error,libcontainer=error,vpnhop={lvl},vpnhop_shim={lvl}",
        lvl = level.as_str()
    );
    let filter =
        EnvFilter::try_from_env("VPNHOP_LOG").unwrap_or_else(|_| EnvFilter::new(directive));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);

    match file {
        Some(path) => {
            let file = OpenOptions::new().create(true).append(true).open(path)?;
            let builder = builder.with_ansi(false).with_writer(Mutex::new(file));
            match format {
                LogFormat::Text => builder.try_init(),
                LogFormat::Json => builder.json().try_init(),
            }
        }
        None => {
            let builder = builder.with_writer(std::io::stderr);
            match format {
                LogFormat::Text => builder.try_init(),
                LogFormat::Json => builder.json().try_init(),
            }
        }
    }
    .map_err(|err| std::io::Error::other(err.to_string()))
}
