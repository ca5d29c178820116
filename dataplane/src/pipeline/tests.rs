//! The pipeline driven with an in-memory TAP and underlay: every branch of both directions,
//! checked against independently built frames and testkit's reference checksum.
#![expect(
    clippy::cast_possible_truncation,
    reason = "test frames are built from small, known sizes and sequence numbers"
)]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr};

use packet::offload::{TcpSegments, VnetHdr, VNET_HDR_LEN};
use packet::tunnel::{DecapPolicy, DropReason};
use packet::wire::{MacAddr, Vni};
use testkit::checksum::tcp_sum;
use testkit::packet::{vxlan_header, Tcp};

use super::*;
use crate::stats::WorkerStats;
use crate::tables::{PeerEntry, PeerTables, PeerVtep};
use crate::tap::TapOffloads;
use crate::underlay::{RxDatagram, Underlay};

const LOCAL_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x01]);
const PEER_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x02]);
const POD_MAC: [u8; 6] = [0x0a, 0, 0, 0, 0, 0x09];
const PEER_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const STRANGER_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const PEER_GW: Ipv4Addr = Ipv4Addr::new(10, 5, 2, 0);
const MTU: usize = 1450;

/// A TAP that hands out queued frames and records what is written.
#[derive(Default)]
struct MemTap {
    to_read: RefCell<VecDeque<Vec<u8>>>,
    written: RefCell<Vec<Vec<u8>>>,
}

impl Tap for MemTap {
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(f) = self.to_read.borrow_mut().pop_front() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        buf[..f.len()].copy_from_slice(&f);
        Ok(f.len())
    }

    fn write_vectored(&self, parts: &[IoSlice<'_>]) -> io::Result<usize> {
        let f: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
        let n = f.len();
        self.written.borrow_mut().push(f);
        Ok(n)
    }
}

/// An underlay that records what it is asked to send.
#[derive(Default)]
struct MemUnderlay {
    blocked: bool,
    sent: Vec<(IpAddr, Vec<u8>)>,
    /// (peer, segments) of each super-frame.
    segmented: Vec<(IpAddr, Vec<Vec<u8>>)>,
    flushes: usize,
}

