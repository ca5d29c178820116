//! vxdp's control plane: flannel's network config and leases, the lease stores, and netlink
//! programming of the overlay device, routes and the underlay next hops, and flanneld's
//! masquerade/forward firewall rules, blackhole route and host checks.
#![warn(missing_docs)]

pub mod backend;
pub mod blackhole;
pub mod br_netfilter;
pub mod config;
pub mod kernel_backend;
pub mod lease;
pub mod masq;
pub mod netlink;
pub mod store;
pub mod subnet_alloc;
pub mod subnet_file;
pub mod underlay;
pub mod vtep_mac;
