//! Raw frames for tests: an `AF_PACKET` socket bound to one interface, and builders for
//! Ethernet/IPv4/UDP(/VXLAN) and Ethernet/IP/TCP frames whose every field the caller controls,
//! wrong ones included. Checksums come from [`crate::checksum`], never from the code under test.
//!
//! Sockets belong to the network namespace of the thread that opens them, so open them inside
//! [`crate::Netns::enter`]; they can be used from any thread afterwards.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::checksum::{
    fix_tcp_checksum, internet_checksum, ones_complement_sum, tcp_pseudo_header,
};

/// Offsets in a frame built by [`Udp4::frame`].
pub mod offset {
    /// Start of the IPv4 header.
    pub const IP: usize = 14;
    /// Start of the UDP header (no IP options).
    pub const UDP: usize = 34;
    /// Start of the UDP payload (the VXLAN header).
    pub const PAYLOAD: usize = 42;
    /// Start of the inner frame behind a VXLAN header.
    pub const INNER: usize = 50;
}

/// A packet socket bound to one interface and one EtherType (`ETH_P_ALL` = 3 for every frame).
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    /// Frames the kernel handed to this socket (delivered or dropped), summed over reads of
    /// `PACKET_STATISTICS` (each read resets the kernel's counters).
    seen: AtomicU64,
    /// Of those, dropped for lack of receive buffer.
    dropped: AtomicU64,
}

