//! TCP segmentation (TSO) in userspace: a super-frame from the TAP cut into MTU-sized segments,
//! each a complete Ethernet frame with correct lengths and checksums.
//!
//! Each segment gets what Linux's `tcp_gso_segment` and `inet_gso_segment` give it
//! (`net/ipv4/tcp_offload.c`, `net/ipv4/af_inet.c`): the headers of the super-frame, the IPv4
//! total length, identification + i and header checksum (or the IPv6 payload length), sequence
//! number + i * MSS, CWR only on the first segment, FIN and PSH only on the last, and a full TCP
//! checksum (or, on request, the partial one a NIC would finish). IPv4 options are copied into
//! every segment, as Linux does.
//!
//! Two ways out: [`TcpSegments::write`] builds a whole segment in a caller's buffer (one copy of
//! the payload, summed while copied), for transmit rings that need each frame in one buffer;
//! [`TcpSegments::write_headers`] builds only its headers and lends the payload as a slice of
//! the super-frame, for a gather send (`sendmsg` with an iovec per header and payload) where the
//! kernel makes the only copy.

use super::{OffloadError, VnetHdr};
use crate::wire::{
    self, checksum, ethernet, ipv4, tcp, EtherType, EthernetFrame, Ipv4Packet, Ipv6Packet,
    TcpFlags, TcpPacket,
};

/// The inner TCP checksum a segment leaves with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentChecksum {
    /// Complete: what any receiver verifies.
    Full,
    /// The pseudo header sum only (`CHECKSUM_PARTIAL`), for a receiver that hands the segment
    /// to its kernel as partial and so never checks it; saves a pass over the payload.
    Partial,
}

/// A TCP super-frame (TSO/GSO) and the segments it is to be cut into.
///
/// Validates the frame once in [`TcpSegments::new`]; [`TcpSegments::write`] and
/// [`TcpSegments::write_headers`] then produce any segment.
#[derive(Debug, Clone)]
pub struct TcpSegments<'a> {
    /// The super-frame, up to the end its IP length gives.
    frame: &'a [u8],
    ipv6: bool,
    tcp_start: usize,
    /// Where the payload starts: the length of the headers copied into every segment.
    payload_start: usize,
    mss: usize,
    count: usize,
    seq: u32,
    ident: u16,
    /// Pseudo header sum without the length (addresses and protocol).
    pseudo: u16,
}

