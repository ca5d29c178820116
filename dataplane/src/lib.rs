//! vxdp's dataplane: packet code without I/O (`wire`, `tunnel`), the peer tables, and the I/O
//! edges (TAP, AF_XDP, XDP loader) joined by the workers.
#![warn(missing_docs)]

pub mod arp_responder;
pub mod tunnel;
pub mod wire;
pub mod xdp;
