//! Per-worker counters: written by one worker thread, read by anyone.
//!
//! Each counter has a single writer, so an increment is a relaxed load and store (no locked
//! read-modify-write), and each worker's block sits on its own cache lines so workers never
//! contend. Readers see values that are at most one batch old.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use packet::tunnel::DropReason;

/// Why a frame read from the TAP did not go out on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TxDrop {
    /// Destination MAC is not a known peer's VtepMAC.
    NoFdbEntry,
    /// The peer is known but its underlay next hop is not resolved yet.
    NextHopUnresolved,
    /// Broadcast or multicast other than ARP (flannel's VXLAN does not flood).
    NotUnicast,
    /// An ARP request for an address no peer owns.
    ArpUnknown,
    /// ARP that is not a request we answer (replies, gratuitous ARP, malformed).
    ArpOther,
    /// The frame could not be encapsulated (too short or too long).
    EncapFailed,
    /// Reading the TAP failed with an error other than "empty".
    TapReadError,
    /// The AF_XDP TX ring stayed full (the NIC is slower than the TAP).
    TxRingFull,
}

impl TxDrop {
    /// Every reason, in index order.
    pub const ALL: [TxDrop; 8] = [
        TxDrop::NoFdbEntry,
        TxDrop::NextHopUnresolved,
        TxDrop::NotUnicast,
        TxDrop::ArpUnknown,
        TxDrop::ArpOther,
        TxDrop::EncapFailed,
        TxDrop::TapReadError,
        TxDrop::TxRingFull,
    ];

    /// Stable snake_case name (metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            TxDrop::NoFdbEntry => "no_fdb_entry",
            TxDrop::NextHopUnresolved => "next_hop_unresolved",
            TxDrop::NotUnicast => "not_unicast",
            TxDrop::ArpUnknown => "arp_unknown",
            TxDrop::ArpOther => "arp_other",
            TxDrop::EncapFailed => "encap_failed",
            TxDrop::TapReadError => "tap_read_error",
            TxDrop::TxRingFull => "tx_ring_full",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
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

/// One worker's counters.
#[derive(Debug)]
#[repr(align(128))]
pub struct WorkerStats {
    /// VXLAN frames taken from the AF_XDP RX ring.
    pub nic_rx_frames: Counter,
    /// Bytes of those frames.
    pub nic_rx_bytes: Counter,
    /// Encapsulated frames put on the AF_XDP TX ring.
    pub nic_tx_frames: Counter,
    /// Bytes of those frames.
    pub nic_tx_bytes: Counter,
    /// Frames read from the TAP.
    pub tap_rx_frames: Counter,
    /// Inner frames written to the TAP.
    pub tap_tx_frames: Counter,
    /// Bytes of those frames.
    pub tap_tx_bytes: Counter,
    /// ARP requests answered from the ARP table.
    pub arp_replies: Counter,
    /// Inner checksums a peer left partial, completed before delivery.
    pub rx_csum_completed: Counter,
    /// TCP super-frames read from the TAP (TSO) and cut into segments.
    pub tso_super_frames: Counter,
    /// Segments cut from them.
    pub tso_segments: Counter,
    /// Super-frames of coalesced segments written to the TAP (GRO).
    pub gro_super_frames: Counter,
    /// Writes to the TAP that failed.
    pub tap_write_errors: Counter,
    /// `sendto` kicks of the TX ring.
    pub tx_kicks: Counter,
    /// Times the worker blocked in poll because there was nothing to do.
    pub sleeps: Counter,
    /// Received frames the fill ring could not take back at once (returned on a later round).
    pub fill_ring_deferred: Counter,
    rx_drops: [Counter; DropReason::COUNT],
    tx_drops: [Counter; TxDrop::ALL.len()],
}

impl Default for WorkerStats {
    fn default() -> Self {
        WorkerStats {
            nic_rx_frames: Counter::default(),
            nic_rx_bytes: Counter::default(),
            nic_tx_frames: Counter::default(),
            nic_tx_bytes: Counter::default(),
            tap_rx_frames: Counter::default(),
            tap_tx_frames: Counter::default(),
            tap_tx_bytes: Counter::default(),
            arp_replies: Counter::default(),
            rx_csum_completed: Counter::default(),
            tso_super_frames: Counter::default(),
            tso_segments: Counter::default(),
            gro_super_frames: Counter::default(),
            tap_write_errors: Counter::default(),
            tx_kicks: Counter::default(),
            sleeps: Counter::default(),
            fill_ring_deferred: Counter::default(),
            rx_drops: std::array::from_fn(|_| Counter::default()),
            tx_drops: std::array::from_fn(|_| Counter::default()),
        }
    }
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

