//! Choosing this node's subnet the way flanneld does (`tryAcquireLease` and `allocateSubnet` in
//! flannel's `pkg/subnet/etcd/local_manager.go`), as a pure function: the leases, the time and
//! the randomness come in, a decision comes out. Writing the lease (and retrying when another
//! node wins the race for the key) is the lease store's job.
//!
//! The rules, in order:
//! 1. a lease whose `PublicIP` is this node's and that still fits the config is renewed (in an
//!    IPv6-only network, whose `PublicIPv6`: every node's `PublicIP` is 0.0.0.0 there);
//! 2. else the subnet named in the subnet file of the previous run, if it fits and is free;
//! 3. else a random one of the first 100 free subnets counted from `SubnetMin`.
//!
//! "Free" means overlapping no lease that is unexpired or a reservation; expired leases count as
//! free. flanneld's rule 2 only checks that no lease has exactly the same IPv4 subnet; vxdp also
//! checks overlaps and the IPv6 half.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use rand::Rng;
use time::OffsetDateTime;

use crate::config::NetworkConfig;
#[cfg(doc)]
use crate::lease::LeaseAttrs;
use crate::lease::{Lease, SubnetKey};

/// How many free subnets flanneld collects before picking one at random.
pub const MAX_CANDIDATES: usize = 100;

/// The subnet chosen, and by which rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Allocation {
    /// Rule 1: this node's existing lease, to be renewed with fresh attrs. A reservation
    /// (`expiration: None`) must stay one: flanneld renews it without a TTL.
    Renew(Lease),
    /// Rule 2: the subnet this node had before, from its subnet file.
    Previous {
        /// The subnet(s).
        key: SubnetKey,
    },
    /// Rule 3: a random free subnet.
    Random {
        /// The subnet(s).
        key: SubnetKey,
        /// How many free IPv4 subnets it was picked from (at most [`MAX_CANDIDATES`]; 0 in an
        /// IPv6-only network).
        candidates: usize,
        /// How many free IPv6 subnets the IPv6 one was picked from (0 with IPv6 off).
        ipv6_candidates: usize,
    },
}

impl Allocation {
    /// The IPv4 subnet, with IPv4 on.
    pub fn subnet(&self) -> Option<Ipv4Net> {
        self.key().ipv4
    }

    /// The IPv6 subnet, with IPv6 on.
    pub fn ipv6_subnet(&self) -> Option<Ipv6Net> {
        self.key().ipv6
    }

    /// The lease key to write.
    pub fn key(&self) -> SubnetKey {
        match self {
            Allocation::Renew(l) => l.key(),
            Allocation::Previous { key } | Allocation::Random { key, .. } => *key,
        }
    }
}

impl fmt::Display for Allocation {
    /// One line for the log, saying which rule applied.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Allocation::Renew(l) if l.is_reservation() => {
                write!(
                    f,
                    "reusing reservation {} held for this node's PublicIP",
                    l.key()
                )
            }
            Allocation::Renew(l) => write!(f, "renewing this node's lease {}", l.key()),
            Allocation::Previous { .. } => {
                write!(f, "reusing subnet {} named in the subnet file", self.key())
            }
            Allocation::Random {
                key,
                candidates,
                ipv6_candidates,
            } => match key.ipv4 {
                None => write!(
                    f,
                    "picked subnet {key} at random among {ipv6_candidates} free IPv6 subnets"
                ),
                Some(_) => {
                    write!(
                        f,
                        "picked subnet {key} at random among {candidates} free subnets"
                    )?;
                    if key.ipv6.is_some() {
                        write!(f, " ({ipv6_candidates} free IPv6 subnets)")?;
                    }
                    Ok(())
                }
            },
        }
    }
}

/// No subnet could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// Every subnet in the range is held.
    #[error(
        "network exhausted: none of the {subnets} {family} subnets /{subnet_len} from {min} to \
         {max} is free; {live} unexpired leases or reservations hold them ({expired} expired \
         leases were counted as free); delete the leases of nodes that are gone, or widen the \
         range ({fields})"
    )]
    Exhausted {
        /// `IPv4` or `IPv6`.
        family: &'static str,
        /// The subnet length.
        subnet_len: u8,
        /// `SubnetMin` (or `IPv6SubnetMin`).
        min: String,
        /// `SubnetMax` (or `IPv6SubnetMax`).
        max: String,
        /// How many subnets the range holds.
        subnets: u128,
        /// Unexpired leases and reservations overlapping the range.
        live: usize,
        /// Expired leases overlapping the range.
        expired: usize,
        /// The config fields that set the range.
        fields: &'static str,
    },
    /// A `NetworkConfig` not made by [`crate::config::parse`], with impossible prefix lengths.
    #[error(
        "SubnetLen {subnet_len:?} / IPv6SubnetLen {ipv6_subnet_len:?} are not usable prefix \
         lengths (or neither family is on); build the NetworkConfig with config::parse, which \
         validates them"
    )]
    InvalidSubnetLen {
        /// `SubnetLen`, with IPv4 on.
        subnet_len: Option<u8>,
        /// `IPv6SubnetLen`.
        ipv6_subnet_len: Option<u8>,
    },
}

