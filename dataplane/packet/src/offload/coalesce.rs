//! Receive coalescing (GRO) in userspace: consecutive TCP segments of one flow, decapsulated from
//! the underlay, merged into one super-frame for a single TAP write.
//!
//! Nothing is copied but headers: the coalescer keeps the first segment's headers and borrows
//! every segment's payload where it was received, and [`Flushed`] hands the pieces to a gather
//! write (`writev`), so the kernel makes the only copy. The received buffers must therefore
//! outlive the coalescer (`'f`), which a receive batch gives: flush before its frames are
//! reused.
//!
//! The rules are Linux's (`tcp_gro_receive` in `net/ipv4/tcp_offload.c`, `inet_gro_flush` and
//! `ipv6_gro_flush` in `include/net/gro.h`, `dev_gro_receive` in `net/core/gro.c`), as
//! wireguard-go applies them on TUN (`tun/offload_linux.go`), with the eligibility of
//! wireguard-go (only ACK, or ACK with PSH). A segment extends the pending super-frame when:
//!
//! - the Ethernet header is identical (Linux compares the MAC header before any other);
//! - IPv4: same addresses, TOS, TTL and DF; identification = first + number of segments merged
//!   (incrementing), or, decided on the second segment as Linux does, DF set and the same
//!   identification as the first (a fixed-ID flow); no options, no fragment bits;
//! - IPv6: same addresses, traffic class, flow label and hop limit; TCP directly after the fixed
//!   header (no extension headers);
//! - TCP: same ports, acknowledgment number, data offset, reserved bits, window and option bytes
//!   (Linux compares the whole flags/window word but CWR, FIN and PSH, and every option word);
//!   same urgent pointer too, which Linux does not compare (it means nothing without URG), so
//!   that cutting the super-frame again gives back exactly the segments that went in; its
//!   sequence number is the next one expected;
//! - the pending super-frame is still open: no segment so far had PSH (PSH must be on the last
//!   segment) or a payload shorter than the first's (all segments but the last are `gso_size`
//!   long, and a segment longer than `gso_size` cannot follow);
//! - the IP packet stays within 65535 bytes (Linux's `gro_max_size` default);
//! - its TCP checksum verifies: the super-frame goes to the kernel with a partial checksum the
//!   kernel will trust, so a corrupt segment must not be merged (Linux verifies in
//!   `tcp4_gro_receive`/`tcp6_gro_receive`). A segment whose checksum field holds exactly the
//!   partial residue (the pseudo header sum a kernel sender with checksum offload leaves on a
//!   virtual NIC, see `inner_checksum`) was never finished, so there is nothing to verify: it
//!   is merged as partial, which is what the super-frame is anyway.
//!
//! The IPv4 header checksum is verified too (`inet_gro_receive`), since it is recomputed on
//! flush. A fixed-ID flow comes out of the kernel's segmentation with incrementing IDs, because
//! the vnet header cannot carry `SKB_GSO_TCP_FIXEDID`; for DF datagrams the ID has no meaning
//! (RFC 6864 section 4.1), so that is harmless.

use core::fmt;

use super::{VnetHdr, VNET_HDR_LEN};
use crate::wire::{
    self, checksum, ethernet, ipv4, ipv6, tcp, EtherType, EthernetFrame, Ipv4Packet, Ipv6Packet,
    TcpFlags, TcpPacket,
};

/// Largest IP packet (header included) a super-frame may hold: Linux's default `gro_max_size`
/// is 65536, and the IPv4 total length field stops at 65535.
const MAX_IP_LEN: usize = 65535;

/// The largest super-frame a [`Coalescer`] flushes: a vnet header and an IP packet of
/// [`MAX_IP_LEN`] bytes behind an Ethernet header.
pub const COALESCE_BUF_LEN: usize = VNET_HDR_LEN + ethernet::HEADER_LEN + MAX_IP_LEN;

/// Segments a super-frame holds at most: each is one piece of a gather write, and 64 keeps
/// the write far below `UIO_MAXIOV`. 64 full-size segments of a 1500-byte MTU exceed 64 KB
/// anyway; only small segments meet this bound first.
pub const MAX_SEGMENTS: usize = 64;

/// The headers kept of the first segment: Ethernet, IPv6 (IPv4 with options is never merged)
/// and TCP with the largest options.
const MAX_HEADERS: usize = ethernet::HEADER_LEN + ipv6::HEADER_LEN + tcp::MAX_HEADER_LEN;