fn os_err(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

impl PacketSocket {
    /// Opens a raw packet socket on `ifname` (in the calling thread's namespace) receiving
    /// frames of `ethertype`.
    pub fn bind(ifname: &str, ethertype: u16) -> io::Result<PacketSocket> {
        let proto = ethertype.to_be();
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        };
        if fd < 0 {
            return Err(os_err("socket(AF_PACKET)"));
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let name = std::ffi::CString::new(ifname).map_err(io::Error::other)?;
        // SAFETY: name is a valid NUL-terminated string.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(os_err(&format!("if_nametoindex({ifname})")));
        }
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = index as i32;
        // SAFETY: sll is a valid sockaddr_ll of the given length.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc != 0 {
            return Err(os_err(&format!("bind(AF_PACKET, {ifname})")));
        }
        Ok(PacketSocket {
            fd,
            seen: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    /// Sets a socket option of type int.
    fn set_int(&self, level: i32, name: i32, value: i32) -> io::Result<()> {
        // SAFETY: value is an int of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (&value as *const i32).cast(),
                std::mem::size_of::<i32>() as u32,
            )
        };
        if rc != 0 {
            return Err(os_err("setsockopt"));
        }
        Ok(())
    }

    /// Sends straight to the driver, past the qdisc (`PACKET_QDISC_BYPASS`).
    pub fn bypass_qdisc(&self) -> io::Result<()> {
        const PACKET_QDISC_BYPASS: i32 = 20;
        self.set_int(libc::SOL_PACKET, PACKET_QDISC_BYPASS, 1)
    }

    /// Sets the send buffer, past `wmem_max` (`SO_SNDBUFFORCE`, needs CAP_NET_ADMIN).
    pub fn set_send_buffer(&self, bytes: i32) -> io::Result<()> {
        self.set_int(libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, bytes)
    }

    /// Sends one frame as is.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: frame is a valid buffer of the given length.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(os_err("send(AF_PACKET)"));
        }
        Ok(())
    }

    /// Sends `frames` with one `sendmmsg`; how many the kernel took (a prefix).
    pub fn send_many(&self, frames: &[&[u8]]) -> io::Result<usize> {
        let mut iovs: Vec<libc::iovec> = frames
            .iter()
            .map(|f| libc::iovec {
                iov_base: f.as_ptr() as *mut libc::c_void,
                iov_len: f.len(),
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .map(|iov| {
                // SAFETY: mmsghdr is plain data; zeroed is valid.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        // SAFETY: msgs points at valid headers whose iovecs point at live buffers.
        let n =
            unsafe { libc::sendmmsg(self.fd.as_raw_fd(), msgs.as_mut_ptr(), msgs.len() as u32, 0) };
        if n < 0 {
            return Err(os_err("sendmmsg(AF_PACKET)"));
        }
        Ok(n as usize)
    }

    /// Frames of its EtherType the kernel has handed to this socket so far, and how many of
    /// them it dropped for lack of buffer (`PACKET_STATISTICS`; the socket need not be read).
    pub fn seen(&self) -> io::Result<(u64, u64)> {
        #[repr(C)]
        #[derive(Default)]
        struct TpacketStats {
            packets: u32,
            drops: u32,
        }
        const PACKET_STATISTICS: i32 = 6;
        let mut st = TpacketStats::default();
        let mut len = std::mem::size_of::<TpacketStats>() as u32;
        // SAFETY: st is a tpacket_stats-sized buffer and len its size.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_STATISTICS,
                (&mut st as *mut TpacketStats).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(os_err("getsockopt(PACKET_STATISTICS)"));
        }
        // The kernel reports packets including drops, and resets both on read.
        let seen = self
            .seen
            .fetch_add(u64::from(st.packets), Ordering::Relaxed)
            + u64::from(st.packets);
        let dropped = self
            .dropped
            .fetch_add(u64::from(st.drops), Ordering::Relaxed)
            + u64::from(st.drops);
        Ok((seen, dropped))
    }
}

/// An Ethernet + IPv4 + UDP frame. [`Udp4::frame`] writes consistent lengths and a correct IPv4
/// header checksum (UDP checksum 0, allowed over IPv4); tests then break what they want.
#[derive(Debug, Clone, Copy)]
pub struct Udp4 {
    /// Ethernet source.
    pub src_mac: [u8; 6],
    /// Ethernet destination.
    pub dst_mac: [u8; 6],
    /// IPv4 source.
    pub src_ip: Ipv4Addr,
    /// IPv4 destination.
    pub dst_ip: Ipv4Addr,
    /// UDP source port.
    pub src_port: u16,
    /// UDP destination port.
    pub dst_port: u16,
    /// IPv4 identification.
    pub ident: u16,
    /// IPv4 flags and fragment offset (host order; 0x4000 = DF).
    pub flags_frag: u16,
}

impl Udp4 {
    /// The whole frame carrying `payload`.
    pub fn frame(&self, payload: &[u8]) -> Vec<u8> {
        let ip_len = 20 + 8 + payload.len();
        let mut f = Vec::with_capacity(14 + ip_len);
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        f.push(0x45);
        f.push(0);
        f.extend_from_slice(&(ip_len as u16).to_be_bytes());
        f.extend_from_slice(&self.ident.to_be_bytes());
        f.extend_from_slice(&self.flags_frag.to_be_bytes());
        f.push(64);
        f.push(17);
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&self.src_ip.octets());
        f.extend_from_slice(&self.dst_ip.octets());
        f.extend_from_slice(&self.src_port.to_be_bytes());
        f.extend_from_slice(&self.dst_port.to_be_bytes());
        f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        fix_ipv4_checksum(&mut f);
        f
    }
}

/// An Ethernet + IPv4 or IPv6 + TCP frame, the family from the addresses. [`Tcp::frame`] writes
/// consistent lengths and correct checksums; tests then break what they want. `Default` is an
/// empty ACK-less segment between unspecified IPv4 addresses with DF set and TTL 64.
#[derive(Debug, Clone)]
pub struct Tcp {
    /// Ethernet source.
    pub src_mac: [u8; 6],
    /// Ethernet destination.
    pub dst_mac: [u8; 6],
    /// IP source; of the same family as `dst_ip`.
    pub src_ip: IpAddr,
    /// IP destination.
    pub dst_ip: IpAddr,
    /// The IPv4 DSCP/ECN byte, or the IPv6 traffic class.
    pub tos: u8,
    /// IPv4 TTL, or IPv6 hop limit.
    pub ttl: u8,
    /// IPv4 identification (IPv6 has none).
    pub ident: u16,
    /// IPv4 don't-fragment flag.
    pub dont_fragment: bool,
    /// IPv6 flow label (20 bits).
    pub flow_label: u32,
    /// TCP source port.
    pub src_port: u16,
    /// TCP destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// TCP flags (0x02 SYN, 0x10 ACK, ...).
    pub flags: u8,
    /// Receive window.
    pub window: u16,
    /// Urgent pointer.
    pub urgent: u16,
    /// TCP options, a multiple of 4 bytes.
    pub options: Vec<u8>,
}

impl Default for Tcp {
    fn default() -> Self {
        Tcp {
            src_mac: [0; 6],
            dst_mac: [0; 6],
            src_ip: Ipv4Addr::UNSPECIFIED.into(),
            dst_ip: Ipv4Addr::UNSPECIFIED.into(),
            tos: 0,
            ttl: 64,
            ident: 0,
            dont_fragment: true,
            flow_label: 0,
            src_port: 0,
            dst_port: 0,
            seq: 0,
            ack: 0,
            flags: 0,
            window: 0,
            urgent: 0,
            options: Vec::new(),
        }
    }
}

impl Tcp {
    /// The whole frame carrying `payload`, every checksum right.
    pub fn frame(&self, payload: &[u8]) -> Vec<u8> {
        let mut f = self.headers_and(payload);
        let (t, end) = (self.tcp_start(), f.len());
        fix_tcp_checksum(&mut f, t, end);
        f
    }

    /// The frame with the TCP checksum field holding the pseudo header sum instead: what a
    /// kernel sender with checksum offload hands over (`CHECKSUM_PARTIAL`).
    pub fn partial_frame(&self, payload: &[u8]) -> Vec<u8> {
        let mut f = self.headers_and(payload);
        let t = self.tcp_start();
        let partial = ones_complement_sum(&[&tcp_pseudo_header(&f, f.len() - t)]);
        f[t + 16..t + 18].copy_from_slice(&partial.to_be_bytes());
        f
    }

    fn tcp_start(&self) -> usize {
        match self.src_ip {
            IpAddr::V4(_) => 34,
            IpAddr::V6(_) => 54,
        }
    }

    /// Ethernet, IP and TCP headers and `payload`, the TCP checksum field zero.
    fn headers_and(&self, payload: &[u8]) -> Vec<u8> {
        assert_eq!(self.options.len() % 4, 0, "TCP options are whole words");
        let tcp_len = 20 + self.options.len() + payload.len();
        let mut f = Vec::with_capacity(54 + tcp_len);
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        match (self.src_ip, self.dst_ip) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                f.extend_from_slice(&[0x45, self.tos]);
                f.extend_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
                f.extend_from_slice(&self.ident.to_be_bytes());
                let df = if self.dont_fragment { 0x40 } else { 0 };
                f.extend_from_slice(&[df, 0, self.ttl, 6, 0, 0]);
                f.extend_from_slice(&src.octets());
                f.extend_from_slice(&dst.octets());
                fix_ipv4_checksum(&mut f);
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                f.extend_from_slice(&0x86ddu16.to_be_bytes());
                let first_word =
                    6 << 28 | u32::from(self.tos) << 20 | (self.flow_label & 0x000f_ffff);
                f.extend_from_slice(&first_word.to_be_bytes());
                f.extend_from_slice(&(tcp_len as u16).to_be_bytes());
                f.extend_from_slice(&[6, self.ttl]);
                f.extend_from_slice(&src.octets());
                f.extend_from_slice(&dst.octets());
            }
            _ => panic!("TCP frame with addresses of two families"),
        }
        f.extend_from_slice(&self.src_port.to_be_bytes());
        f.extend_from_slice(&self.dst_port.to_be_bytes());
        f.extend_from_slice(&self.seq.to_be_bytes());
        f.extend_from_slice(&self.ack.to_be_bytes());
        f.push((((20 + self.options.len()) / 4) << 4) as u8);
        f.push(self.flags);
        f.extend_from_slice(&self.window.to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&self.urgent.to_be_bytes());
        f.extend_from_slice(&self.options);
        f.extend_from_slice(payload);
        f
    }
}

