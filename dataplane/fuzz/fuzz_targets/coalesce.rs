//! Arbitrary sequences of frames through `Coalescer`, driven the way the worker drives it:
//! nothing panics, `push` reports what it did truthfully, and every flushed super-frame, once
//! its partial checksum is completed and it is cut again with `TcpSegments` (what the kernel
//! does with it), gives back exactly the segments that went in, checksums included.
//!
//! Input: records, each a control byte `c` and its arguments.
//!   c & 3 == 0: a raw frame: 2 bytes of length (LE), then the bytes
//!   c & 3 == 1: the same, with IPv4 header and TCP checksums fixed when the frame looks like TCP
//!   c & 3 == 2: the next segment of the previous frame: 2 bytes of payload length (at most
//!               9000), payload bytes from the input; bit 2 PSH, bit 3 same IPv4 ident,
//!               bit 4 corrupt its checksum, bit 5 skip a sequence number
//!   c & 3 == 3: the previous frame with one byte changed: offset, xor value; bit 2 fixes the
//!               checksums afterwards
#![no_main]

use libfuzzer_sys::fuzz_target;
use packet::inner_checksum::complete_partial_checksum;
use packet::offload::{complete_checksum, Coalescer, Push, TcpSegments, VnetHdr, VNET_HDR_LEN};
use testkit::checksum::{fix_tcp_checksum, ones_complement_sum, tcp_pseudo_header, tcp_sum};
use testkit::packet::fix_ipv4_checksum;

fn be16(d: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([d[at], d[at + 1]])
}

/// (IPv6, TCP start, end of the IP packet) when `f` looks like TCP over IP with lengths that
/// fit the frame.
fn layout(f: &[u8]) -> Option<(bool, usize, usize)> {
    if f.len() < 54 {
        return None;
    }
    let (v6, t, end) = match (f[12], f[13]) {
        (0x08, 0x00) => {
            let ihl = usize::from(f[14] & 0x0f) * 4;
            (false, 14 + ihl, 14 + usize::from(be16(f, 16)))
        }
        (0x86, 0xdd) => (true, 54, 54 + usize::from(be16(f, 18))),
        _ => return None,
    };
    (t >= 34 && t + 20 <= end && end <= f.len()).then_some((v6, t, end))
}

/// Writes the IPv4 header (if IPv4) and TCP checksums of a frame that has a `layout`.
fn fix_checksums(f: &mut [u8]) {
    let Some((v6, t, end)) = layout(f) else {
        return;
    };
    if !v6 {
        fix_ipv4_checksum(f);
    }
    fix_tcp_checksum(f, t, end);
}