/// What [`Coalescer::push`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Appended to the pending super-frame.
    Coalesced,
    /// Began a new pending super-frame (nothing was pending).
    Started,
    /// Not taken: the caller delivers the frame alone, with a zero vnet header. Either it can
    /// never be coalesced (not TCP, flags other than ACK or ACK+PSH, IPv4 options or fragment,
    /// IPv6 extension headers, no payload, Ethernet padding, a bad checksum), or a super-frame
    /// is pending that it cannot extend (the caller should have flushed first).
    NotEligible,
}

/// How the IPv4 identification advances along the pending super-frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdentMode {
    /// One segment so far: the second decides.
    Undecided,
    /// first + segments merged.
    Incrementing,
    /// DF set and the same ID on every segment.
    Fixed,
}

/// What is known about the pending super-frame beyond its bytes.
#[derive(Debug, Clone, Copy)]
struct Pending {
    ipv6: bool,
    tcp_start: usize,
    payload_start: usize,
    /// The first segment's payload length: the MSS the kernel will segment with.
    gso_size: usize,
    next_seq: u32,
    first_ident: u16,
    ident: IdentMode,
    /// PSH or a short segment ended it: nothing more can be appended.
    closed: bool,
    /// Pseudo header sum without the length.
    pseudo: u16,
}

/// A TCP segment that may be coalesced, with its header offsets.
struct Segment<'f> {
    frame: &'f [u8],
    ipv6: bool,
    tcp_start: usize,
    payload_start: usize,
    seq: u32,
    psh: bool,
    ident: u16,
    df: bool,
}

impl<'f> Segment<'f> {
    #[inline]
    fn payload(&self) -> &'f [u8] {
        &self.frame[self.payload_start..]
    }

    /// The pseudo header sum without the length: addresses and protocol.
    #[inline]
    fn pseudo(&self) -> u16 {
        let ip = &self.frame[ethernet::HEADER_LEN..];
        if self.ipv6 {
            let p = Ipv6Packet::new_unchecked(ip);
            checksum::pseudo_header_v6(&p.src_addr(), &p.dst_addr(), tcp::PROTOCOL, 0)
        } else {
            let p = Ipv4Packet::new_unchecked(ip);
            checksum::pseudo_header_v4(&p.src_addr(), &p.dst_addr(), tcp::PROTOCOL, 0)
        }
    }

    /// Whether the TCP checksum verifies, or holds exactly the partial residue (see the
    /// module documentation). One pass over the segment when it must be verified.
    #[inline]
    fn checksum_ok(&self, pseudo: u16) -> bool {
        let t = &self.frame[self.tcp_start..];
        // At most MAX_IP_LEN: parse checked the IP length.
        let len = wire::len16(t.len());
        let partial = checksum::combine(&[pseudo, len]);
        let field = TcpPacket::new_unchecked(t).checksum();
        field == partial || checksum::combine(&[partial, checksum::data(t)]) == 0xffff
    }

    /// Reads `frame` as a coalescable TCP segment: the checks that do not depend on what is
    /// pending (the TCP checksum aside, which costs a pass over the payload).
    #[inline]
    fn parse(frame: &'f [u8]) -> Option<Segment<'f>> {
        let eth = EthernetFrame::new_checked(frame).ok()?;
        let l3 = &frame[ethernet::HEADER_LEN..];
        let (ipv6, ip_header_len, ip_len, ident, df) = match eth.ethertype() {
            EtherType::Ipv4 => {
                let ip = Ipv4Packet::new_checked(l3).ok()?;
                // Version 4 without options: Linux's inet_gro_receive flushes IHL != 5.
                if ip.version() != 4
                    || ip.header_len() != ipv4::HEADER_LEN
                    || u8::from(ip.next_header()) != tcp::PROTOCOL
                {
                    return None;
                }
                // MF, the fragment offset or the reserved bit: a fragment, never merged.
                if ip.is_fragment() || l3[6] & 0x80 != 0 {
                    return None;
                }
                // The header is rewritten on flush: a corrupt one must not be repaired.
                if !ip.verify_checksum() {
                    return None;
                }
                let total = usize::from(ip.total_len());
                (false, ipv4::HEADER_LEN, total, ip.ident(), ip.dont_frag())
            }
            EtherType::Ipv6 => {
                let ip = Ipv6Packet::new_checked(l3).ok()?;
                if ip.version() != 6 || u8::from(ip.next_header()) != tcp::PROTOCOL {
                    return None;
                }
                let len = ipv6::HEADER_LEN + usize::from(ip.payload_len());
                (true, ipv6::HEADER_LEN, len, 0, false)
            }
            _ => return None,
        };
        // Exactly the frame: Ethernet padding, or a length the frame does not hold, is left to
        // the kernel to trim or drop.
        if ip_len > MAX_IP_LEN || ethernet::HEADER_LEN + ip_len != frame.len() {
            return None;
        }
        let tcp_start = ethernet::HEADER_LEN + ip_header_len;
        let seg = TcpPacket::new_checked(&frame[tcp_start..]).ok()?;
        let flags = seg.flags().0;
        if flags != TcpFlags::ACK && flags != TcpFlags::ACK | TcpFlags::PSH {
            return None;
        }
        let payload_start = tcp_start + seg.header_len();
        // No payload: a pure ACK.
        if payload_start >= frame.len() {
            return None;
        }
        Some(Segment {
            frame,
            ipv6,
            tcp_start,
            payload_start,
            seq: seg.seq_number(),
            psh: flags & TcpFlags::PSH != 0,
            ident,
            df,
        })
    }
}

