//! The node's lease life as a state machine without I/O or a clock of its own, in the manner of
//! quinn-proto's `Endpoint`: the daemon's shell feeds it the time and what happened (lease
//! events from the watch, the outcome of a renewal, a stop signal, a failed dataplane) and
//! carries out the [`Action`]s it returns (program peers, renew the lease, exit). Every decision
//! flanneld's lease manager makes once a lease is held lives here, and is unit-tested without a
//! store: when to renew (expiration minus the margin; half the TTL when the TTL is shorter),
//! how often to retry a failed renewal, what counts as revocation or takeover of this node's
//! subnet, and what an exit leaves behind.

use std::time::Duration;

use time::OffsetDateTime;

use crate::lease::{Lease, LeaseEvent};

/// How the lease is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeasePolicy {
    /// Lifetime of a lease when written or renewed (flannel: 24 h).
    pub ttl: Duration,
    /// How long before expiry it is renewed (flannel's `--subnet-lease-renew-margin`).
    pub renew_margin: Duration,
    /// Wait after a failed renewal (flannel: a minute; shorter for short test TTLs).
    pub renew_retry: Duration,
    /// Whether a requested stop (SIGTERM/SIGINT) deletes the lease and removes everything the
    /// node set up (`--cleanup-on-exit`). Off by default, as in flanneld: a stop keeps the
    /// lease (it lapses by its TTL if the node never comes back) and the dataplane state, so
    /// that a restart or upgrade never makes peers withdraw their routes to this node.
    pub release_on_stop: bool,
}

impl LeasePolicy {
    /// flannel's rules for `ttl` and `renew_margin`: retry a failed renewal every minute, or a
    /// quarter of the TTL when that is shorter, but at least every second.
    pub fn new(ttl: Duration, renew_margin: Duration) -> LeasePolicy {
        LeasePolicy {
            ttl,
            renew_margin,
            renew_retry: Duration::from_secs(60)
                .min(ttl / 4)
                .max(Duration::from_secs(1)),
            release_on_stop: false,
        }
    }

    /// The same policy, with `release_on_stop` set.
    pub fn releasing_on_stop(self, release_on_stop: bool) -> LeasePolicy {
        LeasePolicy {
            release_on_stop,
            ..self
        }
    }
}

/// What happened, as the shell reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A batch of changes from the store's watch.
    LeaseEvents(Vec<LeaseEvent>),
    /// The renewal the core asked for succeeded: the lease as written.
    Renewed(Lease),
    /// The renewal the core asked for failed; the store's message.
    RenewFailed(String),
    /// SIGTERM or SIGINT.
    Stop(&'static str),
    /// The dataplane can no longer forward (a worker died).
    DataplaneFailed(String),
    /// Forwarding was handed over to a successor process (an upgrade).
    HandedOver,
}

/// What the shell is to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Program these peer changes (this node's own lease is never among them).
    ApplyPeers(Vec<LeaseEvent>),
    /// Renew this lease for another TTL and report back with [`Input::Renewed`] or
    /// [`Input::RenewFailed`].
    Renew(Lease),
    /// The lease changed (renewed): show it.
    LeaseChanged(Lease),
    /// Stop the event loop and clean up as [`Exit`] says.
    Exit(Exit),
}

/// Why the daemon stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// A signal asked for it: not an error.
    Signal(&'static str),
    /// Someone deleted this node's lease from the store (flanneld's revocation).
    Revoked,
    /// Another node wrote this node's subnet with its own PublicIP.
    TakenOver(String),
    /// The dataplane failed; the service manager should restart vxdp.
    DataplaneFailed(String),
    /// A successor process took over forwarding: everything stays, it is the successor's now.
    HandedOver,
}

