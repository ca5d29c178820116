//! VXLAN encapsulation and decapsulation as pure functions over caller buffers.
//!
//! Like boringtun's `encapsulate`/`decapsulate`, nothing here owns a buffer or does I/O: the
//! worker hands in the frame and gets back where the result is ([`encapsulate`]) or what to do
//! with it ([`Decap`]). No allocation, no panics on any input.

mod decap;
mod encap;
mod flow;

pub use decap::{
    decapsulate, decapsulate_outer, decapsulate_vxlan, Decap, DecapPolicy, DropReason,
};
pub use encap::{
    encapsulate, EncapError, OuterHeader, OuterParams, MAX_OUTER_LEN, OUTER_LEN_V4, OUTER_LEN_V6,
};
pub use flow::{flow_hash, source_port};

#[cfg(test)]
mod tests;
