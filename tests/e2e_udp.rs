//! End to end over the UDP underlay (`--backend udp`): two vxdp nodes, and a vxdp node with a
//! flanneld-style kernel vxlan peer (outer UDP checksums on and off), exchange pings and
//! byte-compared TCP both ways, and the counters prove the kernel's UDP segmentation (GSO) and
//! receive coalescing (GRO) carried it; GSO refused at run time (a path MTU below one datagram,
//! which UDP_SEGMENT never fragments) keeps TCP going and comes back; a VXLAN port someone
//! else holds fails the start naming the holder; `--backend auto` picks udp on veth, AF_XDP
//! when asked for copy mode, and the kernel link where no TAP can be made; and the udp backend
//! runs with CAP_NET_ADMIN alone.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{
    counter, s, tcp_transfer, write_flanneld_local_lease, Cluster, FlanneldLink, Host,
    PatternStream, VXDP,
};
use serde_json::Value;
use testkit::wait_for;

const CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
/// Bytes moved each way by a byte-compared transfer: enough for many TCP super-frames.
const TRANSFER: usize = 4 << 20;
/// flannel's default VXLAN port (Port 0 in the config).
const VXLAN_PORT: u16 = 8472;
const KERNEL_PEER_MAC: &str = "02:aa:00:00:00:02";
/// The kernel peer's lease, and so its VTEP address on the overlay.
const KERNEL_PEER_NET: Ipv4Addr = Ipv4Addr::new(10, 244, 200, 0);
/// Drops that the traffic of these tests may cause without anything being wrong: IPv6
/// multicast the TAP's own stack sends (router solicitations, MLD), which flannel's VXLAN
/// does not flood.
const EXPECTED_TX_DROPS: &[&str] = &["not_unicast"];

/// `totals.<key>` of a status document.
fn total(st: &Value, key: &str) -> u64 {
    counter(st, &["totals", key])
}

/// How much `totals.<key>` grew from `before` to `after`.
fn grew(before: &Value, after: &Value, key: &str) -> u64 {
    total(after, key).saturating_sub(total(before, key))
}

/// Every worker's underlay object.
fn underlays(st: &Value) -> Vec<Value> {
    st["workers"]
        .as_array()
        .unwrap_or_else(|| panic!("no workers in the status: {st:#}"))
        .iter()
        .map(|w| w["underlay"].clone())
        .collect()
}

/// Asserts that between the two snapshots no frame was dropped for a reason other than
/// [`EXPECTED_TX_DROPS`], no TAP write failed, and no datagram was truncated or oversized.
fn assert_no_unexpected_drops(name: &str, before: &Value, after: &Value) {
    for side in ["rx_drops", "tx_drops"] {
        let reasons = after["totals"][side]
            .as_object()
            .unwrap_or_else(|| panic!("{name}: no totals.{side}: {after:#}"));
        assert!(
            !reasons.is_empty(),
            "{name}: totals.{side} lists no reasons"
        );
        for reason in reasons.keys() {
            if side == "tx_drops" && EXPECTED_TX_DROPS.contains(&reason.as_str()) {
                continue;
            }
            let n = counter(after, &["totals", side, reason])
                .saturating_sub(counter(before, &["totals", side, reason]));
            assert_eq!(
                n, 0,
                "{name}: {n} frames dropped as {side}.{reason}: {after:#}"
            );
        }
    }
    for key in ["tap_write_errors", "underlay_rx_truncated", "rx_oversized"] {
        assert_eq!(grew(before, after, key), 0, "{name}: {key} grew: {after:#}");
    }
}

/// Starts vxdp on hosts `ids` with `extra` arguments, and waits until each is ready and has
/// its peers.
fn start_nodes(c: &mut Cluster, store: &Path, ids: &[u8], extra: &[&str]) {
    for &i in ids {
        let mut args = vec!["--local-store", s(store)];
        args.extend_from_slice(extra);
        c.host(i).start(&args);
    }
    for &i in ids {
        c.host(i).wait_ready();
    }
    let peers = c.hosts.len() - 1;
    for &i in ids {
        c.host(i).wait_peers(peers);
    }
}

