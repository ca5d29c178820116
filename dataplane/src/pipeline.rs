//! The per-frame work of a worker, in both directions, without knowing which underlay carries
//! the frames: TAP to underlay (classify, answer ARP, finish a partial checksum or hand a TCP
//! super-frame over to be cut, count why a frame did not leave) and underlay to TAP (check the
//! VXLAN header and the sender, complete a peer's partial checksum, coalesce TCP segments,
//! write).
//!
//! Nothing here allocates after [`Pipeline::new`], takes a lock, or makes a system call of its
//! own: the TAP and the underlay are the caller's ([`Tap`], [`Underlay`]), so tests drive the
//! pipeline with in-memory ones.

use std::io::{self, IoSlice};

use packet::arp_responder::{answer_arp_request, ArpAnswer};
use packet::inner_checksum::{complete_partial_checksum, InnerChecksum};
use packet::offload::{
    complete_checksum, Coalescer, Flushed, Push, TcpSegments, VnetHdr, MAX_SEGMENTS, VNET_HDR_LEN,
};
use packet::tunnel::{decapsulate_vxlan, DecapPolicy};
use packet::wire::{
    checksum, ethernet, tcp, EtherType, EthernetFrame, Ipv4Packet, Ipv6Packet, MacAddr, TcpPacket,
};

use crate::stats::{TxDrop, WorkerStats};
use crate::tables::{PeerReader, PeerSnapshot, PeerVtep};
use crate::tap::TapOffloads;
use crate::underlay::{RxDatagram, Underlay};

/// Frames read from the TAP per round, at most, before the receive side gets its turn.
pub const TAP_BATCH: usize = 64;
/// Bytes a TAP read may return with a vnet header: the header and a 64 KB super-frame.
const STAGING_LEN: usize = VNET_HDR_LEN + ethernet::HEADER_LEN + 65_535;
/// The vnet header of a frame that is neither partial nor a super-frame.
const PLAIN_VNET_HDR: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

/// The overlay side: a TAP queue, or a stand-in in tests.
pub trait Tap {
    /// Reads one frame (with its vnet header when the device has one); `WouldBlock` when
    /// the queue is empty.
    fn read(&self, buf: &mut [u8]) -> io::Result<usize>;

    /// Writes one frame gathered from `parts` (vnet header first when the device has one).
    fn write_vectored(&self, parts: &[IoSlice<'_>]) -> io::Result<usize>;
}

/// What the pipeline needs to know about this node.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// What decapsulation accepts.
    pub policy: DecapPolicy,
    /// What the TAP hands over and accepts.
    pub offloads: TapOffloads,
    /// The overlay MTU: inner IP packets longer than this arrive only as super-frames.
    pub mtu: usize,
}

/// One worker's pipeline state: buffers allocated once, and the peer tables' reader.
pub struct Pipeline {
    peers: PeerReader,
    config: PipelineConfig,
    /// Where TAP reads land (a super-frame does not fit anything smaller).
    staging: Box<[u8]>,
    /// Where a super-frame from the underlay is cut when the TAP cannot take it whole.
    scratch: Box<[u8]>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("config", &self.config)
            .finish()
    }
}

impl Pipeline {
    /// A pipeline reading the peer tables through `peers`.
    pub fn new(peers: PeerReader, config: PipelineConfig) -> Pipeline {
        Pipeline {
            peers,
            staging: vec![0u8; STAGING_LEN].into_boxed_slice(),
            scratch: vec![0u8; ethernet::HEADER_LEN + config.mtu.max(1500)].into_boxed_slice(),
            config,
        }
    }

