//! vxdp's control plane.
#![warn(missing_docs)]

pub mod config;
pub mod lease;
pub mod subnet_alloc;
pub mod subnet_file;
