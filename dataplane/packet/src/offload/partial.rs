//! Completing a partial (`CHECKSUM_PARTIAL`) checksum, as a NIC with checksum offload does.

use super::OffloadError;
use crate::wire::checksum;

/// Completes the checksum of a frame the kernel handed over with `F_NEEDS_CSUM` and no GSO: the
/// 16-bit field at `csum_start + csum_offset` holds the pseudo header sum, and the ones'
/// complement of the sum of everything from `csum_start` to the end of `frame` (that field
/// included) replaces it.
///
/// A result of 0 is written as 0xffff, as Linux's `skb_checksum_help` does (`CSUM_MANGLED_0`):
/// the two are the same number in ones' complement, and 0 would mean "no checksum" to UDP.
///
/// `frame` must end where the transport data ends (no Ethernet padding), which holds for what
/// tun hands over. `Truncated` if the field lies past the end; nothing is written then.
pub fn complete_checksum(
    frame: &mut [u8],
    csum_start: usize,
    csum_offset: usize,
) -> Result<(), OffloadError> {
    let at = csum_start
        .checked_add(csum_offset)
        .ok_or(OffloadError::Truncated)?;
    if at.checked_add(2).is_none_or(|end| end > frame.len()) {
        return Err(OffloadError::Truncated);
    }
    let sum = checksum::data(&frame[csum_start..]);
    let c = !sum;
    frame[at..at + 2].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use testkit::checksum::{ones_complement_sum, tcp_pseudo_header};

    use crate::offload::testutil::{tcp_v4_segment, tcp_v6_segment, TcpOpts};
    use crate::wire::captured;

    /// Puts the pseudo header sum of `frame`'s TCP segment into its checksum field, as the
    /// kernel leaves it for CHECKSUM_PARTIAL.
    fn make_partial(frame: &mut [u8], tcp_start: usize, pseudo: u16) {
        frame[tcp_start + 16..tcp_start + 18].copy_from_slice(&pseudo.to_be_bytes());
    }

    #[test]
    fn completes_tcp_v4_and_v6() {
        for v6 in [false, true] {
            let opts = TcpOpts {
                payload_len: 1001,
                ..TcpOpts::default()
            };
            let good = if v6 {
                tcp_v6_segment(&opts)
            } else {
                tcp_v4_segment(&opts)
            };
            let tcp_start = if v6 { 54 } else { 34 };
            let pseudo = ones_complement_sum(&[&tcp_pseudo_header(&good, good.len() - tcp_start)]);
            let mut frame = good.clone();
            make_partial(&mut frame, tcp_start, pseudo);
            assert_ne!(frame, good);
            complete_checksum(&mut frame, tcp_start, 16).unwrap();
            assert_eq!(frame, good, "v6 {v6}");
        }
    }

    #[test]
    fn completes_real_partial_udp_checksum() {
        // The outer UDP header of testdata/v4-partial.pcap was left CHECKSUM_PARTIAL by the
        // sending kernel (veth TX offload): completing it must give a checksum that verifies.
        let mut frame = captured::V4_PARTIAL_ICMP.to_vec();
        let udp = 34;
        let before = u16::from_be_bytes([frame[udp + 6], frame[udp + 7]]);
        complete_checksum(&mut frame, udp, 6).unwrap();
        let after = u16::from_be_bytes([frame[udp + 6], frame[udp + 7]]);
        assert_ne!(before, after);
        let udp_len = crate::wire::len16(frame.len() - udp);
        let sum = ones_complement_sum(&[
            &frame[26..34],
            &[0, 17],
            &udp_len.to_be_bytes(),
            &frame[udp..],
        ]);
        assert_eq!(sum, 0xffff);
    }

    #[test]
    fn zero_result_is_written_as_ffff() {
        // A two-word "transport" whose data sums to 0xffff with the field at 0: !0xffff == 0.
        let mut frame = [0x12, 0x34, 0x00, 0x00, 0xed, 0xcb];
        complete_checksum(&mut frame, 0, 2).unwrap();
        assert_eq!(frame[2..4], [0xff, 0xff]);
    }

    #[test]
    fn rejects_field_past_the_end() {
        let mut frame = [0u8; 40];
        assert_eq!(
            complete_checksum(&mut frame, 34, 6),
            Err(OffloadError::Truncated)
        );
        assert_eq!(
            complete_checksum(&mut frame, 39, 0),
            Err(OffloadError::Truncated)
        );
        assert_eq!(
            complete_checksum(&mut frame, usize::MAX, 2),
            Err(OffloadError::Truncated)
        );
        assert_eq!(
            complete_checksum(&mut frame, 2, usize::MAX - 1),
            Err(OffloadError::Truncated)
        );
        assert_eq!(frame, [0u8; 40], "nothing written");
        assert!(complete_checksum(&mut frame, 38, 0).is_ok());
    }
}