/// How to stop: why, and what to leave behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// Why.
    pub reason: ExitReason,
    /// Delete this node's lease from the store. Only on a requested stop with
    /// [`LeasePolicy::release_on_stop`]: otherwise the next start renews it, and a lost lease
    /// is not ours to delete.
    pub release_lease: bool,
    /// Remove everything this node set up for its subnet (device, routes, masquerade rules, the
    /// blackhole route): with the lease, or when the subnet is no longer ours and may become
    /// another node's. Otherwise all of it stays for the next start to adopt.
    pub release_subnet: bool,
}

impl Exit {
    /// Whether the exit is an error (non-zero exit status).
    pub fn is_error(&self) -> bool {
        !matches!(self.reason, ExitReason::Signal(_) | ExitReason::HandedOver)
    }
}

/// When to renew.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Renewal {
    /// Never (a reservation, or a store whose leases do not expire).
    Never,
    /// At this moment.
    At(OffsetDateTime),
    /// Asked for; waiting for the outcome.
    InFlight,
}

/// The state of this node's lease after acquisition.
#[derive(Debug, Clone)]
pub struct Node {
    lease: Lease,
    policy: LeasePolicy,
    renewal: Renewal,
    exit: Option<Exit>,
}

impl Node {
    /// This node holds `lease` (just acquired or assigned) at `now`.
    pub fn new(lease: Lease, policy: LeasePolicy, now: OffsetDateTime) -> Node {
        let renewal = renewal_for(&lease, &policy, now);
        Node {
            lease,
            policy,
            renewal,
            exit: None,
        }
    }

    /// The lease as it stands.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// When [`Node::handle_timeout`] is next due; `None` when nothing is scheduled.
    pub fn next_timeout(&self) -> Option<OffsetDateTime> {
        match (self.renewal, &self.exit) {
            (Renewal::At(t), None) => Some(t),
            _ => None,
        }
    }

    /// The time has come for what [`Node::next_timeout`] named (or later).
    pub fn handle_timeout(&mut self, now: OffsetDateTime) -> Vec<Action> {
        match self.renewal {
            Renewal::At(t) if now >= t && self.exit.is_none() => {
                self.renewal = Renewal::InFlight;
                vec![Action::Renew(self.lease.clone())]
            }
            _ => Vec::new(),
        }
    }

    /// Something happened at `now`.
    pub fn handle(&mut self, input: Input, now: OffsetDateTime) -> Vec<Action> {
        if self.exit.is_some() {
            return Vec::new();
        }
        match input {
            Input::LeaseEvents(events) => self.lease_events(events),
            Input::Renewed(lease) => {
                self.renewal = renewal_for(&lease, &self.policy, now);
                self.lease = lease.clone();
                vec![Action::LeaseChanged(lease)]
            }
            Input::RenewFailed(_) => {
                self.renewal = Renewal::At(now + self.policy.renew_retry);
                Vec::new()
            }
            Input::Stop(signal) => self.exit(ExitReason::Signal(signal)),
            Input::DataplaneFailed(why) => self.exit(ExitReason::DataplaneFailed(why)),
            Input::HandedOver => self.exit(ExitReason::HandedOver),
        }
    }

    fn lease_events(&mut self, events: Vec<LeaseEvent>) -> Vec<Action> {
        let own = self.lease.key();
        let mut peers = Vec::with_capacity(events.len());
        let mut lost = None;
        for event in events {
            if event.lease().key() != own {
                peers.push(event);
                continue;
            }
            match event {
                // The node is named by its PublicIP, or its PublicIPv6 in an IPv6-only network
                // (where every PublicIP is 0.0.0.0).
                LeaseEvent::Added(l)
                    if (l.attrs.public_ip, l.attrs.public_ipv6)
                        != (self.lease.attrs.public_ip, self.lease.attrs.public_ipv6) =>
                {
                    lost = Some(ExitReason::TakenOver(l.attrs.node_addr().to_string()));
                }
                LeaseEvent::Removed(_) => lost = Some(ExitReason::Revoked),
                // Our own write (a renewal) coming back through the watch.
                LeaseEvent::Added(_) => {}
            }
        }
        let mut actions = Vec::new();
        if !peers.is_empty() {
            actions.push(Action::ApplyPeers(peers));
        }
        if let Some(reason) = lost {
            actions.extend(self.exit(reason));
        }
        actions
    }