/// Ping both ways, then `len` pattern bytes over TCP each way, every byte compared.
fn both_ways(a: &Host, a_ip: Ipv4Addr, b: &Host, b_ip: Ipv4Addr, port: u16, len: usize) {
    let what = format!("h{} <-> h{}", a.index, b.index);
    assert!(a.ping(b_ip, 3), "{what}: ping h{} -> {b_ip}", a.index);
    assert!(b.ping(a_ip, 3), "{what}: ping h{} -> {a_ip}", b.index);
    assert!(
        tcp_transfer(a, b, b_ip, port, len),
        "{what}: TCP h{} -> h{} corrupted or incomplete",
        a.index,
        b.index
    );
    assert!(
        tcp_transfer(b, a, a_ip, port + 1, len),
        "{what}: TCP h{} -> h{} corrupted or incomplete",
        b.index,
        a.index
    );
}

/// Asserts that the node runs the UDP backend with GSO and GRO granted, one receive socket
/// per worker and 16 transmit sockets on ephemeral ports each.
fn assert_udp_backend(name: &str, st: &Value) {
    assert_eq!(st["backend"], "udp", "{name}: {st:#}");
    assert!(st["xdp_mode"].is_null(), "{name}: XDP in use: {st:#}");
    for u in underlays(st) {
        assert_eq!(u["kind"], "udp", "{name}: {st:#}");
        assert_eq!(u["gso"], "on", "{name}: {st:#}");
        assert_eq!(u["gro"], true, "{name}: {st:#}");
        let ports: Vec<u64> = u["source_ports"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: no source_ports: {st:#}"))
            .iter()
            .filter_map(Value::as_u64)
            .collect();
        assert_eq!(ports.len(), 16, "{name}: {st:#}");
        assert!(
            ports.iter().all(|&p| p != 0 && p != u64::from(VXLAN_PORT)),
            "{name}: source ports {ports:?}"
        );
        let mut distinct = ports.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), ports.len(), "{name}: {ports:?}");
    }
}

/// Asserts that no XDP program is attached to `eth0`: the UDP underlay must not attach one
/// (on veth it would strip GSO from the peer).
fn assert_no_xdp(h: &Host) {
    let link = h.ns.run(&["ip", "-d", "link", "show", "eth0"]);
    assert!(
        !link.contains("xdp"),
        "h{}: XDP attached to eth0: {link}",
        h.index
    );
}

#[test]
fn two_udp_nodes_forward_both_ways_with_gso_and_gro() {
    let mut c = Cluster::new(2);
    let store = c.local_store(CONFIG);
    start_nodes(&mut c, &store, &[1, 2], &["--backend", "udp"]);
    for h in &c.hosts {
        let st = h.status();
        assert_udp_backend(&format!("h{}", h.index), &st);
        let summary = st["summary"].as_str().unwrap_or_default();
        assert!(
            summary.contains("backend udp") && summary.contains("--backend udp"),
            "{summary}"
        );
        assert!(summary.contains("GSO on, GRO on"), "{summary}");
        assert_no_xdp(h);
        // The receive socket really holds the VXLAN port on the node's underlay address.
        let sockets = h.ns.run(&["ss", "-H", "-uln"]);
        let bound = format!("{}:{VXLAN_PORT}", h.underlay_ip());
        assert!(sockets.contains(&bound), "h{}: {sockets}", h.index);
    }

    let before: Vec<Value> = c.hosts.iter().map(Host::status).collect();
    let (h1_ip, h2_ip) = (c.hosts[0].overlay_ip(), c.hosts[1].overlay_ip());
    both_ways(&c.hosts[0], h1_ip, &c.hosts[1], h2_ip, 7500, TRANSFER);
    let after: Vec<Value> = c.hosts.iter().map(Host::status).collect();

    // Each node sent and received one transfer: the bytes went through its UDP sockets, the
    // TAP's TCP super-frames left with UDP_SEGMENT, and the kernel handed coalesced buffers
    // (UDP_GRO) that became super-frames on the TAP again.
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        let name = format!("h{}", i + 1);
        let n = |key: &str| grew(b, a, key);
        eprintln!(
            "{name}: gso_sends {}, underlay_tx_frames {}, sendmmsg_calls {}, gro_buffers {}, \
             underlay_rx_frames {}, recvmmsg_calls {}, gro_super_frames {}, rx_super_frames {}",
            n("gso_sends"),
            n("underlay_tx_frames"),
            n("sendmmsg_calls"),
            n("gro_buffers"),
            n("underlay_rx_frames"),
            n("recvmmsg_calls"),
            n("gro_super_frames"),
            n("rx_super_frames"),
        );
        assert!(n("underlay_tx_bytes") > TRANSFER as u64, "{name}: {a:#}");
        assert!(n("underlay_rx_bytes") > TRANSFER as u64, "{name}: {a:#}");
        assert!(n("tap_tx_bytes") > TRANSFER as u64, "{name}: {a:#}");
        assert!(
            n("tso_super_frames") > 0,
            "{name}: no TSO from the TAP: {a:#}"
        );
        assert!(n("gso_sends") > 0, "{name}: no GSO send: {a:#}");
        assert!(
            n("underlay_tx_frames") > 2 * n("gso_sends"),
            "{name}: GSO sends carry several datagrams each: {a:#}"
        );
        assert!(
            n("gro_buffers") > 0,
            "{name}: no GRO buffer received: {a:#}"
        );
        assert!(
            n("underlay_rx_frames") > n("recvmmsg_calls"),
            "{name}: more datagrams than receive calls: {a:#}"
        );
        assert!(
            n("gro_super_frames") > 0,
            "{name}: no super-frame written to the TAP: {a:#}"
        );
        assert_no_unexpected_drops(&name, b, a);
    }
}

