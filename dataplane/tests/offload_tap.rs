//! The offloads against the real kernel, on a TAP opened with `IFF_VNET_HDR` and
//! `TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)` in a throwaway namespace. The test plays
//! a TCP peer on the other side of the TAP, over IPv4 and IPv6:
//!
//! - the kernel sends: its super-frames are cut with `TcpSegments` (partial checksums of plain
//!   frames completed with `complete_checksum`), every segment's checksum is verified
//!   independently, and the bytes must arrive whole and in order;
//! - the kernel receives: our segments go through `Coalescer` and are written as super-frames;
//!   the kernel's socket must read exactly the bytes sent, which it only does if it accepted
//!   the vnet headers, lengths and partial checksums.
//!
//! With `VXDP_OFFLOAD_CAPTURE=<dir>`, the first super-frame of each family the kernel hands over
//! is written there (vnet header + frame), for fixtures and fuzz seeds.

#![allow(
    clippy::cast_possible_truncation,
    reason = "test streams are made from counters by truncation; sequence numbers wrap on purpose"
)]

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use packet::offload::{complete_checksum, Coalescer, Push, TcpSegments, VnetHdr, VNET_HDR_LEN};
use testkit::checksum::{ones_complement_sum, tcp_sum};
use testkit::packet::Tcp;
use testkit::{require_root, unique_prefix, Netns};

const TAP: &str = "vxoff0";
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const LOCAL4: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
const PEER4: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);
const LOCAL6: Ipv6Addr = Ipv6Addr::new(0xfd09, 0, 0, 0, 0, 0, 0, 1);
const PEER6: Ipv6Addr = Ipv6Addr::new(0xfd09, 0, 0, 0, 0, 0, 0, 2);
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;
const SYN: u8 = 0x02;
const FIN: u8 = 0x01;

/// Opens the TAP in the calling thread's namespace, with vnet headers and TSO.
fn open_tap() -> OwnedFd {
    // SAFETY: plain open of a device node; the result is checked.
    let fd = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    assert!(
        fd >= 0,
        "open /dev/net/tun: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: we own the descriptor just opened.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(TAP.bytes()) {
        *d = s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
    // SAFETY: TUNSETIFF with a valid ifreq.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
    assert_eq!(rc, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
    let offloads = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
    // SAFETY: TUNSETOFFLOAD takes its argument by value.
    let rc = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETOFFLOAD,
            offloads as libc::c_ulong,
        )
    };
    assert_eq!(rc, 0, "TUNSETOFFLOAD: {}", std::io::Error::last_os_error());
    fd
}

fn read_frame(fd: &OwnedFd, buf: &mut [u8], deadline: Instant) -> Option<usize> {
    loop {
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Some(n as usize);
        }
        let e = std::io::Error::last_os_error();
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "TAP read: {e}");
        if Instant::now() > deadline {
            return None;
        }
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, 10) };
    }
}

fn write_frame(fd: &OwnedFd, bytes: &[u8]) {
    // SAFETY: bytes is valid for reads of its length.
    let n = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
    assert_eq!(
        n,
        bytes.len() as isize,
        "TAP write of {} bytes: {}",
        bytes.len(),
        std::io::Error::last_os_error()
    );
}

/// One frame gathered from a header and payload slices with a single `writev`, as a worker
/// writes a coalesced super-frame.
fn write_gathered(fd: &OwnedFd, head: &[u8], payloads: &[&[u8]]) {
    let mut iov = vec![libc::iovec {
        iov_base: head.as_ptr() as *mut libc::c_void,
        iov_len: head.len(),
    }];
    iov.extend(payloads.iter().map(|p| libc::iovec {
        iov_base: p.as_ptr() as *mut libc::c_void,
        iov_len: p.len(),
    }));
    let total: usize = iov.iter().map(|v| v.iov_len).sum();
    // SAFETY: every iovec points at a live slice of its length.
    let n = unsafe { libc::writev(fd.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int) };
    assert_eq!(
        n,
        total as isize,
        "TAP writev of {total} bytes: {}",
        std::io::Error::last_os_error()
    );
}

fn be16(d: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([d[at], d[at + 1]])
}

fn be32(d: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]])
}

/// One side of the test's TCP connection: addresses, ports and MACs.
#[derive(Clone, Copy)]
struct Flow {
    v6: bool,
    local_mac: [u8; 6],
    /// The test's port.
    peer_port: u16,
    /// The kernel's port; 0 until learnt from its SYN.
    kernel_port: u16,
}

impl Flow {
    fn tcp_start(&self) -> usize {
        if self.v6 {
            54
        } else {
            34
        }
    }

