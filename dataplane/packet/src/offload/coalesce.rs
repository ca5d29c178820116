//! Receive coalescing (GRO) in userspace: consecutive TCP segments of one flow, decapsulated from
//! the underlay, merged into one super-frame for a single TAP write.
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
//! - its TCP checksum verifies, summed while its payload is copied into the buffer: the
//!   super-frame goes to the kernel with a partial checksum the kernel will trust, so a corrupt
//!   segment must not be merged (Linux verifies in `tcp4_gro_receive`/`tcp6_gro_receive`).
//!
//! The IPv4 header checksum is verified too (`inet_gro_receive`), since it is recomputed on
//! flush. A fixed-ID flow comes out of the kernel's segmentation with incrementing IDs, because
//! the vnet header cannot carry `SKB_GSO_TCP_FIXEDID`; for DF datagrams the ID has no meaning
//! (RFC 6864 section 4.1), so that is harmless.

use core::fmt;

use super::{be16, be32, put16, tcp, VnetHdr, VNET_HDR_LEN};
use crate::wire::{checksum, ethernet};

/// Largest IP packet (header included) a super-frame may hold: Linux's default `gro_max_size`
/// is 65536, and the IPv4 total length field stops at 65535.
const MAX_IP_LEN: usize = 65535;

/// The size of the buffer a [`Coalescer`] allocates: a vnet header and the largest super-frame.
pub const COALESCE_BUF_LEN: usize = VNET_HDR_LEN + ethernet::HEADER_LEN + MAX_IP_LEN;

const IPV4_DF: u16 = 0x4000;

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
    segments: usize,
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

impl Segment<'_> {
    #[inline]
    fn payload_len(&self) -> usize {
        self.frame.len() - self.payload_start
    }

    /// The pseudo header sum without the length: addresses and protocol.
    #[inline]
    fn pseudo(&self) -> u16 {
        let addrs = if self.ipv6 {
            &self.frame[22..54]
        } else {
            &self.frame[26..34]
        };
        checksum::combine(&[checksum::data(addrs), u16::from(tcp::PROTOCOL)])
    }

    /// Reads `frame` as a coalescable TCP segment: the checks that do not depend on what is
    /// pending (the TCP checksum aside, which is verified while copying).
    #[inline]
    fn parse(frame: &[u8]) -> Option<Segment<'_>> {
        let ethertype = be16(frame.get(..ethernet::HEADER_LEN)?, 12);
        let (ipv6, tcp_start, ip_len, ident, df) = match ethertype {
            0x0800 => {
                let ip = frame.get(14..34)?;
                // Version 4 without options: Linux's inet_gro_receive flushes IHL != 5.
                if ip[0] != 0x45 || ip[9] != tcp::PROTOCOL {
                    return None;
                }
                // MF, the fragment offset or the reserved bit: a fragment, never merged.
                let frag = be16(ip, 6);
                if frag & !IPV4_DF != 0 {
                    return None;
                }
                // The header is rewritten on flush: a corrupt one must not be repaired.
                if checksum::data(ip) != 0xffff {
                    return None;
                }
                (false, 34, usize::from(be16(ip, 2)), be16(ip, 4), frag != 0)
            }
            0x86dd => {
                let ip = frame.get(14..54)?;
                if ip[0] >> 4 != 6 || ip[6] != tcp::PROTOCOL {
                    return None;
                }
                (true, 54, 40 + usize::from(be16(ip, 4)), 0, false)
            }
            _ => return None,
        };
        // Exactly the frame: Ethernet padding, or a length the frame does not hold, is left to
        // the kernel to trim or drop.
        if ip_len > MAX_IP_LEN || ethernet::HEADER_LEN + ip_len != frame.len() {
            return None;
        }
        let t = frame.get(tcp_start..tcp_start + tcp::HEADER_LEN)?;
        let doff = usize::from(t[tcp::DATA_OFF] >> 4) * 4;
        let flags = t[tcp::FLAGS];
        if doff < tcp::HEADER_LEN || (flags != tcp::ACK && flags != tcp::ACK | tcp::PSH) {
            return None;
        }
        let payload_start = tcp_start + doff;
        // Options running past the end, or no payload (a pure ACK).
        if payload_start >= frame.len() {
            return None;
        }
        Some(Segment {
            frame,
            ipv6,
            tcp_start,
            payload_start,
            seq: be32(t, tcp::SEQ),
            psh: flags & tcp::PSH != 0,
            ident,
            df,
        })
    }
}