/// Makes `host` a flanneld-style kernel vxlan node holding 10.244.200.0/24 (VNI 1, port
/// 8472): the link as flanneld creates it, its /32 address, and its lease in the store as
/// flanneld's JSON. Programmed with `ip` alone, independent of vxdp's code.
fn kernel_peer(host: &Host, store: &Path, udpcsum: bool) -> FlanneldLink {
    let link = host.flanneld_link(
        1,
        VXLAN_PORT,
        KERNEL_PEER_MAC,
        KERNEL_PEER_NET,
        Some(udpcsum),
    );
    write_flanneld_local_lease(
        store,
        KERNEL_PEER_NET,
        host.underlay_ip(),
        1,
        KERNEL_PEER_MAC,
    );
    link
}

#[test]
fn a_flanneld_kernel_peer_with_and_without_udp_checksums_talks_to_a_udp_node() {
    for (n, udpcsum) in [true, false].into_iter().enumerate() {
        let what = if udpcsum { "udpcsum" } else { "noudpcsum" };
        let mut c = Cluster::new(2);
        let store = c.local_store(CONFIG);
        let flannel1 = kernel_peer(&c.hosts[1], &store, udpcsum);
        let link = c.hosts[1]
            .ns
            .run(&["ip", "-d", "link", "show", "flannel.1"]);
        assert!(
            link.contains(&format!(" {what} ")) && link.contains("dstport 8472"),
            "{what}: {link}"
        );
        c.host(1)
            .start(&["--local-store", s(&store), "--backend", "udp"]);
        c.host(1).wait_ready();
        c.host(1).wait_peers(1);
        assert_udp_backend(what, &c.hosts[0].status());
        c.hosts[1].flanneld_learns_host(&flannel1, &c.hosts[0]);

        let before = c.hosts[0].status();
        let h1_ip = c.hosts[0].overlay_ip();
        both_ways(
            &c.hosts[0],
            h1_ip,
            &c.hosts[1],
            KERNEL_PEER_NET,
            7510 + 2 * u16::try_from(n).expect("a handful of cases"),
            TRANSFER,
        );
        let after = c.hosts[0].status();
        let g = |key: &str| grew(&before, &after, key);
        // The kernel peer's VXLAN came in through vxdp's socket, whatever the kernel did with
        // it on the way (segmented, coalesced by UDP_GRO, or a whole TCP super-frame because
        // its segmentation never ran over veth).
        eprintln!(
            "{what}: vxdp received {} datagrams in {} GRO buffers, {} whole super-frames; \
             sent {} datagrams with {} GSO sends; inner checksums completed {}",
            g("underlay_rx_frames"),
            g("gro_buffers"),
            g("rx_super_frames"),
            g("underlay_tx_frames"),
            g("gso_sends"),
            g("rx_csum_completed"),
        );
        assert!(
            g("underlay_rx_bytes") > TRANSFER as u64,
            "{what}: {after:#}"
        );
        assert!(g("tap_tx_bytes") > TRANSFER as u64, "{what}: {after:#}");
        assert!(
            g("underlay_tx_bytes") > TRANSFER as u64,
            "{what}: {after:#}"
        );
        assert!(
            g("gso_sends") > 0,
            "{what}: GSO towards a kernel peer: {after:#}"
        );
        assert_no_unexpected_drops(what, &before, &after);
        // Every inner segment reached either kernel with a checksum it accepts (a partial one
        // left unmarked is dropped, and so is each retransmission of it).
        for h in &c.hosts {
            let bad = h.snmp("Tcp", "InCsumErrors");
            assert_eq!(bad, 0, "{what}: h{} dropped {bad} TCP segments", h.index);
        }
        // The kernel peer took vxdp's datagrams as VXLAN: none hit a closed port.
        assert_eq!(
            c.hosts[1].snmp("Udp", "NoPorts"),
            0,
            "{what}: the kernel peer got UDP for no socket"
        );
    }
}