    /// A segment from the test peer to the kernel, checksums filled in.
    fn segment(&self, seq: u32, ack: u32, flags: u8, ident: u16, payload: &[u8]) -> Vec<u8> {
        let (src_ip, dst_ip): (IpAddr, IpAddr) = if self.v6 {
            (PEER6.into(), LOCAL6.into())
        } else {
            (PEER4.into(), LOCAL4.into())
        };
        // A SYN carries MSS 1460 and window scale 7 options.
        let options = if flags & SYN != 0 {
            vec![2, 4, 0x05, 0xb4, 1, 3, 3, 7]
        } else {
            Vec::new()
        };
        Tcp {
            src_mac: PEER_MAC,
            dst_mac: self.local_mac,
            src_ip,
            dst_ip,
            ident,
            src_port: self.peer_port,
            dst_port: self.kernel_port,
            seq,
            ack,
            flags,
            window: u16::MAX,
            options,
            ..Tcp::default()
        }
        .frame(payload)
    }

    /// Whether `f` is TCP from the kernel to the test peer on this flow.
    fn is_ours(&self, f: &[u8]) -> bool {
        let t = self.tcp_start();
        let ethertype = if self.v6 { [0x86, 0xdd] } else { [0x08, 0x00] };
        let proto_at = if self.v6 { 20 } else { 23 };
        f.len() >= t + 20
            && f[12..14] == ethertype
            && f[proto_at] == 6
            && (self.kernel_port == 0 || be16(f, t) == self.kernel_port)
            && be16(f, t + 2) == self.peer_port
    }
}

/// The window scale option of a SYN's TCP header (RFC 7323), 0 without one.
fn window_scale(tcp: &[u8]) -> u8 {
    let end = usize::from(tcp[12] >> 4) * 4;
    let mut i = 20;
    while i < end {
        match tcp[i] {
            0 => break,
            1 => i += 1,
            kind => {
                let len = usize::from(tcp[i + 1]).max(2);
                if kind == 3 {
                    return tcp[i + 2];
                }
                i += len;
            }
        }
    }
    0
}

fn with_zero_vnet(frame: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; VNET_HDR_LEN];
    v.extend_from_slice(frame);
    v
}

fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_left(7) as u8 ^ salt)
        .collect()
}

fn setup(ns: &Netns) {
    ns.run(&["ip", "link", "set", TAP, "up"]);
    ns.run(&["ip", "addr", "add", "10.9.0.1/24", "dev", TAP]);
    ns.run(&["ip", "addr", "add", "fd09::1/64", "dev", TAP, "nodad"]);
    let mac = "02:00:00:00:00:02";
    ns.run(&[
        "ip",
        "neigh",
        "add",
        "10.9.0.2",
        "lladdr",
        mac,
        "dev",
        TAP,
        "nud",
        "permanent",
    ]);
    ns.run(&[
        "ip",
        "neigh",
        "add",
        "fd09::2",
        "lladdr",
        mac,
        "dev",
        TAP,
        "nud",
        "permanent",
    ]);
}

/// Statistics of the kernel-to-peer direction.
#[derive(Debug, Default)]
struct RxStats {
    gso_frames: usize,
    segments_from_gso: usize,
    partial_frames: usize,
}

/// The kernel connects and sends `data`; the test peer segments what it reads and ACKs.
fn kernel_sends(fd: &OwnedFd, ns: &Netns, mut flow: Flow, data: &[u8]) -> RxStats {
    let peer = SocketAddr::new(
        if flow.v6 { PEER6.into() } else { PEER4.into() },
        flow.peer_port,
    );
    std::thread::scope(|scope| {
        let sender = scope.spawn(|| {
            ns.enter(|| {
                let mut s = TcpStream::connect_timeout(&peer, Duration::from_secs(5))
                    .expect("kernel connects to the test peer");
                s.write_all(data).expect("kernel sends");
                s.shutdown(Shutdown::Write).unwrap();
                // Keep the socket until the peer has everything.
                std::thread::sleep(Duration::from_millis(300));
            })
        });
        let stats = peer_receives(fd, &mut flow, data);
        sender.join().unwrap();
        stats
    })
}