/// Merges consecutive TCP segments of one flow into a super-frame for the TAP, without copying
/// their payloads.
///
/// Holds at most one pending super-frame: the first segment's headers (copied) and every
/// segment's payload (borrowed for `'f`). It allocates nothing. Per received frame the caller
/// does:
///
/// ```text
/// if coalescer.is_pending() && !coalescer.can_append(frame) {
///     tap.writev(coalescer.flush());
/// }
/// if coalescer.push(frame) == Push::NotEligible {
///     tap.writev([zero vnet header, frame]);
/// }
/// ```
///
/// and flushes once more at the end of each batch, before the batch's buffers are reused.
/// Frames reach the TAP in the order they came.
pub struct Coalescer<'f> {
    /// The vnet header, then the first segment's headers.
    head: [u8; VNET_HDR_LEN + MAX_HEADERS],
    payloads: [&'f [u8]; MAX_SEGMENTS],
    segments: usize,
    /// Length of the pending frame (headers and payloads); 0 when nothing is pending.
    len: usize,
    pending: Pending,
}

/// A flushed super-frame (or single frame): the vnet header and headers, then the payloads.
/// Written in this order, with one gather write, it is what the TAP takes.
#[derive(Debug, Clone, Copy)]
pub struct Flushed<'c, 'f> {
    head: &'c [u8],
    payloads: &'c [&'f [u8]],
    segments: usize,
}

impl<'c, 'f> Flushed<'c, 'f> {
    /// Nothing was pending.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.head.is_empty()
    }

    /// The bytes it writes, vnet header included.
    #[inline]
    pub fn len(&self) -> usize {
        self.head.len() + self.payloads.iter().map(|p| p.len()).sum::<usize>()
    }

    /// How many received segments it holds.
    #[inline]
    pub fn segments(&self) -> usize {
        self.segments
    }

    /// The vnet header and the headers of the frame.
    #[inline]
    pub fn head(&self) -> &'c [u8] {
        self.head
    }

    /// The payloads, in order, after [`Flushed::head`].
    #[inline]
    pub fn payloads(&self) -> &'c [&'f [u8]] {
        self.payloads
    }

    /// The whole write in one buffer (for tests and for writers without gather I/O).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len());
        v.extend_from_slice(self.head);
        for p in self.payloads {
            v.extend_from_slice(p);
        }
        v
    }
}

impl<'f> Coalescer<'f> {
    /// An empty coalescer.
    pub fn new() -> Self {
        Coalescer {
            head: [0; VNET_HDR_LEN + MAX_HEADERS],
            payloads: [&[]; MAX_SEGMENTS],
            segments: 0,
            len: 0,
            pending: Pending {
                ipv6: false,
                tcp_start: 0,
                payload_start: 0,
                gso_size: 0,
                next_seq: 0,
                first_ident: 0,
                ident: IdentMode::Undecided,
                closed: true,
                pseudo: 0,
            },
        }
    }

    /// Whether a super-frame is pending.
    #[inline]
    pub fn is_pending(&self) -> bool {
        self.len != 0
    }

    /// How many segments the pending super-frame holds (0 when none is pending).
    #[inline]
    pub fn pending_segments(&self) -> usize {
        if self.len == 0 {
            0
        } else {
            self.segments
        }
    }

    /// Whether `frame` (an inner Ethernet frame just decapsulated) can extend the pending
    /// super-frame. False when nothing is pending. Its TCP checksum is not verified here but in
    /// [`Coalescer::push`], which may still refuse it.
    #[inline]
    pub fn can_append(&self, frame: &[u8]) -> bool {
        Segment::parse(frame).is_some_and(|s| self.extends(&s))
    }

