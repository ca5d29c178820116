//! vxdp-bench: the traffic and accounting tools `scripts/bench.sh` runs inside its namespaces.
//!
//! - `flood`: a UDP flood with `sendmmsg` (one syscall per batch), for the small-packet rate.
//!   iperf3's UDP sender sends one datagram per syscall and tops out at ~200 kpps, below what a
//!   fast dataplane forwards; this one is measured over the raw underlay to prove it is faster
//!   than anything it is used to measure.
//! - `sink`: counts what arrives with `recvmmsg` over a fixed window after a warm-up, plus the
//!   socket's own drops, so the receive side reports the forwarding rate, not the offered load.
//! - `rtt server` / `rtt client`: a UDP ping-pong giving per-packet round trips and percentiles;
//!   the same method for every contender.
//! - `cpustat`: machine-wide CPU jiffies from /proc/stat and the CPU time of processes outside
//!   the benchmark (other users of a shared host), to tell the two apart.
//!
//! Every subcommand prints one JSON object on stdout.

#![allow(
    clippy::cast_possible_truncation,
    reason = "socket structure sizes and rates chosen by the tool; truncation of clock readings and counters is intended"
)]

use std::io::Write;
use std::mem::{size_of, zeroed};
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

/// First bytes of every flood datagram: the sink counts only these, not stray traffic.
const MAGIC: &[u8; 8] = b"VXDPBNCH";
/// A flood datagram: MAGIC, the sending thread (u32 LE), 4 bytes of padding, a per-thread
/// sequence number (u64 LE). The sink turns sequence numbers into what was offered during its
/// window, so loss is measured over exactly the window the rate is.
const FLOOD_HEADER: usize = 24;
/// Sending threads the sink can tell apart.
const MAX_FLOOD_THREADS: usize = 64;

/// Traffic tools for scripts/bench.sh.
#[derive(Debug, Parser)]
#[command(name = "vxdp-bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send UDP datagrams to ADDR:PORT as fast as possible (or at --pps) for N seconds.
    Flood(FloodArgs),
    /// Count datagrams arriving on ADDR:PORT over a window after a warm-up.
    Sink(SinkArgs),
    /// UDP ping-pong: round-trip percentiles in microseconds.
    #[command(subcommand)]
    Rtt(RttCommand),
    /// Snapshot of machine-wide CPU time and of the CPU time of processes that are not ours.
    Cpustat(CpustatArgs),
    /// TCP bulk streams: where iperf3 is not installed (a machine without package access), the
    /// same measurement of Gbit/s over N parallel connections.
    #[command(subcommand)]
    Tcp(TcpCommand),
}