/// Chooses this node's subnet(s).
///
/// `leases` is every lease in the store (expired ones included if the store keeps them),
/// `node` this node's address that names its leases (see [`LeaseAttrs::is_of`]: its `PublicIP`,
/// or in an IPv6-only network its `PublicIPv6`), `previous` the subnets read back from the
/// subnet file.
pub fn allocate(
    config: &NetworkConfig,
    leases: &[Lease],
    node: IpAddr,
    previous: Option<SubnetKey>,
    now: OffsetDateTime,
    rng: &mut impl Rng,
) -> Result<Allocation, AllocError> {
    // parse() guarantees these; a hand-made config might not, and the shifts below need them.
    if config.ipv4.is_some_and(|v4| v4.subnet_len > 32)
        || config
            .ipv6
            .is_some_and(|v6| !(1..=128).contains(&v6.subnet_len))
        || (config.ipv4.is_none() && config.ipv6.is_none())
    {
        return Err(invalid_len(config));
    }
    let live: Vec<&Lease> = leases.iter().filter(|l| !l.is_expired(now)).collect();

    // Rule 1. flanneld looks only at the first lease with its PublicIP; vxdp takes the first that
    // fits, preferring one that has not expired. An expired one is only taken back if no live
    // lease has grown over it in the meantime.
    let own_fitting = leases
        .iter()
        .filter(|l| l.attrs.is_of(node) && config.is_compatible(l.subnet, l.ipv6_subnet));
    let renew = own_fitting
        .clone()
        .find(|l| !l.is_expired(now))
        .or_else(|| own_fitting.clone().find(|l| is_free(&live, l.key())));
    if let Some(lease) = renew {
        return Ok(Allocation::Renew(lease.clone()));
    }

    // Rule 2.
    if let Some(key) = previous {
        if config.is_compatible(key.ipv4, key.ipv6) && is_free(&live, key) {
            return Ok(Allocation::Previous { key });
        }
    }

    // Rule 3. IPv4 first (as flanneld's walk), then IPv6.
    let v4_side = match config.ipv4 {
        None => None,
        Some(v4) => {
            let v4_min = u128::from(u32::from(v4.subnet_min));
            let v4_max = u128::from(u32::from(v4.subnet_max));
            let v4_host_bits = 32 - u32::from(v4.subnet_len);
            let v4_taken: Vec<(u128, u128)> =
                live.iter().filter_map(|l| l.subnet.map(v4_range)).collect();
            let v4_free = free_candidates(v4_min, v4_max, v4_host_bits, &v4_taken, MAX_CANDIDATES);
            if v4_free.is_empty() {
                let (live_n, expired_n) =
                    count_overlapping(leases, now, v4_min, v4_max, v4_host_bits, |l| {
                        l.subnet.map(v4_range)
                    });
                return Err(AllocError::Exhausted {
                    family: "IPv4",
                    subnet_len: v4.subnet_len,
                    min: v4.subnet_min.to_string(),
                    max: v4.subnet_max.to_string(),
                    subnets: subnet_count(v4_min, v4_max, v4_host_bits),
                    live: live_n,
                    expired: expired_n,
                    fields: "Network, SubnetLen, SubnetMin, SubnetMax",
                });
            }
            Some((v4, v4_min, v4_max, v4_host_bits, v4_taken, v4_free))
        }
    };
    let v6_free = match config.ipv6 {
        None => None,
        Some(v6) => {
            let min = u128::from(v6.subnet_min);
            let max = u128::from(v6.subnet_max);
            let host_bits = 128 - u32::from(v6.subnet_len);
            let taken: Vec<(u128, u128)> = live
                .iter()
                .filter_map(|l| l.ipv6_subnet.map(v6_range))
                .collect();
            // Wide in dual stack: the pairing below looks the IPv4 candidates' partners up in it.
            let limit = match config.ipv4 {
                Some(_) => 64 * MAX_CANDIDATES,
                None => MAX_CANDIDATES,
            };
            let free = free_candidates(min, max, host_bits, &taken, limit);
            if free.is_empty() {
                let (live_n, expired_n) =
                    count_overlapping(leases, now, min, max, host_bits, |l| {
                        l.ipv6_subnet.map(v6_range)
                    });
                return Err(AllocError::Exhausted {
                    family: "IPv6",
                    subnet_len: v6.subnet_len,
                    min: v6.subnet_min.to_string(),
                    max: v6.subnet_max.to_string(),
                    subnets: subnet_count(min, max, host_bits),
                    live: live_n,
                    expired: expired_n,
                    fields: "IPv6Network, IPv6SubnetLen, IPv6SubnetMin, IPv6SubnetMax",
                });
            }
            Some((v6, free))
        }
    };

    let Some((v4, v4_min, v4_max, v4_host_bits, v4_taken, v4_free)) = v4_side else {
        // IPv6-only: a random one of the first 100 free IPv6 subnets, as flanneld picks its
        // IPv6 half. (flanneld's etcd allocateSubnet also walks an IPv4 range that is empty
        // with IPv4 off; vxdp does not.)
        let Some((v6, v6_free)) = v6_free else {
            return Err(invalid_len(config));
        };
        let pick = v6_free[rng.random_range(0..v6_free.len())];
        let v6_net = Ipv6Net::new(pick.into(), v6.subnet_len).map_err(|_| invalid_len(config))?;
        return Ok(Allocation::Random {
            key: SubnetKey::ipv6_only(v6_net),
            candidates: 0,
            ipv6_candidates: v6_free.len(),
        });
    };

    let (key, candidates, ipv6_candidates) = match v6_free {
        None => {
            let pick = v4_free[rng.random_range(0..v4_free.len())];
            (
                SubnetKey::new(v4_net(pick, v4.subnet_len, config)?, None),
                v4_free.len(),
                0,
            )
        }
        // The k-th IPv4 subnet goes with the k-th IPv6 one, and a pair is free when both halves
        // are. Two nodes racing for leases then collide on the IPv6 half only when they collide
        // on the IPv4 half too, and the store's create of the same key lets only one of them
        // win. flanneld's allocateSubnet picks the IPv6 half independently (a second random
        // index): two nodes starting together can both create their leases (the keys differ in
        // the IPv4 half) and hold one IPv6 subnet. vxdp deliberately does not copy that.
        Some((v6, v6_free)) => {
            let v6_min = u128::from(v6.subnet_min);
            let v6_host_bits = 128 - u32::from(v6.subnet_len);
            let v6_free: std::collections::BTreeSet<u128> = v6_free.into_iter().collect();
            let v4_wide =
                free_candidates(v4_min, v4_max, v4_host_bits, &v4_taken, 64 * MAX_CANDIDATES);
            let pairs: Vec<(u128, u128)> = v4_wide
                .into_iter()
                .filter_map(|s4| {
                    let k = (s4 - v4_min) >> v4_host_bits;
                    let s6 = v6_min.checked_add(k.checked_shl(v6_host_bits)?)?;
                    v6_free.contains(&s6).then_some((s4, s6))
                })
                .take(MAX_CANDIDATES)
                .collect();
            if pairs.is_empty() {
                return Err(AllocError::Exhausted {
                    family: "IPv6",
                    subnet_len: v6.subnet_len,
                    min: v6.subnet_min.to_string(),
                    max: v6.subnet_max.to_string(),
                    subnets: subnet_count(v6_min, u128::from(v6.subnet_max), v6_host_bits),
                    live: live.len(),
                    expired: 0,
                    fields: "IPv6Network, IPv6SubnetLen, IPv6SubnetMin, IPv6SubnetMax (each \
                             IPv4 subnet pairs with the IPv6 subnet at its position, as in \
                             flanneld)",
                });
            }
            let (s4, s6) = pairs[rng.random_range(0..pairs.len())];
            let v6_net = Ipv6Net::new(s6.into(), v6.subnet_len).map_err(|_| invalid_len(config))?;
            (
                SubnetKey::new(v4_net(s4, v4.subnet_len, config)?, Some(v6_net)),
                v4_free.len(),
                pairs.len(),
            )
        }
    };
    Ok(Allocation::Random {
        key,
        candidates,
        ipv6_candidates,
    })
}

