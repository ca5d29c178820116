//! Header views and representations for the frames vxdp handles, in the style of smoltcp:
//! a `Packet<T: AsRef<[u8]>>` view over a buffer with checked accessors, and a `Repr` with
//! `parse`, `emit` and `buffer_len`. Nothing here does I/O, allocates or panics on any input.

mod mac;

pub use mac::{MacAddr, ParseMacError};
