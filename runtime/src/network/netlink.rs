//! A synchronous front to `rtnetlink` bound to one network namespace.
//!
//! The shim calls libcontainer, which must run in a single-threaded process, so netlink
//! requests run on a current-thread tokio runtime that lives only as long as one batch of work.

use std::fs::File;
use std::future::Future;
use std::os::fd::AsFd;
use std::path::Path;

use futures::TryStreamExt;
use nix::sched::{setns, CloneFlags};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::Handle;
use tokio::runtime::Runtime;

use super::NetError;

/// A netlink connection in one network namespace.
pub(crate) struct Netlink {
    rt: Runtime,
    handle: Handle,
}

impl Netlink {
    /// A connection in the caller's network namespace.
    pub(crate) fn current() -> Result<Self, NetError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| NetError::Io {
                path: "tokio runtime".into(),
                source,
            })?;

        let handle = {
            let _guard = rt.enter();
            let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| NetError::Io {
                path: "netlink socket".into(),
                source,
            })?;
            rt.spawn(conn);
            handle
        };

        Ok(Netlink { rt, handle })
    }

    /// A connection inside the network namespace `ns` (a `/proc/PID/ns/net` path).
    ///
    /// The socket is opened after a setns(2) of the calling thread and keeps that namespace;
    /// the thread then returns to where it was.
    pub(crate) fn in_netns(ns: &Path) -> Result<Self, NetError> {
        let netns_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| NetError::Netns { path, source }
        };
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| NetError::Io { path, source }
        };

        let own_path = Path::new("/proc/thread-self/ns/net");
        let own = File::open(own_path).map_err(io_err(own_path))?;
        let target = File::open(ns).map_err(io_err(ns))?;

        setns(target.as_fd(), CloneFlags::CLONE_NEWNET).map_err(netns_err(ns))?;
        let conn = Netlink::current();
        setns(own.as_fd(), CloneFlags::CLONE_NEWNET).map_err(netns_err(own_path))?;

        conn
    }

    /// Runs one future to completion on this connection's runtime.
    pub(crate) fn run<F: Future>(&self, fut: F) -> F::Output {
        self.rt.block_on(fut)
    }

    /// The request handle.
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// The link called `name`, if any (equivalent to `ip link show NAME`).
    pub(crate) fn link(&self, name: &str) -> Result<Option<LinkMessage>, NetError> {
        let mut request = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match self.run(request.try_next()) {
            Ok(link) => Ok(link),
            // The kernel answers ENODEV when the name is unknown.
            Err(rtnetlink::Error::NetlinkError(msg))
                if msg.code.map(|c| c.get()) == Some(-libc::ENODEV) =>
            {
                Ok(None)
            }
            Err(source) => Err(NetError::Netlink {
                op: "looking up",
                object: name.into(),
                source: Box::new(source),
            }),
        }
    }

    /// Index of the link called `name`, which must exist.
    pub(crate) fn index(&self, name: &str) -> Result<u32, NetError> {
        self.link(name)?
            .map(|l| l.header.index)
            .ok_or_else(|| NetError::LinkNotFound(name.to_string()))
    }

    /// Indexes of the links enslaved to the link with index `master`.
    pub(crate) fn ports_of(&self, master: u32) -> Result<Vec<u32>, NetError> {
        let links: Vec<LinkMessage> = self
            .run(self.handle.link().get().execute().try_collect())
            .map_err(|source| NetError::Netlink {
                op: "listing links",
                object: "*".into(),
                source: Box::new(source),
            })?;

        Ok(links
            .into_iter()
            .filter(|l| l.attributes.contains(&LinkAttribute::Controller(master)))
            .map(|l| l.header.index)
            .collect())
    }
}