/// The UDP underlay's GSO state on every worker of `h`.
fn gso_states(h: &Host) -> Vec<String> {
    h.try_status()
        .map(|st| {
            underlays(&st)
                .iter()
                .map(|u| u["gso"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The workers that took TCP super-frames from the TAP between the two snapshots.
fn carrying_workers(before: &Value, after: &Value) -> Vec<usize> {
    let count = |st: &Value, w: usize| {
        st["workers"][w]["counters"]["tso_super_frames"]
            .as_u64()
            .unwrap_or(0)
    };
    (0..underlays(after).len())
        .filter(|&w| count(after, w) > count(before, w))
        .collect()
}

/// A paced TCP stream between two hosts that a test can cut short: the receiver checks every
/// byte, and dropping the stream before [`CheckedStream::finish`] (a failed assertion) shuts
/// both sockets down, so no thread is left waiting on a stalled connection.
struct CheckedStream {
    stop: Arc<AtomicBool>,
    sockets: Vec<TcpStream>,
    sender: Option<JoinHandle<u64>>,
    receiver: Option<JoinHandle<(u64, bool)>>,
}

impl CheckedStream {
    /// Connects `from` to `to_ip:port` on `to` and streams pattern bytes at `rate` bytes/s.
    fn start(from: &Host, to: &Host, to_ip: Ipv4Addr, port: u16, rate: u64) -> CheckedStream {
        let listener = to
            .ns
            .enter(|| TcpListener::bind((to_ip, port)).expect("bind"));
        let mut conn = from.ns.enter(|| {
            TcpStream::connect_timeout(&(to_ip, port).into(), Duration::from_secs(10))
                .expect("connect")
        });
        let (mut server, _) = listener.accept().expect("accept");
        conn.set_write_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let sockets = vec![conn.try_clone().unwrap(), server.try_clone().unwrap()];
        let stop = Arc::new(AtomicBool::new(false));
        let seed = u64::from(port) * 104_729;
        let sender = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut src = PatternStream::new(seed);
                let mut buf = vec![0u8; 64 << 10];
                let begin = Instant::now();
                let mut sent = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(begin.elapsed()) {
                        std::thread::sleep(wait.min(Duration::from_millis(20)));
                        continue;
                    }
                    src.fill(&mut buf);
                    if conn.write_all(&buf).is_err() {
                        break;
                    }
                    sent += buf.len() as u64;
                }
                let _ = conn.shutdown(Shutdown::Write);
                sent
            })
        };
        let receiver = std::thread::spawn(move || {
            let mut expect = PatternStream::new(seed);
            let mut buf = vec![0u8; 256 << 10];
            let mut want = vec![0u8; 256 << 10];
            let (mut bytes, mut intact) = (0u64, true);
            loop {
                let n = match server.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(_) => {
                        intact = false;
                        break;
                    }
                };
                expect.fill(&mut want[..n]);
                intact &= buf[..n] == want[..n];
                bytes += n as u64;
            }
            (bytes, intact)
        });
        CheckedStream {
            stop,
            sockets,
            sender: Some(sender),
            receiver: Some(receiver),
        }
    }

    /// Ends the stream; returns the bytes received and whether they are exactly those sent.
    fn finish(mut self) -> (u64, bool) {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.sender.take().unwrap().join().expect("sender");
        let (received, intact) = self.receiver.take().unwrap().join().expect("receiver");
        (received, intact && received == sent)
    }
}

impl Drop for CheckedStream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if self.sender.is_some() {
            for s in &self.sockets {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        if let Some(t) = self.sender.take() {
            let _ = t.join();
        }
        if let Some(t) = self.receiver.take() {
            let _ = t.join();
        }
    }
}

/// Waits until `h` has sent `n` more datagrams than in `since`, and returns its status then.
fn after_more_frames(h: &Host, since: &Value, n: u64) -> Value {
    wait_for(Duration::from_secs(15), || {
        let st = h.try_status()?;
        (grew(since, &st, "underlay_tx_frames") > n).then_some(st)
    })
    .unwrap_or_else(|| panic!("the stream stalled: {:#}", h.status()))
}