    /// Reads up to [`TAP_BATCH`] frames from the TAP and sends them through `underlay`; returns
    /// how many it read. Reads only while the underlay can take a frame.
    pub fn from_tap<T: Tap, U: Underlay>(
        &mut self,
        tap: &T,
        underlay: &mut U,
        stats: &WorkerStats,
    ) -> usize {
        let Pipeline {
            peers,
            config,
            staging,
            ..
        } = self;
        let snapshot: &PeerSnapshot = peers.load();
        let vnet = config.offloads.vnet_hdr;
        let mut read = 0;
        while read < TAP_BATCH && underlay.can_send(stats) {
            let n = match tap.read(staging) {
                Ok(n) => n,
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        stats.tx_drop(TxDrop::TapReadError);
                    }
                    break;
                }
            };
            read += 1;
            stats.tap_rx_frames.add(1);
            let (hdr, prefix) = if vnet {
                match VnetHdr::parse(&staging[..n]) {
                    Ok(h) => (Some(h), VNET_HDR_LEN),
                    Err(_) => {
                        stats.tx_drop(TxDrop::BadVnetHeader);
                        continue;
                    }
                }
            } else {
                (None, 0)
            };
            stats.tap_rx_bytes.add((n - prefix) as u64);
            let frame = &mut staging[prefix..n];
            let peer = match route(snapshot, frame) {
                Route::Tunnel(peer) => peer,
                Route::Arp => {
                    answer_arp(tap, stats, snapshot, frame, vnet);
                    continue;
                }
                Route::Drop(reason) => {
                    stats.tx_drop(reason);
                    continue;
                }
            };
            match hdr {
                Some(h) if h.is_gso() => match TcpSegments::new(frame, &h) {
                    Ok(segments) => {
                        stats.tso_super_frames.add(1);
                        stats.tso_segments.add(segments.len() as u64);
                        underlay.send_segments(peer, &segments, stats);
                    }
                    Err(_) => stats.tx_drop(TxDrop::BadSuperFrame),
                },
                Some(h) if h.needs_csum() => {
                    let start = usize::from(h.csum_start);
                    let offset = usize::from(h.csum_offset);
                    if complete_checksum(frame, start, offset).is_ok() {
                        underlay.send(peer, frame, stats);
                    } else {
                        stats.tx_drop(TxDrop::BadVnetHeader);
                    }
                }
                _ => underlay.send(peer, frame, stats),
            }
        }
        underlay.flush(stats);
        read
    }

    /// Delivers a batch of received datagrams to the TAP: VXLAN and anti-spoofing checks,
    /// then TCP segments of a flow coalesced into super-frames (when the TAP takes vnet
    /// headers) and everything else written alone, in the order it came.
    pub fn to_tap<T: Tap>(&mut self, tap: &T, batch: &mut [RxDatagram<'_>], stats: &WorkerStats) {
        let Pipeline {
            peers,
            config,
            scratch,
            ..
        } = self;
        let snapshot: &PeerSnapshot = peers.load();
        let vnet = config.offloads.vnet_hdr;
        let max_frame = ethernet::HEADER_LEN + config.mtu;
        let mut out = Written::default();
        let mut gro = Coalescer::new();
        for d in batch.iter_mut() {
            let range = match decapsulate_vxlan(d.data, d.source, &config.policy, |ip| {
                snapshot.is_known_vtep(ip)
            }) {
                Ok(r) => r,
                Err(reason) => {
                    stats.rx_drop(reason);
                    continue;
                }
            };
            let inner: &mut [u8] = &mut d.data[range];
            if inner.len() > max_frame {
                // A whole TCP super-frame: a kernel peer's segmentation never ran (veth).
                out.flush(tap, &mut gro, stats);
                deliver_super_frame(tap, inner, config, scratch, stats, &mut out);
                continue;
            }
            if !vnet {
                out.complete_and_write(tap, inner, false, stats);
                continue;
            }
            if gro.is_pending() && !gro.can_append(inner) {
                out.flush(tap, &mut gro, stats);
            }
            if gro.takes(inner) {
                let inner: &[u8] = inner;
                if gro.push(inner) == Push::NotEligible {
                    // Its TCP checksum is wrong: delivered alone, the kernel drops it.
                    out.write_alone(tap, inner, true, stats);
                }
            } else {
                out.complete_and_write(tap, inner, true, stats);
            }
        }
        out.flush(tap, &mut gro, stats);
        out.count(stats);
    }
}

/// What the receive side wrote to the TAP in one batch.
#[derive(Default)]
struct Written {
    frames: u64,
    bytes: u64,
    super_frames: u64,
    csum_completed: u64,
}

impl Written {
    fn count(&self, stats: &WorkerStats) {
        stats.tap_tx_frames.add(self.frames);
        stats.tap_tx_bytes.add(self.bytes);
        stats.gro_super_frames.add(self.super_frames);
        stats.rx_csum_completed.add(self.csum_completed);
    }