#[derive(Debug, Subcommand)]
enum TcpCommand {
    /// Accept connections and count what they carry until the client is done.
    Server {
        /// Address and TCP port to listen on.
        #[arg(long)]
        bind: SocketAddrV4,
        /// Connections to wait for.
        #[arg(long, default_value_t = 1)]
        streams: usize,
    },
    /// Send as fast as possible over N connections for S seconds.
    Client {
        /// Server address and port.
        #[arg(long)]
        dst: SocketAddrV4,
        /// Parallel connections.
        #[arg(long, default_value_t = 1)]
        streams: usize,
        /// How long to send.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
}

#[derive(Debug, Args)]
struct FloodArgs {
    /// Destination IPv4 address and UDP port.
    #[arg(long)]
    dst: SocketAddrV4,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// UDP payload bytes per datagram (at least 24: the header the sink reads).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Datagrams per sendmmsg call.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Sending threads, each with its own socket (and so its own source port: its own flow).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Total datagrams per second to aim for; 0 sends as fast as the host allows.
    #[arg(long, default_value_t = 0)]
    pps: u64,
}

#[derive(Debug, Args)]
struct SinkArgs {
    /// Address and UDP port to receive on.
    #[arg(long)]
    bind: SocketAddrV4,
    /// Length of the counting window, in seconds.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Seconds after the first datagram before the window opens (queues fill, rates settle).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Give up if nothing arrives within this many seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Datagrams per recvmmsg call.
    #[arg(long, default_value_t = 64)]
    batch: usize,
}

#[derive(Debug, Subcommand)]
enum RttCommand {
    /// Echo every datagram back to its sender until killed.
    Server {
        /// Address and UDP port to listen on.
        #[arg(long)]
        bind: SocketAddrV4,
    },
    /// Send numbered datagrams one at a time and time each echo.
    Client(RttClientArgs),
}

#[derive(Debug, Args)]
struct RttClientArgs {
    /// The echo server.
    #[arg(long)]
    dst: SocketAddrV4,
    /// Samples to report (after the warm-up ones).
    #[arg(long, default_value_t = 2000)]
    count: usize,
    /// Samples sent first and not reported (ARP, caches, first-packet paths).
    #[arg(long, default_value_t = 50)]
    warmup: usize,
    /// Microseconds between sends (like ping -i).
    #[arg(long, default_value_t = 1000)]
    interval_us: u64,
    /// UDP payload bytes (at least 16).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// A reply later than this many milliseconds counts as lost.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
}

#[derive(Debug, Args)]
struct CpustatArgs {
    /// This process and its descendants are the benchmark; every other non-kernel process is
    /// counted as foreign.
    #[arg(long)]
    ours: u32,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Flood(a) => flood(&a),
        Command::Sink(a) => sink(&a),
        Command::Rtt(RttCommand::Server { bind }) => rtt_server(bind),
        Command::Rtt(RttCommand::Client(a)) => rtt_client(&a),
        Command::Cpustat(a) => cpustat(&a),
        Command::Tcp(TcpCommand::Server { bind, streams }) => tcp_server(bind, streams),
        Command::Tcp(TcpCommand::Client {
            dst,
            streams,
            seconds,
        }) => tcp_client(dst, streams, seconds),
    };
    match result {
        Ok(doc) => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{doc}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vxdp-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain data; all-zero is a valid value.
    let mut sa: libc::sockaddr_in = unsafe { zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = addr.port().to_be();
    sa.sin_addr.s_addr = u32::from(*addr.ip()).to_be();
    sa
}

fn udp_socket() -> anyhow::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned from here on.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("creating a UDP socket");
    }
    // SAFETY: fd was just returned by socket(2) and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_int_opt(fd: &OwnedFd, level: i32, name: i32, value: i32) -> std::io::Result<()> {
    // SAFETY: value outlives the call; the length matches its type.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const i32).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Large socket buffers: root may exceed net.core.{r,w}mem_max with the FORCE variants.
fn set_buffer(fd: &OwnedFd, force: i32, plain: i32, bytes: i32) {
    if set_int_opt(fd, libc::SOL_SOCKET, force, bytes).is_err() {
        let _ = set_int_opt(fd, libc::SOL_SOCKET, plain, bytes);
    }
}

fn set_timeout(fd: &OwnedFd, name: i32, d: Duration) -> anyhow::Result<()> {
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros().max(1) as libc::suseconds_t,
    };
    // SAFETY: tv outlives the call; the length matches its type.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).context("setting a socket timeout");
    }
    Ok(())
}

fn bind(fd: &OwnedFd, addr: SocketAddrV4) -> anyhow::Result<()> {
    let sa = sockaddr(addr);
    // SAFETY: sa is a valid sockaddr_in for the duration of the call.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("binding to {addr}"));
    }
    Ok(())
}

fn connect(fd: &OwnedFd, addr: SocketAddrV4) -> anyhow::Result<()> {
    let sa = sockaddr(addr);
    // SAFETY: sa is a valid sockaddr_in for the duration of the call.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("connecting a UDP socket to {addr}"));
    }
    Ok(())
}

/// Counts of one flood thread.
#[derive(Default, Clone, Copy)]
struct FloodCount {
    sent: u64,
    calls: u64,
    /// Calls that failed with a transient error (ENOBUFS, EAGAIN, ECONNREFUSED from an ICMP
    /// port unreachable while the sink was not yet listening).
    transient_errors: u64,
}