#[test]
fn gso_refused_at_run_time_keeps_tcp_going_and_returns_after_the_retry() {
    let mut c = Cluster::new(2);
    let store = c.local_store(CONFIG);
    start_nodes(&mut c, &store, &[1, 2], &["--backend", "udp"]);
    let h2_ip = c.hosts[1].overlay_ip();
    let h1 = &c.hosts[0];
    let h2_before = c.hosts[1].status();
    // A paced stream h1 -> h2 for the whole test, every byte checked at the receiver.
    let stream = CheckedStream::start(h1, &c.hosts[1], h2_ip, 7520, 16 << 20);

    // GSO carries the stream first.
    let on = wait_for(Duration::from_secs(15), || {
        let st = h1.try_status()?;
        (total(&st, "gso_sends") > 20).then_some(st)
    });
    let start = on.unwrap_or_else(|| panic!("no GSO sends: {:#}", h1.status()));
    assert!(gso_states(h1).iter().all(|s| s == "on"));

    // The underlay device loses TX checksum offload. Older kernels refuse UDP_SEGMENT then
    // (EIO); since "udp: Allow GSO transmit from devices with no checksum offload" (a 2024
    // net fix, also in stable kernels) the kernel checksums the segments in software, as
    // this machine's does. Either way the stream keeps going.
    h1.ns.run(&["ethtool", "-K", "eth0", "tx", "off"]);
    let st = after_more_frames(h1, &start, 2000);
    eprintln!("GSO with TX checksum offload off: {:?}", gso_states(h1));
    assert_no_unexpected_drops("h1 with tx off", &start, &st);
    h1.ns.run(&["ethtool", "-K", "eth0", "tx", "on"]);

    // The path to h2 shrinks below one VXLAN datagram (a route MTU of 1400): every GSO
    // send is refused (EMSGSIZE: UDP_SEGMENT never fragments), while single datagrams,
    // sent with DF clear as the kernel's vxlan link sends them, are fragmented.
    h1.ns.run(&[
        "ip",
        "route",
        "add",
        "192.0.2.2/32",
        "dev",
        "eth0",
        "mtu",
        "1400",
    ]);
    // Only the workers that carry the stream try GSO and learn of the refusal: the TAP
    // queues a single TCP flow to one worker, so the others may well stay "on".
    let route_changed = h1.status();
    let refused = wait_for(Duration::from_secs(10), || {
        let st = h1.try_status()?;
        let carrying = carrying_workers(&route_changed, &st);
        let states = underlays(&st);
        (!carrying.is_empty() && carrying.iter().all(|&w| states[w]["gso"] == "refused"))
            .then_some(())
    });
    assert!(
        refused.is_some(),
        "GSO not reported refused: {:#}",
        h1.status()
    );
    // From here on, datagrams leave one by one: the TAP still hands TCP super-frames over,
    // but no GSO send succeeds.
    let a = h1.status();
    let b = after_more_frames(h1, &a, 2000);
    eprintln!(
        "GSO refused: {} datagrams in {} sendmmsg calls, {} TCP super-frames from the TAP, \
         {} GSO sends",
        grew(&a, &b, "underlay_tx_frames"),
        grew(&a, &b, "sendmmsg_calls"),
        grew(&a, &b, "tso_super_frames"),
        grew(&a, &b, "gso_sends"),
    );
    assert_eq!(
        grew(&a, &b, "gso_sends"),
        0,
        "a GSO send succeeded on a path it does not fit: {b:#}"
    );
    assert!(grew(&a, &b, "tso_super_frames") > 0, "{b:#}");
    assert!(
        grew(&a, &b, "sendmmsg_calls") > 0,
        "singles not sent with sendmmsg: {b:#}"
    );
    assert_no_unexpected_drops("h1 while GSO is refused", &a, &b);
    assert!(
        h1.log_text()
            .contains("the kernel refused UDP segmentation offload"),
        "no warning in the log:\n{}",
        h1.log_text()
    );

    // The path grows back: the next try (GSO_RETRY, 10 s after the refusal) finds GSO
    // working again.
    h1.ns
        .run(&["ip", "route", "del", "192.0.2.2/32", "dev", "eth0"]);
    let back = wait_for(Duration::from_secs(25), || {
        let st = h1.try_status()?;
        let on = underlays(&st).iter().all(|u| u["gso"] == "on");
        (on && total(&st, "gso_sends") > total(&b, "gso_sends")).then_some(st)
    });
    let d = back.unwrap_or_else(|| panic!("GSO did not come back: {:#}", h1.status()));
    assert_no_unexpected_drops("h1 after GSO came back", &a, &d);

    let (bytes, intact) = stream.finish();
    eprintln!("stream: {bytes} bytes");
    assert!(
        intact,
        "the stream lost or corrupted bytes ({bytes} received)"
    );
    assert!(bytes > TRANSFER as u64, "{bytes}");
    // The receiver took single datagrams, fragmented ones and GRO buffers alike.
    let h2_after = c.hosts[1].status();
    assert!(grew(&h2_before, &h2_after, "underlay_rx_bytes") > bytes);
    assert_no_unexpected_drops("h2", &h2_before, &h2_after);
}