    fn exit(&mut self, reason: ExitReason) -> Vec<Action> {
        let lost = matches!(reason, ExitReason::Revoked | ExitReason::TakenOver(_));
        let release = matches!(reason, ExitReason::Signal(_)) && self.policy.release_on_stop;
        let exit = Exit {
            release_lease: release,
            release_subnet: release || lost,
            reason,
        };
        self.exit = Some(exit.clone());
        vec![Action::Exit(exit)]
    }
}

/// When `lease` is to be renewed, from `now`: expiration minus the margin (at once if that has
/// passed); half the TTL before expiry when the TTL is shorter than the margin (tests).
fn renewal_for(lease: &Lease, policy: &LeasePolicy, now: OffsetDateTime) -> Renewal {
    let Some(expiration) = lease.expiration else {
        return Renewal::Never;
    };
    let margin = if policy.renew_margin >= policy.ttl {
        policy.ttl / 2
    } else {
        policy.renew_margin
    };
    Renewal::At((expiration - margin).max(now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseAttrs;
    use packet::wire::MacAddr;
    use std::net::Ipv4Addr;
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2026-12-04 12:00 UTC);
    const HOUR: Duration = Duration::from_secs(3600);

    fn lease(subnet: &str, ip: u8, expiration: Option<OffsetDateTime>) -> Lease {
        Lease::new(
            subnet.parse().unwrap(),
            LeaseAttrs::vxlan(
                Ipv4Addr::new(192, 0, 2, ip),
                1,
                MacAddr([2, 0, 0, 0, 0, ip]),
            ),
            expiration,
        )
    }

    fn node() -> Node {
        Node::new(
            lease("10.5.1.0-24", 1, Some(T0 + 24 * HOUR)),
            LeasePolicy::new(24 * HOUR, HOUR),
            T0,
        )
    }

    #[test]
    fn renews_a_margin_before_expiry_and_retries_a_minute_after_a_failure() {
        let mut n = node();
        assert_eq!(n.next_timeout(), Some(T0 + 23 * HOUR));
        assert!(n.handle_timeout(T0 + 22 * HOUR).is_empty(), "not yet");
        let due = T0 + 23 * HOUR;
        assert_eq!(
            n.handle_timeout(due),
            vec![Action::Renew(n.lease().clone())]
        );
        assert_eq!(n.next_timeout(), None, "one renewal at a time");
        assert!(n.handle_timeout(due + HOUR).is_empty());
        n.handle(Input::RenewFailed("etcd down".into()), due);
        assert_eq!(n.next_timeout(), Some(due + Duration::from_secs(60)));
        let renewed = lease("10.5.1.0-24", 1, Some(due + 24 * HOUR));
        assert_eq!(
            n.handle(Input::Renewed(renewed.clone()), due),
            vec![Action::LeaseChanged(renewed.clone())]
        );
        assert_eq!(n.lease(), &renewed);
        assert_eq!(n.next_timeout(), Some(due + 23 * HOUR));
    }

    #[test]
    fn short_ttls_renew_at_half_and_past_deadlines_at_once() {
        let ttl = Duration::from_secs(10);
        let n = Node::new(
            lease("10.5.1.0-24", 1, Some(T0 + ttl)),
            LeasePolicy::new(ttl, HOUR),
            T0,
        );
        assert_eq!(n.next_timeout(), Some(T0 + Duration::from_secs(5)));
        assert_eq!(
            LeasePolicy::new(ttl, HOUR).renew_retry,
            Duration::from_millis(2500)
        );
        // A lease already past its renewal time (a slow start): renew now.
        let late = Node::new(
            lease("10.5.1.0-24", 1, Some(T0 + Duration::from_secs(30))),
            LeasePolicy::new(24 * HOUR, HOUR),
            T0,
        );
        assert_eq!(late.next_timeout(), Some(T0));
        // A reservation never expires: nothing to renew.
        let r = Node::new(
            lease("10.5.1.0-24", 1, None),
            LeasePolicy::new(ttl, HOUR),
            T0,
        );
        assert_eq!(r.next_timeout(), None);
    }

    #[test]
    fn peer_events_pass_and_this_nodes_echo_is_ignored() {
        let mut n = node();
        let peer = lease("10.5.2.0-24", 2, Some(T0 + HOUR));
        let echo = lease("10.5.1.0-24", 1, Some(T0 + 48 * HOUR));
        let actions = n.handle(
            Input::LeaseEvents(vec![
                LeaseEvent::Added(echo),
                LeaseEvent::Added(peer.clone()),
                LeaseEvent::Removed(lease("10.5.3.0-24", 3, None)),
            ]),
            T0,
        );
        assert_eq!(
            actions,
            vec![Action::ApplyPeers(vec![
                LeaseEvent::Added(peer),
                LeaseEvent::Removed(lease("10.5.3.0-24", 3, None)),
            ])]
        );
    }

    #[test]
    fn revocation_and_takeover_stop_the_node_and_give_the_subnet_up() {
        let mut n = node();
        let actions = n.handle(
            Input::LeaseEvents(vec![LeaseEvent::Removed(lease("10.5.1.0-24", 1, None))]),
            T0,
        );
        let Some(Action::Exit(exit)) = actions.last() else {
            panic!("{actions:?}");
        };
        assert_eq!(exit.reason, ExitReason::Revoked);
        assert!(exit.is_error() && !exit.release_lease && exit.release_subnet);
        assert!(
            n.handle(Input::Stop("SIGTERM"), T0).is_empty(),
            "stopped once"
        );
        assert_eq!(n.next_timeout(), None);

        let mut n = node();
        let thief = lease("10.5.1.0-24", 9, Some(T0 + HOUR));
        let actions = n.handle(Input::LeaseEvents(vec![LeaseEvent::Added(thief)]), T0);
        assert!(matches!(
            actions.as_slice(),
            [Action::Exit(Exit { reason: ExitReason::TakenOver(by), release_lease: false, release_subnet: true })] if by == "192.0.2.9"
        ));
    }

    #[test]
    fn a_signal_keeps_everything_unless_asked_to_release_and_a_failed_dataplane_keeps_it_too() {
        let mut n = node();
        assert_eq!(
            n.handle(Input::Stop("SIGTERM"), T0),
            vec![Action::Exit(Exit {
                reason: ExitReason::Signal("SIGTERM"),
                release_lease: false,
                release_subnet: false,
            })],
            "flanneld's stop: lease and dataplane stay for the next start"
        );
        let mut n = Node::new(
            lease("10.5.1.0-24", 1, Some(T0 + 24 * HOUR)),
            LeasePolicy::new(24 * HOUR, HOUR).releasing_on_stop(true),
            T0,
        );
        assert_eq!(
            n.handle(Input::Stop("SIGINT"), T0),
            vec![Action::Exit(Exit {
                reason: ExitReason::Signal("SIGINT"),
                release_lease: true,
                release_subnet: true,
            })]
        );
        // A handover leaves everything to the successor, even with release_on_stop.
        let mut n = Node::new(
            lease("10.5.1.0-24", 1, Some(T0 + 24 * HOUR)),
            LeasePolicy::new(24 * HOUR, HOUR).releasing_on_stop(true),
            T0,
        );
        let actions = n.handle(Input::HandedOver, T0);
        let [Action::Exit(exit)] = actions.as_slice() else {
            panic!("{actions:?}");
        };
        assert!(!exit.is_error() && !exit.release_lease && !exit.release_subnet);
        let mut n = node();
        let actions = n.handle(Input::DataplaneFailed("worker 0 died".into()), T0);
        let [Action::Exit(exit)] = actions.as_slice() else {
            panic!("{actions:?}");
        };
        assert!(exit.is_error() && !exit.release_lease && !exit.release_subnet);
    }
}