fn flood(a: &FloodArgs) -> anyhow::Result<serde_json::Value> {
    if a.size < FLOOD_HEADER || a.size > 65_000 {
        bail!("--size must be between {FLOOD_HEADER} and 65000 bytes");
    }
    if a.batch == 0 || a.batch > 1024 || a.threads == 0 || a.threads > MAX_FLOOD_THREADS {
        bail!("--batch must be 1..=1024 and --threads 1..={MAX_FLOOD_THREADS}");
    }
    if a.seconds.is_nan() || a.seconds <= 0.0 {
        bail!("--seconds must be positive");
    }
    let duration = Duration::from_secs_f64(a.seconds);
    let per_thread_pps = a.pps as f64 / a.threads as f64;
    let mut sockets = Vec::new();
    for _ in 0..a.threads {
        let fd = udp_socket()?;
        set_buffer(&fd, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, 4 << 20);
        connect(&fd, a.dst)?;
        sockets.push(fd);
    }
    let start = Instant::now();
    let counts: Vec<anyhow::Result<FloodCount>> = std::thread::scope(|s| {
        let handles: Vec<_> = sockets
            .iter()
            .enumerate()
            .map(|(id, fd)| {
                s.spawn(move || flood_thread(id as u32, fd, a, start, duration, per_thread_pps))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| bail!("a flood thread panicked"))
            })
            .collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_s = own_cpu_seconds();
    let mut total = FloodCount::default();
    for c in counts {
        let c = c?;
        total.sent += c.sent;
        total.calls += c.calls;
        total.transient_errors += c.transient_errors;
    }
    Ok(json!({
        "dst": a.dst.to_string(),
        "size": a.size,
        "batch": a.batch,
        "threads": a.threads,
        "target_pps": a.pps,
        "seconds": elapsed,
        "sent": total.sent,
        "pps": total.sent as f64 / elapsed,
        "calls": total.calls,
        "transient_errors": total.transient_errors,
        // Below `threads` cores: the sender waited (socket buffer full, preempted).
        "cpu_cores": cpu_s / elapsed,
    }))
}

/// User + system CPU seconds of this process so far.
fn own_cpu_seconds() -> f64 {
    // SAFETY: an all-zero rusage is valid; getrusage fills it.
    let mut ru: libc::rusage = unsafe { zeroed() };
    // SAFETY: ru is valid for writes.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn flood_thread(
    id: u32,
    fd: &OwnedFd,
    a: &FloodArgs,
    start: Instant,
    duration: Duration,
    pps: f64,
) -> anyhow::Result<FloodCount> {
    let mut bufs = vec![vec![0u8; a.size]; a.batch];
    for b in &mut bufs {
        b[..MAGIC.len()].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&id.to_le_bytes());
    }
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            // SAFETY: mmsghdr is plain data; all-zero is valid (no name, no control).
            let mut m: libc::mmsghdr = unsafe { zeroed() };
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let mut c = FloodCount::default();
    let deadline = start + duration;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if pps > 0.0 {
            // Pace: never more than the target count for the time elapsed so far.
            let due = ((now - start).as_secs_f64() * pps) as u64;
            if c.sent >= due {
                std::thread::sleep(Duration::from_micros(50));
                continue;
            }
        }
        for (i, iov) in iovs.iter().enumerate() {
            let seq = (c.sent + i as u64).to_le_bytes();
            // SAFETY: every iovec points at its own live buffer of a.size >= FLOOD_HEADER bytes;
            // writing through the iovec's pointer keeps the iovecs the only path to the buffers.
            unsafe {
                std::ptr::copy_nonoverlapping(seq.as_ptr(), iov.iov_base.cast::<u8>().add(16), 8)
            };
        }
        // SAFETY: msgs, iovs and bufs stay alive and unmoved across the call.
        let n = unsafe {
            libc::sendmmsg(
                fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                msgs.len() as libc::c_uint,
                0,
            )
        };
        c.calls += 1;
        if n < 0 {
            match errno() {
                libc::ENOBUFS | libc::EAGAIN | libc::ECONNREFUSED | libc::EINTR => {
                    c.transient_errors += 1;
                    continue;
                }
                _ => return Err(std::io::Error::last_os_error()).context("sendmmsg"),
            }
        }
        c.sent += n as u64;
    }
    Ok(c)
}

/// sk_drops of a socket (SO_MEMINFO, index SK_MEMINFO_DROPS): datagrams the kernel dropped
/// because this socket's receive buffer was full.
fn socket_drops(fd: &OwnedFd) -> Option<u64> {
    const SO_MEMINFO: i32 = 55;
    const SK_MEMINFO_DROPS: usize = 8;
    let mut info = [0u32; 9];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: info and len are valid for writes of len bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    (rc == 0 && len as usize >= (SK_MEMINFO_DROPS + 1) * 4)
        .then(|| u64::from(info[SK_MEMINFO_DROPS]))
}

/// The sink's counters at one edge of its window.
#[derive(Clone, Copy)]
struct Snapshot {
    at: Instant,
    received: u64,
    bytes: u64,
    offered: u64,
    drops: Option<u64>,
}