    /// Writes `frame` alone, behind a plain vnet header when the TAP has them.
    fn write_alone<T: Tap>(&mut self, tap: &T, frame: &[u8], vnet: bool, stats: &WorkerStats) {
        let parts = [IoSlice::new(&PLAIN_VNET_HDR), IoSlice::new(frame)];
        let parts = if vnet { &parts[..] } else { &parts[1..] };
        match tap.write_vectored(parts) {
            Ok(_) => {
                self.frames += 1;
                self.bytes += frame.len() as u64;
            }
            Err(_) => stats.tap_write_errors.add(1),
        }
    }

    /// Completes a checksum a peer left partial, then writes the frame alone.
    fn complete_and_write<T: Tap>(
        &mut self,
        tap: &T,
        frame: &mut [u8],
        vnet: bool,
        stats: &WorkerStats,
    ) {
        if complete_partial_checksum(frame) == InnerChecksum::Completed {
            self.csum_completed += 1;
        }
        self.write_alone(tap, frame, vnet, stats);
    }

    /// Writes what the coalescer holds, if anything.
    fn flush<T: Tap>(&mut self, tap: &T, gro: &mut Coalescer<'_>, stats: &WorkerStats) {
        if !gro.is_pending() {
            return;
        }
        let f: Flushed<'_, '_> = gro.flush();
        let mut parts = arrayvec::ArrayVec::<IoSlice<'_>, { MAX_SEGMENTS + 1 }>::new();
        parts.push(IoSlice::new(f.head()));
        for p in f.payloads() {
            parts.push(IoSlice::new(p));
        }
        match tap.write_vectored(&parts) {
            Ok(_) => {
                self.frames += f.segments() as u64;
                self.bytes += (f.len() - VNET_HDR_LEN) as u64;
                if f.segments() > 1 {
                    self.super_frames += 1;
                }
            }
            Err(_) => stats.tap_write_errors.add(1),
        }
    }
}

/// Delivers a TCP super-frame that arrived whole: to a TAP with vnet headers as one GSO frame
/// (the kernel segments it only if it forwards it), otherwise cut here into MTU-sized segments.
/// Anything else longer than the MTU cannot be delivered and is counted as `rx_oversized`.
fn deliver_super_frame<T: Tap>(
    tap: &T,
    frame: &mut [u8],
    config: &PipelineConfig,
    scratch: &mut [u8],
    stats: &WorkerStats,
    out: &mut Written,
) {
    let Some(hdr) = super_frame_header(frame, config.mtu) else {
        stats.rx_oversized.add(1);
        return;
    };
    let Ok(segments) = TcpSegments::new(frame, &hdr) else {
        stats.rx_oversized.add(1);
        return;
    };
    if config.offloads.vnet_hdr {
        let mut h = [0u8; VNET_HDR_LEN];
        hdr.emit(&mut h);
        match tap.write_vectored(&[IoSlice::new(&h), IoSlice::new(frame)]) {
            Ok(_) => {
                stats.rx_super_frames.add(1);
                out.frames += segments.len() as u64;
                out.bytes += frame.len() as u64;
            }
            Err(_) => stats.tap_write_errors.add(1),
        }
        return;
    }
    for i in 0..segments.len() {
        match segments.write(i, scratch) {
            Ok(n) => out.write_alone(tap, &scratch[..n], false, stats),
            Err(_) => stats.rx_oversized.add(1),
        }
    }
    stats.rx_super_frames.add(1);
}