/// A process started by a test, killed by PID on drop.
struct Spawned(std::process::Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        if !matches!(self.0.try_wait(), Ok(Some(_))) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Runs `vxdp run` on `h` with the per-host defaults and `extra`, expecting it to exit within
/// 20 s; returns its status and what it wrote to stderr (stdout apart).
fn run_until_exit(h: &Host, extra: &[&str]) -> (ExitStatus, String) {
    let stderr_path = h.dir.join("stderr.txt");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let subnet_file = h.subnet_file();
    let control = h.control_socket();
    let mut child = Spawned(
        Command::new("ip")
            .args(["netns", "exec", h.ns.name(), VXDP, "run", "--iface", "eth0"])
            .args(["--subnet-file", s(&subnet_file)])
            .args(["--control-socket", s(&control)])
            .args(["--worker-cpus", "none"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn vxdp"),
    );
    let status = wait_for(Duration::from_secs(20), || {
        child.0.try_wait().ok().flatten()
    });
    let mut text = String::new();
    std::fs::File::open(&stderr_path)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    let status = status.unwrap_or_else(|| panic!("vxdp did not exit:\n{text}"));
    (status, text)
}

/// Asserts that a failed start left nothing behind: no TAP, no lease.
fn assert_start_undone(h: &Host, store: &Path) {
    let links = h.ns.run(&["ip", "link", "show"]);
    assert!(!links.contains("vxdp.1"), "TAP left behind: {links}");
    let leases: Vec<_> = std::fs::read_dir(store.join("subnets"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(leases.is_empty(), "lease not given back: {leases:?}");
}

#[test]
fn a_taken_vxlan_port_fails_the_start_naming_the_holder() {
    let c = Cluster::new(1);
    let store = c.local_store(CONFIG);
    let h = &c.hosts[0];

    // (a) A process of ours holds the port with a plain UDP socket.
    let holder_log = h.dir.join("holder.log");
    let holder = h.ns.spawn(
        &[
            "python3",
            "-c",
            "import socket, sys, time\n\
             s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             s.bind(('0.0.0.0', int(sys.argv[1])))\n\
             print('bound', flush=True)\n\
             time.sleep(120)",
            &VXLAN_PORT.to_string(),
        ],
        Some(&holder_log),
    );
    let bound = wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&holder_log)
            .ok()
            .filter(|t| t.contains("bound"))
    });
    assert!(
        bound.is_some(),
        "the holder did not bind: {}",
        std::fs::read_to_string(&holder_log).unwrap_or_default()
    );
    let pid = holder.pid();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).expect("holder's comm");
    let (status, stderr) = run_until_exit(h, &["--local-store", s(&store), "--backend", "udp"]);
    assert!(!status.success(), "vxdp started on a taken port:\n{stderr}");
    eprintln!("(a) {}", stderr.lines().last().unwrap_or_default());
    let holder_named = format!("{}[{pid}]", comm.trim());
    assert!(
        stderr.contains(&holder_named) && stderr.contains(&format!("UDP port {VXLAN_PORT}")),
        "stderr does not name {holder_named}:\n{stderr}"
    );
    assert_start_undone(h, &store);
    drop(holder);

    // (b) A kernel vxlan link (flanneld's) holds it.
    h.ns.run(&[
        "ip",
        "link",
        "add",
        "flannel.1",
        "type",
        "vxlan",
        "id",
        "1",
        "local",
        &h.underlay_ip().to_string(),
        "dev",
        "eth0",
        "dstport",
        &VXLAN_PORT.to_string(),
        "nolearning",
    ]);
    // The kernel opens the link's socket when the link goes up.
    h.ns.run(&["ip", "link", "set", "flannel.1", "up"]);
    let (status, stderr) = run_until_exit(h, &["--local-store", s(&store), "--backend", "udp"]);
    assert!(!status.success(), "vxdp started on a taken port:\n{stderr}");
    eprintln!("(b) {}", stderr.lines().last().unwrap_or_default());
    assert!(
        stderr.contains(&format!("UDP port {VXLAN_PORT} is held by the kernel"))
            && stderr.contains("vxlan link")
            && stderr.contains("flannel.1"),
        "stderr does not say a kernel vxlan link holds the port:\n{stderr}"
    );
    assert_start_undone(h, &store);
}

#[test]
fn auto_runs_udp_on_veth_and_af_xdp_when_copy_mode_is_asked_for() {
    let mut c = Cluster::new(2);
    let store = c.local_store(CONFIG);
    c.host(1)
        .start(&["--local-store", s(&store), "--backend", "auto"]);
    c.host(2).start(&[
        "--local-store",
        s(&store),
        "--backend",
        "auto",
        "--xsk-bind",
        "copy",
    ]);
    for i in 1..=2 {
        c.host(i).wait_ready();
    }
    for i in 1..=2 {
        c.host(i).wait_peers(1);
    }

    let st1 = c.hosts[0].status();
    assert_udp_backend("h1 (auto)", &st1);
    let summary = st1["summary"].as_str().unwrap_or_default();
    assert!(
        summary.starts_with("backend udp")
            && summary.contains("--backend auto")
            && summary.contains("eth0 offers no zero-copy AF_XDP")
            && summary.contains("would only copy"),
        "{summary}"
    );
    assert!(
        c.hosts[0].log_text().contains(summary),
        "the summary is not in the log"
    );
    assert_no_xdp(&c.hosts[0]);

    let st2 = c.hosts[1].status();
    assert_eq!(st2["backend"], "xdp", "{st2:#}");
    for u in underlays(&st2) {
        assert_eq!(u["kind"], "af-xdp", "{st2:#}");
        assert_eq!(u["socket_mode"], "copy", "{st2:#}");
    }
    let summary = st2["summary"].as_str().unwrap_or_default();
    assert!(
        summary.starts_with("backend xdp")
            && summary.contains("--backend auto with --xsk-bind copy"),
        "{summary}"
    );

    // The two backends talk to each other.
    let before = (c.hosts[0].status(), c.hosts[1].status());
    let (h1_ip, h2_ip) = (c.hosts[0].overlay_ip(), c.hosts[1].overlay_ip());
    both_ways(&c.hosts[0], h1_ip, &c.hosts[1], h2_ip, 7530, 1 << 20);
    let after = (c.hosts[0].status(), c.hosts[1].status());
    assert!(grew(&before.0, &after.0, "underlay_rx_bytes") > 1 << 20);
    assert!(grew(&before.1, &after.1, "underlay_rx_bytes") > 1 << 20);
}

#[test]
fn auto_without_a_tun_device_runs_the_kernel_link_and_says_why() {
    let mut c = Cluster::new(2);
    let store = c.local_store(CONFIG);
    c.host(1)
        .start(&["--local-store", s(&store), "--backend", "udp"]);
    // As in a container without /dev/net/tun: a private mount namespace where the device is
    // /dev/null, so creating the TAP fails.
    c.host(2).start_wrapped(
        &[
            "unshare",
            "-m",
            "sh",
            "-c",
            "mount --bind /dev/null /dev/net/tun && exec \"$@\"",
            "sh",
        ],
        &[],
        &["--local-store", s(&store), "--backend", "auto"],
    );
    for i in 1..=2 {
        c.host(i).wait_ready();
    }
    c.host(1).wait_peers(1);
    let programmed = wait_for(Duration::from_secs(10), || {
        (c.hosts[1].peer_count() == 1).then_some(())
    });
    assert!(programmed.is_some(), "{:#}", c.hosts[1].status());

    let st = c.hosts[1].status();
    assert_eq!(st["backend"], "kernel", "{st:#}");
    let summary = st["summary"].as_str().unwrap_or_default();
    assert!(
        summary.starts_with("backend kernel")
            && summary.contains("--backend auto")
            && summary.contains("would only copy")
            && summary.contains("the UDP sockets failed: TAP device vxdp.1"),
        "{summary}"
    );
    let link = c.hosts[1].ns.run(&["ip", "-d", "link", "show", "vxdp.1"]);
    assert!(
        link.contains("vxlan id 1 ") && link.contains("dstport 8472"),
        "{link}"
    );
    // The daemon really ran without the tun device, and the test's namespace still has it.
    let pid = c.hosts[1].pid().expect("h2's daemon");
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    assert!(mounts.contains(" /dev/net/tun "), "{mounts}");
    let tun = std::fs::metadata("/dev/net/tun").expect("/dev/net/tun here");
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &tun.file_type()
    ));

    let (h1_ip, h2_ip) = (c.hosts[0].overlay_ip(), c.hosts[1].overlay_ip());
    let before = c.hosts[0].status();
    both_ways(&c.hosts[0], h1_ip, &c.hosts[1], h2_ip, 7540, 1 << 20);
    let after = c.hosts[0].status();
    assert!(grew(&before, &after, "underlay_rx_bytes") > 1 << 20);
    assert!(grew(&before, &after, "underlay_tx_bytes") > 1 << 20);
}

