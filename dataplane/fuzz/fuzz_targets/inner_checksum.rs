//! Arbitrary inner frames through `complete_partial_checksum`: it never panics, changes nothing
//! unless it says `Completed`, and then changes only the transport checksum field, to a value a
//! receiver's check accepts. The check here is written out independently of `wire::checksum`
//! (with the test kit's reference sum), the way the receiving kernel does it: TCP over the IP
//! payload; UDP over the UDP length, which must fit in the IP payload (RFC 768; Linux `udp_rcv`
//! drops a longer one and trims to it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use packet::inner_checksum::{complete_partial_checksum, InnerChecksum};
use testkit::checksum::ones_complement_sum;

/// The transport checksum of `frame` as a receiver verifies it: where the field is, and whether
/// the sum over pseudo header and segment comes out right. `None` when the frame is not an
/// IPv4/IPv6 TCP/UDP frame a receiver would check.
fn receiver_check(frame: &[u8]) -> Option<(usize, bool)> {
    let (l4_at, ip_payload_len, proto, pseudo) = match frame.get(12..14)? {
        [0x08, 0x00] => {
            let ip = frame.get(14..34)?;
            let hl = usize::from(ip[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            let l4_len = total.checked_sub(hl)?;
            let mut pseudo = Vec::from(&ip[12..20]);
            pseudo.extend_from_slice(&[0, ip[9]]);
            (14 + hl, l4_len, ip[9], pseudo)
        }
        [0x86, 0xdd] => {
            let ip = frame.get(14..54)?;
            let l4_len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            let mut pseudo = Vec::from(&ip[8..40]);
            pseudo.extend_from_slice(&[0, 0, 0, ip[6]]);
            (54, l4_len, ip[6], pseudo)
        }
        _ => return None,
    };
    let segment = frame.get(l4_at..l4_at.checked_add(ip_payload_len)?)?;
    let (segment, field_at) = match proto {
        6 => (segment, 16),
        17 => {
            let ulen = usize::from(u16::from_be_bytes([*segment.get(4)?, *segment.get(5)?]));
            (segment.get(..ulen)?, 6)
        }
        _ => return None,
    };
    segment.get(field_at..field_at + 2)?;
    let len = u32::try_from(segment.len()).ok()?;
    let is_v4 = frame[12..14] == [0x08, 0x00];
    let len_bytes = if is_v4 {
        u16::try_from(len).ok()?.to_be_bytes().to_vec()
    } else {
        len.to_be_bytes().to_vec()
    };
    let ok = ones_complement_sum(&[&pseudo, &len_bytes, segment]) == 0xffff;
    Some((l4_at + field_at, ok))
}

fuzz_target!(|data: &[u8]| {
    let mut frame = data.to_vec();
    match complete_partial_checksum(&mut frame) {
        InnerChecksum::Completed => {
            let (field_at, ok) = receiver_check(&frame).expect("completed a checkable frame");
            assert!(ok, "completed checksum does not verify");
            assert_eq!(frame[..field_at], data[..field_at]);
            assert_eq!(frame[field_at + 2..], data[field_at + 2..]);
            assert_ne!(frame[field_at..field_at + 2], data[field_at..field_at + 2]);
        }
        InnerChecksum::Untouched | InnerChecksum::NotApplicable => assert_eq!(frame, data),
    }
});