fn peer_receives(fd: &OwnedFd, flow: &mut Flow, data: &[u8]) -> RxStats {
    let mut stats = RxStats::default();
    let mut buf = vec![0u8; 70_000];
    let mut seg_buf = vec![0u8; 70_000];
    let mut got = Vec::new();
    let mut next: Option<u32> = None; // next sequence number expected
    let isn = 0x1000_0000u32;
    let deadline = Instant::now() + Duration::from_secs(20);
    let capture = std::env::var_os("VXDP_OFFLOAD_CAPTURE");
    let mut fin = false;
    while !fin {
        let n = read_frame(fd, &mut buf, deadline).expect("kernel data before the deadline");
        let hdr = VnetHdr::parse(&buf[..n]).unwrap();
        let frame = &mut buf[VNET_HDR_LEN..n];
        if !flow.is_ours(frame) {
            continue;
        }
        let mut segments: Vec<Vec<u8>> = Vec::new();
        if hdr.is_gso() {
            if stats.gso_frames == 0 {
                if let Some(dir) = &capture {
                    let name = if flow.v6 { "tso-v6.bin" } else { "tso-v4.bin" };
                    std::fs::write(std::path::Path::new(dir).join(name), &buf[..n]).unwrap();
                }
            }
            stats.gso_frames += 1;
            let frame = &buf[VNET_HDR_LEN..n];
            let segs = TcpSegments::new(frame, &hdr)
                .unwrap_or_else(|e| panic!("kernel super-frame {hdr:?}: {e}"));
            for i in 0..segs.len() {
                let len = segs.write(i, &mut seg_buf).unwrap();
                segments.push(seg_buf[..len].to_vec());
            }
            stats.segments_from_gso += segments.len();
        } else {
            if hdr.needs_csum() {
                stats.partial_frames += 1;
                complete_checksum(
                    frame,
                    usize::from(hdr.csum_start),
                    usize::from(hdr.csum_offset),
                )
                .unwrap();
            }
            segments.push(frame.to_vec());
        }
        for s in segments {
            let t = flow.tcp_start();
            assert_eq!(tcp_sum(&s, t, s.len()), 0xffff, "TCP checksum of a segment");
            if !flow.v6 {
                assert_eq!(
                    ones_complement_sum(&[&s[14..34]]),
                    0xffff,
                    "IPv4 header checksum"
                );
                assert_eq!(usize::from(be16(&s, 16)), s.len() - 14);
            } else {
                assert_eq!(usize::from(be16(&s, 18)), s.len() - 54);
            }
            let seq = be32(&s, t + 4);
            let flags = s[t + 13];
            let payload = &s[t + usize::from(s[t + 12] >> 4) * 4..];
            if flags & SYN != 0 {
                flow.kernel_port = be16(&s, t);
                next = Some(seq.wrapping_add(1));
                let synack = flow.segment(isn, seq.wrapping_add(1), SYN | ACK, 0, &[]);
                write_frame(fd, &with_zero_vnet(&synack));
                continue;
            }
            let Some(expected) = next else { continue };
            if seq == expected && !payload.is_empty() {
                got.extend_from_slice(payload);
                next = Some(expected.wrapping_add(payload.len() as u32));
            }
            if seq == next.unwrap() && flags & FIN != 0 {
                next = Some(next.unwrap().wrapping_add(1));
                fin = true;
            }
            let ack = flow.segment(isn.wrapping_add(1), next.unwrap(), ACK, 1, &[]);
            write_frame(fd, &with_zero_vnet(&ack));
        }
    }
    assert_eq!(got.len(), data.len(), "bytes received");
    assert!(got == data, "received bytes differ from the sent ones");
    stats
}

/// Statistics of the peer-to-kernel direction.
#[derive(Debug, Default)]
struct TxStats {
    super_frames: usize,
    segments_in_super_frames: usize,
    alone: usize,
}

/// The test peer connects to a kernel listener and sends `data` in segments of `mss` through a
/// `Coalescer`; the kernel's socket must read exactly `data`.
fn kernel_receives(fd: &OwnedFd, ns: &Netns, flow: Flow, data: &[u8], mss: usize) -> TxStats {
    let local: IpAddr = if flow.v6 {
        LOCAL6.into()
    } else {
        LOCAL4.into()
    };
    let listener = ns.enter(|| TcpListener::bind(SocketAddr::new(local, flow.kernel_port)));
    let listener = listener.expect("kernel listens");
    std::thread::scope(|scope| {
        let reader = scope.spawn(move || {
            let (mut s, _) = listener.accept().expect("kernel accepts");
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut v = Vec::new();
            s.read_to_end(&mut v).expect("kernel reads to EOF");
            v
        });
        let stats = peer_sends(fd, flow, data, mss);
        let got = reader.join().unwrap();
        assert_eq!(got.len(), data.len(), "bytes the kernel read");
        assert!(got == data, "the kernel read other bytes than were sent");
        stats
    })
}