impl<'a> TcpSegments<'a> {
    /// Checks a super-frame against its vnet header.
    ///
    /// `frame` is the Ethernet frame that followed `hdr`, whose `gso_type` must be `GSO_TCPV4`
    /// or `GSO_TCPV6` (with `GSO_ECN` or not) and `gso_size` non-zero. The EtherType must match
    /// the GSO type; the IP length must end exactly where the frame ends; no IPv4 fragment;
    /// IPv6 without extension headers (`Unsupported`); a TCP header that fits; and, when
    /// `F_NEEDS_CSUM` is set, `csum_start`/`csum_offset` must point at the TCP checksum.
    /// `hdr_len` is only checked to lie within the frame: the kernel sets it to the length of
    /// the skb's linear part, not of the headers (`virtio_net_hdr_from_skb`; wireguard-go does
    /// not trust it either).
    ///
    /// A payload of at most `gso_size` bytes gives a single segment (the kernel does not mark
    /// such frames GSO, but a peer could).
    pub fn new(frame: &'a [u8], hdr: &VnetHdr) -> Result<Self, OffloadError> {
        use OffloadError::{Malformed, Truncated, Unsupported};

        let ipv6 = match hdr.gso_type & !VnetHdr::GSO_ECN {
            VnetHdr::GSO_TCPV4 => false,
            VnetHdr::GSO_TCPV6 => true,
            VnetHdr::GSO_NONE => return Err(Malformed("not a GSO frame")),
            VnetHdr::GSO_UDP => return Err(Unsupported("UDP fragmentation offload")),
            _ => return Err(Unsupported("GSO type other than TCP")),
        };
        if hdr.gso_size == 0 {
            return Err(Malformed("gso_size 0"));
        }
        let eth = EthernetFrame::new_checked(frame).map_err(|_| Truncated)?;
        let expected = if ipv6 {
            EtherType::Ipv6
        } else {
            EtherType::Ipv4
        };
        if eth.ethertype() != expected {
            return Err(Malformed("EtherType does not match the GSO type"));
        }
        let ip_start = ethernet::HEADER_LEN;
        let ip = &frame[ip_start..];
        let (ip_header_len, ip_len, pseudo, ident) = if ipv6 {
            if ip.len() < crate::wire::ipv6::HEADER_LEN {
                return Err(Truncated);
            }
            let p = Ipv6Packet::new_unchecked(ip);
            if p.version() != 6 {
                return Err(Malformed("IP version is not 6"));
            }
            if u8::from(p.next_header()) != tcp::PROTOCOL {
                return Err(Unsupported(
                    "IPv6 next header is not TCP (extension headers)",
                ));
            }
            let pseudo = checksum::pseudo_header_v6(&p.src_addr(), &p.dst_addr(), tcp::PROTOCOL, 0);
            let len = crate::wire::ipv6::HEADER_LEN + usize::from(p.payload_len());
            (crate::wire::ipv6::HEADER_LEN, len, pseudo, 0)
        } else {
            if ip.len() < crate::wire::ipv4::HEADER_LEN {
                return Err(Truncated);
            }
            let p = Ipv4Packet::new_unchecked(ip);
            if p.version() != 4 {
                return Err(Malformed("IP version is not 4"));
            }
            let ihl = p.header_len();
            if ihl < crate::wire::ipv4::HEADER_LEN {
                return Err(Malformed("IPv4 header length below 20"));
            }
            if ip.len() < ihl {
                return Err(Truncated);
            }
            let total = usize::from(p.total_len());
            if total < ihl {
                return Err(Malformed("IPv4 total length shorter than its header"));
            }
            // MF or a fragment offset: a super-frame is never a fragment.
            if p.is_fragment() {
                return Err(Malformed("IPv4 fragment"));
            }
            if u8::from(p.next_header()) != tcp::PROTOCOL {
                return Err(Malformed("IPv4 protocol is not TCP"));
            }
            let pseudo = checksum::pseudo_header_v4(&p.src_addr(), &p.dst_addr(), tcp::PROTOCOL, 0);
            (ihl, total, pseudo, p.ident())
        };
        if ip_len > ip.len() {
            return Err(Truncated);
        }
        if ip_len < ip.len() {
            return Err(Malformed("IP length shorter than the frame"));
        }
        let tcp_start = ip_start + ip_header_len;
        let end = frame.len();
        let segment = TcpPacket::new_checked(&frame[tcp_start..]).map_err(|e| match e {
            crate::wire::Error::Malformed(_) => Malformed("TCP data offset below 5"),
            _ => Truncated,
        })?;
        let payload_start = tcp_start + segment.header_len();
        if hdr.needs_csum()
            && (usize::from(hdr.csum_start) != tcp_start
                || usize::from(hdr.csum_offset) != tcp::CHECKSUM_OFFSET)
        {
            return Err(Malformed(
                "csum_start/csum_offset do not point at the TCP checksum",
            ));
        }
        if usize::from(hdr.hdr_len) > end {
            return Err(Malformed("hdr_len past the end of the frame"));
        }
        let payload = end - payload_start;
        if payload == 0 {
            return Err(Malformed("GSO frame without payload"));
        }
        let mss = usize::from(hdr.gso_size);
        Ok(TcpSegments {
            frame,
            ipv6,
            tcp_start,
            payload_start,
            mss,
            count: payload.div_ceil(mss),
            seq: segment.seq_number(),
            ident,
            pseudo,
        })
    }