fn invalid_len(config: &NetworkConfig) -> AllocError {
    AllocError::InvalidSubnetLen {
        subnet_len: config.ipv4.map(|v4| v4.subnet_len),
        ipv6_subnet_len: config.ipv6.map(|v6| v6.subnet_len),
    }
}

/// The IPv4 subnet that starts at `start`.
fn v4_net(start: u128, len: u8, config: &NetworkConfig) -> Result<Ipv4Net, AllocError> {
    let start = u32::try_from(start).map_err(|_| invalid_len(config))?;
    Ipv4Net::new(Ipv4Addr::from(start), len).map_err(|_| invalid_len(config))
}

/// This node's leases other than the one allocated: stale records (an old SubnetLen, IPv6 turned
/// on or off, a duplicate). flanneld deletes such a lease (reservations included) before it
/// allocates anew; the caller should do the same so the subnet is not held for a node that no
/// longer uses it, and warn when it deletes a reservation.
pub fn stale_own_leases<'a>(
    allocation: &Allocation,
    leases: &'a [Lease],
    node: IpAddr,
) -> Vec<&'a Lease> {
    let key = allocation.key();
    leases
        .iter()
        .filter(|l| l.attrs.is_of(node) && l.key() != key)
        .collect()
}

fn subnet_count(min: u128, max: u128, host_bits: u32) -> u128 {
    max.checked_sub(min)
        .map_or(0, |span| (span >> host_bits) + 1)
}

