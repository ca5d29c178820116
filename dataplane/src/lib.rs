//! vxdp's dataplane: packet code without I/O (`wire`, `tunnel`, `offload`, `arp_responder`,
//! `inner_checksum`), the peer tables, and the I/O edges (TAP, AF_XDP, XDP loader) joined by
//! the workers.
#![warn(missing_docs)]

pub mod arp_responder;
pub mod inner_checksum;
pub mod offload;
pub mod stats;
pub mod tables;
pub mod tap;
pub mod tunnel;
pub mod wire;
pub mod worker;
pub mod xdp;
pub mod xsk;
