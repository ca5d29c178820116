//! vxdp's packet code, with no I/O: header views and representations (`wire`), VXLAN
//! encapsulation and decapsulation (`tunnel`), TCP segmentation and receive coalescing for
//! vnet-header TAPs (`offload`), ARP answers for overlay gateways (`arp_responder`) and the
//! completion of inner checksums a peer left partial (`inner_checksum`).
//!
//! Everything here works on caller buffers: nothing allocates per frame, does I/O, reads a
//! clock or panics on any input (the fuzz targets in `dataplane/fuzz` hold it to that). The
//! control plane, the fuzzers and the micro-benchmarks depend on this crate alone.
#![warn(missing_docs)]

pub mod arp_responder;
pub mod inner_checksum;
pub mod offload;
pub mod tunnel;
pub mod wire;
