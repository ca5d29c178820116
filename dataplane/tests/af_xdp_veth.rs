//! The XDP steering program and an AF_XDP socket on a real veth pair in throwaway namespaces:
//! VXLAN for this VTEP reaches the socket's RX ring, everything else reaches the kernel, and a
//! frame put on the TX ring arrives at the peer.

use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

use dataplane::steering::{SteeringConfig, SteeringProgram, XdpMode};
use dataplane::xsk::{BindMode, SocketMode, TxFrame, XskConfig, XskSocket};
use testkit::packet::{vxlan_header, Udp4};
use testkit::{require_root, unique_prefix, veth, Netns};

const A_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const B_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid C string.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

fn vxlan_payload(vni: u32) -> Vec<u8> {
    let mut p = vxlan_header(0x08, vni).to_vec();
    p.extend_from_slice(&[0xee; 60]); // stand-in inner frame
    p
}

/// A UDP/IPv4 frame from A to B, UDP checksum 0.
fn udp_frame(src_mac: [u8; 6], dst_mac: [u8; 6], dport: u16, payload: &[u8]) -> Vec<u8> {
    Udp4 {
        src_mac,
        dst_mac,
        src_ip: A_IP,
        dst_ip: B_IP,
        src_port: 40000,
        dst_port: dport,
        ident: 1,
        flags_frag: 0,
    }
    .frame(payload)
}

#[test]
fn steering_program_and_af_xdp_socket_on_veth() {
    require_root();
    let prefix = unique_prefix();
    let a = Netns::new(&prefix, "a");
    let b = Netns::new(&prefix, "b");
    veth(&a, "a0", &b, "b0");
    a.run(&["ip", "addr", "add", "192.0.2.1/24", "dev", "a0"]);
    b.run(&["ip", "addr", "add", "192.0.2.2/24", "dev", "b0"]);
    a.run(&["ping", "-c1", "-W2", "192.0.2.2"]); // ARP both ways before XDP is in place
    let a_mac = a.mac_address("a0");
    let b_mac = b.mac_address("b0");

    // B listens for what A's AF_XDP socket transmits.
    let b_listener = b.enter(|| UdpSocket::bind((B_IP, 9000)).unwrap());
    b_listener
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();

    a.enter(|| {
        let config = SteeringConfig {
            ifindex: ifindex("a0"),
            ifname: "a0".into(),
            local_ip4: Some(A_IP),
            local_ip6: None,
            port: 8472,
            vni: 1,
        };
        let (prog, failures) =
            SteeringProgram::load_and_attach(&config, &[XdpMode::Native, XdpMode::Generic])
                .expect("load and attach");
        assert_eq!(
            prog.mode(),
            XdpMode::Native,
            "veth supports native XDP: {failures:?}"
        );

        let mut xsk = XskSocket::open(&XskConfig {
            ifname: "a0".into(),
            queue_id: 0,
            frame_size: 4096,
            frame_count: 512,
            ring_size: 256,
            bind_mode: BindMode::Auto,
        })
        .expect("open AF_XDP socket");
        assert_eq!(
            xsk.mode(),
            SocketMode::Copy,
            "veth has no zero-copy: auto falls back"
        );
        prog.register_socket(0, xsk.fd()).unwrap();

        // Lend all but one slot's worth of frames (255 of the 512) to the kernel: the
        // producer's cached view of the fill ring now shows exactly one free slot.
        let mut frames = xsk.take_free_frames();
        assert_eq!(frames.len(), 512);
        assert!(
            xsk.take_free_frames().is_empty(),
            "frames are handed out once"
        );
        let mut spare = frames.split_off(255);
        assert_eq!(xsk.fill(&mut frames), 255);
        assert!(frames.is_empty(), "lent frames leave the caller");

        // From B: five VXLAN datagrams with VNI 1 (ours), one with VNI 2 (not ours), and plain
        // UDP to another port.
        b.enter(|| {
            let s = UdpSocket::bind((B_IP, 0)).unwrap();
            for _ in 0..5 {
                s.send_to(&vxlan_payload(1), (A_IP, 8472)).unwrap();
            }
            s.send_to(&vxlan_payload(2), (A_IP, 8472)).unwrap();
            s.send_to(b"not vxlan", (A_IP, 9999)).unwrap();
        });

        let deadline = Instant::now() + Duration::from_secs(3);
        let mut received = Vec::new();
        while Instant::now() < deadline && received.len() < 5 {
            xsk.receive(64, &mut received);
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(200));
        xsk.receive(64, &mut received);
        assert_eq!(
            received.len(),
            5,
            "exactly the VNI 1 datagrams are redirected"
        );
        let mut rx = received.remove(0);
        let bytes = xsk.frame_mut(&mut rx.frame);
        let frame = bytes[rx.offset..rx.offset + rx.len].to_vec();
        assert_eq!(&frame[12..14], &[0x08, 0x00]);
        assert_eq!(&frame[30..34], &A_IP.octets(), "destination is our VTEP");
        assert_eq!(&frame[36..38], &8472u16.to_be_bytes());
        assert_eq!(&frame[42..50], &vxlan_payload(1)[..8]);
        // Giving the five frames back must put all five on the ring, although the cached view
        // still shows one free slot (a single reservation would take one and lose four).
        let mut back: Vec<_> = std::iter::once(rx.frame)
            .chain(received.into_iter().map(|r| r.frame))
            .collect();
        assert_eq!(xsk.fill(&mut back), 5);
        let counters = prog.counters();
        assert_eq!(counters.redirected, 5, "{counters:?}");
        assert_eq!(counters.other_vni, 1, "{counters:?}");
        assert!(counters.passed >= 1, "{counters:?}");

        // TX: one UDP datagram from A to B:9000 through the AF_XDP TX ring, from a frame never
        // lent to the kernel.
        let pkt = udp_frame(a_mac, b_mac, 9000, b"hello from af_xdp");
        let mut tx = spare.pop().unwrap();
        xsk.frame_mut(&mut tx)[..pkt.len()].copy_from_slice(&pkt);
        let mut queue = vec![TxFrame {
            frame: tx,
            offset: 0,
            len: pkt.len(),
        }];
        assert_eq!(xsk.transmit(&mut queue), 1);
        assert!(queue.is_empty(), "queued frames leave the caller");
        assert!(
            xsk.tx_needs_wakeup(),
            "copy mode transmits only when kicked"
        );
        // SAFETY: a zero-length sendto on our own AF_XDP socket is the kick.
        unsafe {
            libc::sendto(
                xsk.fd(),
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            )
        };
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut completed = Vec::new();
        while Instant::now() < deadline && completed.is_empty() {
            xsk.complete(8, &mut completed);
        }
        assert_eq!(completed.len(), 1, "the transmitted frame is completed");
        prog.unregister_socket(0);
    });

    let mut buf = [0u8; 64];
    let (n, from) = b_listener
        .recv_from(&mut buf)
        .expect("B receives the AF_XDP frame");
    assert_eq!(&buf[..n], b"hello from af_xdp");
    assert_eq!(from.ip(), A_IP);
    // The program was detached when it dropped: no XDP left on a0.
    let link = a.run(&["ip", "link", "show", "a0"]);
    assert!(!link.contains("xdp"), "XDP still attached: {link}");
}