/// A VXLAN header (RFC 7348): `flags` (0x08 = I), `vni` in the upper 24 bits of the second word.
pub fn vxlan_header(flags: u8, vni: u32) -> [u8; 8] {
    let v = (vni << 8).to_be_bytes();
    [flags, 0, 0, 0, v[0], v[1], v[2], v[3]]
}

/// An inner Ethernet frame: `dst`, `src`, `ethertype`, then `payload_len` bytes of filler.
pub fn ethernet_frame(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload_len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload_len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend((0..payload_len).map(|i| i as u8));
    f
}

/// Recomputes the IPv4 header checksum of a frame from [`Udp4::frame`] (header length from
/// IHL, clamped to the frame).
pub fn fix_ipv4_checksum(frame: &mut [u8]) {
    let ihl = usize::from(frame[offset::IP] & 0x0f) * 4;
    let end = (offset::IP + ihl.max(20)).min(frame.len());
    frame[offset::IP + 10] = 0;
    frame[offset::IP + 11] = 0;
    let c = internet_checksum(&[&frame[offset::IP..end]]);
    frame[offset::IP + 10..offset::IP + 12].copy_from_slice(&c.to_be_bytes());
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.trim().split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Sends ICMP echo requests to `dst` (from the calling thread's namespace) every `interval`
/// until one is answered or `deadline` passes; the instant the first reply arrived. Precise to
/// about `interval`, unlike spawning `ping` in a loop.
pub fn first_echo_reply(
    dst: Ipv4Addr,
    interval: std::time::Duration,
    deadline: std::time::Instant,
) -> io::Result<Option<std::time::Instant>> {
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMP,
        )
    };
    if fd < 0 {
        return Err(os_err("socket(AF_INET, SOCK_RAW, ICMP)"));
    }
    // SAFETY: fd is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: interval.as_micros().clamp(1000, 999_999) as libc::suseconds_t,
    };
    // SAFETY: tv is a timeval of the size passed.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    // SAFETY: sockaddr_in is plain data.
    let mut to: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    to.sin_family = libc::AF_INET as u16;
    to.sin_addr.s_addr = u32::from(dst).to_be();
    static NEXT_ID: AtomicU64 = AtomicU64::new(0);
    let id = (std::process::id() as u16) ^ (NEXT_ID.fetch_add(1, Ordering::Relaxed) as u16) << 11;
    let mut seq: u16 = 0;
    let mut buf = [0u8; 1500];
    while std::time::Instant::now() < deadline {
        seq = seq.wrapping_add(1);
        let mut req = vec![8u8, 0, 0, 0];
        req.extend_from_slice(&id.to_be_bytes());
        req.extend_from_slice(&seq.to_be_bytes());
        req.extend_from_slice(b"vxdp-test-probe!");
        let c = internet_checksum(&[&req]);
        req[2..4].copy_from_slice(&c.to_be_bytes());
        // SAFETY: req and to are valid for the lengths passed.
        let sent = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                req.as_ptr().cast(),
                req.len(),
                0,
                (&to as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            )
        };
        let next = std::time::Instant::now() + interval;
        if sent < 0 {
            // No route yet (the overlay is coming up): wait and try again.
            std::thread::sleep(interval);
            continue;
        }
        // Read replies until the next probe is due; any reply to any of our probes counts.
        while std::time::Instant::now() < next {
            // SAFETY: buf is valid for its length.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                break;
            }
            let pkt = &buf[..n as usize];
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            let Some(icmp) = pkt.get(ihl..ihl + 8) else {
                continue;
            };
            let from = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
            if icmp[0] == 0 && from == dst && u16::from_be_bytes([icmp[4], icmp[5]]) == id {
                return Ok(Some(std::time::Instant::now()));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::tcp_sum;

    #[test]
    fn frames_have_consistent_lengths_and_checksums() {
        let f = Udp4 {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src_ip: Ipv4Addr::new(192, 0, 2, 9),
            dst_ip: Ipv4Addr::new(192, 0, 2, 1),
            src_port: 40000,
            dst_port: 8472,
            ident: 1,
            flags_frag: 0x4000,
        }
        .frame(&vxlan_header(0x08, 1));
        assert_eq!(f.len(), 14 + 20 + 8 + 8);
        assert_eq!(
            internet_checksum(&[&f[14..34]]),
            0,
            "a correct header sums to zero"
        );
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 36);
        assert_eq!(u16::from_be_bytes([f[38], f[39]]), 16);
        assert_eq!(&f[42..50], &[8, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(parse_mac("02:00:0a:FF:00:01"), Some([2, 0, 10, 255, 0, 1]));
        assert_eq!(parse_mac("02:00:0a:ff:00"), None);
    }

    #[test]
    fn tcp_frames_have_consistent_lengths_and_checksums() {
        let v4: (IpAddr, IpAddr) = (
            Ipv4Addr::new(10, 5, 1, 2).into(),
            Ipv4Addr::new(10, 5, 2, 3).into(),
        );
        let v6: (IpAddr, IpAddr) = ("fd01::2".parse().unwrap(), "fd02::3".parse().unwrap());
        for (src_ip, dst_ip) in [v4, v6] {
            let tcp = Tcp {
                src_mac: [2, 0, 0, 0, 0, 1],
                dst_mac: [2, 0, 0, 0, 0, 2],
                src_ip,
                dst_ip,
                ident: 7,
                src_port: 40000,
                dst_port: 5201,
                seq: 1,
                ack: 2,
                flags: 0x18,
                window: 502,
                options: vec![1, 1, 1, 1],
                ..Tcp::default()
            };
            let f = tcp.frame(b"hello");
            let t = if src_ip.is_ipv4() { 34 } else { 54 };
            assert_eq!(f.len(), t + 24 + 5);
            assert_eq!(f[t + 12], 6 << 4, "data offset");
            assert_eq!(tcp_sum(&f, t, f.len()), 0xffff);
            if src_ip.is_ipv4() {
                assert_eq!(internet_checksum(&[&f[14..34]]), 0);
                assert_eq!(
                    usize::from(u16::from_be_bytes([f[16], f[17]])),
                    f.len() - 14
                );
            } else {
                assert_eq!(
                    usize::from(u16::from_be_bytes([f[18], f[19]])),
                    f.len() - 54
                );
            }
            // The partial frame differs in the checksum field alone, which holds the pseudo
            // header sum.
            let p = tcp.partial_frame(b"hello");
            assert_eq!(p[..t + 16], f[..t + 16]);
            assert_eq!(p[t + 18..], f[t + 18..]);
            let pseudo = ones_complement_sum(&[&tcp_pseudo_header(&f, f.len() - t)]);
            assert_eq!(u16::from_be_bytes([p[t + 16], p[t + 17]]), pseudo);
        }
    }
}
