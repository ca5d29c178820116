//! Arbitrary vnet headers and frames through `TcpSegments`: `new` never panics, and when it
//! accepts a frame every segment is a well-formed TCP segment whose checksums verify (summed
//! byte by byte by the test kit's reference, independently of `wire::checksum`), whose lengths,
//! sequence numbers and IPv4 idents progress, and whose payloads concatenate to the
//! super-frame's.
//!
//! Input: 10 bytes of vnet header, 1 control byte, then the frame.
//!   control bit 0: set gso_type from the EtherType (TCPV4/TCPV6, keeping the ECN bit)
//!   bit 1: set the IPv4 total length / IPv6 payload length to the frame's length
//!   bit 2: point csum_start/csum_offset at the TCP checksum and set NEEDS_CSUM
//!   bit 3: gso_size = gso_size % 1500 + 1 (many segments)
#![no_main]

use libfuzzer_sys::fuzz_target;
use packet::offload::{OffloadError, TcpSegments, VnetHdr, VNET_HDR_LEN};
use testkit::checksum::{ones_complement_sum, tcp_sum};

fn be16(d: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([d[at], d[at + 1]])
}

fuzz_target!(|data: &[u8]| {
    if data.len() < VNET_HDR_LEN + 1 {
        return;
    }
    let mut hdr = VnetHdr::parse(data).unwrap();
    let ctrl = data[VNET_HDR_LEN];
    let mut frame = data[VNET_HDR_LEN + 1..].to_vec();
    let v6 = frame.len() >= 14 && frame[12..14] == [0x86, 0xdd];
    if ctrl & 1 != 0 {
        hdr.gso_type = (hdr.gso_type & VnetHdr::GSO_ECN)
            | if v6 {
                VnetHdr::GSO_TCPV6
            } else {
                VnetHdr::GSO_TCPV4
            };
    }
    if ctrl & 2 != 0 && frame.len() >= 54 && frame.len() - 14 <= 65535 {
        let ip_len = (frame.len() - 14) as u16;
        if v6 {
            frame[18..20].copy_from_slice(&(ip_len.saturating_sub(40)).to_be_bytes());
        } else {
            frame[16..18].copy_from_slice(&ip_len.to_be_bytes());
        }
    }
    let t = if v6 {
        54
    } else {
        14 + usize::from(frame.get(14).copied().unwrap_or(0) & 0x0f) * 4
    };
    if ctrl & 4 != 0 {
        hdr.flags |= VnetHdr::F_NEEDS_CSUM;
        hdr.csum_start = t as u16;
        hdr.csum_offset = 16;
    }
    if ctrl & 8 != 0 {
        hdr.gso_size = hdr.gso_size % 1500 + 1;
    }

    let Ok(segs) = TcpSegments::new(&frame, &hdr) else {
        return;
    };
    // Accepted: the structure the checks below rely on holds.
    assert!(hdr.is_gso() && hdr.gso_size > 0);
    assert_eq!(segs.is_ipv6(), v6);
    let doff = usize::from(frame[t + 12] >> 4) * 4;
    let hl = t + doff;
    let payload = &frame[hl..];
    let mss = usize::from(hdr.gso_size);
    assert!(!payload.is_empty());
    assert_eq!(segs.len(), payload.len().div_ceil(mss));
    assert_eq!(segs.max_segment_len(), hl + mss.min(payload.len()));
    let seq0 = u32::from_be_bytes([frame[t + 4], frame[t + 5], frame[t + 6], frame[t + 7]]);
    let ident0 = be16(&frame, 18);

    let mut out = vec![0u8; segs.max_segment_len() + 1];
    assert_eq!(
        segs.write(0, &mut out[..segs.max_segment_len() - 1]),
        Err(OffloadError::BufferTooSmall)
    );
    assert_eq!(
        segs.write(segs.len(), &mut out),
        Err(OffloadError::NoSuchSegment)
    );
    // All segments of small frames; the first and last 64 of the others.
    let n = segs.len();
    let every = n <= 256;
    let mut joined = Vec::new();
    for i in (0..n).filter(|&i| every || i < 64 || i >= n - 64) {
        let len = segs.write(i, &mut out).expect("accepted frames segment");
        let s = &out[..len];
        let want = (payload.len() - i * mss).min(mss);
        assert_eq!(len, hl + want);
        assert_eq!(tcp_sum(s, t, s.len()), 0xffff, "segment {i}: TCP checksum");
        if v6 {
            assert_eq!(usize::from(be16(s, 18)), len - 54);
        } else {
            assert_eq!(usize::from(be16(s, 16)), len - 14);
            assert_eq!(be16(s, 18), ident0.wrapping_add(i as u16));
            assert_eq!(
                ones_complement_sum(&[&s[14..t]]),
                0xffff,
                "segment {i}: IPv4 checksum"
            );
        }
        let seq = u32::from_be_bytes([s[t + 4], s[t + 5], s[t + 6], s[t + 7]]);
        assert_eq!(seq, seq0.wrapping_add((i * mss) as u32));
        let flags = s[t + 13];
        if i > 0 {
            assert_eq!(flags & 0x80, 0, "CWR after the first");
        }
        if i + 1 < n {
            assert_eq!(flags & 0x09, 0, "FIN or PSH before the last");
        }
        assert_eq!(&s[hl..], &payload[i * mss..i * mss + want]);
        if every {
            joined.extend_from_slice(&s[hl..]);
        }
    }
    if every {
        assert_eq!(joined, payload);
    }
});