fn peer_sends(fd: &OwnedFd, flow: Flow, data: &[u8], mss: usize) -> TxStats {
    let t = flow.tcp_start();
    let mut buf = vec![0u8; 70_000];
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut ident: u16 = 0x4000;
    let isn = 0x2000_0000u32;
    write_frame(fd, &with_zero_vnet(&flow.segment(isn, 0, SYN, ident, &[])));
    // The SYN-ACK gives the kernel's sequence number.
    let (kernel_isn, wscale) = loop {
        let n = read_frame(fd, &mut buf, deadline).expect("SYN-ACK before the deadline");
        let f = &buf[VNET_HDR_LEN..n];
        if flow.is_ours(f) && f[t + 13] == SYN | ACK {
            break (be32(f, t + 4), window_scale(&f[t..]));
        }
    };
    let rcv = kernel_isn.wrapping_add(1);
    ident = ident.wrapping_add(1);
    write_frame(
        fd,
        &with_zero_vnet(&flow.segment(isn + 1, rcv, ACK, ident, &[])),
    );

    let mut stats = TxStats::default();
    let base = isn.wrapping_add(1);
    let mut acked = 0usize;
    let mut sent = 0usize;
    // Never more in flight than the kernel's window: nothing here retransmits.
    let mut window = 14 * 1024;
    while acked < data.len() {
        // One batch of segments, as a worker receives them; the coalescer borrows them until
        // the batch is written.
        let mut batch = Vec::new();
        while sent < data.len() && (sent + mss).min(data.len()) <= acked + window {
            let end = (sent + mss).min(data.len());
            let flags = if end == data.len() { ACK | PSH } else { ACK };
            ident = ident.wrapping_add(1);
            batch.push(flow.segment(
                base.wrapping_add(sent as u32),
                rcv,
                flags,
                ident,
                &data[sent..end],
            ));
            sent = end;
        }
        let mut c = Coalescer::new();
        let write_out = |c: &mut Coalescer<'_>, stats: &mut TxStats| {
            let out = c.flush();
            if out.segments() > 1 {
                stats.super_frames += 1;
                stats.segments_in_super_frames += out.segments();
            } else {
                stats.alone += 1;
            }
            write_gathered(fd, out.head(), out.payloads());
        };
        for seg in &batch {
            if c.is_pending() && !c.can_append(seg) {
                write_out(&mut c, &mut stats);
            }
            if c.push(seg) == Push::NotEligible {
                stats.alone += 1;
                write_frame(fd, &with_zero_vnet(seg));
            }
        }
        // End of a batch: nothing waits.
        if c.is_pending() {
            write_out(&mut c, &mut stats);
        }
        // Read ACKs until the window has room again.
        let n = read_frame(fd, &mut buf, deadline).expect("kernel ACKs before the deadline");
        let f = &buf[VNET_HDR_LEN..n];
        if flow.is_ours(f) && f[t + 13] & ACK != 0 {
            let a = be32(f, t + 8).wrapping_sub(base) as usize;
            if a <= data.len() && a >= acked {
                acked = a;
                window = usize::from(be16(f, t + 14)) << wscale;
            }
        }
    }
    ident = ident.wrapping_add(1);
    let fin = flow.segment(
        base.wrapping_add(data.len() as u32),
        rcv,
        FIN | ACK,
        ident,
        &[],
    );
    write_frame(fd, &with_zero_vnet(&fin));
    stats
}

#[test]
fn offloads_against_the_kernel() {
    require_root();
    let ns = Netns::new(&unique_prefix(), "off");
    let fd = ns.enter(open_tap);
    setup(&ns);
    let local_mac = ns.mac_address(TAP);

    for v6 in [false, true] {
        let flow = Flow {
            v6,
            local_mac,
            peer_port: 5000,
            kernel_port: 0,
        };
        let data = pattern(3 << 20, u8::from(v6));
        let rx = kernel_sends(&fd, &ns, flow, &data);
        eprintln!("v6 {v6}: kernel -> peer {rx:?}");
        assert!(rx.gso_frames > 0, "the kernel sent no super-frame: {rx:?}");

        let flow = Flow {
            v6,
            local_mac,
            peer_port: 41000 + u16::from(v6),
            kernel_port: 6000,
        };
        let mss = if v6 { 1440 } else { 1460 };
        let data = pattern(2 << 20, 0x80 | u8::from(v6));
        let tx = kernel_receives(&fd, &ns, flow, &data, mss);
        eprintln!("v6 {v6}: peer -> kernel {tx:?}");
        assert!(tx.super_frames > 0, "nothing coalesced: {tx:?}");
    }
}
