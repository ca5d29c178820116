//! vxdp's dataplane: the peer tables, and the I/O edges (TAP, AF_XDP, XDP loader) joined by
//! the workers.
#![warn(missing_docs)]

pub mod stats;
pub mod tables;
pub mod tap;
pub mod worker;
pub mod xdp;
pub mod xsk;
