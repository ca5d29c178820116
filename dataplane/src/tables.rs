//! The peer tables the workers read per frame: FDB (peer VtepMAC -> peer VTEP and its prebuilt
//! outer header), ARP (overlay gateway IPv4 -> peer VtepMAC) and the set of known peer VTEP
//! addresses (anti-spoofing on decapsulation).
//!
//! They change only on lease events and underlay changes, and are read for every frame. So the
//! control side builds a complete, immutable [`PeerSnapshot`] and publishes it with one atomic
//! pointer swap (RCU style, `arc-swap`); a worker picks the new snapshot up at its next batch
//! with one atomic load and never blocks. Because a snapshot is built whole, a lease update that
//! changes a peer's VtepMAC or PublicIP is seen entirely or not at all: no frame ever meets the
//! new ARP entry with the old FDB entry.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};

use ahash::RandomState;
use arc_swap::cache::Cache;
use arc_swap::ArcSwap;
use control::lease::SubnetKey;

use packet::tunnel::OuterHeader;
use packet::wire::MacAddr;

/// Where frames for one peer VtepMAC go.
#[derive(Debug, Clone)]
pub struct PeerVtep {
    /// The peer's PublicIP (outer destination).
    pub vtep_ip: IpAddr,
    /// The prebuilt outer headers; `None` while the underlay next hop is unresolved (frames for
    /// this peer are dropped and counted until it is).
    pub outer: Option<OuterHeader>,
}

/// One peer as the control side describes it (one lease): its first VTEP (the IPv4 one, or in
/// an IPv6-only network the IPv6 one) and, dual stack, its IPv6 VTEP.
#[derive(Debug, Clone)]
pub struct PeerEntry {
    /// The peer's VtepMAC (its IPv6 one in an IPv6-only network).
    pub vtep_mac: MacAddr,
    /// The peer's PublicIP (its PublicIPv6 in an IPv6-only network).
    pub vtep_ip: IpAddr,
    /// The peer's overlay gateway: the base address of its IPv4 subnet, answered by ARP (none
    /// in an IPv6-only network: the IPv6 gateway is a permanent neighbour entry on the TAP).
    pub gateway_v4: Option<Ipv4Addr>,
    /// The outer headers towards it, once the underlay next hop is known.
    pub outer: Option<OuterHeader>,
    /// The IPv6 half of a dual-stack peer: its IPv6 VtepMAC reached at its PublicIPv6.
    pub v6: Option<PeerEntryV6>,
}

/// Where frames for a dual-stack peer's IPv6 VtepMAC go (the IPv6 overlay's gateway is
/// resolved by a permanent neighbour entry on the TAP, not here).
#[derive(Debug, Clone)]
pub struct PeerEntryV6 {
    /// The peer's IPv6 VtepMAC (`BackendV6Data`).
    pub vtep_mac: MacAddr,
    /// Its PublicIPv6 (outer destination).
    pub vtep_ip: std::net::Ipv6Addr,
    /// The outer headers towards it (AF_XDP), once resolved.
    pub outer: Option<OuterHeader>,
}

/// An immutable view of all peers, shared by every worker.
#[derive(Debug, Default)]
pub struct PeerSnapshot {
    fdb: HashMap<MacAddr, PeerVtep, RandomState>,
    arp: HashMap<Ipv4Addr, MacAddr, RandomState>,
    vteps: HashSet<IpAddr, RandomState>,
    generation: u64,
}

impl PeerSnapshot {
    /// The VTEP that owns `mac`.
    #[inline]
    pub fn fdb(&self, mac: &MacAddr) -> Option<&PeerVtep> {
        self.fdb.get(mac)
    }

    /// The VtepMAC answering for overlay address `ip`.
    #[inline]
    pub fn arp(&self, ip: Ipv4Addr) -> Option<MacAddr> {
        self.arp.get(&ip).copied()
    }

    /// Whether `ip` is the PublicIP of a known peer.
    #[inline]
    pub fn is_known_vtep(&self, ip: IpAddr) -> bool {
        self.vteps.contains(&ip)
    }

    /// Number of FDB entries.
    pub fn fdb_len(&self) -> usize {
        self.fdb.len()
    }