impl Underlay for MemUnderlay {
    fn receive<F>(&mut self, _stats: &WorkerStats, _deliver: F) -> usize
    where
        F: FnMut(&mut [RxDatagram<'_>]),
    {
        0
    }
    fn can_send(&mut self, _stats: &WorkerStats) -> bool {
        !self.blocked
    }
    fn send(&mut self, peer: &PeerVtep, frame: &[u8], _stats: &WorkerStats) {
        self.sent.push((peer.vtep_ip, frame.to_vec()));
    }
    fn send_segments(&mut self, peer: &PeerVtep, segments: &TcpSegments<'_>, _: &WorkerStats) {
        let mut out = Vec::new();
        let mut buf = vec![0u8; segments.max_segment_len()];
        for i in 0..segments.len() {
            let n = segments.write(i, &mut buf).unwrap();
            out.push(buf[..n].to_vec());
        }
        self.segmented.push((peer.vtep_ip, out));
    }
    fn flush(&mut self, _stats: &WorkerStats) {
        self.flushes += 1;
    }
    fn reclaim(&mut self, _stats: &WorkerStats) -> usize {
        0
    }
    fn poll_fd(&self) -> std::os::fd::RawFd {
        -1
    }
    fn has_outstanding(&self) -> bool {
        false
    }
}

fn pipeline(vnet_hdr: bool) -> (Pipeline, PeerTables) {
    let tables = PeerTables::new();
    tables.update(|w| {
        w.upsert(
            "10.5.2.0-24".parse().unwrap(),
            PeerEntry {
                vtep_mac: PEER_MAC,
                vtep_ip: IpAddr::V4(PEER_IP),
                gateway_v4: Some(PEER_GW),
                outer: None,
                v6: None,
            },
        )
    });
    let config = PipelineConfig {
        policy: DecapPolicy {
            local_ip4: Some(Ipv4Addr::new(192, 0, 2, 1)),
            local_ip6: None,
            port: 8472,
            vni: Vni::new(1).unwrap(),
            local_mac: LOCAL_MAC,
            allow_unknown_peers: false,
        },
        offloads: TapOffloads {
            vnet_hdr,
            csum: vnet_hdr,
            tso: vnet_hdr,
        },
        mtu: MTU,
    };
    (Pipeline::new(tables.reader(), config), tables)
}

/// An Ethernet/IPv4/TCP frame from 10.5.1.2:40000 to 10.5.2.3:5201, `payload_len` bytes of
/// payload from stream offset `seq`, with a full checksum (or the partial residue a kernel
/// sender with offload leaves).
fn tcp_frame(
    dst: [u8; 6],
    src: [u8; 6],
    seq: u32,
    payload_len: usize,
    flags: u8,
    partial: bool,
    ident: u16,
) -> Vec<u8> {
    let tcp = Tcp {
        src_mac: src,
        dst_mac: dst,
        src_ip: Ipv4Addr::new(10, 5, 1, 2).into(),
        dst_ip: Ipv4Addr::new(10, 5, 2, 3).into(),
        ident,
        src_port: 40000,
        dst_port: 5201,
        seq,
        ack: 7,
        flags,
        window: 502,
        ..Tcp::default()
    };
    let payload: Vec<u8> = (0..payload_len).map(|i| (seq as usize + i) as u8).collect();
    if partial {
        tcp.partial_frame(&payload)
    } else {
        tcp.frame(&payload)
    }
}

fn tcp_checksum_ok(f: &[u8]) -> bool {
    tcp_sum(f, 34, f.len()) == 0xffff
}

fn with_vnet(hdr: VnetHdr, frame: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; VNET_HDR_LEN];
    hdr.emit(&mut v);
    v.extend_from_slice(frame);
    v
}

fn datagram(inner: &[u8]) -> Vec<u8> {
    [&vxlan_header(0x08, 1)[..], inner].concat()
}

fn deliver(
    p: &mut Pipeline,
    tap: &MemTap,
    stats: &WorkerStats,
    from: Ipv4Addr,
    datagrams: &mut [Vec<u8>],
) {
    let mut batch: Vec<RxDatagram<'_>> = datagrams
        .iter_mut()
        .map(|d| RxDatagram {
            source: IpAddr::V4(from),
            data: &mut d[..],
        })
        .collect();
    p.to_tap(tap, &mut batch, stats);
}

#[test]
fn frames_from_the_tap_go_to_their_peer_or_are_counted_as_dropped() {
    let (mut p, _tables) = pipeline(false);
    let tap = MemTap::default();
    let stats = WorkerStats::default();
    let to_peer = tcp_frame(PEER_MAC.0, POD_MAC, 1, 100, 0x18, false, 1);
    let unknown = tcp_frame([0x02, 0, 0, 0, 0, 0x77], POD_MAC, 1, 100, 0x18, false, 1);
    let multicast = tcp_frame([0x33, 0x33, 0, 0, 0, 1], POD_MAC, 1, 10, 0x18, false, 1);
    for f in [&to_peer, &unknown, &multicast] {
        tap.to_read.borrow_mut().push_back(f.clone());
    }
    let mut u = MemUnderlay::default();
    assert_eq!(p.from_tap(&tap, &mut u, &stats), 3);
    assert_eq!(u.sent, vec![(IpAddr::V4(PEER_IP), to_peer.clone())]);
    assert_eq!(u.flushes, 1, "one flush per round");
    let c = stats.snapshot();
    assert_eq!(c.tap_rx_frames, 3);
    assert_eq!(
        c.tap_rx_bytes,
        (to_peer.len() + unknown.len() + multicast.len()) as u64
    );
    assert_eq!(c.tx_drops["no_fdb_entry"], 1);
    assert_eq!(c.tx_drops["not_unicast"], 1);
}

#[test]
fn nothing_is_read_while_the_underlay_cannot_send() {
    let (mut p, _tables) = pipeline(false);
    let tap = MemTap::default();
    let stats = WorkerStats::default();
    tap.to_read
        .borrow_mut()
        .push_back(tcp_frame(PEER_MAC.0, POD_MAC, 1, 10, 0x18, false, 1));
    let mut u = MemUnderlay {
        blocked: true,
        ..MemUnderlay::default()
    };
    assert_eq!(p.from_tap(&tap, &mut u, &stats), 0);
    assert_eq!(tap.to_read.borrow().len(), 1, "the frame waits in the TAP");
}

#[test]
fn arp_for_a_peer_gateway_is_answered_through_the_tap() {
    let (mut p, _tables) = pipeline(true);
    let tap = MemTap::default();
    let stats = WorkerStats::default();
    // who-has 10.5.2.0 tell 10.5.1.0, from this node's TAP.
    let mut arp = Vec::new();
    arp.extend_from_slice(&[0xff; 6]);
    arp.extend_from_slice(&LOCAL_MAC.0);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&LOCAL_MAC.0);
    arp.extend_from_slice(&[10, 5, 1, 0]);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&PEER_GW.octets());
    tap.to_read
        .borrow_mut()
        .push_back(with_vnet(VnetHdr::default(), &arp));
    let mut u = MemUnderlay::default();
    p.from_tap(&tap, &mut u, &stats);
    let w = tap.written.borrow();
    assert_eq!(w.len(), 1);
    assert_eq!(
        w[0][..VNET_HDR_LEN],
        [0; VNET_HDR_LEN],
        "a plain vnet header first"
    );
    let reply = &w[0][VNET_HDR_LEN..];
    assert_eq!(&reply[0..6], &LOCAL_MAC.0, "to the asker");
    assert_eq!(&reply[20..22], &[0, 2], "an ARP reply");
    assert_eq!(&reply[22..28], &PEER_MAC.0, "the peer's VtepMAC answers");
    assert_eq!(stats.snapshot().arp_replies, 1);
    assert!(u.sent.is_empty());
}