    /// Whether [`Coalescer::push`] would take `frame` if its TCP checksum verifies: it extends
    /// the pending super-frame, or nothing is pending and it can start one. A caller that must
    /// change a frame it does not coalesce (complete its checksum) decides with this before
    /// lending the frame to the coalescer.
    #[inline]
    pub fn takes(&self, frame: &[u8]) -> bool {
        Segment::parse(frame).is_some_and(|s| {
            if self.len == 0 {
                !s.psh
            } else {
                self.extends(&s)
            }
        })
    }

    /// Appends `frame` to the pending super-frame (it must satisfy [`Coalescer::can_append`]),
    /// or starts a new pending super-frame from it if nothing is pending.
    ///
    /// [`Push::NotEligible`] leaves the pending state as it was: for frames that can never be
    /// coalesced, for a segment with PSH when nothing is pending (nothing could follow it), for
    /// a bad TCP checksum (delivered alone, the kernel drops it as it would have), and when a
    /// super-frame is pending that `frame` cannot extend.
    pub fn push(&mut self, frame: &'f [u8]) -> Push {
        let Some(s) = Segment::parse(frame) else {
            return Push::NotEligible;
        };
        if self.len == 0 {
            self.start(&s)
        } else if self.extends(&s) {
            self.append(&s)
        } else {
            Push::NotEligible
        }
    }

    /// Finishes the pending super-frame and returns what to write to the TAP: vnet header,
    /// headers and payloads. Empty when nothing is pending.
    ///
    /// Several segments: IPv4 total length and header checksum (or IPv6 payload length) fixed,
    /// the TCP checksum field holding the pseudo header sum, `F_NEEDS_CSUM` with `csum_start` at
    /// the TCP header and `csum_offset` 16, `GSO_TCPV4`/`GSO_TCPV6` with `gso_size` the first
    /// segment's payload length. One segment: the frame as it arrived, behind a zero vnet
    /// header, or behind `F_NEEDS_CSUM` (no GSO) when its checksum field holds the partial
    /// residue.
    pub fn flush(&mut self) -> Flushed<'_, 'f> {
        let n = core::mem::take(&mut self.len);
        if n == 0 {
            return Flushed {
                head: &[],
                payloads: &[],
                segments: 0,
            };
        }
        let p = self.pending;
        let headers_end = VNET_HDR_LEN + p.payload_start;
        let hdr = if self.segments > 1 {
            let frame = &mut self.head[VNET_HDR_LEN..headers_end];
            let ip = ethernet::HEADER_LEN;
            let t = p.tcp_start;
            // Lengths fit: appends kept the IP packet within MAX_IP_LEN.
            if p.ipv6 {
                Ipv6Packet::new_unchecked(&mut frame[ip..t]).set_payload_len(wire::len16(n - t));
            } else {
                let mut h = Ipv4Packet::new_unchecked(&mut frame[ip..t]);
                h.set_total_len(wire::len16(n - ip));
                h.fill_checksum();
            }
            // CHECKSUM_PARTIAL: the folded pseudo header sum, not complemented, as Linux's
            // tcp4_gro_complete leaves it.
            let partial = checksum::combine(&[p.pseudo, wire::len16(n - t)]);
            TcpPacket::new_unchecked(&mut frame[t..]).set_checksum(partial);
            VnetHdr {
                flags: VnetHdr::F_NEEDS_CSUM,
                gso_type: if p.ipv6 {
                    VnetHdr::GSO_TCPV6
                } else {
                    VnetHdr::GSO_TCPV4
                },
                hdr_len: wire::len16(p.payload_start),
                gso_size: wire::len16(p.gso_size),
                csum_start: wire::len16(t),
                csum_offset: wire::len16(tcp::CHECKSUM_OFFSET),
            }
        } else {
            // A segment taken with the partial residue in its checksum field (not verified,
            // see the module documentation) is partial: said so, or the kernel verifies the
            // field, drops the frame, and every retransmission of it.
            let t = p.tcp_start;
            let partial = checksum::combine(&[p.pseudo, wire::len16(n - t)]);
            let field =
                TcpPacket::new_unchecked(&self.head[VNET_HDR_LEN + t..headers_end]).checksum();
            if field == partial {
                VnetHdr {
                    flags: VnetHdr::F_NEEDS_CSUM,
                    gso_type: VnetHdr::GSO_NONE,
                    hdr_len: wire::len16(p.payload_start),
                    gso_size: 0,
                    csum_start: wire::len16(t),
                    csum_offset: wire::len16(tcp::CHECKSUM_OFFSET),
                }
            } else {
                VnetHdr::default()
            }
        };
        hdr.emit(&mut self.head[..VNET_HDR_LEN]);
        Flushed {
            head: &self.head[..headers_end],
            payloads: &self.payloads[..self.segments],
            segments: self.segments,
        }
    }