fn sink(a: &SinkArgs) -> anyhow::Result<serde_json::Value> {
    if a.batch == 0 || a.batch > 1024 {
        bail!("--batch must be 1..=1024");
    }
    let fd = udp_socket()?;
    set_buffer(&fd, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, 32 << 20);
    bind(&fd, a.bind)?;
    // A short timeout lets the loop watch its deadlines even when nothing arrives.
    set_timeout(&fd, libc::SO_RCVTIMEO, Duration::from_millis(50))?;
    const BUF: usize = 2048;
    let mut bufs = vec![[0u8; BUF]; a.batch];
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: BUF,
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            // SAFETY: mmsghdr is plain data; all-zero is valid (no name, no control).
            let mut m: libc::mmsghdr = unsafe { zeroed() };
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let listening = Instant::now();
    let give_up = listening + Duration::from_secs_f64(a.timeout);
    let mut received: u64 = 0; // datagrams carrying MAGIC
    let mut bytes: u64 = 0;
    let mut foreign: u64 = 0;
    // Per sending thread, one past the highest sequence number seen: what it had sent.
    let mut next_seq = [0u64; MAX_FLOOD_THREADS];
    let mut first: Option<Instant> = None;
    let snapshot = |received, bytes, next_seq: &[u64], fd: &OwnedFd| Snapshot {
        at: Instant::now(),
        received,
        bytes,
        offered: next_seq.iter().sum(),
        drops: socket_drops(fd),
    };
    let mut window_start: Option<Snapshot> = None;
    let mut window_end: Option<Snapshot> = None;
    let warmup = Duration::from_secs_f64(a.warmup);
    let window = Duration::from_secs_f64(a.seconds);
    while window_end.is_none() {
        let now = Instant::now();
        match (first, window_start) {
            (None, _) if now >= give_up => break,
            (Some(f), None) if now >= f + warmup => {
                window_start = Some(snapshot(received, bytes, &next_seq, &fd));
            }
            (_, Some(Snapshot { at, .. })) if now >= at + window => {
                window_end = Some(snapshot(received, bytes, &next_seq, &fd));
                break;
            }
            _ => {}
        }
        // SAFETY: msgs, iovs and bufs stay alive and unmoved across the call.
        let n = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                msgs.len() as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            match errno() {
                libc::EAGAIN | libc::EINTR => continue,
                _ => return Err(std::io::Error::last_os_error()).context("recvmmsg"),
            }
        }
        for (m, b) in msgs.iter().zip(&bufs).take(n as usize) {
            let len = m.msg_len as usize;
            if len >= FLOOD_HEADER && &b[..MAGIC.len()] == MAGIC {
                received += 1;
                bytes += len as u64;
                let id = u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize;
                let mut seq = [0u8; 8];
                seq.copy_from_slice(&b[16..24]);
                if let Some(next) = next_seq.get_mut(id) {
                    *next = (*next).max(u64::from_le_bytes(seq) + 1);
                }
            } else {
                foreign += 1;
            }
        }
        if first.is_none() && received > 0 {
            first = Some(Instant::now());
        }
    }
    let (Some(w0), Some(w1)) = (window_start, window_end) else {
        bail!(
            "no flood datagrams arrived on {} within {} s (received {received})",
            a.bind,
            a.timeout
        );
    };
    let secs = (w1.at - w0.at).as_secs_f64();
    let got = w1.received - w0.received;
    let offered = w1.offered.saturating_sub(w0.offered);
    Ok(json!({
        "bind": a.bind.to_string(),
        "seconds": secs,
        "warmup": a.warmup,
        "received": got,
        "pps": got as f64 / secs,
        // Sent by the flood during the window, from the sequence numbers that arrived.
        "offered": offered,
        "offered_pps": offered as f64 / secs,
        "lost": offered.saturating_sub(got),
        "delivered_ratio": if offered > 0 { got as f64 / offered as f64 } else { 0.0 },
        "bytes": w1.bytes - w0.bytes,
        "socket_drops": w0.drops.zip(w1.drops).map(|(a, b)| b.saturating_sub(a)),
        "foreign_datagrams": foreign,
        "first_datagram_after_s": first.map(|f| (f - listening).as_secs_f64()),
    }))
}

fn rtt_server(bind_addr: SocketAddrV4) -> anyhow::Result<serde_json::Value> {
    let fd = udp_socket()?;
    bind(&fd, bind_addr)?;
    let mut buf = [0u8; 65_536];
    loop {
        // SAFETY: an all-zero sockaddr_in is valid; recvfrom fills it.
        let mut from: libc::sockaddr_in = unsafe { zeroed() };
        let mut fromlen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: buf, from and fromlen are valid for writes of the given sizes.
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut from as *mut libc::sockaddr_in).cast(),
                &mut fromlen,
            )
        };
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return Err(std::io::Error::last_os_error()).context("recvfrom");
        }
        // SAFETY: buf holds n received bytes; from was filled by recvfrom.
        unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                buf.as_ptr().cast(),
                n as usize,
                0,
                (&from as *const libc::sockaddr_in).cast(),
                fromlen,
            );
        }
    }
}

