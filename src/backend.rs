//! Choosing the dataplane: AF_XDP when this host allows it, else the kernel vxlan link
//! programmed as flanneld does. Both sit behind the same [`Backend`] trait, so the lease logic
//! in `control::backend::PeerSync` drives either one.

use anyhow::Context;
use control::backend::{Backend, BackendError, Peer};
use control::kernel_backend::{KernelBackend, KernelBackendConfig};
use control::netlink::Netlink;

use crate::cli::BackendChoice;
use crate::xdp_backend::{XdpBackend, XdpBackendConfig, XdpStatusProbe};

/// The running dataplane.
pub enum ActiveBackend {
    /// TAP + AF_XDP workers.
    Xdp(Box<XdpBackend>),
    /// A kernel vxlan link.
    Kernel(KernelBackend),
}

impl ActiveBackend {
    /// Starts the backend `choice` asks for. With `auto`, a failure of the AF_XDP backend (no
    /// CAP_BPF, a driver without XDP, a container) falls back to the kernel link; the returned
    /// summary says which one runs, in which modes, and why.
    pub async fn start(
        nl: &Netlink,
        choice: BackendChoice,
        xdp: XdpBackendConfig,
        kernel: KernelBackendConfig,
    ) -> anyhow::Result<(ActiveBackend, String)> {
        let start_kernel = |why: Option<String>| async move {
            let b = KernelBackend::start(nl.clone(), kernel)
                .await
                .context("starting the kernel vxlan backend")?;
            let summary = match why {
                Some(why) => format!("{} (AF_XDP unavailable: {why})", b.summary()),
                None => format!("{} (--backend kernel)", b.summary()),
            };
            anyhow::Ok((ActiveBackend::Kernel(b), summary))
        };
        match choice {
            BackendChoice::Kernel => start_kernel(None).await,
            BackendChoice::Xdp => {
                let b = XdpBackend::start(nl.clone(), xdp)
                    .await
                    .context("starting the AF_XDP backend (--backend xdp; use --backend auto to fall back to the kernel vxlan link)")?;
                let summary = b.summary().to_string();
                Ok((ActiveBackend::Xdp(Box::new(b)), summary))
            }
            BackendChoice::Auto => match XdpBackend::start(nl.clone(), xdp).await {
                Ok(b) => {
                    let summary = b.summary().to_string();
                    Ok((ActiveBackend::Xdp(Box::new(b)), summary))
                }
                Err(e) => start_kernel(Some(format!("{e:#}"))).await,
            },
        }
    }

    /// The AF_XDP status view, when that backend runs.
    pub fn xdp_probe(&self) -> Option<XdpStatusProbe> {
        match self {
            ActiveBackend::Xdp(b) => Some(b.status_probe()),
            ActiveBackend::Kernel(_) => None,
        }
    }
}

impl Backend for ActiveBackend {
    fn name(&self) -> &'static str {
        match self {
            ActiveBackend::Xdp(b) => b.name(),
            ActiveBackend::Kernel(b) => b.name(),
        }
    }

    async fn add_peer(&mut self, peer: &Peer) -> Result<(), BackendError> {
        match self {
            ActiveBackend::Xdp(b) => b.add_peer(peer).await,
            ActiveBackend::Kernel(b) => b.add_peer(peer).await,
        }
    }

    async fn remove_peer(&mut self, previous: &Peer) -> Result<(), BackendError> {
        match self {
            ActiveBackend::Xdp(b) => b.remove_peer(previous).await,
            ActiveBackend::Kernel(b) => b.remove_peer(previous).await,
        }
    }

    async fn tick(&mut self) -> Result<(), BackendError> {
        match self {
            ActiveBackend::Xdp(b) => b.tick().await,
            ActiveBackend::Kernel(b) => b.tick().await,
        }
    }

    async fn shutdown(self) {
        match self {
            ActiveBackend::Xdp(b) => (*b).shutdown().await,
            ActiveBackend::Kernel(b) => b.shutdown().await,
        }
    }
}
