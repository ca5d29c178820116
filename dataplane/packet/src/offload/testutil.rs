//! Test frames and an independent checksum for the offload tests.
//!
//! Frames are built by the test kit (`testkit::packet::Tcp`) and checksums verified with its
//! byte-at-a-time RFC 1071 sum (`testkit::checksum`): neither shares code with `wire`.

use std::net::{Ipv4Addr, Ipv6Addr};

use testkit::checksum::{fix_tcp_checksum, ones_complement_sum, tcp_sum};
use testkit::packet::{fix_ipv4_checksum, Tcp};

use super::VnetHdr;
use crate::wire::MacAddr;

pub(crate) const ACK: u8 = 0x10;
pub(crate) const PSH: u8 = 0x08;
pub(crate) const FIN: u8 = 0x01;
pub(crate) const CWR: u8 = 0x80;

/// Super-frames as a real kernel (Linux 6.18.44, x86-64) hands them to the reader of a TAP with
/// `IFF_VNET_HDR` and TSO on: vnet header + frame, captured by `tests/offload_tap.rs` with
/// `VXDP_OFFLOAD_CAPTURE` set. IPv4: 5 segments of 1460 (hdr_len 54, csum_start 34); IPv6:
/// flow label set, 5 segments of 1440 (hdr_len 74, csum_start 54); both with PSH.
pub(crate) const KERNEL_TSO_V4: &[u8] = include_bytes!("testdata/tso-v4.bin");
pub(crate) const KERNEL_TSO_V6: &[u8] = include_bytes!("testdata/tso-v6.bin");

/// Byte `p` of the test TCP stream: each sequence number has its own byte, so misplaced payload
/// shows.
pub(crate) fn stream_byte(p: u32) -> u8 {
    (p.wrapping_mul(31).wrapping_add(7) ^ (p >> 8) ^ (p >> 16)).to_le_bytes()[0]
}

/// The stream bytes from sequence number `seq` on.
pub(crate) fn stream(seq: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| stream_byte(crate::wire::tcp::seq_add(seq, i)))
        .collect()
}

/// What a test segment holds. `Default` is a plain ACK of 1448 bytes of a 10.1.1.2 -> 10.1.2.3
/// (fd01::2 -> fd02::3) flow with timestamps, DF set and ident 0x1000.
#[derive(Debug, Clone)]
pub(crate) struct TcpOpts {
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    pub src4: Ipv4Addr,
    pub dst4: Ipv4Addr,
    pub src6: Ipv6Addr,
    pub dst6: Ipv6Addr,
    pub tos: u8,
    pub ttl: u8,
    pub ident: u16,
    pub df: bool,
    pub flow_label: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub urgent: u16,
    /// TCP options, a multiple of 4 bytes.
    pub options: Vec<u8>,
    pub payload_len: usize,
}

impl Default for TcpOpts {
    fn default() -> Self {
        TcpOpts {
            src_mac: MacAddr([0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44]),
            dst_mac: MacAddr([0x9a, 0x3b, 0x5c, 0x7d, 0x1e, 0x02]),
            src4: Ipv4Addr::new(10, 1, 1, 2),
            dst4: Ipv4Addr::new(10, 1, 2, 3),
            src6: "fd01::2".parse().unwrap(),
            dst6: "fd02::3".parse().unwrap(),
            tos: 0,
            ttl: 64,
            ident: 0x1000,
            df: true,
            flow_label: 0x12345,
            src_port: 40000,
            dst_port: 5201,
            seq: 0xfff0_0000,
            ack: 0x1234_5678,
            flags: ACK,
            window: 502,
            urgent: 0,
            // NOP, NOP, timestamps: what Linux puts on every data segment.
            options: vec![1, 1, 8, 10, 0, 1, 0x86, 0xa0, 0x7d, 0x6b, 0x20, 0xa2],
            payload_len: 1448,
        }
    }
}

impl TcpOpts {
    /// The next segment of the stream: sequence number advanced by this payload, ident + 1.
    pub fn next(&self) -> TcpOpts {
        TcpOpts {
            seq: crate::wire::tcp::seq_add(self.seq, self.payload_len),
            ident: self.ident.wrapping_add(1),
            ..self.clone()
        }
    }
}

