//! Per-worker counters: written by one worker thread, read by anyone.
//!
//! Each counter has a single writer, so an increment is a relaxed load and store (no locked
//! read-modify-write), and each worker's block sits on its own cache lines so workers never
//! contend. Readers see values that are at most one batch old.
//!
//! Every counter is declared once, in [`worker_counters!`]'s invocation below: the atomic block
//! ([`WorkerStats`]), its plain copy for status and metrics ([`WorkerCounters`], serialized as
//! is), and the list of names and help texts `/metrics` renders all come from that one list.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use packet::tunnel::DropReason;

macro_rules! tx_drops {
    ($($(#[doc = $doc:literal])* $name:ident = $label:literal,)*) => {
        /// Why a frame read from the TAP did not go out on the wire. Each reason means exactly
        /// one thing.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum TxDrop {
            $($(#[doc = $doc])* $name,)*
        }

        impl TxDrop {
            /// Every reason, in index order.
            pub const ALL: [TxDrop; [$(TxDrop::$name),*].len()] = [$(TxDrop::$name),*];

            /// Stable snake_case name (metric label).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(TxDrop::$name => $label,)*
                }
            }

            /// A dense index in `0..ALL.len()`.
            #[inline]
            pub const fn index(self) -> usize {
                self as usize
            }
        }
    };
}

tx_drops! {
    /// Destination MAC is not a known peer's VtepMAC.
    NoFdbEntry = "no_fdb_entry",
    /// The peer is known but its underlay next hop is not resolved yet (AF_XDP).
    NextHopUnresolved = "next_hop_unresolved",
    /// Broadcast or multicast other than ARP (flannel's VXLAN does not flood).
    NotUnicast = "not_unicast",
    /// An ARP request for an address no peer owns.
    ArpUnknown = "arp_unknown",
    /// ARP that is not a request we answer (replies, gratuitous ARP, malformed).
    ArpOther = "arp_other",
    /// The vnet header the kernel put in front of the frame is unreadable, or its checksum
    /// offsets lie outside the frame.
    BadVnetHeader = "bad_vnet_header",
    /// A TCP super-frame (GSO) that cannot be cut into segments.
    BadSuperFrame = "bad_super_frame",
    /// Encapsulation refused the frame: shorter than an Ethernet header, or too long for the
    /// outer headers.
    EncapFailed = "encap_failed",
    /// Reading the TAP failed with an error other than "empty".
    TapReadError = "tap_read_error",
    /// No free UMEM frame to build the packet in: every transmit frame is on the TX ring or
    /// waiting for its completion (AF_XDP).
    TxPoolEmpty = "tx_pool_empty",
    /// The AF_XDP TX ring stayed full (the NIC is slower than the TAP).
    TxRingFull = "tx_ring_full",
    /// The UDP socket's send buffer stayed full (the underlay is slower than the TAP).
    SendBufferFull = "send_buffer_full",
    /// The kernel refused to send the datagram (no route to the peer, message too long, ...).
    SendFailed = "send_failed",
}

/// A counter with a single writer.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning worker may call this.
    #[inline]
    pub fn add(&self, n: u64) {
        if n != 0 {
            self.0.store(
                self.0.load(Ordering::Relaxed).wrapping_add(n),
                Ordering::Relaxed,
            );
        }
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

macro_rules! worker_counters {
    ($($(#[doc = $doc:literal])* $name:ident,)*) => {
        /// One worker's counters.
        #[derive(Debug)]
        #[repr(align(128))]
        pub struct WorkerStats {
            $($(#[doc = $doc])* pub $name: Counter,)*
            rx_drops: [Counter; DropReason::COUNT],
            tx_drops: [Counter; TxDrop::ALL.len()],
        }

        impl Default for WorkerStats {
            fn default() -> Self {
                WorkerStats {
                    $($name: Counter::default(),)*
                    rx_drops: std::array::from_fn(|_| Counter::default()),
                    tx_drops: std::array::from_fn(|_| Counter::default()),
                }
            }
        }

        /// A plain copy of one worker's counters, as status and metrics show them.
        #[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        pub struct WorkerCounters {
            $($(#[doc = $doc])* #[serde(default)] pub $name: u64,)*
            /// Frames from the underlay dropped by decapsulation, by reason.
            pub rx_drops: BTreeMap<String, u64>,
            /// Frames from the TAP that did not go out, by reason.
            pub tx_drops: BTreeMap<String, u64>,
        }

        impl WorkerStats {
            /// A plain copy of the counters, for status and metrics.
            pub fn snapshot(&self) -> WorkerCounters {
                WorkerCounters {
                    $($name: self.$name.get(),)*
                    rx_drops: DropReason::ALL
                        .iter()
                        .map(|r| (r.as_str().to_string(), self.rx_drops[r.index()].get()))
                        .collect(),
                    tx_drops: TxDrop::ALL
                        .iter()
                        .map(|r| (r.as_str().to_string(), self.tx_drops[r.index()].get()))
                        .collect(),
                }
            }
        }

        impl WorkerCounters {
            /// Every plain counter's name and help text, in declaration order.
            pub const FIELDS: &'static [(&'static str, &'static str)] =
                &[$((stringify!($name), concat!($($doc),*)),)*];

            /// Every plain counter's name and value, in declaration order.
            pub fn values(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }

            /// Adds `other` into `self` (for totals over workers).
            pub fn accumulate(&mut self, other: &WorkerCounters) {
                $(self.$name += other.$name;)*
                for (k, v) in &other.rx_drops {
                    *self.rx_drops.entry(k.clone()).or_default() += v;
                }
                for (k, v) in &other.tx_drops {
                    *self.tx_drops.entry(k.clone()).or_default() += v;
                }
            }
        }
    };
}

worker_counters! {
    /// VXLAN datagrams received from the underlay (each segment of a GRO buffer counts).
    underlay_rx_frames,
    /// Bytes of those datagrams as received (outer headers included on AF_XDP).
    underlay_rx_bytes,
    /// VXLAN datagrams sent to the underlay (each segment of a GSO send counts).
    underlay_tx_frames,
    /// Bytes of those datagrams as handed over (outer headers included on AF_XDP).
    underlay_tx_bytes,
    /// Frames read from the TAP (a TCP super-frame counts once).
    tap_rx_frames,
    /// Bytes of those frames.
    tap_rx_bytes,
    /// Inner frames delivered to the TAP (each segment of a coalesced super-frame counts).
    tap_tx_frames,
    /// Bytes written to the TAP.
    tap_tx_bytes,
    /// ARP requests answered from the ARP table.
    arp_replies,
    /// Inner checksums a peer left partial, completed before delivery.
    rx_csum_completed,
    /// TCP super-frames read from the TAP (TSO) and cut into segments.
    tso_super_frames,
    /// Segments cut from them.
    tso_segments,
    /// Super-frames of coalesced segments written to the TAP (GRO).
    gro_super_frames,
    /// TCP super-frames that arrived whole from the underlay (a kernel vxlan peer whose
    /// segmentation never ran, as over veth) and went to the TAP as one.
    rx_super_frames,
    /// Inner frames longer than the overlay MTU that are not TCP super-frames (or whose
    /// checksum does not verify), which no TAP write can deliver: dropped.
    rx_oversized,
    /// Writes to the TAP that failed.
    tap_write_errors,
    /// Times the worker blocked in poll because there was nothing to do.
    sleeps,
    /// `sendto` kicks of the AF_XDP TX ring.
    tx_kicks,
    /// Received frames the fill ring could not take back at once (returned on a later round).
    fill_ring_deferred,
    /// `sendmsg` calls that sent a whole TCP super-frame's segments with UDP_SEGMENT (GSO).
    gso_sends,
    /// `sendmmsg` calls (batches of single datagrams).
    sendmmsg_calls,
    /// Receive buffers that held several datagrams coalesced by the kernel (UDP_GRO).
    gro_buffers,
    /// `recvmmsg` calls that returned data.
    recvmmsg_calls,
    /// Datagrams longer than the receive buffer, cut by the kernel and dropped.
    underlay_rx_truncated,
}

impl WorkerStats {
    /// Counts a decapsulation drop.
    #[inline]
    pub fn rx_drop(&self, reason: DropReason) {
        self.rx_drops[reason.index()].add(1);
    }

    /// Counts a frame from the TAP that was not sent.
    #[inline]
    pub fn tx_drop(&self, reason: TxDrop) {
        self.tx_drops[reason.index()].add(1);
    }

    /// Counts `n` frames from the TAP that were not sent.
    #[inline]
    pub fn tx_drops(&self, reason: TxDrop, n: u64) {
        self.tx_drops[reason.index()].add(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_snapshots() {
        let s = WorkerStats::default();
        s.underlay_rx_frames.add(3);
        s.tap_rx_bytes.add(1500);
        s.rx_drop(DropReason::ALL[0]);
        s.tx_drop(TxDrop::NoFdbEntry);
        s.tx_drops(TxDrop::NoFdbEntry, 1);
        let snap = s.snapshot();
        assert_eq!(snap.underlay_rx_frames, 3);
        assert_eq!(snap.tap_rx_bytes, 1500);
        assert_eq!(snap.rx_drops[DropReason::ALL[0].as_str()], 1);
        assert_eq!(snap.tx_drops["no_fdb_entry"], 2);
        assert_eq!(snap.rx_drops.len(), DropReason::COUNT);
        assert_eq!(snap.tx_drops.len(), TxDrop::ALL.len());
        let mut total = WorkerCounters::default();
        total.accumulate(&snap);
        total.accumulate(&snap);
        assert_eq!(total.tx_drops["no_fdb_entry"], 4);
        assert_eq!(total.tap_rx_bytes, 3000);
    }

    #[test]
    fn every_counter_is_listed_once_with_help_and_serialized_under_its_name() {
        let snap = WorkerStats::default().snapshot();
        let json = serde_json::to_value(&snap).unwrap();
        let values = snap.values();
        assert_eq!(values.len(), WorkerCounters::FIELDS.len());
        for ((name, help), (vname, _)) in WorkerCounters::FIELDS.iter().zip(&values) {
            assert_eq!(name, vname);
            assert!(!help.trim().is_empty(), "{name} has no help text");
            assert!(json.get(*name).is_some(), "{name} not serialized");
        }
        let mut names: Vec<_> = WorkerCounters::FIELDS.iter().map(|f| f.0).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), WorkerCounters::FIELDS.len());
    }

    #[test]
    fn tx_drop_indices_are_dense_and_names_unique() {
        for (i, r) in TxDrop::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        let mut names: Vec<_> = TxDrop::ALL.iter().map(|r| r.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), TxDrop::ALL.len());
    }
}