fn rtt_client(a: &RttClientArgs) -> anyhow::Result<serde_json::Value> {
    if a.size < 16 || a.size > 65_000 || a.count == 0 {
        bail!("--size must be 16..=65000 and --count at least 1");
    }
    let fd = udp_socket()?;
    connect(&fd, a.dst)?;
    let timeout = Duration::from_millis(a.timeout_ms.max(1));
    let interval = Duration::from_micros(a.interval_us);
    let mut out = vec![0u8; a.size];
    out[..MAGIC.len()].copy_from_slice(MAGIC);
    let mut inb = vec![0u8; a.size.max(2048)];
    let mut samples_ns: Vec<u64> = Vec::with_capacity(a.count);
    let (mut lost, mut stray, mut send_errors) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    for seq in 0..(a.warmup + a.count) as u64 {
        let due = start + interval * seq as u32;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        out[8..16].copy_from_slice(&seq.to_le_bytes());
        let sent_at = Instant::now();
        // SAFETY: out is valid for reads of its length.
        let n = unsafe { libc::send(fd.as_raw_fd(), out.as_ptr().cast(), out.len(), 0) };
        if n < 0 {
            send_errors += 1;
            if seq >= a.warmup as u64 {
                lost += 1;
            }
            continue;
        }
        let rtt = loop {
            let waited = sent_at.elapsed();
            if waited >= timeout {
                break None;
            }
            set_timeout(&fd, libc::SO_RCVTIMEO, timeout - waited)?;
            // SAFETY: inb is valid for writes of its length.
            let n = unsafe { libc::recv(fd.as_raw_fd(), inb.as_mut_ptr().cast(), inb.len(), 0) };
            let got = Instant::now();
            if n < 0 {
                match errno() {
                    libc::EINTR | libc::ECONNREFUSED => continue,
                    libc::EAGAIN => break None,
                    _ => return Err(std::io::Error::last_os_error()).context("recv"),
                }
            }
            let n = n as usize;
            if n >= 16 && &inb[..8] == MAGIC && inb[8..16] == seq.to_le_bytes() {
                break Some(got - sent_at);
            }
            stray += 1; // a late reply to an earlier, already-lost sample
        };
        if seq < a.warmup as u64 {
            continue;
        }
        match rtt {
            Some(d) => samples_ns.push(d.as_nanos() as u64),
            None => lost += 1,
        }
    }
    if samples_ns.is_empty() {
        bail!("no replies from {} ({lost} lost)", a.dst);
    }
    samples_ns.sort_unstable();
    let pct = |p: f64| {
        // Nearest rank.
        let rank = ((p / 100.0) * samples_ns.len() as f64).ceil() as usize;
        samples_ns[rank.clamp(1, samples_ns.len()) - 1] as f64 / 1000.0
    };
    let mean = samples_ns.iter().sum::<u64>() as f64 / samples_ns.len() as f64 / 1000.0;
    Ok(json!({
        "dst": a.dst.to_string(),
        "size": a.size,
        "interval_us": a.interval_us,
        "samples": samples_ns.len(),
        "lost": lost,
        "stray": stray,
        "send_errors": send_errors,
        "min_us": pct(0.0),
        "p50_us": pct(50.0),
        "p90_us": pct(90.0),
        "p99_us": pct(99.0),
        "p999_us": pct(99.9),
        "max_us": pct(100.0),
        "mean_us": mean,
    }))
}

/// One process's line of /proc/PID/stat, the fields cpustat needs.
struct ProcStat {
    pid: u32,
    ppid: u32,
    kernel_thread: bool,
    /// utime + stime + cutime + cstime, in clock ticks: its own CPU time and that of the
    /// children it has reaped, so work of processes that exit between two snapshots still
    /// shows up (in their parent).
    ticks: u64,
}

fn read_proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): field n is f[n - 3].
    let num = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    const PF_KTHREAD: u64 = 0x0020_0000;
    Some(ProcStat {
        pid,
        ppid: num(4)? as u32,
        kernel_thread: num(9)? & PF_KTHREAD != 0,
        ticks: num(14)? + num(15)? + num(16)? + num(17)?,
    })
}