    /// Increases with every published change.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// The writer's side: the peers by lease subnet, and the published snapshot.
#[derive(Debug)]
pub struct PeerTables {
    published: Arc<ArcSwap<PeerSnapshot>>,
    peers: Mutex<BTreeMap<SubnetKey, PeerEntry>>,
}

impl Default for PeerTables {
    fn default() -> Self {
        Self::new()
    }
}

/// A batch of changes, applied and published together by [`PeerTables::update`].
#[derive(Debug)]
pub struct PeerTablesWriter<'a> {
    peers: &'a mut BTreeMap<SubnetKey, PeerEntry>,
}

impl PeerTablesWriter<'_> {
    /// Adds or replaces the peer that holds lease `subnet` (its key).
    pub fn upsert(&mut self, subnet: SubnetKey, entry: PeerEntry) {
        self.peers.insert(subnet, entry);
    }

    /// Removes the peer that holds lease `subnet`; returns it if it was there.
    pub fn remove(&mut self, subnet: &SubnetKey) -> Option<PeerEntry> {
        self.peers.remove(subnet)
    }

    /// Sets the outer headers of every peer whose PublicIP is `vtep_ip`.
    pub fn set_outer(&mut self, vtep_ip: IpAddr, outer: Option<OuterHeader>) {
        for p in self.peers.values_mut() {
            if p.vtep_ip == vtep_ip {
                p.outer = outer.clone();
            }
            if let Some(v6) = p.v6.as_mut().filter(|v6| IpAddr::V6(v6.vtep_ip) == vtep_ip) {
                v6.outer = outer.clone();
            }
        }
    }

    /// The peers, by lease subnet.
    pub fn peers(&self) -> &BTreeMap<SubnetKey, PeerEntry> {
        self.peers
    }
}

impl PeerTables {
    /// Empty tables.
    pub fn new() -> PeerTables {
        PeerTables {
            published: Arc::new(ArcSwap::from_pointee(PeerSnapshot::default())),
            peers: Mutex::new(BTreeMap::new()),
        }
    }

    /// Applies `f`'s changes and publishes the result as one new snapshot.
    pub fn update<R>(&self, f: impl FnOnce(&mut PeerTablesWriter<'_>) -> R) -> R {
        // The mutex only serialises writers (control threads); readers never touch it.
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let result = f(&mut PeerTablesWriter { peers: &mut peers });
        let generation = self.published.load().generation + 1;
        self.published
            .store(Arc::new(Self::build(&peers, generation)));
        result
    }

    /// A copy of the peers, by lease subnet.
    pub fn peers(&self) -> BTreeMap<SubnetKey, PeerEntry> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The current snapshot (for the control side; workers use a [`PeerReader`]).
    pub fn snapshot(&self) -> Arc<PeerSnapshot> {
        self.published.load_full()
    }

    /// A per-worker reader.
    pub fn reader(&self) -> PeerReader {
        PeerReader {
            cache: Cache::new(Arc::clone(&self.published)),
        }
    }

    fn build(peers: &BTreeMap<SubnetKey, PeerEntry>, generation: u64) -> PeerSnapshot {
        let mut snap = PeerSnapshot {
            generation,
            ..PeerSnapshot::default()
        };
        for p in peers.values() {
            snap.fdb.insert(
                p.vtep_mac,
                PeerVtep {
                    vtep_ip: p.vtep_ip,
                    outer: p.outer.clone(),
                },
            );
            if let Some(gw) = p.gateway_v4 {
                snap.arp.insert(gw, p.vtep_mac);
            }
            snap.vteps.insert(p.vtep_ip);
        }
        // The IPv6 halves after every IPv4 half: a node that announces one VtepMAC for both
        // families (vxdp's userspace backends) keeps its IPv4 VTEP, which carries inner IPv6
        // as well as IPv4 to it; flanneld and vxdp's kernel links have a MAC per family.
        for v6 in peers.values().filter_map(|p| p.v6.as_ref()) {
            snap.fdb.entry(v6.vtep_mac).or_insert_with(|| PeerVtep {
                vtep_ip: IpAddr::V6(v6.vtep_ip),
                outer: v6.outer.clone(),
            });
            snap.vteps.insert(IpAddr::V6(v6.vtep_ip));
        }
        snap
    }
}

/// A worker's handle on the published snapshot: `load` is one atomic load when nothing changed.
pub struct PeerReader {
    cache: Cache<Arc<ArcSwap<PeerSnapshot>>, Arc<PeerSnapshot>>,
}

impl std::fmt::Debug for PeerReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerReader")
    }
}