    /// The pending rules of the module documentation, the checksum aside.
    #[inline]
    fn extends(&self, s: &Segment<'_>) -> bool {
        let p = &self.pending;
        if self.len == 0 || p.closed || s.ipv6 != p.ipv6 || s.payload_start != p.payload_start {
            return false;
        }
        let head = &self.head[VNET_HDR_LEN..VNET_HDR_LEN + p.payload_start];
        let f = s.frame;
        let t = p.tcp_start;
        let payload = s.payload().len();
        let same = |r: core::ops::Range<usize>| head[r.clone()] == f[r];
        let ip_ok = if p.ipv6 {
            // Version, traffic class, flow label; then next header, hop limit, addresses.
            same(14..18) && same(20..54)
        } else {
            // TOS; DF (no other fragment bit is set), TTL, protocol; addresses.
            head[15] == f[15] && same(20..24) && same(26..34) && self.ident_follows(s)
        };
        ip_ok
            && same(0..ethernet::HEADER_LEN)
            // Ports; acknowledgment number and data offset; window; urgent pointer; options.
            && same(t..t + 4)
            && same(t + 8..t + 13)
            && same(t + 14..t + tcp::CHECKSUM_OFFSET)
            && same(t + 18..p.payload_start)
            && s.seq == p.next_seq
            && payload <= p.gso_size
            && self.segments < MAX_SEGMENTS
            && self.len - ethernet::HEADER_LEN + payload <= MAX_IP_LEN
    }

    /// Linux's `inet_gro_flush`: after the first segment the ID must be first + segments merged,
    /// unless the second segment chose a fixed ID (DF set, same ID).
    #[inline]
    fn ident_follows(&self, s: &Segment<'_>) -> bool {
        let p = &self.pending;
        let offset = s.ident.wrapping_sub(p.first_ident);
        match p.ident {
            IdentMode::Undecided => offset == 1 || (s.df && offset == 0),
            // Segments merged never exceed MAX_SEGMENTS.
            IdentMode::Incrementing => usize::from(offset) == self.segments,
            IdentMode::Fixed => offset == 0,
        }
    }

    fn start(&mut self, s: &Segment<'f>) -> Push {
        if s.psh {
            return Push::NotEligible;
        }
        let pseudo = s.pseudo();
        if !s.checksum_ok(pseudo) {
            return Push::NotEligible;
        }
        let payload = s.payload();
        self.head[VNET_HDR_LEN..VNET_HDR_LEN + s.payload_start]
            .copy_from_slice(&s.frame[..s.payload_start]);
        self.payloads[0] = payload;
        self.segments = 1;
        self.pending = Pending {
            ipv6: s.ipv6,
            tcp_start: s.tcp_start,
            payload_start: s.payload_start,
            gso_size: payload.len(),
            next_seq: tcp::seq_add(s.seq, payload.len()),
            first_ident: s.ident,
            ident: IdentMode::Undecided,
            closed: false,
            pseudo,
        };
        self.len = s.frame.len();
        Push::Started
    }

    fn append(&mut self, s: &Segment<'f>) -> Push {
        // Same addresses as the pending frame, so the same pseudo header sum.
        if !s.checksum_ok(self.pending.pseudo) {
            return Push::NotEligible;
        }
        let p = &mut self.pending;
        let payload = s.payload();
        if p.ident == IdentMode::Undecided && !p.ipv6 {
            p.ident = if s.ident == p.first_ident {
                IdentMode::Fixed
            } else {
                IdentMode::Incrementing
            };
        }
        self.payloads[self.segments] = payload;
        self.segments += 1;
        p.next_seq = tcp::seq_add(p.next_seq, payload.len());
        if s.psh {
            // Linux ORs the last segment's PSH into the super-frame's header.
            self.head[VNET_HDR_LEN + p.tcp_start + 13] |= TcpFlags::PSH;
            p.closed = true;
        }
        if payload.len() < p.gso_size {
            p.closed = true;
        }
        self.len += payload.len();
        Push::Coalesced
    }
}

impl Default for Coalescer<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Coalescer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coalescer")
            .field("pending_len", &self.len)
            .field("pending_segments", &self.pending_segments())
            .finish()
    }
}

#[cfg(test)]
mod tests;