    /// A plain copy of the counters, for status and metrics.
    pub fn snapshot(&self) -> WorkerCounters {
        WorkerCounters {
            nic_rx_frames: self.nic_rx_frames.get(),
            nic_rx_bytes: self.nic_rx_bytes.get(),
            nic_tx_frames: self.nic_tx_frames.get(),
            nic_tx_bytes: self.nic_tx_bytes.get(),
            tap_rx_frames: self.tap_rx_frames.get(),
            tap_tx_frames: self.tap_tx_frames.get(),
            tap_tx_bytes: self.tap_tx_bytes.get(),
            arp_replies: self.arp_replies.get(),
            rx_csum_completed: self.rx_csum_completed.get(),
            tso_super_frames: self.tso_super_frames.get(),
            tso_segments: self.tso_segments.get(),
            gro_super_frames: self.gro_super_frames.get(),
            tap_write_errors: self.tap_write_errors.get(),
            tx_kicks: self.tx_kicks.get(),
            sleeps: self.sleeps.get(),
            fill_ring_deferred: self.fill_ring_deferred.get(),
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

/// A plain copy of one worker's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkerCounters {
    /// VXLAN frames taken from the AF_XDP RX ring.
    pub nic_rx_frames: u64,
    /// Bytes of those frames.
    pub nic_rx_bytes: u64,
    /// Encapsulated frames put on the AF_XDP TX ring.
    pub nic_tx_frames: u64,
    /// Bytes of those frames.
    pub nic_tx_bytes: u64,
    /// Frames read from the TAP.
    pub tap_rx_frames: u64,
    /// Inner frames written to the TAP.
    pub tap_tx_frames: u64,
    /// Bytes of those frames.
    pub tap_tx_bytes: u64,
    /// ARP requests answered.
    pub arp_replies: u64,
    /// Inner checksums completed.
    pub rx_csum_completed: u64,
    /// TSO super-frames read from the TAP.
    pub tso_super_frames: u64,
    /// Segments cut from them.
    pub tso_segments: u64,
    /// GRO super-frames written to the TAP.
    pub gro_super_frames: u64,
    /// Failed TAP writes.
    pub tap_write_errors: u64,
    /// TX ring kicks.
    pub tx_kicks: u64,
    /// Times the worker slept in poll.
    pub sleeps: u64,
    /// Received frames returned to the fill ring a round late.
    #[serde(default)]
    pub fill_ring_deferred: u64,
    /// Decapsulation drops by reason.
    pub rx_drops: BTreeMap<String, u64>,
    /// Encapsulation-side drops by reason.
    pub tx_drops: BTreeMap<String, u64>,
}

impl WorkerCounters {
    /// Adds `other` into `self` (for totals over workers).
    pub fn accumulate(&mut self, other: &WorkerCounters) {
        self.nic_rx_frames += other.nic_rx_frames;
        self.nic_rx_bytes += other.nic_rx_bytes;
        self.nic_tx_frames += other.nic_tx_frames;
        self.nic_tx_bytes += other.nic_tx_bytes;
        self.tap_rx_frames += other.tap_rx_frames;
        self.tap_tx_frames += other.tap_tx_frames;
        self.tap_tx_bytes += other.tap_tx_bytes;
        self.arp_replies += other.arp_replies;
        self.rx_csum_completed += other.rx_csum_completed;
        self.tso_super_frames += other.tso_super_frames;
        self.tso_segments += other.tso_segments;
        self.gro_super_frames += other.gro_super_frames;
        self.tap_write_errors += other.tap_write_errors;
        self.tx_kicks += other.tx_kicks;
        self.sleeps += other.sleeps;
        self.fill_ring_deferred += other.fill_ring_deferred;
        for (k, v) in &other.rx_drops {
            *self.rx_drops.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.tx_drops {
            *self.tx_drops.entry(k.clone()).or_default() += v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_snapshots() {
        let s = WorkerStats::default();
        s.nic_rx_frames.add(3);
        s.rx_drop(DropReason::ALL[0]);
        s.tx_drop(TxDrop::NoFdbEntry);
        s.tx_drop(TxDrop::NoFdbEntry);
        let snap = s.snapshot();
        assert_eq!(snap.nic_rx_frames, 3);
        assert_eq!(snap.rx_drops[DropReason::ALL[0].as_str()], 1);
        assert_eq!(snap.tx_drops["no_fdb_entry"], 2);
        assert_eq!(snap.rx_drops.len(), DropReason::COUNT);
        let mut total = WorkerCounters::default();
        total.accumulate(&snap);
        total.accumulate(&snap);
        assert_eq!(total.tx_drops["no_fdb_entry"], 4);
    }

    #[test]
    fn tx_drop_indices_are_dense() {
        for (i, r) in TxDrop::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}