/// A capability set of `/proc/<pid>/status` (`CapBnd`, `CapEff`, ...).
fn cap_set(pid: u32, which: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{which}:")))
        .unwrap_or_else(|| panic!("no {which} in /proc/{pid}/status"));
    u64::from_str_radix(line.trim(), 16).unwrap()
}

#[test]
fn the_udp_backend_forwards_with_cap_net_admin_alone() {
    const CAP_NET_ADMIN: u64 = 1 << 12;
    let mut c = Cluster::new(2);
    let store = c.local_store(CONFIG);
    // Root, but with nothing but CAP_NET_ADMIN in the bounding set: the daemon exec'd below
    // can never hold another capability.
    c.host(1).start_wrapped(
        &[
            "setpriv",
            "--bounding-set=-all,+net_admin",
            "--inh-caps=-all",
        ],
        &[],
        &["--local-store", s(&store), "--backend", "udp"],
    );
    c.host(2)
        .start(&["--local-store", s(&store), "--backend", "udp"]);
    for i in 1..=2 {
        c.host(i).wait_ready();
    }
    for i in 1..=2 {
        c.host(i).wait_peers(1);
    }
    let pid = c.hosts[0].pid().expect("h1's daemon");
    assert_eq!(cap_set(pid, "CapBnd"), CAP_NET_ADMIN);
    assert_eq!(cap_set(pid, "CapEff") & !CAP_NET_ADMIN, 0);
    let st = c.hosts[0].status();
    assert_udp_backend("h1 (CAP_NET_ADMIN only)", &st);

    let before = c.hosts[0].status();
    let (h1_ip, h2_ip) = (c.hosts[0].overlay_ip(), c.hosts[1].overlay_ip());
    both_ways(&c.hosts[0], h1_ip, &c.hosts[1], h2_ip, 7550, 1 << 20);
    let after = c.hosts[0].status();
    assert!(
        grew(&before, &after, "underlay_tx_bytes") > 1 << 20,
        "{after:#}"
    );
    assert!(
        grew(&before, &after, "underlay_rx_bytes") > 1 << 20,
        "{after:#}"
    );
    assert!(grew(&before, &after, "gso_sends") > 0, "{after:#}");
    assert_no_unexpected_drops("h1 (CAP_NET_ADMIN only)", &before, &after);
}