/// The vnet header that describes a TCP super-frame that came whole: segments of `mtu`-sized IP
/// packets, the checksum partial. A finished checksum that verifies is turned back into the
/// partial one the vnet header promises; one that does not verify makes the frame undeliverable
/// (`None`), as does anything but TCP over IPv4 or IPv6.
fn super_frame_header(frame: &mut [u8], mtu: usize) -> Option<VnetHdr> {
    let eth = EthernetFrame::new_checked(&*frame).ok()?;
    let ip = &frame[ethernet::HEADER_LEN..];
    let (ipv6, ip_header_len, pseudo) = match eth.ethertype() {
        EtherType::Ipv4 => {
            let p = Ipv4Packet::new_checked(ip).ok()?;
            if u8::from(p.next_header()) != tcp::PROTOCOL || p.is_fragment() {
                return None;
            }
            let pseudo = checksum::pseudo_header_v4(&p.src_addr(), &p.dst_addr(), tcp::PROTOCOL, 0);
            (false, p.header_len(), pseudo)
        }
        EtherType::Ipv6 => {
            let p = Ipv6Packet::new_checked(ip).ok()?;
            if u8::from(p.next_header()) != tcp::PROTOCOL {
                return None;
            }
            let pseudo = checksum::pseudo_header_v6(&p.src_addr(), &p.dst_addr(), tcp::PROTOCOL, 0);
            (true, packet::wire::ipv6::HEADER_LEN, pseudo)
        }
        _ => return None,
    };
    let tcp_start = ethernet::HEADER_LEN + ip_header_len;
    let tcp_len = u16::try_from(frame.len() - tcp_start).ok()?;
    let partial = checksum::combine(&[pseudo, tcp_len]);
    let (tcp_header_len, is_partial) = {
        let seg = TcpPacket::new_checked(&frame[tcp_start..]).ok()?;
        let is_partial = seg.checksum() == partial;
        if !is_partial && !seg.verify_checksum(pseudo) {
            return None;
        }
        (seg.header_len(), is_partial)
    };
    if !is_partial {
        TcpPacket::new_unchecked(&mut frame[tcp_start..]).set_checksum(partial);
    }
    let headers = ip_header_len + tcp_header_len;
    let mss = mtu.checked_sub(headers).filter(|&m| m > 0)?;
    Some(VnetHdr {
        flags: VnetHdr::F_NEEDS_CSUM,
        gso_type: if ipv6 {
            VnetHdr::GSO_TCPV6
        } else {
            VnetHdr::GSO_TCPV4
        },
        hdr_len: packet::wire::len16(tcp_start + tcp_header_len),
        gso_size: u16::try_from(mss).ok()?,
        csum_start: packet::wire::len16(tcp_start),
        csum_offset: packet::wire::len16(tcp::CHECKSUM_OFFSET),
    })
}

/// Where a frame read from the TAP goes, or why nowhere.
enum Route<'s> {
    /// Encapsulate towards this peer.
    Tunnel(&'s PeerVtep),
    /// ARP, handled locally.
    Arp,
    /// Dropped, for this reason.
    Drop(TxDrop),
}

#[inline]
fn route<'s>(snapshot: &'s PeerSnapshot, frame: &[u8]) -> Route<'s> {
    match classify(frame) {
        Outbound::Arp => Route::Arp,
        Outbound::NotUnicast => Route::Drop(TxDrop::NotUnicast),
        Outbound::Unicast(dst) => match snapshot.fdb(&dst) {
            None => Route::Drop(TxDrop::NoFdbEntry),
            Some(vtep) => Route::Tunnel(vtep),
        },
    }
}

/// Answers an ARP request in `frame` (rewritten in place) through the TAP.
fn answer_arp<T: Tap>(
    tap: &T,
    stats: &WorkerStats,
    snapshot: &PeerSnapshot,
    frame: &mut [u8],
    vnet: bool,
) {
    let n = frame.len();
    match answer_arp_request(frame, n, |ip| snapshot.arp(ip)) {
        ArpAnswer::Reply { len } => {
            let parts = [IoSlice::new(&PLAIN_VNET_HDR), IoSlice::new(&frame[..len])];
            let parts = if vnet { &parts[..] } else { &parts[1..] };
            match tap.write_vectored(parts) {
                Ok(_) => stats.arp_replies.add(1),
                Err(_) => stats.tap_write_errors.add(1),
            }
        }
        ArpAnswer::Unknown => stats.tx_drop(TxDrop::ArpUnknown),
        _ => stats.tx_drop(TxDrop::ArpOther),
    }
}

/// What to do with a frame read from the TAP.
#[derive(Debug, PartialEq, Eq)]
enum Outbound {
    /// ARP: answer requests for peer gateways locally.
    Arp,
    /// Broadcast or multicast that is not ARP: dropped.
    NotUnicast,
    /// Unicast to this MAC: look it up in the FDB.
    Unicast(MacAddr),
}

#[inline]
fn classify(frame: &[u8]) -> Outbound {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return Outbound::NotUnicast;
    };
    if eth.ethertype() == EtherType::Arp {
        return Outbound::Arp;
    }
    let dst = eth.dst_addr();
    if dst.is_multicast() {
        Outbound::NotUnicast
    } else {
        Outbound::Unicast(dst)
    }
}

#[cfg(test)]
mod tests;
