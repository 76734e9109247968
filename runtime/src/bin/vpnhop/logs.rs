//! `vpnhop logs`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::Globals;

/// Arguments of `logs`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keep printing new output until the container stops.
    #[arg(short, long)]
    follow: bool,
    /// The container.
    name: String,
}

/// Prints the container's output.
pub fn run(g: &Globals, args: Args) -> anyhow::Result<()> {
    g.store.load(&args.name)?;
    follow(g, &args.name, args.follow)
}

/// Copies the container log to stdout; with `follow`, keeps going until the shim is gone.
pub fn follow(g: &Globals, name: &str, follow: bool) -> anyhow::Result<()> {
    let path = g.store.container_log(name);
    let mut file = match File::open(&path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound && !follow => return Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            thread::sleep(Duration::from_millis(100));
            File::open(&path).with_context(|| format!("container log `{}`", path.display()))?
        }
        Err(err) => return Err(err).with_context(|| format!("container log `{}`", path.display())),
    };

    let mut out = io::stdout().lock();
    let mut buf = [0u8; 8192];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading `{}`", path.display()))?;
        if n > 0 {
            out.write_all(&buf[..n])?;
            continue;
        }
        out.flush()?;
        if !follow || !g.store.load(name).map(|s| s.shim_alive()).unwrap_or(false) {
            // One last read: the shim may have written more before it went.
            let mut rest = Vec::new();
            file.read_to_end(&mut rest)?;
            out.write_all(&rest)?;
            return Ok(());
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (up to 10 s) for the shim of `name` to record the container's end and exit.
pub fn wait_shim_gone(g: &Globals, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match g.store.load(name) {
            Ok(s) if s.shim_alive() => thread::sleep(Duration::from_millis(10)),
            _ => return,
        }
    }
}