#[test]
fn partial_checksums_are_completed_and_super_frames_handed_over_whole() {
    let (mut p, _tables) = pipeline(true);
    let tap = MemTap::default();
    let stats = WorkerStats::default();
    let partial = tcp_frame(PEER_MAC.0, POD_MAC, 1, 300, 0x18, true, 1);
    let needs = VnetHdr {
        flags: VnetHdr::F_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 16,
        ..VnetHdr::default()
    };
    let mut bad_offsets = needs;
    bad_offsets.csum_start = 2000;
    let big = tcp_frame(PEER_MAC.0, POD_MAC, 1, 4000, 0x18, true, 9);
    let gso = VnetHdr {
        flags: VnetHdr::F_NEEDS_CSUM,
        gso_type: VnetHdr::GSO_TCPV4,
        hdr_len: 54,
        gso_size: 1400,
        csum_start: 34,
        csum_offset: 16,
    };
    let mut not_tcp = gso;
    not_tcp.gso_type = VnetHdr::GSO_TCPV6;
    for f in [
        with_vnet(needs, &partial),
        with_vnet(bad_offsets, &partial),
        with_vnet(gso, &big),
        with_vnet(not_tcp, &big),
        vec![0u8; 4], // shorter than a vnet header
    ] {
        tap.to_read.borrow_mut().push_back(f);
    }
    let mut u = MemUnderlay::default();
    assert_eq!(p.from_tap(&tap, &mut u, &stats), 5);
    assert_eq!(u.sent.len(), 1);
    assert!(tcp_checksum_ok(&u.sent[0].1), "completed before it left");
    assert_eq!(u.segmented.len(), 1);
    let segs = &u.segmented[0].1;
    assert_eq!(segs.len(), 3, "4000 bytes in 1400-byte segments");
    assert!(segs.iter().all(|s| tcp_checksum_ok(s)));
    let c = stats.snapshot();
    assert_eq!((c.tso_super_frames, c.tso_segments), (1, 3));
    assert_eq!(
        c.tx_drops["bad_vnet_header"], 2,
        "offsets outside, header too short"
    );
    assert_eq!(c.tx_drops["bad_super_frame"], 1);
    assert_eq!(
        c.tx_drops["encap_failed"], 0,
        "a bad vnet header is not an encap failure"
    );
}

#[test]
fn received_segments_of_a_flow_become_one_super_frame() {
    let (mut p, _tables) = pipeline(true);
    let tap = MemTap::default();
    let stats = WorkerStats::default();
    let mss = 1398;
    let mut datagrams: Vec<Vec<u8>> = (0..4u32)
        .map(|i| {
            let flags = if i == 3 { 0x18 } else { 0x10 };
            datagram(&tcp_frame(
                LOCAL_MAC.0,
                PEER_MAC.0,
                1 + i * mss as u32,
                mss,
                flags,
                false,
                i as u16,
            ))
        })
        .collect();
    deliver(&mut p, &tap, &stats, PEER_IP, &mut datagrams);
    let w = tap.written.borrow();
    assert_eq!(w.len(), 1, "one write");
    let hdr = VnetHdr::parse(&w[0]).unwrap();
    assert_eq!(hdr.gso_type, VnetHdr::GSO_TCPV4);
    assert_eq!(usize::from(hdr.gso_size), mss);
    let frame = &w[0][VNET_HDR_LEN..];
    assert_eq!(frame.len(), 54 + 4 * mss);
    assert_eq!(frame[47] & 0x08, 0x08, "the last segment's PSH");
    let c = stats.snapshot();
    assert_eq!((c.tap_tx_frames, c.gro_super_frames), (4, 1));
    assert_eq!(c.tap_tx_bytes, frame.len() as u64);
}

