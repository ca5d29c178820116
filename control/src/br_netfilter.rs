//! flanneld's start-up check for `br_netfilter` (`main.go`).
//!
//! Pods on a Linux bridge (`cni0`) reach Services through kube-proxy's iptables rules only when
//! bridged frames pass through iptables, which the `br_netfilter` module does. Since Kubernetes
//! 1.30 kubeadm no longer checks for it, and flannel then "wrongly starts" on nodes where Service
//! traffic silently fails; so flanneld refuses to start when the module's sysctls are missing:
//!
//! - only when the network config does not set `EnableNFTables` (flannel's nftables mode
//!   expects kube-proxy's nftables mode, which does not depend on it);
//! - with IPv4 enabled, `/proc/sys/net/bridge/bridge-nf-call-iptables` must exist; with IPv6,
//!   `/proc/sys/net/bridge/bridge-nf-call-ip6tables`;
//! - it only checks that the files exist (the module is loaded), not their values, and logs
//!   `Failed to check br_netfilter: <stat error>` before exiting with status 1.
//!
//! vxdp refuses the same way, with a message that says what to do.

use std::path::{Path, PathBuf};

/// The sysctl directory flanneld looks in.
pub const PROC_SYS_NET_BRIDGE: &str = "/proc/sys/net/bridge";

/// `br_netfilter` is not loaded, and the network config needs it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "br_netfilter is not loaded ({} does not exist): flanneld refuses to start without it, and so \
     does vxdp, because pods on a bridge reach Services through iptables only with it. Load it \
     (`modprobe br_netfilter`, and `echo br_netfilter > /etc/modules-load.d/br_netfilter.conf` \
     to keep it after a reboot), or set \"EnableNFTables\": true in the network config if \
     kube-proxy runs in nftables mode",
    missing.display()
)]
pub struct BrNetfilterMissing {
    /// The sysctl file that is missing.
    pub missing: PathBuf,
}

/// flanneld's check, against the sysctl directory `bridge_sysctls` (normally
/// [`PROC_SYS_NET_BRIDGE`]), for a network with IPv4 and/or IPv6 enabled.
pub fn check(
    bridge_sysctls: &Path,
    enable_nftables: bool,
    ipv4: bool,
    ipv6: bool,
) -> Result<(), BrNetfilterMissing> {
    if enable_nftables {
        return Ok(());
    }
    let wanted = [
        (ipv4, "bridge-nf-call-iptables"),
        (ipv6, "bridge-nf-call-ip6tables"),
    ];
    for (enabled, name) in wanted {
        let path = bridge_sysctls.join(name);
        // flannel tests os.IsNotExist on a stat: any other error (permissions) passes.
        if enabled && matches!(path.try_exists(), Ok(false)) {
            return Err(BrNetfilterMissing { missing: path });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sysctls(names: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for n in names {
            std::fs::write(dir.path().join(n), "1\n").unwrap();
        }
        dir
    }

    #[test]
    fn ipv4_needs_bridge_nf_call_iptables() {
        let none = sysctls(&[]);
        let err = check(none.path(), false, true, false).unwrap_err();
        assert_eq!(err.missing, none.path().join("bridge-nf-call-iptables"));
        let msg = err.to_string();
        assert!(msg.contains("modprobe br_netfilter"), "{msg}");
        assert!(msg.contains("EnableNFTables"), "{msg}");
        assert!(
            msg.contains("bridge-nf-call-iptables does not exist"),
            "{msg}"
        );
        let v4 = sysctls(&["bridge-nf-call-iptables"]);
        assert_eq!(check(v4.path(), false, true, false), Ok(()));
    }

    #[test]
    fn ipv6_needs_bridge_nf_call_ip6tables() {
        let v4 = sysctls(&["bridge-nf-call-iptables"]);
        let err = check(v4.path(), false, true, true).unwrap_err();
        assert_eq!(err.missing, v4.path().join("bridge-nf-call-ip6tables"));
        assert!(check(v4.path(), false, false, true).is_err());
        let both = sysctls(&["bridge-nf-call-iptables", "bridge-nf-call-ip6tables"]);
        assert_eq!(check(both.path(), false, true, true), Ok(()));
    }

    #[test]
    fn only_existence_counts_not_the_value() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bridge-nf-call-iptables"), "0\n").unwrap();
        assert_eq!(check(dir.path(), false, true, false), Ok(()));
    }

    #[test]
    fn enable_nftables_skips_the_check() {
        let none = sysctls(&[]);
        assert_eq!(check(none.path(), true, true, true), Ok(()));
        assert_eq!(
            check(&none.path().join("absent"), true, true, false),
            Ok(())
        );
        assert!(check(&none.path().join("absent"), false, true, false).is_err());
    }
}
