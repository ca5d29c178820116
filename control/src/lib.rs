//! vxdp's control plane: flannel's network config and leases, the lease stores, the choice of
//! the external interface, the interface a dataplane backend implements ([`backend`]), netlink,
//! and flanneld's masquerade/forward firewall rules, blackhole route and host checks. It does
//! no packet I/O: it depends on the
//! packet crate alone.
#![warn(missing_docs)]

pub mod backend;
pub mod blackhole;
pub mod br_netfilter;
pub mod config;
mod go_json;
pub mod interface;
pub mod lease;
pub mod masq;
pub mod netlink;
pub mod node;
pub mod store;
pub mod subnet_alloc;
pub mod subnet_file;
pub mod vtep_mac;