#[test]
fn spoofed_wrong_vni_and_foreign_frames_are_dropped_by_reason() {
    let (mut p, _tables) = pipeline(true);
    let tap = MemTap::default();
    let stats = WorkerStats::default();
    let inner = tcp_frame(LOCAL_MAC.0, PEER_MAC.0, 1, 10, 0x18, false, 1);
    let mut from_stranger = vec![datagram(&inner)];
    deliver(&mut p, &tap, &stats, STRANGER_IP, &mut from_stranger);
    let mut others = vec![
        [&vxlan_header(0x08, 2)[..], &inner].concat(),
        [&vxlan_header(0x00, 1)[..], &inner].concat(),
        datagram(&tcp_frame(
            [0x02, 9, 9, 9, 9, 9],
            PEER_MAC.0,
            1,
            10,
            0x18,
            false,
            1,
        )),
        vec![0x08, 0, 0],
    ];
    deliver(&mut p, &tap, &stats, PEER_IP, &mut others);
    assert!(tap.written.borrow().is_empty());
    let c = stats.snapshot();
    for reason in [
        DropReason::UnknownPeer,
        DropReason::WrongVni,
        DropReason::VxlanNoIFlag,
        DropReason::InnerNotForUs,
        DropReason::VxlanTruncated,
    ] {
        assert_eq!(c.rx_drops[reason.as_str()], 1, "{reason}");
    }
}

#[test]
fn a_partial_checksum_on_a_frame_delivered_alone_is_completed() {
    // Without vnet headers nothing is coalesced: the kernel would verify the bytes.
    let (mut p, _tables) = pipeline(false);
    let tap = MemTap::default();
    let stats = WorkerStats::default();
    let mut d = vec![datagram(&tcp_frame(
        LOCAL_MAC.0,
        PEER_MAC.0,
        1,
        200,
        0x18,
        true,
        1,
    ))];
    deliver(&mut p, &tap, &stats, PEER_IP, &mut d);
    let w = tap.written.borrow();
    assert_eq!(w.len(), 1);
    assert!(tcp_checksum_ok(&w[0]));
    assert_eq!(stats.snapshot().rx_csum_completed, 1);
}

#[test]
fn a_super_frame_that_arrives_whole_is_written_as_one_gso_frame() {
    // A kernel vxlan peer over veth: its TSO super-frame was never cut.
    let (mut p, _tables) = pipeline(true);
    let tap = MemTap::default();
    let stats = WorkerStats::default();
    let big = tcp_frame(LOCAL_MAC.0, PEER_MAC.0, 1, 20_000, 0x18, true, 1);
    let mut not_tcp = big.clone();
    not_tcp[23] = 17; // protocol UDP
    let mut d = vec![datagram(&big), datagram(&not_tcp)];
    deliver(&mut p, &tap, &stats, PEER_IP, &mut d);
    let w = tap.written.borrow();
    assert_eq!(w.len(), 1);
    let hdr = VnetHdr::parse(&w[0]).unwrap();
    assert_eq!(hdr.gso_type, VnetHdr::GSO_TCPV4);
    assert_eq!(
        usize::from(hdr.gso_size),
        MTU - 40,
        "segments of the overlay MTU"
    );
    assert_eq!((hdr.csum_start, hdr.csum_offset), (34, 16));
    assert_eq!(&w[0][VNET_HDR_LEN..], &big[..]);
    let c = stats.snapshot();
    assert_eq!(c.rx_super_frames, 1);
    assert_eq!(c.rx_oversized, 1);

    // Without vnet headers it is cut here instead.
    let (mut p, _tables) = pipeline(false);
    let tap = MemTap::default();
    let mut d = vec![datagram(&big)];
    deliver(&mut p, &tap, &stats, PEER_IP, &mut d);
    let w = tap.written.borrow();
    assert_eq!(w.len(), 20_000usize.div_ceil(MTU - 40));
    assert!(w.iter().all(|s| s.len() <= 14 + MTU && tcp_checksum_ok(s)));
}

#[test]
fn a_lone_segment_with_a_partial_checksum_reaches_the_tap_checksummable() {
    // A kernel vxlan peer over veth leaves the inner TCP checksum partial; a segment without
    // PSH that starts a super-frame no other segment joins is flushed alone. The kernel must
    // get it either completed or marked partial, or it drops it (TcpInCsumErrors), and so
    // every retransmission of it.
    let (mut p, _tables) = pipeline(true);
    let tap = MemTap::default();
    let stats = WorkerStats::default();
    let mut d = vec![datagram(&tcp_frame(
        LOCAL_MAC.0,
        PEER_MAC.0,
        1,
        1398,
        0x10,
        true,
        1,
    ))];
    deliver(&mut p, &tap, &stats, PEER_IP, &mut d);
    let w = tap.written.borrow();
    assert_eq!(w.len(), 1);
    let hdr = VnetHdr::parse(&w[0]).unwrap();
    let frame = &w[0][VNET_HDR_LEN..];
    let marked_partial = hdr.needs_csum() && (hdr.csum_start, hdr.csum_offset) == (34, 16);
    assert!(
        marked_partial || tcp_checksum_ok(frame),
        "a partial checksum reached the TAP unmarked: {hdr:?}"
    );
    assert_eq!(
        hdr.gso_type,
        VnetHdr::GSO_NONE,
        "one segment is not a super-frame"
    );
}
