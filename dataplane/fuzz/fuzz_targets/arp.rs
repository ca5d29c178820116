//! Arbitrary frames through `answer_arp_request`: it never panics, leaves what it does not
//! answer untouched, and a reply swaps the roles the request gave.
#![no_main]

use std::net::Ipv4Addr;

use packet::arp_responder::{answer_arp_request, ArpAnswer, REPLY_LEN};
use packet::wire::MacAddr;
use libfuzzer_sys::fuzz_target;

/// Knows every address with an even last octet.
fn resolve(ip: Ipv4Addr) -> Option<MacAddr> {
    let o = ip.octets();
    (o[3] & 1 == 0).then_some(MacAddr([0x9a, 0x3b, o[0], o[1], o[2], o[3]]))
}

fuzz_target!(|data: &[u8]| {
    // The last byte, when there is one, shortens `len` so that len < buffer is exercised.
    let (len, frame) = match data.split_last() {
        Some((&cut, rest)) => (rest.len().saturating_sub(usize::from(cut % 8)), rest),
        None => (0, data),
    };
    let mut buf = frame.to_vec();
    match answer_arp_request(&mut buf, len, resolve) {
        ArpAnswer::Reply { len: reply_len } => {
            assert_eq!(reply_len, REPLY_LEN);
            assert!(reply_len <= len);
            let (req, rep) = (&frame[..len], &buf[..reply_len]);
            let mac = resolve(Ipv4Addr::new(req[38], req[39], req[40], req[41])).unwrap();
            assert_eq!(rep[0..6], req[22..28], "to the requester");
            assert_eq!(rep[6..12], mac.0);
            assert_eq!(rep[12..14], [0x08, 0x06]);
            assert_eq!(rep[20..22], [0, 2], "a reply");
            assert_eq!(rep[22..28], mac.0);
            assert_eq!(rep[28..32], req[38..42]);
            assert_eq!(rep[32..38], req[22..28]);
            assert_eq!(rep[38..42], req[28..32]);
            assert_eq!(buf[reply_len..], frame[reply_len..]);
        }
        _ => assert_eq!(buf, frame),
    }
});
