//! vxdp's dataplane: the backends that forward (the kernel vxlan link, and the userspace
//! dataplane: a multi-queue TAP and pinned workers over AF_XDP or UDP sockets), the per-frame
//! pipeline of the workers, the peer tables they read, and the I/O edges (TAP, AF_XDP sockets,
//! the XDP steering program, UDP sockets, underlay next hops).
#![warn(missing_docs)]

pub mod backend;
pub mod handover;
pub mod next_hop;
pub mod pipeline;
pub mod privileges;
pub mod stats;
pub mod steering;
mod sys;
pub mod tables;
pub mod tap;
pub mod underlay;
pub mod worker;
pub mod xsk;