fn is_free(live: &[&Lease], key: SubnetKey) -> bool {
    let v4 = key.ipv4.map(v4_range);
    let v6 = key.ipv6.map(v6_range);
    live.iter().all(|l| {
        let clash_v4 = matches!((v4, l.subnet), (Some(a), Some(b)) if intersects(a, v4_range(b)));
        let clash_v6 =
            matches!((v6, l.ipv6_subnet), (Some(a), Some(b)) if intersects(a, v6_range(b)));
        !clash_v4 && !clash_v6
    })
}

fn v4_range(n: Ipv4Net) -> (u128, u128) {
    (
        u128::from(u32::from(n.network())),
        u128::from(u32::from(n.broadcast())),
    )
}

fn v6_range(n: Ipv6Net) -> (u128, u128) {
    (u128::from(n.network()), u128::from(n.broadcast()))
}

fn intersects(a: (u128, u128), b: (u128, u128)) -> bool {
    a.0 <= b.1 && b.0 <= a.1
}

/// flanneld's candidate loop: walk the subnets from `min` to `max` (each `2^host_bits` wide,
/// `min` aligned), skip those overlapping a taken range, stop after `limit` free ones. Taken
/// ranges are merged and swept in order, so a lease wider than a subnet (a bogus `10.0.0.0-8`)
/// is stepped over in one go instead of one subnet at a time.
fn free_candidates(
    min: u128,
    max: u128,
    host_bits: u32,
    taken: &[(u128, u128)],
    limit: usize,
) -> Vec<u128> {
    let mut sorted = taken.to_vec();
    sorted.sort_unstable();
    let mut merged: Vec<(u128, u128)> = Vec::with_capacity(sorted.len());
    for (start, end) in sorted {
        match merged.last_mut() {
            Some(last) if start <= last.1.saturating_add(1) => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }

    // host_bits <= 30 for IPv4 and <= 125 for IPv6 (SubnetLen is validated).
    let mask = (1u128 << host_bits) - 1;
    let mut out = Vec::new();
    let mut next = 0;
    let mut cand = min;
    while cand <= max && out.len() < limit {
        let cand_end = cand | mask;
        while next < merged.len() && merged[next].1 < cand {
            next += 1;
        }
        let step_from = match merged.get(next) {
            Some(&(start, end)) if start <= cand_end => end | mask,
            _ => {
                out.push(cand);
                cand_end
            }
        };
        match step_from.checked_add(1) {
            Some(n) => cand = n,
            None => break,
        }
    }
    out
}

/// Leases (live, expired) whose range of one family overlaps `min..=max`'s subnets.
fn count_overlapping(
    leases: &[Lease],
    now: OffsetDateTime,
    min: u128,
    max: u128,
    host_bits: u32,
    range: impl Fn(&Lease) -> Option<(u128, u128)>,
) -> (usize, usize) {
    let span = (min, max | ((1u128 << host_bits) - 1));
    leases
        .iter()
        .filter(|l| range(l).is_some_and(|r| intersects(r, span)))
        .fold((0, 0), |(live, expired), l| {
            if l.is_expired(now) {
                (live, expired + 1)
            } else {
                (live + 1, expired)
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use crate::lease::LeaseAttrs;
    use packet::wire::MacAddr;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use time::Duration;

    const ME: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);
    /// ME as the node address `allocate` takes.
    const ME_IP: IpAddr = IpAddr::V4(ME);
    const OTHER: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 2);

    fn now() -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + Duration::days(20_000)
    }

    fn cfg(json: &str) -> NetworkConfig {
        config::parse(json).unwrap()
    }

    fn v4_cfg() -> NetworkConfig {
        cfg(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#)
    }

    fn dual_cfg() -> NetworkConfig {
        cfg(
            r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan"}}"#,
        )
    }

    /// A lease on `key` for `ip`, expiring `hours` from now (negative: expired), or a
    /// reservation.
    fn lease(key: &str, ip: Ipv4Addr, hours: Option<i64>) -> Lease {
        Lease::new(
            key.parse().unwrap(),
            LeaseAttrs::vxlan(ip, 1, MacAddr::local_unicast_from([1, 2, 3, 4, 5, 6])),
            hours.map(|h| now() + Duration::hours(h)),
        )
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn rng(seed: u64) -> StdRng {
        StdRng::seed_from_u64(seed)
    }

    #[test]
    fn rule1_renews_own_fitting_lease() {
        let leases = [
            lease("10.5.7.0-24", OTHER, Some(10)),
            lease("10.5.52.0-24", ME, Some(10)),
        ];
        let prev = Some(SubnetKey::new(net("10.5.9.0/24"), None));
        let a = allocate(&v4_cfg(), &leases, ME_IP, prev, now(), &mut rng(1)).unwrap();
        assert_eq!(a, Allocation::Renew(leases[1].clone()));
        assert_eq!(a.key().to_string(), "10.5.52.0-24");
        assert!(a.to_string().contains("renewing"), "{a}");
        assert!(stale_own_leases(&a, &leases, ME_IP).is_empty());
    }

    #[test]
    fn rule1_keeps_a_reservation_and_takes_back_an_expired_lease() {
        let leases = [lease("10.5.52.0-24", ME, None)];
        let a = allocate(&v4_cfg(), &leases, ME_IP, None, now(), &mut rng(1)).unwrap();
        assert!(matches!(&a, Allocation::Renew(l) if l.is_reservation()));
        assert!(a.to_string().contains("reservation"), "{a}");

        let leases = [lease("10.5.52.0-24", ME, Some(-1))];
        let a = allocate(&v4_cfg(), &leases, ME_IP, None, now(), &mut rng(1)).unwrap();
        assert_eq!(a, Allocation::Renew(leases[0].clone()));

        // ... unless a live lease of someone else now overlaps it.
        let leases = [
            lease("10.5.52.0-24", ME, Some(-1)),
            lease("10.5.52.0-24", OTHER, Some(5)),
        ];
        let a = allocate(&v4_cfg(), &leases, ME_IP, None, now(), &mut rng(1)).unwrap();
        assert!(matches!(a, Allocation::Random { .. }));
        assert_ne!(a.subnet(), Some(net("10.5.52.0/24")));
    }

    #[test]
    fn rule1_skips_own_leases_that_no_longer_fit() {
        let cfg = cfg(r#"{"Network":"10.5.0.0/16","SubnetLen":25,"Backend":{"Type":"vxlan"}}"#);
        let leases = [lease("10.5.52.0-24", ME, Some(10))];
        let a = allocate(&cfg, &leases, ME_IP, None, now(), &mut rng(3)).unwrap();
        let Some(subnet) = a.subnet() else {
            panic!("{a:?}")
        };
        assert_eq!(subnet.prefix_len(), 25);
        // The stale lease still holds its range until it is deleted.
        assert!(!net("10.5.52.0/24").contains(&subnet.network()));
        assert_eq!(stale_own_leases(&a, &leases, ME_IP), vec![&leases[0]]);

        // A v4-only lease does not fit a dual-stack config, and a dual-stack lease does not fit
        // a v4-only one (flannel's isIPv6SubnetConfigCompat).
        let leases = [lease("10.5.52.0-24", ME, Some(10))];
        let a = allocate(&dual_cfg(), &leases, ME_IP, None, now(), &mut rng(3)).unwrap();
        assert!(matches!(a, Allocation::Random { .. }));
        let leases = [lease("10.5.52.0-24&fc00:0:0:5::-64", ME, Some(10))];
        let a = allocate(&v4_cfg(), &leases, ME_IP, None, now(), &mut rng(3)).unwrap();
        assert!(matches!(a, Allocation::Random { .. }));
        let a = allocate(&dual_cfg(), &leases, ME_IP, None, now(), &mut rng(3)).unwrap();
        assert_eq!(a, Allocation::Renew(leases[0].clone()));
    }

    #[test]
    fn rule2_reuses_the_previous_subnet_when_free() {
        let leases = [lease("10.5.7.0-24", OTHER, Some(10))];
        let prev = Some(SubnetKey::new(net("10.5.52.0/24"), None));
        let a = allocate(&v4_cfg(), &leases, ME_IP, prev, now(), &mut rng(1)).unwrap();
        assert_eq!(
            a,
            Allocation::Previous {
                key: SubnetKey::new(net("10.5.52.0/24"), None)
            }
        );
        assert!(a.to_string().contains("subnet file"), "{a}");

        // An expired lease on it does not hold it.
        let leases = [lease("10.5.52.0-24", OTHER, Some(-2))];
        let a = allocate(&v4_cfg(), &leases, ME_IP, prev, now(), &mut rng(1)).unwrap();
        assert!(matches!(a, Allocation::Previous { .. }));

        // Dual stack: both halves come from the file.
        let prev6 = Some(SubnetKey::new(
            net("10.5.52.0/24"),
            Some("fc00:0:0:34::/64".parse().unwrap()),
        ));
        let a = allocate(&dual_cfg(), &[], ME_IP, prev6, now(), &mut rng(1)).unwrap();
        assert_eq!(a.key().to_string(), "10.5.52.0-24&fc00:0:0:34::-64");
    }

    #[test]
    fn rule2_passes_over_a_previous_subnet_that_is_taken_or_does_not_fit() {
        let prev = Some(SubnetKey::new(net("10.5.52.0/24"), None));
        for leases in [
            vec![lease("10.5.52.0-24", OTHER, Some(1))],
            // A reservation is never given to another PublicIP.
            vec![lease("10.5.52.0-24", OTHER, None)],
            // Overlap, not only equality, counts.
            vec![lease("10.5.52.128-25", OTHER, Some(1))],
        ] {
            let a = allocate(&v4_cfg(), &leases, ME_IP, prev, now(), &mut rng(1)).unwrap();
            assert!(matches!(a, Allocation::Random { .. }), "{leases:?}");
            assert_ne!(a.subnet(), Some(net("10.5.52.0/24")));
        }
        for prev in [
            SubnetKey::new(net("10.5.0.0/24"), None),  // below SubnetMin
            SubnetKey::new(net("10.6.52.0/24"), None), // outside Network
            SubnetKey::new(net("10.5.52.0/25"), None), // wrong SubnetLen
        ] {
            let a = allocate(&v4_cfg(), &[], ME_IP, Some(prev), now(), &mut rng(1)).unwrap();
            assert!(matches!(a, Allocation::Random { .. }), "{prev:?}");
        }
        // IPv6 half taken.
        let prev6 = Some(SubnetKey::new(
            net("10.5.52.0/24"),
            Some("fc00:0:0:34::/64".parse().unwrap()),
        ));
        let leases = [lease("10.5.9.0-24&fc00:0:0:34::-64", OTHER, Some(1))];
        let a = allocate(&dual_cfg(), &leases, ME_IP, prev6, now(), &mut rng(1)).unwrap();
        assert!(matches!(a, Allocation::Random { .. }));
        // IPv6 on but the file had no IPv6 subnet.
        let a = allocate(
            &dual_cfg(),
            &[],
            ME_IP,
            Some(SubnetKey::new(net("10.5.52.0/24"), None)),
            now(),
            &mut rng(1),
        )
        .unwrap();
        assert!(matches!(a, Allocation::Random { .. }));
    }

    #[test]
    fn rule3_picks_among_the_first_100_free_subnets() {
        let cfg = v4_cfg();
        // The first 50 subnets (10.5.1.0 .. 10.5.50.0) are held, 10.5.51.0 only by an expired
        // lease: candidates are 10.5.51.0 .. 10.5.150.0.
        let mut leases: Vec<Lease> = (1..=50)
            .map(|i| lease(&format!("10.5.{i}.0-24"), OTHER, Some(1)))
            .collect();
        leases.push(lease("10.5.51.0-24", OTHER, Some(-1)));
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..400 {
            let a = allocate(&cfg, &leases, ME_IP, None, now(), &mut rng(seed)).unwrap();
            let Allocation::Random {
                key:
                    SubnetKey {
                        ipv4: Some(subnet),
                        ipv6: ipv6_subnet,
                    },
                candidates,
                ..
            } = a
            else {
                panic!("{a:?}")
            };
            assert_eq!(candidates, MAX_CANDIDATES);
            assert_eq!(ipv6_subnet, None);
            let third = subnet.network().octets()[2];
            assert!((51..=150).contains(&third), "{subnet}");
            assert_eq!(subnet.prefix_len(), 24);
            seen.insert(third);
        }
        assert!(seen.len() > 50, "picks are not spread: {seen:?}");
        assert!(seen.contains(&51), "the expired lease's subnet is free");
    }

    #[test]
    fn rule3_dual_stack_picks_both_halves() {
        let leases = [lease("10.5.1.0-24&fc00:0:0:1::-64", OTHER, Some(1))];
        let a = allocate(&dual_cfg(), &leases, ME_IP, None, now(), &mut rng(9)).unwrap();
        let Allocation::Random {
            key:
                SubnetKey {
                    ipv4: Some(subnet),
                    ipv6: Some(v6),
                },
            candidates,
            ipv6_candidates,
        } = a
        else {
            panic!("{a:?}")
        };
        assert_eq!(candidates, 100);
        assert_eq!(ipv6_candidates, 100);
        assert_ne!(subnet, net("10.5.1.0/24"));
        assert_eq!(v6.prefix_len(), 64);
        assert!(dual_cfg().is_compatible(Some(subnet), Some(v6)));
        assert_ne!(v6, "fc00:0:0:1::/64".parse::<Ipv6Net>().unwrap());
        assert!(a.to_string().contains("100 free IPv6 subnets"), "{a}");
    }

    #[test]
    fn exhaustion_and_reservations() {
        // A /28 network holds three /30 subnets: 10.0.0.4, .8 and .12.
        let cfg = cfg(r#"{"Network":"10.0.0.0/28","Backend":{"Type":"vxlan"}}"#);
        let leases = [
            lease("10.0.0.4-30", OTHER, None),
            lease("10.0.0.8-30", Ipv4Addr::new(192, 168, 0, 3), None),
            lease("10.0.0.12-30", Ipv4Addr::new(192, 168, 0, 4), Some(3)),
            lease("10.0.0.12-30", Ipv4Addr::new(192, 168, 0, 5), Some(-3)),
        ];
        let e = allocate(
            &cfg,
            &leases,
            ME_IP,
            Some(SubnetKey::new(net("10.0.0.4/30"), None)),
            now(),
            &mut rng(1),
        )
        .unwrap_err();
        assert_eq!(
            e,
            AllocError::Exhausted {
                family: "IPv4",
                subnet_len: 30,
                min: "10.0.0.4".into(),
                max: "10.0.0.12".into(),
                subnets: 3,
                live: 3,
                expired: 1,
                fields: "Network, SubnetLen, SubnetMin, SubnetMax",
            }
        );
        let msg = e.to_string();
        assert!(msg.starts_with("network exhausted"), "{msg}");
        assert!(
            msg.contains("none of the 3 IPv4 subnets /30 from 10.0.0.4 to 10.0.0.12"),
            "{msg}"
        );

        // Once the live lease on 10.0.0.12 expires, that subnet is the only choice; the
        // reservations are never handed out.
        let later = now() + Duration::hours(4);
        for seed in 0..20 {
            let a = allocate(&cfg, &leases, ME_IP, None, later, &mut rng(seed)).unwrap();
            assert_eq!(a.subnet(), Some(net("10.0.0.12/30")));
        }
    }

    #[test]
    fn ipv6_exhaustion() {
        let cfg = cfg(
            r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/124","Backend":{"Type":"vxlan"}}"#,
        );
        let leases: Vec<Lease> = [4, 8, 12]
            .iter()
            .enumerate()
            .map(|(i, low)| {
                lease(
                    &format!("10.5.{}.0-24&fc00::{low:x}-126", i + 1),
                    OTHER,
                    Some(1),
                )
            })
            .collect();
        let e = allocate(&cfg, &leases, ME_IP, None, now(), &mut rng(1)).unwrap_err();
        assert!(
            matches!(
                e,
                AllocError::Exhausted {
                    family: "IPv6",
                    subnets: 3,
                    live: 3,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn dual_stack_halves_are_paired_so_racing_nodes_cannot_share_an_ipv6_subnet() {
        // Two nodes allocating from the same listing (a race): whenever their IPv6 halves are
        // the same, so are their IPv4 halves, and the store's create lets one of them win.
        let cfg = cfg(
            r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/48","Backend":{"Type":"vxlan"}}"#,
        );
        let leases = [lease("10.5.3.0-24&fd00:5:0:3::-64", OTHER, Some(1))];
        let mut seen = std::collections::BTreeMap::new();
        for seed in 0..400 {
            let a = allocate(&cfg, &leases, ME_IP, None, now(), &mut rng(seed)).unwrap();
            let (v4, v6) = (a.subnet().unwrap(), a.ipv6_subnet().unwrap());
            // The k-th IPv4 subnet goes with the k-th IPv6 subnet.
            let k4 = (u32::from(v4.network()) - u32::from(net("10.5.1.0/24").network())) >> 8;
            let k6 = (u128::from(v6.network())
                - u128::from("fd00:5:0:1::".parse::<std::net::Ipv6Addr>().unwrap()))
                >> 64;
            assert_eq!(u128::from(k4), k6, "{v4} with {v6}");
            assert_eq!(
                *seen.entry(v6).or_insert(v4),
                v4,
                "{v6} with two IPv4 subnets"
            );
        }
        assert!(
            seen.len() > 50,
            "picks spread over the candidates: {}",
            seen.len()
        );
    }

    #[test]
    fn a_lease_wider_than_the_network_is_stepped_over_at_once() {
        // A bogus /8 lease covers all of a huge IPv6 range's IPv4 side; a bogus /16 IPv6 lease
        // covers 2^48 IPv6 subnets. Both must be swept in one step, not subnet by subnet.
        let cfg = cfg(
            r#"{"Network":"10.0.0.0/8","EnableIPv6":true,"IPv6Network":"fc00::/16","Backend":{"Type":"vxlan"}}"#,
        );
        let leases = [lease("10.0.0.0-8&fc00::-16", OTHER, Some(1))];
        let e = allocate(&cfg, &leases, ME_IP, None, now(), &mut rng(1)).unwrap_err();
        assert!(
            matches!(
                e,
                AllocError::Exhausted {
                    family: "IPv4",
                    subnets: 65535,
                    live: 1,
                    ..
                }
            ),
            "{e:?}"
        );

        // The /17 covers the upper half of the IPv6 range (2^47 subnets, swept in one step);
        // each IPv4 subnet pairs with the IPv6 subnet at its position, which lies in the lower
        // half.
        let leases = [lease("10.1.0.0-16&fc00:8000::-17", OTHER, Some(1))];
        let a = allocate(&cfg, &leases, ME_IP, None, now(), &mut rng(1)).unwrap();
        let v6 = a.ipv6_subnet().unwrap();
        assert!(
            u128::from(v6.network())
                < u128::from("fc00:8000::".parse::<std::net::Ipv6Addr>().unwrap())
        );
        assert!(!net("10.1.0.0/16").contains(&a.subnet().unwrap().network()));

        // A wide IPv6 lease over the lower half takes every IPv4 subnet's partner: exhausted,
        // at once, as flanneld's paired walk would find it.
        let leases = [lease("10.1.0.0-16&fc00::-17", OTHER, Some(1))];
        let e = allocate(&cfg, &leases, ME_IP, None, now(), &mut rng(1)).unwrap_err();
        assert!(
            matches!(e, AllocError::Exhausted { family: "IPv6", .. }),
            "{e:?}"
        );
    }

    #[test]
    fn candidate_sweep() {
        // Subnets of 4 addresses from 0 to 60; taken: 4..=11 and 20..=23 (and one inside 40..=43).
        let taken = [(4, 11), (20, 23), (41, 41), (8, 9)];
        assert_eq!(
            free_candidates(0, 60, 2, &taken, 100),
            vec![0, 12, 16, 24, 28, 32, 36, 44, 48, 52, 56, 60]
        );
        assert_eq!(free_candidates(0, 60, 2, &taken, 3), vec![0, 12, 16]);
        assert_eq!(
            free_candidates(0, 60, 2, &[(0, 1000)], 3),
            Vec::<u128>::new()
        );
        // The very top of the IPv6 space does not overflow.
        let top = u128::MAX - 3;
        assert_eq!(
            free_candidates(top - 8, top, 2, &[], 100),
            vec![top - 8, top - 4, top]
        );
        assert_eq!(
            free_candidates(top - 8, top, 2, &[(top, u128::MAX)], 100),
            vec![top - 8, top - 4]
        );
    }

    fn v6_only_cfg() -> NetworkConfig {
        cfg(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:5::/48","Backend":{"Type":"vxlan"}}"#,
        )
    }

    /// An IPv6-only lease of the node at `ip6`, as flanneld writes it (PublicIP 0.0.0.0).
    fn v6_lease(key: &str, ip6: &str, hours: Option<i64>) -> Lease {
        Lease::new(
            key.parse().unwrap(),
            LeaseAttrs::vxlan_v6_only(
                ip6.parse().unwrap(),
                1,
                MacAddr::local_unicast_from([1, 2, 3, 4, 5, 6]),
            ),
            hours.map(|h| now() + Duration::hours(h)),
        )
    }

    /// IPv6-only: only an IPv6 subnet is picked (key `0.0.0.0-0&<v6>`), and the node's own
    /// lease is found by its PublicIPv6, not by the PublicIP 0.0.0.0 every such lease has.
    #[test]
    fn ipv6_only_allocates_only_an_ipv6_subnet() {
        let me6: IpAddr = "2001:db8::1".parse().unwrap();
        let cfg = v6_only_cfg();
        let leases = [v6_lease(
            "0.0.0.0-0&fd00:5:0:1::-64",
            "2001:db8::2",
            Some(1),
        )];
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let a = allocate(&cfg, &leases, me6, None, now(), &mut rng(seed)).unwrap();
            let Allocation::Random {
                key,
                ipv6_candidates,
                ..
            } = a
            else {
                panic!("{a:?}")
            };
            assert_eq!(key.ipv4, None);
            let v6 = key.ipv6.unwrap();
            assert_eq!(v6.prefix_len(), 64);
            assert_ne!(v6.to_string(), "fd00:5:0:1::/64", "taken by the other node");
            assert!(cfg.is_compatible(None, Some(v6)));
            assert_eq!(ipv6_candidates, MAX_CANDIDATES);
            assert!(key.to_string().starts_with("0.0.0.0-0&fd00:5:"), "{key}");
            seen.insert(v6);
        }
        assert!(seen.len() > 50, "picks are not spread: {seen:?}");

        // Rule 1: the other node's lease (PublicIP 0.0.0.0, like ours) is not ours; our own
        // lease, named by PublicIPv6, is renewed.
        let leases = [
            v6_lease("0.0.0.0-0&fd00:5:0:1::-64", "2001:db8::2", Some(1)),
            v6_lease("0.0.0.0-0&fd00:5:0:7::-64", "2001:db8::1", Some(1)),
        ];
        let a = allocate(&cfg, &leases, me6, None, now(), &mut rng(1)).unwrap();
        assert_eq!(a, Allocation::Renew(leases[1].clone()));
        assert!(stale_own_leases(&a, &leases, me6).is_empty());

        // Rule 2: the subnet file of an IPv6-only node names only the IPv6 subnet.
        let prev = SubnetKey::ipv6_only("fd00:5:0:9::/64".parse().unwrap());
        let a = allocate(&cfg, &leases[..1], me6, Some(prev), now(), &mut rng(1)).unwrap();
        assert_eq!(a, Allocation::Previous { key: prev });
        // A dual-stack subnet file does not fit an IPv6-only network.
        let prev = Some(SubnetKey::new(
            net("10.5.9.0/24"),
            Some("fd00:5:0:9::/64".parse().unwrap()),
        ));
        let a = allocate(&cfg, &[], me6, prev, now(), &mut rng(1)).unwrap();
        assert!(matches!(a, Allocation::Random { .. }), "{a:?}");
        assert_eq!(a.subnet(), None);
        assert!(a.to_string().contains("free IPv6 subnets"), "{a}");

        // Exhaustion names the IPv6 range.
        let small = cfg_small_v6();
        let leases: Vec<Lease> = [4, 8, 12]
            .iter()
            .map(|i| {
                v6_lease(
                    &format!("0.0.0.0-0&fd00::{i:x}-126"),
                    "2001:db8::9",
                    Some(1),
                )
            })
            .collect();
        let e = allocate(&small, &leases, me6, None, now(), &mut rng(1)).unwrap_err();
        assert!(
            matches!(e, AllocError::Exhausted { family: "IPv6", .. }),
            "{e:?}"
        );
    }

    fn cfg_small_v6() -> NetworkConfig {
        cfg(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/124","Backend":{"Type":"vxlan"}}"#,
        )
    }
}
