//! `struct virtio_net_hdr` (virtio 1.x section 5.1.6, `include/uapi/linux/virtio_net.h`): the
//! 10 bytes tun puts in front of every frame once `IFF_VNET_HDR` is set, and expects in front of
//! every frame written.
//!
//! Byte order: tun reads and writes these fields little-endian when `TUNSETVNETLE` is set, and
//! in the host's order otherwise (`tun_is_little_endian`: legacy virtio is native-endian). vxdp
//! does not set `TUNSETVNETLE` and only builds for little-endian hosts, where both agree; the
//! `compile_error!` below stops a big-endian build instead of silently misreading every field.

use super::OffloadError;

#[cfg(target_endian = "big")]
compile_error!(
    "offload::vnet reads virtio_net_hdr fields as little-endian, but tun uses the host's byte \
     order unless TUNSETVNETLE is set: set TUNSETVNETLE on the TAP before enabling this build"
);

/// Length of `struct virtio_net_hdr` (without the `num_buffers` of the mergeable variant, which
/// tun uses only when its header size is set larger with `TUNSETVNETHDRSZ`).
pub const VNET_HDR_LEN: usize = 10;

/// The fields of a `struct virtio_net_hdr`, in host order.
///
/// `csum_start` and `hdr_len` count from the start of the Ethernet frame that follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct VnetHdr {
    /// [`VnetHdr::F_NEEDS_CSUM`], [`VnetHdr::F_DATA_VALID`].
    pub flags: u8,
    /// [`VnetHdr::GSO_NONE`], [`VnetHdr::GSO_TCPV4`], ..., possibly with [`VnetHdr::GSO_ECN`].
    pub gso_type: u8,
    /// How many bytes of headers the frame has. From the kernel it is only a hint, the length
    /// of the skb's linear part (`virtio_net_hdr_from_skb`), which may be more or less than the
    /// real headers; parse the headers instead of trusting it.
    pub hdr_len: u16,
    /// The payload size of each segment (the MSS) when `gso_type` is not `GSO_NONE`.
    pub gso_size: u16,
    /// Where the checksummed range starts when `F_NEEDS_CSUM` is set: the transport header.
    pub csum_start: u16,
    /// Where, counted from `csum_start`, the checksum goes (16 for TCP, 6 for UDP).
    pub csum_offset: u16,
}

impl VnetHdr {
    /// The checksum is partial: the field at `csum_start + csum_offset` holds the pseudo header
    /// sum, and the ones' complement sum from `csum_start` to the end has to be folded into it
    /// (the skb is `CHECKSUM_PARTIAL`).
    pub const F_NEEDS_CSUM: u8 = 1;
    /// The checksum has been verified (`CHECKSUM_UNNECESSARY`). Set by the kernel on read only;
    /// tun ignores it on write.
    pub const F_DATA_VALID: u8 = 2;
    /// Not a super-frame.
    pub const GSO_NONE: u8 = 0;
    /// A TCP over IPv4 super-frame, to be cut into `gso_size` segments.
    pub const GSO_TCPV4: u8 = 1;
    /// A UDP datagram to be IP-fragmented (UFO; the kernel no longer produces it).
    pub const GSO_UDP: u8 = 3;
    /// A TCP over IPv6 super-frame.
    pub const GSO_TCPV6: u8 = 4;
    /// Flag on `gso_type`: the first segment carries CWR (`SKB_GSO_TCP_ECN`), the others must
    /// not.
    pub const GSO_ECN: u8 = 0x80;

    /// Reads the first [`VNET_HDR_LEN`] bytes of `buf`; `Truncated` if there are fewer. Field
    /// values are not checked here: [`TcpSegments::new`](super::TcpSegments::new) checks them
    /// against the frame.
    #[inline]
    pub fn parse(buf: &[u8]) -> Result<VnetHdr, OffloadError> {
        let b = buf.get(..VNET_HDR_LEN).ok_or(OffloadError::Truncated)?;
        let le = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
        Ok(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
        })
    }

    /// Writes the header into the first [`VNET_HDR_LEN`] bytes of `buf`.
    ///
    /// Panics if `buf` is shorter, like slice indexing: callers size their own buffers.
    #[inline]
    pub fn emit(&self, buf: &mut [u8]) {
        let b = &mut buf[..VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
    }

    /// Whether the frame is a super-frame to be segmented.
    #[inline]
    pub const fn is_gso(&self) -> bool {
        self.gso_type & !Self::GSO_ECN != Self::GSO_NONE
    }

    /// Whether the frame's checksum is partial and must be completed before it leaves.
    #[inline]
    pub const fn needs_csum(&self) -> bool {
        self.flags & Self::F_NEEDS_CSUM != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_layout() {
        // A header as tun writes it for a TCPv4 super-frame on x86: NEEDS_CSUM, TCPV4,
        // hdr_len 66, gso_size 1448, csum_start 34, csum_offset 16.
        let raw = [0x01, 0x01, 0x42, 0x00, 0xa8, 0x05, 0x22, 0x00, 0x10, 0x00];
        let hdr = VnetHdr::parse(&raw).unwrap();
        assert_eq!(
            hdr,
            VnetHdr {
                flags: VnetHdr::F_NEEDS_CSUM,
                gso_type: VnetHdr::GSO_TCPV4,
                hdr_len: 66,
                gso_size: 1448,
                csum_start: 34,
                csum_offset: 16,
            }
        );
        assert!(hdr.is_gso() && hdr.needs_csum());
        let mut out = [0xffu8; 12];
        hdr.emit(&mut out);
        assert_eq!(out[..10], raw);
        assert_eq!(out[10..], [0xff, 0xff], "wrote past the header");
    }

    #[test]
    fn ecn_flag_alone_is_not_gso() {
        let hdr = VnetHdr {
            gso_type: VnetHdr::GSO_ECN,
            ..VnetHdr::default()
        };
        assert!(!hdr.is_gso());
        let hdr = VnetHdr {
            gso_type: VnetHdr::GSO_TCPV6 | VnetHdr::GSO_ECN,
            ..VnetHdr::default()
        };
        assert!(hdr.is_gso());
    }

    #[test]
    fn short_buffers_are_truncated() {
        for len in 0..VNET_HDR_LEN {
            assert_eq!(
                VnetHdr::parse(&[0u8; VNET_HDR_LEN][..len]),
                Err(OffloadError::Truncated)
            );
        }
        assert_eq!(
            VnetHdr::parse(&[0u8; 64]).unwrap(),
            VnetHdr::default(),
            "longer buffers read the first 10 bytes"
        );
    }
}
