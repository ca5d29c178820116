//! XDP steering program: load, attach through a bpf_link, and fill the XSKMAP.
#[allow(missing_docs, clippy::all)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/xdp_vxlan.skel.rs"));
}
pub use skel::*;