fn cpustat(a: &CpustatArgs) -> anyhow::Result<serde_json::Value> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let cpu: Vec<u64> = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("/proc/stat has no cpu line")?
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let field = |i: usize| cpu.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal (guest time is already inside user).
    let idle = field(3) + field(4);
    let busy = field(0) + field(1) + field(2) + field(5) + field(6) + field(7);
    let cpus = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .count();

    let procs: Vec<ProcStat> = std::fs::read_dir("/proc")
        .context("listing /proc")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(read_proc_stat)
        .collect();
    let mut ours = std::collections::HashSet::from([a.ours]);
    // Descendants of `ours`: repeat until no new process joins (parents may come after children
    // in /proc order).
    loop {
        let before = ours.len();
        for p in &procs {
            if ours.contains(&p.ppid) {
                ours.insert(p.pid);
            }
        }
        if ours.len() == before {
            break;
        }
    }
    let foreign: Vec<&ProcStat> = procs
        .iter()
        .filter(|p| !p.kernel_thread && !ours.contains(&p.pid))
        .collect();
    // /proc/net/softnet_stat, one line of hex per CPU: processed, dropped (the backlog queue
    // was full: netdev_max_backlog), time_squeeze (net_rx_action ran out of budget or time).
    let softnet = std::fs::read_to_string("/proc/net/softnet_stat").unwrap_or_default();
    let softnet_col = |i: usize| -> u64 {
        softnet
            .lines()
            .filter_map(|l| l.split_whitespace().nth(i))
            .filter_map(|v| u64::from_str_radix(v, 16).ok())
            .sum()
    };
    // SAFETY: sysconf has no preconditions.
    let clk_tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let mut ts: libc::timespec = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is valid for writes.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Ok(json!({
        "monotonic_s": ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9,
        "clk_tck": clk_tck,
        "cpus": cpus,
        "busy_ticks": busy,
        "idle_ticks": idle,
        "foreign_ticks": foreign.iter().map(|p| p.ticks).sum::<u64>(),
        "foreign_processes": foreign.len(),
        "our_processes": ours.len(),
        "softnet_processed": softnet_col(0),
        "softnet_dropped": softnet_col(1),
        "softnet_time_squeeze": softnet_col(2),
    }))
}

/// Receives `streams` connections and reports the bytes and the rate over the time from the
/// first byte to the last close.
fn tcp_server(bind: SocketAddrV4, streams: usize) -> anyhow::Result<serde_json::Value> {
    use std::io::Read;
    let listener = std::net::TcpListener::bind(bind).with_context(|| format!("binding {bind}"))?;
    let mut handles = Vec::new();
    for _ in 0..streams {
        let (mut conn, _) = listener.accept().context("accepting a stream")?;
        handles.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0u64;
            let mut first = None;
            loop {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        first.get_or_insert_with(Instant::now);
                        total += n as u64;
                    }
                }
            }
            (total, first, Instant::now())
        }));
    }
    let mut bytes = 0u64;
    let mut start: Option<Instant> = None;
    let mut end: Option<Instant> = None;
    for h in handles {
        let (n, first, last) = h.join().map_err(|_| anyhow::anyhow!("a stream panicked"))?;
        bytes += n;
        if let Some(f) = first {
            start = Some(start.map_or(f, |s| s.min(f)));
        }
        end = Some(end.map_or(last, |e| e.max(last)));
    }
    let secs = match (start, end) {
        (Some(s), Some(e)) => e.duration_since(s).as_secs_f64().max(1e-9),
        _ => 0.0,
    };
    Ok(json!({
        "streams": streams,
        "bytes": bytes,
        "seconds": secs,
        "gbit_s": if secs > 0.0 { bytes as f64 * 8.0 / secs / 1e9 } else { 0.0 },
    }))
}

/// Sends over `streams` connections for `seconds`.
fn tcp_client(
    dst: SocketAddrV4,
    streams: usize,
    seconds: f64,
) -> anyhow::Result<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut handles = Vec::new();
    for _ in 0..streams {
        let mut conn =
            std::net::TcpStream::connect(dst).with_context(|| format!("connecting to {dst}"))?;
        handles.push(std::thread::spawn(move || {
            let buf = vec![0x5au8; 128 << 10];
            let mut total = 0u64;
            while Instant::now() < deadline {
                match conn.write(&buf) {
                    Ok(n) => total += n as u64,
                    Err(_) => break,
                }
            }
            total
        }));
    }
    let sent: u64 = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
    Ok(json!({ "streams": streams, "bytes": sent, "seconds": seconds }))
}
