//! Removing what a container left on the host.

use std::time::Duration;

use super::{cgroups, ContainerError};
use crate::network;
use crate::state::{ContainerState, Store};

/// After the container's init has exited: drop its published ports and wait until the kernel
/// has torn down its network namespace (the host veth disappears with it), so that the same
/// names can be used again at once, as a restore on this host does.
///
/// The (empty) cgroups stay, for `rm` to remove or a restore to use again: a restore of the
/// same image under the same name that follows at once, as after a simulated reboot, may be
/// creating and joining cgroups of the same path right now, and removing them then would kill
/// the restored tree or pull the directories from under its set-up.
pub fn teardown_after_exit(state: &ContainerState) -> Result<(), ContainerError> {
    let wiring = &state.network;

    network::remove_ports(wiring)?;
    network::remove_host_veth(&wiring.host_veth)?;
    network::wait_link_gone(&wiring.host_veth, Duration::from_secs(5))?;
    Ok(())
}

/// Removes everything `run` or `restore` created on the host for `state`: the netfilter table,
/// the host veth, the cgroups, and the bridge when no other container of `store` uses it and
/// nothing else is attached to it. Safe to call on a half-created container.
pub fn cleanup(store: &Store, state: &ContainerState) -> Result<(), ContainerError> {
    let wiring = &state.network;

    network::remove_ports(wiring)?;
    network::remove_host_veth(&wiring.host_veth)?;
    cgroups::remove(&state.name)?;

    let others = store
        .list()?
        .into_iter()
        .any(|s| s.name != state.name && s.network.bridge == wiring.bridge);
    if !others && !network::bridge_in_use(&wiring.bridge)? {
        network::remove_bridge(&wiring.bridge)?;
        tracing::debug!(bridge = %wiring.bridge, "bridge removed");
    }
    Ok(())
}