    /// The number of segments; at least 1.
    #[inline]
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.count
    }

    /// The length of the longest segment (the first): headers plus `gso_size`, or plus the
    /// whole payload when that is shorter. A buffer this long fits any segment.
    #[inline]
    pub fn max_segment_len(&self) -> usize {
        self.payload_start + self.mss.min(self.frame.len() - self.payload_start)
    }

    /// The length of the headers every segment starts with (Ethernet to the TCP options).
    #[inline]
    pub fn headers_len(&self) -> usize {
        self.payload_start
    }

    /// Whether the super-frame is IPv6.
    #[inline]
    pub fn is_ipv6(&self) -> bool {
        self.ipv6
    }

    /// The super-frame itself, headers and all (to hash its flow).
    #[inline]
    pub fn super_frame(&self) -> &'a [u8] {
        self.frame
    }

    /// The payload of segment `i`, a slice of the super-frame; `i < len()`.
    #[inline]
    fn payload(&self, i: usize) -> &'a [u8] {
        let offset = i * self.mss;
        let start = self.payload_start + offset;
        let len = self.mss.min(self.frame.len() - start);
        &self.frame[start..start + len]
    }

    /// Writes segment `i` (a complete Ethernet frame with a full checksum) into the start of
    /// `out` and returns its length. `NoSuchSegment` if `i >= len()`, `BufferTooSmall` if `out`
    /// is shorter than the segment; nothing is written then.
    pub fn write(&self, i: usize, out: &mut [u8]) -> Result<usize, OffloadError> {
        if i >= self.count {
            return Err(OffloadError::NoSuchSegment);
        }
        let payload = self.payload(i);
        let hl = self.payload_start;
        let len = hl + payload.len();
        let out = out.get_mut(..len).ok_or(OffloadError::BufferTooSmall)?;
        let (head, body) = out.split_at_mut(hl);
        let payload_sum = checksum::copy_data(body, payload);
        self.finish_headers(i, head, payload.len(), Some(payload_sum));
        Ok(len)
    }

    /// Writes the headers of segment `i` into the start of `out` and returns their length
    /// ([`TcpSegments::headers_len`]) and the segment's payload, a slice of the super-frame.
    /// Headers followed by that payload are segment `i`. With [`SegmentChecksum::Full`] the
    /// payload is read once to sum it; with `Partial` it is not read at all.
    /// `NoSuchSegment` if `i >= len()`, `BufferTooSmall` if `out` is shorter than the headers.
    pub fn write_headers(
        &self,
        i: usize,
        out: &mut [u8],
        csum: SegmentChecksum,
    ) -> Result<(usize, &'a [u8]), OffloadError> {
        if i >= self.count {
            return Err(OffloadError::NoSuchSegment);
        }
        let payload = self.payload(i);
        let hl = self.payload_start;
        let head = out.get_mut(..hl).ok_or(OffloadError::BufferTooSmall)?;
        let payload_sum = match csum {
            SegmentChecksum::Full => Some(checksum::data(payload)),
            SegmentChecksum::Partial => None,
        };
        self.finish_headers(i, head, payload.len(), payload_sum);
        Ok((hl, payload))
    }

    /// Copies the super-frame's headers into `head` and makes them segment `i`'s: lengths,
    /// ident, sequence number, flags, checksums. `payload_sum` is the sum of the segment's
    /// payload for a full TCP checksum; `None` leaves the partial one.
    #[inline]
    fn finish_headers(
        &self,
        i: usize,
        head: &mut [u8],
        payload_len: usize,
        payload_sum: Option<u16>,
    ) {
        head.copy_from_slice(&self.frame[..self.payload_start]);
        let len = self.payload_start + payload_len;
        let ip = ethernet::HEADER_LEN;
        let t = self.tcp_start;
        // Lengths fit 16 bits: a segment is never longer than the super-frame, whose IP length
        // field held its length.
        let tcp_len = wire::len16(len - t);
        if self.ipv6 {
            Ipv6Packet::new_unchecked(&mut head[ip..t]).set_payload_len(tcp_len);
        } else {
            let mut p = Ipv4Packet::new_unchecked(&mut head[ip..t]);
            p.set_total_len(wire::len16(len - ip));
            p.set_ident(ipv4::ident_add(self.ident, i));
            p.fill_checksum();
        }

        let mut seg = TcpPacket::new_unchecked(&mut head[t..]);
        seg.set_seq_number(tcp::seq_add(self.seq, i * self.mss));
        let mut flags = seg.flags().0;
        if i > 0 {
            flags &= !TcpFlags::CWR;
        }
        if i + 1 < self.count {
            flags &= !(TcpFlags::FIN | TcpFlags::PSH);
        }
        seg.set_flags(TcpFlags(flags));
        let partial = checksum::combine(&[self.pseudo, tcp_len]);
        match payload_sum {
            None => seg.set_checksum(partial),
            Some(payload_sum) => {
                seg.set_checksum(0);
                // The payload starts a multiple of 4 bytes into the TCP header, so its sum adds
                // in word-aligned.
                let sum = checksum::combine(&[partial, checksum::data(seg.as_ref()), payload_sum]);
                seg.set_checksum(!sum);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use testkit::pseudo_random_bytes;

    use super::*;
    use crate::offload::testutil::*;
    use crate::offload::VNET_HDR_LEN;

    /// Segments `frame` and checks every segment against the original: independent checksums,
    /// lengths, ident and sequence progression, flag distribution, and that the payloads
    /// concatenate to the super-frame's.
    fn segment_and_check(frame: &[u8], hdr: &VnetHdr) -> Vec<Vec<u8>> {
        let segs = TcpSegments::new(frame, hdr).unwrap();
        let v6 = frame[12] == 0x86;
        let t = tcp_start(frame);
        let doff = usize::from(frame[t + 12] >> 4) * 4;
        let hl = t + doff;
        let payload = &frame[hl..];
        let mss = usize::from(hdr.gso_size);
        assert_eq!(segs.len(), payload.len().div_ceil(mss));
        assert_eq!(segs.max_segment_len(), hl + mss.min(payload.len()));
        let seq0 = u32::from_be_bytes(frame[t + 4..t + 8].try_into().unwrap());
        let ident0 = u16::from_be_bytes([frame[18], frame[19]]);
        let flags0 = frame[t + 13];

        let mut out = vec![0u8; segs.max_segment_len()];
        let mut joined = Vec::new();
        let mut result = Vec::new();
        for i in 0..segs.len() {
            out.fill(0xee);
            let n = segs.write(i, &mut out).unwrap();
            let s = &out[..n];
            let last = i + 1 == segs.len();
            let want = if last { payload.len() - i * mss } else { mss };
            assert_eq!(n, hl + want, "segment {i} length");
            assert!(tcp_checksum_ok(s), "segment {i} TCP checksum");
            if v6 {
                assert_eq!(usize::from(u16::from_be_bytes([s[18], s[19]])), n - 54);
                assert_eq!(
                    s[..18],
                    frame[..18],
                    "segment {i} headers before the length"
                );
                assert_eq!(s[20..t], frame[20..t]);
            } else {
                assert!(ipv4_checksum_ok(s), "segment {i} IPv4 checksum");
                assert_eq!(usize::from(u16::from_be_bytes([s[16], s[17]])), n - 14);
                assert_eq!(
                    u16::from_be_bytes([s[18], s[19]]),
                    ipv4::ident_add(ident0, i)
                );
                assert_eq!(s[..16], frame[..16]);
                assert_eq!(s[20..24], frame[20..24]);
                assert_eq!(s[26..t], frame[26..t]);
            }
            let seq = u32::from_be_bytes(s[t + 4..t + 8].try_into().unwrap());
            assert_eq!(seq, tcp::seq_add(seq0, i * mss), "segment {i} seq");
            let mut flags = flags0;
            if i > 0 {
                flags &= !CWR;
            }
            if !last {
                flags &= !(FIN | PSH);
            }
            assert_eq!(s[t + 13], flags, "segment {i} flags");
            assert_eq!(s[t..t + 4], frame[t..t + 4]);
            assert_eq!(s[t + 8..t + 13], frame[t + 8..t + 13]);
            assert_eq!(s[t + 14..t + 16], frame[t + 14..t + 16]);
            assert_eq!(
                s[t + 18..hl],
                frame[t + 18..hl],
                "urgent pointer and options"
            );
            joined.extend_from_slice(&s[hl..]);
            result.push(s.to_vec());

            // The gather form is the same segment: headers here, payload lent from the frame.
            let mut head = vec![0xeeu8; hl];
            let (n_head, body) = segs
                .write_headers(i, &mut head, SegmentChecksum::Full)
                .unwrap();
            assert_eq!(n_head, hl);
            assert_eq!([&head[..], body].concat(), s, "segment {i} gathered");
            // Partial: only the TCP checksum differs, and completing it gives the full one.
            let (_, body) = segs
                .write_headers(i, &mut head, SegmentChecksum::Partial)
                .unwrap();
            let mut partial = [&head[..], body].concat();
            assert_eq!(
                partial[..t + 16],
                s[..t + 16],
                "segment {i} partial headers"
            );
            assert_eq!(partial[t + 18..], s[t + 18..]);
            crate::offload::complete_checksum(&mut partial, t, 16).unwrap();
            assert_eq!(partial, s, "segment {i} partial checksum completed");
        }
        assert_eq!(joined, payload);
        assert_eq!(
            segs.write_headers(segs.len(), &mut vec![0; hl], SegmentChecksum::Full)
                .unwrap_err(),
            OffloadError::NoSuchSegment
        );
        assert_eq!(
            segs.write_headers(0, &mut vec![0; hl - 1], SegmentChecksum::Full)
                .unwrap_err(),
            OffloadError::BufferTooSmall
        );
        result
    }

    #[test]
    fn segments_real_kernel_super_frames() {
        for (raw, v6, mss) in [(KERNEL_TSO_V4, false, 1460), (KERNEL_TSO_V6, true, 1440)] {
            let hdr = VnetHdr::parse(raw).unwrap();
            assert_eq!(hdr.flags, VnetHdr::F_NEEDS_CSUM);
            assert_eq!(hdr.gso_size, mss);
            assert_eq!(
                hdr.gso_type,
                if v6 {
                    VnetHdr::GSO_TCPV6
                } else {
                    VnetHdr::GSO_TCPV4
                }
            );
            let frame = &raw[VNET_HDR_LEN..];
            let segs = segment_and_check(frame, &hdr);
            assert_eq!(segs.len(), 5);
            // The kernel's partial checksum covers the whole super-frame: completed as a
            // non-GSO frame, it verifies.
            let mut whole = frame.to_vec();
            crate::offload::complete_checksum(
                &mut whole,
                usize::from(hdr.csum_start),
                usize::from(hdr.csum_offset),
            )
            .unwrap();
            assert!(tcp_checksum_ok(&whole));
        }
    }

    #[test]
    fn segments_v4_super_frame() {
        let o = TcpOpts {
            payload_len: 64000,
            flags: ACK | PSH,
            ..TcpOpts::default()
        };
        let (frame, hdr) = super_frame(&o, false, 1448);
        let segs = segment_and_check(&frame, &hdr);
        assert_eq!(segs.len(), 45);
        assert_eq!(segs[44].len(), 66 + 64000 - 44 * 1448, "last short segment");
        // Each segment is exactly what the sender would have sent without TSO.
        for (i, s) in segs.iter().enumerate() {
            let want = TcpOpts {
                seq: tcp::seq_add(o.seq, i * 1448),
                ident: ipv4::ident_add(o.ident, i),
                payload_len: (64000 - i * 1448).min(1448),
                flags: if i == 44 { ACK | PSH } else { ACK },
                ..o.clone()
            };
            assert_eq!(*s, tcp_v4_segment(&want), "segment {i}");
        }
    }

    #[test]
    fn segments_v6_super_frame() {
        let o = TcpOpts {
            payload_len: 65535 - 40 - 32,
            flags: ACK | PSH | FIN,
            ..TcpOpts::default()
        };
        let (frame, hdr) = super_frame(&o, true, 1428);
        let segs = segment_and_check(&frame, &hdr);
        assert_eq!(segs.len(), (65535 - 72usize).div_ceil(1428));
        for (i, s) in segs.iter().enumerate() {
            let last = i + 1 == segs.len();
            let want = TcpOpts {
                seq: tcp::seq_add(o.seq, i * 1428),
                payload_len: (o.payload_len - i * 1428).min(1428),
                flags: if last { ACK | PSH | FIN } else { ACK },
                ..o.clone()
            };
            assert_eq!(*s, tcp_v6_segment(&want), "segment {i}");
        }
    }

    #[test]
    fn cwr_only_on_first_and_ecn_flag_accepted() {
        let o = TcpOpts {
            payload_len: 5000,
            flags: ACK | CWR | PSH,
            ..TcpOpts::default()
        };
        for v6 in [false, true] {
            let (frame, mut hdr) = super_frame(&o, v6, 1000);
            hdr.gso_type |= VnetHdr::GSO_ECN;
            let segs = segment_and_check(&frame, &hdr);
            let t = tcp_start(&frame);
            let flags: Vec<u8> = segs.iter().map(|s| s[t + 13]).collect();
            assert_eq!(flags, [ACK | CWR, ACK, ACK, ACK, ACK | PSH]);
        }
    }

    #[test]
    fn sequence_and_ident_wrap() {
        let o = TcpOpts {
            seq: u32::MAX - 1000,
            ident: u16::MAX - 1,
            payload_len: 4000,
            ..TcpOpts::default()
        };
        let (frame, hdr) = super_frame(&o, false, 1000);
        let segs = segment_and_check(&frame, &hdr);
        assert_eq!(u16::from_be_bytes([segs[3][18], segs[3][19]]), 1);
    }

    #[test]
    fn exact_multiple_and_single_segment() {
        let o = TcpOpts {
            payload_len: 3 * 1448,
            ..TcpOpts::default()
        };
        let (frame, hdr) = super_frame(&o, false, 1448);
        let segs = segment_and_check(&frame, &hdr);
        assert!(segs.iter().all(|s| s.len() == 66 + 1448));

        // No more payload than one MSS: one segment, the frame with its checksum completed.
        let o = TcpOpts {
            payload_len: 100,
            ..TcpOpts::default()
        };
        let (frame, hdr) = super_frame(&o, true, 1448);
        let segs = segment_and_check(&frame, &hdr);
        assert_eq!(segs, [tcp_v6_segment(&o)]);
    }

    #[test]
    fn ipv4_options_are_copied_into_every_segment() {
        let o = TcpOpts {
            payload_len: 3000,
            ..TcpOpts::default()
        };
        let (plain, mut hdr) = super_frame(&o, false, 1400);
        // Insert 4 option bytes (NOP, NOP, NOP, EOL) after the fixed IPv4 header.
        let mut frame = plain[..34].to_vec();
        frame.extend_from_slice(&[1, 1, 1, 0]);
        frame.extend_from_slice(&plain[34..]);
        frame[14] = 0x46;
        let total = u16::from_be_bytes([frame[16], frame[17]]) + 4;
        frame[16..18].copy_from_slice(&total.to_be_bytes());
        hdr.csum_start += 4;
        hdr.hdr_len += 4;
        let segs = segment_and_check(&frame, &hdr);
        assert!(segs.iter().all(|s| s[34..38] == [1, 1, 1, 0]));
    }

    #[test]
    fn trusts_headers_not_hdr_len() {
        // The kernel reports the skb's linear length, here the whole first segment.
        let o = TcpOpts {
            payload_len: 5000,
            ..TcpOpts::default()
        };
        let (frame, mut hdr) = super_frame(&o, false, 1448);
        for hdr_len in [0, 14, 66 + 1448, wire::len16(frame.len())] {
            hdr.hdr_len = hdr_len;
            segment_and_check(&frame, &hdr);
        }
        hdr.hdr_len = wire::len16(frame.len()) + 1;
        assert!(matches!(
            TcpSegments::new(&frame, &hdr),
            Err(OffloadError::Malformed(_))
        ));
    }

    #[test]
    fn without_needs_csum_offsets_are_not_checked() {
        let o = TcpOpts {
            payload_len: 3000,
            ..TcpOpts::default()
        };
        let (frame, mut hdr) = super_frame(&o, false, 1448);
        hdr.flags = 0;
        hdr.csum_start = 0;
        hdr.csum_offset = 0;
        segment_and_check(&frame, &hdr);
    }

    #[test]
    fn write_checks_index_and_buffer() {
        let o = TcpOpts {
            payload_len: 3000,
            ..TcpOpts::default()
        };
        let (frame, hdr) = super_frame(&o, false, 1448);
        let segs = TcpSegments::new(&frame, &hdr).unwrap();
        let mut out = vec![0u8; segs.max_segment_len()];
        assert_eq!(segs.write(3, &mut out), Err(OffloadError::NoSuchSegment));
        assert_eq!(
            segs.write(usize::MAX, &mut out),
            Err(OffloadError::NoSuchSegment)
        );
        assert_eq!(
            segs.write(0, &mut out[..segs.max_segment_len() - 1]),
            Err(OffloadError::BufferTooSmall)
        );
        // The short last segment fits a buffer too small for the others.
        let last_len = 66 + 3000 - 2 * 1448;
        assert_eq!(segs.write(2, &mut out[..last_len]), Ok(last_len));
    }

    #[test]
    fn rejects_inconsistent_frames() {
        use OffloadError::*;
        let o = TcpOpts {
            payload_len: 3000,
            ..TcpOpts::default()
        };
        let (v4, h4) = super_frame(&o, false, 1448);
        let (v6, h6) = super_frame(&o, true, 1448);
        let check = |frame: &[u8], hdr: &VnetHdr, want: fn(&OffloadError) -> bool, what: &str| {
            let r = TcpSegments::new(frame, hdr);
            assert!(
                r.as_ref().is_err_and(want),
                "{what}: got {:?}",
                r.map(|s| s.len())
            );
        };
        let malformed = |e: &OffloadError| matches!(e, Malformed(_));
        let unsupported = |e: &OffloadError| matches!(e, Unsupported(_));

        let with = |hdr: &VnetHdr, f: fn(&mut VnetHdr)| {
            let mut h = *hdr;
            f(&mut h);
            h
        };
        check(
            &v4,
            &with(&h4, |h| h.gso_type = VnetHdr::GSO_NONE),
            malformed,
            "GSO_NONE",
        );
        check(
            &v4,
            &with(&h4, |h| h.gso_type = VnetHdr::GSO_UDP),
            unsupported,
            "UFO",
        );
        check(&v4, &with(&h4, |h| h.gso_type = 5), unsupported, "USO");
        check(&v4, &with(&h4, |h| h.gso_size = 0), malformed, "gso_size 0");
        check(
            &v4,
            &with(&h4, |h| h.gso_type = VnetHdr::GSO_TCPV6),
            malformed,
            "v4 as v6",
        );
        check(&v6, &h4, malformed, "v6 as v4");
        check(
            &v4,
            &with(&h4, |h| h.csum_start = 30),
            malformed,
            "csum_start",
        );
        check(
            &v4,
            &with(&h4, |h| h.csum_offset = 6),
            malformed,
            "csum_offset",
        );

        let edit = |frame: &[u8], f: &dyn Fn(&mut Vec<u8>)| {
            let mut v = frame.to_vec();
            f(&mut v);
            v
        };
        check(&edit(&v4, &|f| f[14] = 0x65), &h4, malformed, "version");
        check(&edit(&v4, &|f| f[14] = 0x44), &h4, malformed, "IHL 4");
        check(&edit(&v4, &|f| f[20] |= 0x20), &h4, malformed, "MF");
        check(
            &edit(&v4, &|f| f[21] = 1),
            &h4,
            malformed,
            "fragment offset",
        );
        check(
            &edit(&v4, &|f| f[23] = 17),
            &h4,
            malformed,
            "UDP in a TCP GSO frame",
        );
        check(&edit(&v4, &|f| f[46] = 0x40), &h4, malformed, "TCP doff 4");
        check(
            &edit(&v4, &|f| f.push(0)),
            &h4,
            malformed,
            "padding after the IP length",
        );
        check(
            &edit(&v4, &|f| f[16..18].copy_from_slice(&[0, 19])),
            &h4,
            malformed,
            "total < IHL",
        );
        check(
            &edit(&v4, &|f| f.truncate(66)),
            &h4,
            |e| *e == Truncated,
            "cut at headers",
        );
        check(
            &edit(&v6, &|f| f[20] = 0),
            &h6,
            unsupported,
            "hop-by-hop header",
        );
        check(
            &edit(&v6, &|f| f[20] = 44),
            &h6,
            unsupported,
            "fragment header",
        );
        check(&edit(&v6, &|f| f[14] = 0x45), &h6, malformed, "v6 version");
        check(
            &edit(&v6, &|f| f.truncate(86)),
            &h6,
            |e| *e == Truncated,
            "v6 truncated",
        );

        // Headers only: a GSO frame without payload.
        let mut bare = v4[..66].to_vec();
        bare[16..18].copy_from_slice(&52u16.to_be_bytes());
        check(&bare, &h4, malformed, "no payload");
    }

    #[test]
    fn every_truncation_and_random_bytes_never_panic() {
        let o = TcpOpts {
            payload_len: 700,
            ..TcpOpts::default()
        };
        let mut out = vec![0u8; 2000];
        for v6 in [false, true] {
            let (frame, hdr) = super_frame(&o, v6, 256);
            for len in 0..frame.len() {
                assert!(TcpSegments::new(&frame[..len], &hdr).is_err(), "len {len}");
            }
            for seed in 0..3000u64 {
                let mut f = frame.clone();
                // Scribble over the headers; the payload does not matter to parsing.
                let n = pseudo_random_bytes(seed, 8);
                for k in 0..4 {
                    let at = usize::from(n[2 * k]) % 90;
                    f[at] = n[2 * k + 1];
                }
                let mut h = hdr;
                h.gso_size = u16::from(n[0] % 8) * 100;
                if let Ok(segs) = TcpSegments::new(&f, &h) {
                    for i in 0..segs.len() {
                        let len = segs.write(i, &mut out).unwrap();
                        assert!(tcp_checksum_ok(&out[..len]));
                    }
                }
                let garbage = pseudo_random_bytes(seed ^ 0x5555, usize::from(n[1]) * 3);
                let vh = VnetHdr::parse(&pseudo_random_bytes(seed, 10)).unwrap();
                if let Ok(segs) = TcpSegments::new(&garbage, &vh) {
                    let _ = segs.write(0, &mut out);
                }
            }
        }
    }
}