/// The test kit's frame builder for `o`, over IPv6 or IPv4.
fn builder(o: &TcpOpts, v6: bool) -> Tcp {
    let (src_ip, dst_ip) = if v6 {
        (o.src6.into(), o.dst6.into())
    } else {
        (o.src4.into(), o.dst4.into())
    };
    Tcp {
        src_mac: o.src_mac.0,
        dst_mac: o.dst_mac.0,
        src_ip,
        dst_ip,
        tos: o.tos,
        ttl: o.ttl,
        ident: o.ident,
        dont_fragment: o.df,
        flow_label: o.flow_label,
        src_port: o.src_port,
        dst_port: o.dst_port,
        seq: o.seq,
        ack: o.ack,
        flags: o.flags,
        window: o.window,
        urgent: o.urgent,
        options: o.options.clone(),
    }
}

/// The frame of `o` carrying `payload`, with a full TCP checksum or (`partial`) the pseudo
/// header sum a kernel sender with checksum offload leaves.
fn assemble(o: &TcpOpts, v6: bool, payload: &[u8], partial: bool) -> Vec<u8> {
    let tcp = builder(o, v6);
    if partial {
        tcp.partial_frame(payload)
    } else {
        tcp.frame(payload)
    }
}

/// A complete Ethernet/IPv4/TCP segment with correct checksums; the payload is the stream from
/// `o.seq`.
pub(crate) fn tcp_v4_segment(o: &TcpOpts) -> Vec<u8> {
    assemble(o, false, &stream(o.seq, o.payload_len), false)
}

/// A complete Ethernet/IPv6/TCP segment with a correct checksum.
pub(crate) fn tcp_v6_segment(o: &TcpOpts) -> Vec<u8> {
    assemble(o, true, &stream(o.seq, o.payload_len), false)
}

/// A super-frame as tun hands it over with TSO: `o.payload_len` bytes of stream in one frame,
/// the TCP checksum field holding the pseudo header sum, and its vnet header (hdr_len = the
/// headers, as for a locally generated skb).
pub(crate) fn super_frame(o: &TcpOpts, v6: bool, mss: u16) -> (Vec<u8>, VnetHdr) {
    let frame = assemble(o, v6, &stream(o.seq, o.payload_len), true);
    let tcp_start = if v6 { 54 } else { 34 };
    let hdr = VnetHdr {
        flags: VnetHdr::F_NEEDS_CSUM,
        gso_type: if v6 {
            VnetHdr::GSO_TCPV6
        } else {
            VnetHdr::GSO_TCPV4
        },
        hdr_len: crate::wire::len16(tcp_start + 20 + o.options.len()),
        gso_size: mss,
        csum_start: crate::wire::len16(tcp_start),
        csum_offset: 16,
    };
    (frame, hdr)
}

/// Where the TCP header of an Ethernet/IPv4-or-IPv6/TCP frame starts, read without the code
/// under test.
pub(crate) fn tcp_start(frame: &[u8]) -> usize {
    match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 => 14 + usize::from(frame[14] & 0x0f) * 4,
        0x86dd => 54,
        t => panic!("not IP: {t:#06x}"),
    }
}

/// Where the IP packet of an Ethernet/IPv4-or-IPv6 frame ends, by its length field.
fn ip_end(frame: &[u8]) -> usize {
    if frame[12] == 0x08 {
        14 + usize::from(u16::from_be_bytes([frame[16], frame[17]]))
    } else {
        54 + usize::from(u16::from_be_bytes([frame[18], frame[19]]))
    }
}

/// Whether the frame's TCP checksum verifies (independently of `wire::checksum`). The IP
/// length fields decide where the segment ends.
pub(crate) fn tcp_checksum_ok(frame: &[u8]) -> bool {
    tcp_sum(frame, tcp_start(frame), ip_end(frame)) == 0xffff
}

/// Whether an IPv4 frame's header checksum verifies.
pub(crate) fn ipv4_checksum_ok(frame: &[u8]) -> bool {
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    ones_complement_sum(&[&frame[14..14 + ihl]]) == 0xffff
}

/// Fixes the IPv4 header checksum (if IPv4) and the TCP checksum of a hand-edited frame.
pub(crate) fn refresh_checksums(frame: &mut [u8]) {
    if frame[12] == 0x08 {
        fix_ipv4_checksum(frame);
    }
    let (t, end) = (tcp_start(frame), ip_end(frame));
    fix_tcp_checksum(frame, t, end);
}