/// Merges consecutive TCP segments of one flow into a super-frame for the TAP.
///
/// Holds at most one pending super-frame, in one buffer of [`COALESCE_BUF_LEN`] bytes allocated
/// by [`Coalescer::new`]; no other allocation. Per received frame the caller does:
///
/// ```text
/// if coalescer.is_pending() && !coalescer.can_append(frame) {
///     tap.write(coalescer.flush());
/// }
/// if coalescer.push(frame) == Push::NotEligible {
///     tap.write(zero vnet header + frame);
/// }
/// ```
///
/// and flushes once more at the end of each batch, so segments never wait for the next one.
/// Frames reach the TAP in the order they came.
pub struct Coalescer {
    buf: Box<[u8]>,
    /// Length of the pending frame after the vnet header; 0 when nothing is pending.
    len: usize,
    pending: Pending,
}

impl Coalescer {
    /// Allocates the buffer; the only allocation a coalescer makes.
    pub fn new() -> Self {
        Coalescer {
            buf: vec![0u8; COALESCE_BUF_LEN].into_boxed_slice(),
            len: 0,
            pending: Pending {
                ipv6: false,
                tcp_start: 0,
                payload_start: 0,
                gso_size: 0,
                segments: 0,
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
            self.pending.segments
        }
    }

    /// Whether `frame` (an inner Ethernet frame just decapsulated) can extend the pending
    /// super-frame. False when nothing is pending. Its TCP checksum is not verified here but in
    /// [`Coalescer::push`], which may still refuse it.
    #[inline]
    pub fn can_append(&self, frame: &[u8]) -> bool {
        Segment::parse(frame).is_some_and(|s| self.extends(&s))
    }

    /// Appends `frame` to the pending super-frame (it must satisfy [`Coalescer::can_append`]),
    /// or starts a new pending super-frame from it if nothing is pending.
    ///
    /// [`Push::NotEligible`] leaves the pending state as it was: for frames that can never be
    /// coalesced, for a segment with PSH when nothing is pending (nothing could follow it), for
    /// a bad TCP checksum (delivered alone, the kernel drops it as it would have), and when a
    /// super-frame is pending that `frame` cannot extend.
    pub fn push(&mut self, frame: &[u8]) -> Push {
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

    /// Finishes the pending super-frame and returns what to write to the TAP: vnet header and
    /// Ethernet frame. Empty when nothing is pending.
    ///
    /// Several segments: IPv4 total length and header checksum (or IPv6 payload length) fixed,
    /// the TCP checksum field holding the pseudo header sum, `F_NEEDS_CSUM` with `csum_start` at
    /// the TCP header and `csum_offset` 16, `GSO_TCPV4`/`GSO_TCPV6` with `gso_size` the first
    /// segment's payload length. One segment: a zero vnet header and the frame as it arrived.
    pub fn flush(&mut self) -> &[u8] {
        let n = core::mem::take(&mut self.len);
        if n == 0 {
            return &[];
        }
        let p = self.pending;
        let hdr = if p.segments > 1 {
            let frame = &mut self.buf[VNET_HDR_LEN..VNET_HDR_LEN + n];
            let ip = ethernet::HEADER_LEN;
            let t = p.tcp_start;
            // Lengths fit: appends kept the IP packet within MAX_IP_LEN.
            if p.ipv6 {
                put16(frame, ip + 4, (n - p.tcp_start) as u16);
            } else {
                put16(frame, ip + 2, (n - ip) as u16);
                put16(frame, ip + 10, 0);
                let c = !checksum::data(&frame[ip..t]);
                put16(frame, ip + 10, c);
            }
            // CHECKSUM_PARTIAL: the folded pseudo header sum, not complemented, as Linux's
            // tcp4_gro_complete leaves it.
            let partial = checksum::combine(&[p.pseudo, (n - t) as u16]);
            put16(frame, t + tcp::CHECKSUM, partial);
            VnetHdr {
                flags: VnetHdr::F_NEEDS_CSUM,
                gso_type: if p.ipv6 {
                    VnetHdr::GSO_TCPV6
                } else {
                    VnetHdr::GSO_TCPV4
                },
                hdr_len: p.payload_start as u16,
                gso_size: p.gso_size as u16,
                csum_start: t as u16,
                csum_offset: tcp::CHECKSUM as u16,
            }
        } else {
            VnetHdr::default()
        };
        hdr.emit(&mut self.buf[..VNET_HDR_LEN]);
        &self.buf[..VNET_HDR_LEN + n]
    }

    /// The pending rules of the module documentation, the checksum aside.
    #[inline]
    fn extends(&self, s: &Segment<'_>) -> bool {
        let p = &self.pending;
        if self.len == 0 || p.closed || s.ipv6 != p.ipv6 || s.payload_start != p.payload_start {
            return false;
        }
        let head = &self.buf[VNET_HDR_LEN..VNET_HDR_LEN + p.payload_start];
        let f = s.frame;
        let t = p.tcp_start;
        let payload = s.payload_len();
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
            && same(t..t + tcp::SEQ)
            && same(t + tcp::ACK_NUM..t + tcp::FLAGS)
            && same(t + 14..t + tcp::CHECKSUM)
            && same(t + 18..p.payload_start)
            && s.seq == p.next_seq
            && payload <= p.gso_size
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
            // Segments merged never exceed 65535 (each holds a payload byte).
            IdentMode::Incrementing => offset == p.segments as u16,
            IdentMode::Fixed => offset == 0,
        }
    }

    fn start(&mut self, s: &Segment<'_>) -> Push {
        if s.psh {
            return Push::NotEligible;
        }
        let f = s.frame;
        let n = f.len();
        let t = s.tcp_start;
        let dst = &mut self.buf[VNET_HDR_LEN..VNET_HDR_LEN + n];
        dst[..t].copy_from_slice(&f[..t]);
        let sum = checksum::copy_data(&mut dst[t..], &f[t..]);
        let pseudo = s.pseudo();
        if checksum::combine(&[pseudo, (n - t) as u16, sum]) != 0xffff {
            return Push::NotEligible;
        }
        let payload = s.payload_len();
        self.pending = Pending {
            ipv6: s.ipv6,
            tcp_start: t,
            payload_start: s.payload_start,
            gso_size: payload,
            segments: 1,
            next_seq: s.seq.wrapping_add(payload as u32),
            first_ident: s.ident,
            ident: IdentMode::Undecided,
            closed: false,
            pseudo,
        };
        self.len = n;
        Push::Started
    }

    fn append(&mut self, s: &Segment<'_>) -> Push {
        let p = &mut self.pending;
        let f = s.frame;
        let payload = s.payload_len();
        let at = VNET_HDR_LEN + self.len;
        // Copied past the pending bytes first; `len` only moves if the checksum verifies.
        let payload_sum =
            checksum::copy_data(&mut self.buf[at..at + payload], &f[s.payload_start..]);
        let header_sum = checksum::data(&f[s.tcp_start..s.payload_start]);
        let tcp_len = (f.len() - s.tcp_start) as u16;
        // Same addresses as the pending frame, so the same pseudo header sum.
        if checksum::combine(&[p.pseudo, tcp_len, header_sum, payload_sum]) != 0xffff {
            return Push::NotEligible;
        }
        if p.ident == IdentMode::Undecided && !p.ipv6 {
            p.ident = if s.ident == p.first_ident {
                IdentMode::Fixed
            } else {
                IdentMode::Incrementing
            };
        }
        p.segments += 1;
        p.next_seq = p.next_seq.wrapping_add(payload as u32);
        if s.psh {
            // Linux ORs the last segment's PSH into the super-frame's header.
            self.buf[VNET_HDR_LEN + p.tcp_start + tcp::FLAGS] |= tcp::PSH;
            p.closed = true;
        }
        if payload < p.gso_size {
            p.closed = true;
        }
        self.len += payload;
        Push::Coalesced
    }
}

impl Default for Coalescer {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Coalescer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coalescer")
            .field("pending_len", &self.len)
            .field("pending_segments", &self.pending_segments())
            .finish()
    }
}

#[cfg(test)]
mod tests;