/// The next segment after `prev` (which must have a `layout`), or None.
fn next_segment(prev: &[u8], c: u8, len: usize, fill: &[u8]) -> Option<Vec<u8>> {
    let (v6, t, end) = layout(prev)?;
    let doff = usize::from(prev[t + 12] >> 4) * 4;
    let hl = t + doff;
    if doff < 20 || hl > end {
        return None;
    }
    let ip_len = hl - 14 + len;
    if ip_len > 65535 {
        return None;
    }
    let mut f = prev[..hl].to_vec();
    f.extend((0..len).map(|i| fill.get(i % fill.len().max(1)).copied().unwrap_or(i as u8)));
    if v6 {
        f[18..20].copy_from_slice(&((ip_len - 40) as u16).to_be_bytes());
    } else {
        f[16..18].copy_from_slice(&(ip_len as u16).to_be_bytes());
        if c & 8 == 0 {
            let id = be16(&f, 18).wrapping_add(1);
            f[18..20].copy_from_slice(&id.to_be_bytes());
        }
    }
    let seq = u32::from_be_bytes([prev[t + 4], prev[t + 5], prev[t + 6], prev[t + 7]])
        .wrapping_add((end - hl) as u32)
        .wrapping_add(u32::from(c & 0x20 != 0));
    f[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
    f[t + 13] = if c & 4 != 0 { 0x18 } else { 0x10 };
    fix_checksums(&mut f);
    if c & 0x10 != 0 {
        let last = f.len() - 1;
        f[last] ^= 0x55;
    }
    Some(f)
}

/// Checks a flushed super-frame against the segments that went into it.
fn check_flush(out: &[u8], merged: &[Vec<u8>]) {
    assert!(!merged.is_empty());
    assert!(out.len() > VNET_HDR_LEN);
    let hdr = VnetHdr::parse(out).unwrap();
    let mut frame = out[VNET_HDR_LEN..].to_vec();
    if merged.len() == 1 {
        assert_eq!(frame, merged[0]);
        // Alone, it goes as it came; marked partial (no GSO) exactly when its checksum field
        // holds the partial residue, which the coalescer took unverified.
        // (field, residue); a residue of 0 or 0xffff (either zero) is left undecided.
        let zero = |v: u16| v == 0 || v == 0xffff;
        let residue = layout(&frame).map(|(_, t, end)| {
            let pseudo = tcp_pseudo_header(&frame, end - t);
            (be16(&frame, t + 16), ones_complement_sum(&[&pseudo]))
        });
        if hdr == VnetHdr::default() {
            assert!(
                residue.is_none_or(|(f, r)| f != r || zero(r)),
                "a lone partial segment left unmarked"
            );
            return;
        }
        let (_, t, end) = layout(&frame).expect("a marked segment is TCP over IP");
        assert!(
            residue.is_some_and(|(f, r)| f == r || zero(f) && zero(r)),
            "a lone complete segment marked partial"
        );
        assert_eq!(hdr.flags, VnetHdr::F_NEEDS_CSUM);
        assert_eq!(hdr.gso_type, VnetHdr::GSO_NONE);
        assert_eq!((usize::from(hdr.csum_start), hdr.csum_offset), (t, 16));
        complete_checksum(&mut frame, t, 16).unwrap();
        assert_eq!(tcp_sum(&frame, t, end), 0xffff, "completed TCP checksum");
        return;
    }
    assert_eq!(hdr.flags, VnetHdr::F_NEEDS_CSUM);
    assert_eq!(hdr.csum_offset, 16);
    let (v6, t, end) = layout(&frame).expect("super-frame is TCP over IP");
    assert_eq!(end, frame.len());
    assert_eq!(usize::from(hdr.csum_start), t);
    let expected_len: usize = merged[0].len()
        + merged[1..]
            .iter()
            .map(|m| m.len() - usize::from(hdr.hdr_len))
            .sum::<usize>();
    assert_eq!(frame.len(), expected_len);
    if !v6 {
        assert_eq!(
            ones_complement_sum(&[&frame[14..t]]),
            0xffff,
            "IPv4 header checksum"
        );
    }
    complete_checksum(&mut frame, t, 16).unwrap();
    assert_eq!(tcp_sum(&frame, t, end), 0xffff, "completed TCP checksum");
    let segs = TcpSegments::new(&frame, &hdr).expect("flushed super-frames segment");
    assert_eq!(segs.len(), merged.len());
    let fixed_id = !v6 && be16(&merged[0], 18) == be16(&merged[1], 18);
    let mut buf = vec![0u8; segs.max_segment_len()];
    for (i, m) in merged.iter().enumerate() {
        // A segment merged with its checksum partial (the residue a kernel sender leaves) comes
        // back with the full checksum: compare it completed.
        let mut m = m.clone();
        complete_partial_checksum(&mut m);
        let n = segs.write(i, &mut buf).unwrap();
        let s = &buf[..n];
        assert_eq!(n, m.len(), "segment {i} length");
        if fixed_id {
            // Re-cut with incrementing IDs (no FIXEDID in a vnet header): the rest is equal.
            assert_eq!(s[..18], m[..18]);
            assert_eq!(s[20..24], m[20..24]);
            assert_eq!(s[26..], m[26..]);
        } else {
            assert_eq!(s, &m[..], "segment {i}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // The frames first (each may derive from the one before), then the coalescer over them: it
    // borrows every frame it holds until it flushes.
    let mut frames: Vec<Vec<u8>> = Vec::new();
    let mut prev: Vec<u8> = Vec::new();
    let mut rest = data;
    let take = |n: usize, rest: &mut &[u8]| -> Vec<u8> {
        let n = n.min(rest.len());
        let (a, b) = rest.split_at(n);
        *rest = b;
        a.to_vec()
    };
    while let Some((&ctrl, r)) = rest.split_first() {
        rest = r;
        let frame = match ctrl & 3 {
            0 | 1 => {
                let l = take(2, &mut rest);
                let len = usize::from(u16::from_le_bytes([
                    l.first().copied().unwrap_or(0),
                    l.get(1).copied().unwrap_or(0),
                ]));
                let mut f = take(len, &mut rest);
                if ctrl & 3 == 1 {
                    fix_checksums(&mut f);
                }
                f
            }
            2 => {
                let l = take(2, &mut rest);
                let len = usize::from(u16::from_le_bytes([
                    l.first().copied().unwrap_or(0),
                    l.get(1).copied().unwrap_or(0),
                ])) % 9001;
                let fill = take(len.min(64), &mut rest);
                match next_segment(&prev, ctrl, len, &fill) {
                    Some(f) => f,
                    None => continue,
                }
            }
            _ => {
                let a = take(2, &mut rest);
                let mut f = prev.clone();
                if let (Some(&at), Some(&x)) = (a.first(), a.get(1)) {
                    if !f.is_empty() {
                        let at = usize::from(at) % f.len();
                        f[at] ^= x;
                    }
                }
                if ctrl & 4 != 0 {
                    fix_checksums(&mut f);
                }
                f
            }
        };
        prev = frame.clone();
        frames.push(frame);
    }

    let mut c = Coalescer::new();
    let mut merged: Vec<Vec<u8>> = Vec::new();
    for frame in &frames {
        if c.is_pending() && !c.can_append(frame) {
            check_flush(&c.flush().to_vec(), &merged);
            merged.clear();
        }
        let was = c.is_pending();
        let before = c.pending_segments();
        match c.push(frame) {
            Push::Coalesced => {
                assert!(was);
                assert_eq!(c.pending_segments(), before + 1);
                merged.push(frame.clone());
            }
            Push::Started => {
                assert!(!was);
                assert_eq!(c.pending_segments(), 1);
                merged = vec![frame.clone()];
            }
            Push::NotEligible => {
                assert_eq!(c.is_pending(), was);
                assert_eq!(c.pending_segments(), before);
            }
        }
    }
    if c.is_pending() {
        check_flush(&c.flush().to_vec(), &merged);
    }
    assert!(c.flush().is_empty());
});