impl PeerReader {
    /// The newest snapshot. Call once per batch and use the result for the whole batch.
    #[inline]
    pub fn load(&mut self) -> &Arc<PeerSnapshot> {
        self.cache.load()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use packet::tunnel::{OuterHeader, OuterParams};
    use packet::wire::vxlan::Vni;

    fn mac(last: u8) -> MacAddr {
        MacAddr([0x02, 0, 0, 0, 0, last])
    }

    fn outer(dst: [u8; 4]) -> OuterHeader {
        OuterHeader::new(&OuterParams {
            src_mac: mac(0xaa),
            dst_mac: mac(0xbb),
            src_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            dst_ip: IpAddr::V4(Ipv4Addr::from(dst)),
            dst_port: 8472,
            vni: Vni::new(1).unwrap(),
            udp_checksum: false,
            src_port_range: 32768..=60999,
            ttl: 64,
        })
        .unwrap()
    }

    fn entry(m: u8, ip: [u8; 4], gw: [u8; 4]) -> PeerEntry {
        PeerEntry {
            vtep_mac: mac(m),
            vtep_ip: IpAddr::V4(Ipv4Addr::from(ip)),
            gateway_v4: Some(Ipv4Addr::from(gw)),
            outer: Some(outer(ip)),
            v6: None,
        }
    }

    #[test]
    fn a_dual_stack_peer_has_an_fdb_entry_per_family_unless_it_shares_one_mac() {
        let t = PeerTables::new();
        let subnet: SubnetKey = "10.5.2.0-24".parse().unwrap();
        let v6_ip: std::net::Ipv6Addr = "2001:db8::2".parse().unwrap();
        // flanneld or a kernel-backend node: another MAC for the IPv6 link.
        let mut e = entry(2, [192, 0, 2, 2], [10, 5, 2, 0]);
        e.v6 = Some(PeerEntryV6 {
            vtep_mac: mac(0x62),
            vtep_ip: v6_ip,
            outer: None,
        });
        t.update(|w| w.upsert(subnet, e.clone()));
        let s = t.snapshot();
        assert_eq!(s.fdb(&mac(0x62)).unwrap().vtep_ip, IpAddr::V6(v6_ip));
        assert_eq!(
            s.fdb(&mac(2)).unwrap().vtep_ip,
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2))
        );
        assert!(s.is_known_vtep(IpAddr::V6(v6_ip)));
        // set_outer reaches the IPv6 half by its address.
        t.update(|w| w.set_outer(IpAddr::V6(v6_ip), Some(outer([192, 0, 2, 9]))));
        assert!(t.snapshot().fdb(&mac(0x62)).unwrap().outer.is_some());
        // One MAC for both families (vxdp's userspace backends): the IPv4 VTEP keeps it, and
        // the IPv6 address is still a known VTEP for anti-spoofing.
        if let Some(v6) = e.v6.as_mut() {
            v6.vtep_mac = mac(2);
        }
        t.update(|w| w.upsert(subnet, e));
        let s = t.snapshot();
        assert_eq!(
            s.fdb(&mac(2)).unwrap().vtep_ip,
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2))
        );
        assert!(s.fdb(&mac(0x62)).is_none());
        assert!(s.is_known_vtep(IpAddr::V6(v6_ip)));
        // Removal takes both halves.
        t.update(|w| w.remove(&subnet));
        assert!(!t.snapshot().is_known_vtep(IpAddr::V6(v6_ip)));
    }

    #[test]
    fn upsert_publishes_fdb_arp_and_vtep_together() {
        let t = PeerTables::new();
        let mut r = t.reader();
        assert!(r.load().fdb(&mac(2)).is_none());
        let subnet: SubnetKey = "10.5.2.0-24".parse().unwrap();
        t.update(|w| w.upsert(subnet, entry(2, [192, 0, 2, 2], [10, 5, 2, 0])));
        let snap = r.load();
        assert_eq!(snap.arp(Ipv4Addr::new(10, 5, 2, 0)), Some(mac(2)));
        let vtep = snap.fdb(&mac(2)).unwrap();
        assert_eq!(vtep.vtep_ip, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)));
        assert!(vtep.outer.is_some());
        assert!(snap.is_known_vtep(vtep.vtep_ip));
        assert_eq!(snap.generation(), 1);
    }

    #[test]
    fn a_changed_vtep_mac_replaces_the_old_entries_atomically() {
        let t = PeerTables::new();
        let subnet: SubnetKey = "10.5.2.0-24".parse().unwrap();
        t.update(|w| w.upsert(subnet, entry(2, [192, 0, 2, 2], [10, 5, 2, 0])));
        let before = t.snapshot();
        t.update(|w| w.upsert(subnet, entry(3, [192, 0, 2, 3], [10, 5, 2, 0])));
        let after = t.snapshot();
        // The old snapshot is untouched: a worker mid-batch keeps a consistent view.
        assert!(before.fdb(&mac(2)).is_some());
        assert_eq!(before.arp(Ipv4Addr::new(10, 5, 2, 0)), Some(mac(2)));
        // The new one has no trace of the old peer identity.
        assert!(after.fdb(&mac(2)).is_none());
        assert_eq!(after.arp(Ipv4Addr::new(10, 5, 2, 0)), Some(mac(3)));
        assert!(!after.is_known_vtep(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2))));
        assert!(after.is_known_vtep(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 3))));
    }

    #[test]
    fn remove_and_set_outer() {
        let t = PeerTables::new();
        let a: SubnetKey = "10.5.2.0-24".parse().unwrap();
        let b: SubnetKey = "10.5.3.0-24".parse().unwrap();
        t.update(|w| {
            w.upsert(a, entry(2, [192, 0, 2, 2], [10, 5, 2, 0]));
            w.upsert(b, entry(3, [192, 0, 2, 3], [10, 5, 3, 0]));
        });
        t.update(|w| w.set_outer(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 3)), None));
        let s = t.snapshot();
        assert!(s.fdb(&mac(3)).unwrap().outer.is_none());
        assert!(s.fdb(&mac(2)).unwrap().outer.is_some());
        assert!(t.update(|w| w.remove(&a)).is_some());
        let s = t.snapshot();
        assert!(s.fdb(&mac(2)).is_none());
        assert_eq!(s.arp(Ipv4Addr::new(10, 5, 2, 0)), None);
        assert_eq!(s.fdb_len(), 1);
    }

    #[test]
    fn readers_see_a_consistent_peer_under_concurrent_updates() {
        // A writer flips one lease between two identities; a reader must always see the ARP
        // answer and the FDB entry of the same identity.
        let t = Arc::new(PeerTables::new());
        let subnet: SubnetKey = "10.5.2.0-24".parse().unwrap();
        let gw = Ipv4Addr::new(10, 5, 2, 0);
        t.update(|w| w.upsert(subnet, entry(2, [192, 0, 2, 2], [10, 5, 2, 0])));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (t, stop) = (Arc::clone(&t), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut i = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (m, ip) = if i % 2 == 0 {
                        (3, [192, 0, 2, 3])
                    } else {
                        (2, [192, 0, 2, 2])
                    };
                    t.update(|w| w.upsert(subnet, entry(m, ip, [10, 5, 2, 0])));
                    i += 1;
                }
                i
            })
        };
        let mut reader = t.reader();
        for _ in 0..200_000 {
            let snap = reader.load();
            let m = snap.arp(gw).expect("the gateway always resolves");
            let vtep = snap
                .fdb(&m)
                .expect("the resolved MAC always has an FDB entry");
            let expected = if m == mac(2) {
                [192, 0, 2, 2]
            } else {
                [192, 0, 2, 3]
            };
            assert_eq!(vtep.vtep_ip, IpAddr::V4(Ipv4Addr::from(expected)));
            assert_eq!(snap.fdb_len(), 1);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(writer.join().unwrap() > 0);
    }
}
