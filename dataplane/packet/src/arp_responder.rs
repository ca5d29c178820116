//! Answers, in userspace, the ARP requests the kernel sends out of the TAP for peer gateway
//! addresses (flannel's `10.x.y.0` on each peer), from the ARP table built from leases. flanneld
//! instead programs permanent neighbour entries over netlink; answering here means no neighbour
//! churn, and the kernel caches the reply like any other.

use std::net::Ipv4Addr;

use crate::wire::{
    arp, ethernet, ArpOperation, ArpPacket, ArpRepr, EtherType, EthernetFrame, EthernetRepr,
    MacAddr,
};

/// Length of the reply frame: Ethernet header + Ethernet/IPv4 ARP, no padding (a TAP needs none).
pub const REPLY_LEN: usize = ethernet::HEADER_LEN + arp::PACKET_LEN;

/// What [`answer_arp_request`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArpAnswer {
    /// `frame[..len]` now holds the reply; write it back to the TAP.
    Reply {
        /// Length of the reply frame ([`REPLY_LEN`]).
        len: usize,
    },
    /// Not an ARP frame: the caller should encapsulate it.
    NotArp,
    /// ARP, but not a request to answer: a reply, another opcode, or a gratuitous ARP
    /// (sender and target address equal: an announcement, not a question).
    NotRequest,
    /// A request for an address the table does not know; left for nobody to answer, as a
    /// kernel vxlan link with `proxy` would.
    Unknown,
    /// Truncated ARP, a non-Ethernet/IPv4 ARP, or `len` beyond the buffer.
    Malformed,
}

/// If `frame[..len]` is an ARP request for an address `resolve` knows, rewrites it in place into
/// the reply for the requester: Ethernet destination = requester, source = the resolved MAC;
/// ARP sender = resolved MAC and the asked address, ARP target = the requester.
#[inline]
pub fn answer_arp_request(
    frame: &mut [u8],
    len: usize,
    resolve: impl Fn(Ipv4Addr) -> Option<MacAddr>,
) -> ArpAnswer {
    let Some(frame) = frame.get_mut(..len) else {
        return ArpAnswer::Malformed;
    };
    let Ok(eth) = EthernetFrame::new_checked(&*frame) else {
        return ArpAnswer::Malformed;
    };
    if eth.ethertype() != EtherType::Arp {
        return ArpAnswer::NotArp;
    }
    let request = match ArpPacket::new_checked(eth.payload()).and_then(|p| ArpRepr::parse(&p)) {
        Ok(repr) => repr,
        Err(_) => return ArpAnswer::Malformed,
    };
    if request.operation != ArpOperation::Request
        || request.source_protocol_addr == request.target_protocol_addr
    {
        return ArpAnswer::NotRequest;
    }
    let Some(mac) = resolve(request.target_protocol_addr) else {
        return ArpAnswer::Unknown;
    };

    let mut eth = EthernetFrame::new_unchecked(&mut frame[..REPLY_LEN]);
    EthernetRepr {
        src_addr: mac,
        dst_addr: request.source_hardware_addr,
        ethertype: EtherType::Arp,
    }
    .emit(&mut eth);
    ArpRepr {
        operation: ArpOperation::Reply,
        source_hardware_addr: mac,
        source_protocol_addr: request.target_protocol_addr,
        target_hardware_addr: request.source_hardware_addr,
        target_protocol_addr: request.source_protocol_addr,
    }
    .emit(&mut ArpPacket::new_unchecked(eth.payload_mut()));
    ArpAnswer::Reply { len: REPLY_LEN }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::captured;

    const PEER_MAC: MacAddr = MacAddr([0x9a, 0x3b, 0x5c, 0x7d, 0x1e, 0x02]);

    fn table(ip: Ipv4Addr) -> Option<MacAddr> {
        (ip == Ipv4Addr::new(10, 1, 2, 0)).then_some(PEER_MAC)
    }

    #[test]
    fn answers_like_the_peer_kernel_did() {
        // The kernel's request out of a flannel-style link, answered in place, must come out
        // byte for byte as the reply the peer's kernel sent in the same capture.
        let mut frame = captured::OVERLAY_ARP_REQUEST;
        let answer = answer_arp_request(&mut frame, REPLY_LEN, table);
        assert_eq!(answer, ArpAnswer::Reply { len: REPLY_LEN });
        assert_eq!(frame, captured::OVERLAY_ARP_REPLY);
    }

    #[test]
    fn padded_request_from_a_wire_answers_without_padding() {
        let mut frame = [0u8; 60];
        frame[..42].copy_from_slice(&captured::OVERLAY_ARP_REQUEST);
        assert_eq!(
            answer_arp_request(&mut frame, 60, table),
            ArpAnswer::Reply { len: 42 }
        );
        assert_eq!(frame[..42], captured::OVERLAY_ARP_REPLY);
    }

    #[test]
    fn declines_what_it_should_not_answer() {
        let mut reply = captured::OVERLAY_ARP_REPLY;
        assert_eq!(
            answer_arp_request(&mut reply, 42, table),
            ArpAnswer::NotRequest
        );
        assert_eq!(reply, captured::OVERLAY_ARP_REPLY, "left untouched");

        let mut unknown = captured::UNDERLAY_ARP_REQUEST;
        assert_eq!(
            answer_arp_request(&mut unknown, 42, table),
            ArpAnswer::Unknown
        );
        assert_eq!(unknown, captured::UNDERLAY_ARP_REQUEST);

        let mut gratuitous = captured::OVERLAY_ARP_REQUEST;
        gratuitous.copy_within(28..32, 38);
        assert_eq!(
            answer_arp_request(&mut gratuitous, 42, |_| Some(PEER_MAC)),
            ArpAnswer::NotRequest
        );

        let mut ip = captured::V4_CSUM_ICMP;
        assert_eq!(answer_arp_request(&mut ip, 148, table), ArpAnswer::NotArp);
        let mut inner_ip = captured::V4_CSUM_ICMP[50..].to_vec();
        assert_eq!(
            answer_arp_request(&mut inner_ip, 98, table),
            ArpAnswer::NotArp
        );
    }

    #[test]
    fn malformed_inputs() {
        let mut frame = captured::OVERLAY_ARP_REQUEST;
        // Cut anywhere: too short for Ethernet, or for the ARP packet.
        for len in 0..42 {
            assert_eq!(
                answer_arp_request(&mut frame, len, table),
                ArpAnswer::Malformed,
                "{len}"
            );
        }
        assert_eq!(
            answer_arp_request(&mut frame, 43, table),
            ArpAnswer::Malformed
        );
        assert_eq!(
            answer_arp_request(&mut frame, usize::MAX, table),
            ArpAnswer::Malformed
        );
        assert_eq!(frame, captured::OVERLAY_ARP_REQUEST);
        let mut other_hw = captured::OVERLAY_ARP_REQUEST;
        other_hw[15] = 6; // htype IEEE 802
        assert_eq!(
            answer_arp_request(&mut other_hw, 42, table),
            ArpAnswer::Malformed
        );
    }
}
