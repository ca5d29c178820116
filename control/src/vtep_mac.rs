//! A VtepMAC that stays the same across restarts.
//!
//! flanneld makes up a random MAC each time it creates its device, so after a reboot peers
//! keep ARP and FDB entries for a MAC that no longer exists until the new lease propagates (a
//! known source of stale-ARP outages). vxdp derives the MAC from what identifies the node's
//! VTEP: the machine id, the PublicIP and the VNI. Same node, same network: same MAC, with
//! nothing to persist; nodes sharing one machine (namespaces) still differ by PublicIP.

use std::net::IpAddr;

use packet::wire::MacAddr;

/// The machine id (`/etc/machine-id`, else D-Bus's copy, else the host name).
pub fn machine_id() -> String {
    for path in ["/etc/machine-id", "/var/lib/dbus/machine-id"] {
        if let Ok(id) = std::fs::read_to_string(path) {
            let id = id.trim();
            if !id.is_empty() {
                return id.to_string();
            }
        }
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// The VtepMAC for this node's VTEP: a locally administered unicast address.
pub fn stable_vtep_mac(machine_id: &str, public_ip: IpAddr, vni: u32) -> MacAddr {
    // FNV-1a: stable across Rust versions and platforms, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    feed(b"vxdp-vtep-mac\0");
    feed(machine_id.as_bytes());
    feed(&[0]);
    match public_ip {
        IpAddr::V4(v4) => feed(&v4.octets()),
        IpAddr::V6(v6) => feed(&v6.octets()),
    }
    feed(&vni.to_be_bytes());
    let b = h.to_be_bytes();
    MacAddr::local_unicast_from([b[0], b[1], b[2], b[3], b[4], b[5]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_inputs_same_mac_different_node_different_mac() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = stable_vtep_mac("0123456789abcdef", ip, 1);
        assert_eq!(a, stable_vtep_mac("0123456789abcdef", ip, 1));
        assert!(a.is_unicast() && a.is_locally_administered());
        assert_ne!(
            a,
            stable_vtep_mac("0123456789abcdef", "192.0.2.2".parse().unwrap(), 1)
        );
        assert_ne!(a, stable_vtep_mac("0123456789abcdef", ip, 2));
        assert_ne!(a, stable_vtep_mac("fedcba9876543210", ip, 1));
        // Pinned (computed independently): changing the derivation would change every node's
        // MAC on upgrade, which is exactly the stale-ARP problem this module exists to avoid.
        assert_eq!(a.to_string(), "36:0a:0a:a5:76:7c");
    }
}