#[test]
fn pod_traffic_the_host_forwards_reaches_the_workers_as_super_frames() {
    // Pods' TCP builds GSO packets for their veth (up to 64 KB); the host forwards them into
    // the TAP. Capped below that size, the kernel cut each into 1.5 KB frames before the TAP,
    // one read per frame: pod to pod ran at a fifth of host to host.
    let mut c = Cluster::new(2);
    let store = c.local_store(CONFIG);
    start_nodes(&mut c, &store, &[1, 2], &[]);
    let (p1, p2) = (c.add_pod(1), c.add_pod(2));
    assert!(
        p1.ns
            .try_run(&[
                "ping",
                "-c",
                "2",
                "-i",
                "0.1",
                "-W",
                "2",
                &p2.ip.to_string()
            ])
            .status
            .success(),
        "pod 1 cannot reach pod 2"
    );
    let before = c.hosts[0].status();
    let until = Instant::now() + Duration::from_secs(2);
    let done = || Instant::now() >= until;
    let r = common::tcp_stream_between(p1.ns.name(), p2.ns.name(), p2.ip, 7900, None, &done);
    let after = c.hosts[0].status();
    assert!(r.intact, "pod to pod stream: {r:?}");
    let frames = grew(&before, &after, "tap_rx_frames");
    let bytes = grew(&before, &after, "tap_rx_bytes");
    let avg = bytes / frames.max(1);
    eprintln!(
        "pod to pod: {:.0} Mbit/s, {frames} frames read from the TAP, {avg} bytes each on average",
        r.mbit_s()
    );
    assert!(
        avg > 8000,
        "forwarded pod traffic reached the worker in {avg}-byte frames, not super-frames"
    );
}
