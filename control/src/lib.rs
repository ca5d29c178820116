//! vxdp's control plane.
