//! `run`, shim side: create the container with libcontainer, wire it, start it.

use std::path::PathBuf;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;

use super::{stdio_pipes, ContainerError, ShimStdio};
use crate::bundle::{write_spec, Bundle};
use crate::network;
use crate::state::{ContainerState, Store};

/// Creates and starts the container of `state` from `bundle`; returns its init's host pid and
/// the shim's ends of its stdio.
///
/// Must run in a single-threaded process (the shim): libcontainer forks, makes the caller
/// non-dumpable and changes its working directory. The init becomes the caller's child. On
/// failure the container itself is deleted; the host side is left to [`super::cleanup`].
pub fn create(
    store: &Store,
    state: &ContainerState,
    bundle: &Bundle,
) -> Result<(i32, ShimStdio), ContainerError> {
    let name = &state.name;
    let wiring = &state.network;

    let runtime_bundle = store.runtime_bundle(name);
    write_spec(&runtime_bundle, &bundle.runtime_spec(name))?;

    // `nft` runs while libcontainer creates the container (a child process, so the shim stays
    // single-threaded for libcontainer); the ports are in place before `run` returns.
    let ports = network::start_install_ports(wiring)?;
    network::prepare_host(wiring, false)?;
    tracing::info!(container = %name, bridge = %wiring.bridge, "host side ready");

    let (shim_ends, container_ends) = stdio_pipes(name)?;
    let lc_err = |source| ContainerError::Libcontainer {
        name: name.clone(),
        source: Box::new(source),
    };
    let mut container = ContainerBuilder::new(name.clone(), SyscallType::default())
        .with_root_path(store.libcontainer_root(name))
        .map_err(lc_err)?
        .with_stdin(container_ends.stdin)
        .with_stdout(container_ends.stdout)
        .with_stderr(container_ends.stderr)
        .as_init(&runtime_bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(lc_err)?;

    let pid = match container.pid() {
        Some(pid) => pid.as_raw(),
        None => {
            let _ = container.delete(true);
            return Err(ContainerError::NotRunning(name.clone()));
        }
    };

    let started = network::attach_container(wiring, &PathBuf::from(format!("/proc/{pid}/ns/net")))
        .map_err(ContainerError::from)
        .and_then(|()| container.start().map_err(lc_err));
    let published = started.and_then(|()| ports.wait().map_err(ContainerError::from));
    if let Err(err) = published {
        let _ = container.delete(true);
        return Err(err);
    }
    network::flush_stale_flows(wiring).wait();

    tracing::info!(container = %name, pid, address = %wiring.address, "container started");
    Ok((pid, shim_ends))
}
