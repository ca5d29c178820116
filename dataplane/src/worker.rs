//! A worker: one pinned thread that owns one TAP queue and its share of the underlay (an
//! AF_XDP socket or UDP sockets) and moves frames both ways through the [`Pipeline`].
//!
//! Per round it reclaims what the underlay finished with, receives from the underlay into the
//! TAP, then reads the TAP into the underlay. Nothing on this path allocates or locks; the peer
//! tables are read from an RCU snapshot loaded once per batch. When a round finds nothing to do
//! (a few rounds while transmit completions are outstanding), the worker blocks in `poll` on
//! the underlay, the TAP and the stop signal, so an idle node costs no CPU; with busy polling
//! it spins instead, for dedicated cores.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::pipeline::Pipeline;
use crate::stats::WorkerStats;
use crate::tap::TapQueue;
use crate::underlay::Underlay;

/// Empty rounds before blocking in poll while transmitted frames are still out (AF_XDP):
/// their completions come without an event, so the worker looks again a few times before it
/// sleeps. With nothing outstanding it sleeps after the first empty round: every empty round
/// costs a receive and a TAP read that find nothing, and on a shared host the CPU they take is
/// the CPU the applications and the peer's worker need. Measured on 2 CPUs (udp backend,
/// one TCP stream between two nodes): spinning 32 rounds cost 20% more worker CPU per GB than
/// sleeping at once and made round trips slower, not faster (p50 150 against 120-140 us).
const IDLE_ROUNDS_WITH_TX_OUTSTANDING: u32 = 32;
/// Poll timeout while transmitted frames are still out (completions come without an event).
const POLL_MS_WITH_TX_OUTSTANDING: i32 = 1;
/// Poll timeout when fully idle; the stop signal wakes the worker earlier.
const POLL_MS_IDLE: i32 = 1000;
/// With busy polling, how long a worker spins on an idle underlay before it sleeps after all:
/// a dedicated core is the operator's choice, a core spinning on a silent network for hours
/// is not.
pub const BUSY_POLL_IDLE_LIMIT: Duration = Duration::from_secs(1);

/// Tells workers to stop and wakes them from poll.
#[derive(Debug)]
pub struct StopSignal {
    stop: AtomicBool,
    event: OwnedFd,
}

impl StopSignal {
    /// A fresh signal.
    pub fn new() -> io::Result<StopSignal> {
        // SAFETY: eventfd with valid flags; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(StopSignal {
            stop: AtomicBool::new(false),
            // SAFETY: eventfd just returned this descriptor.
            event: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Asks every worker to stop. The eventfd stays readable (nobody reads it), so every
    /// worker's poll returns.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a valid u64 to our eventfd.
        unsafe { libc::write(self.event.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Whether stop was asked.
    pub fn is_stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn fd(&self) -> RawFd {
        self.event.as_raw_fd()
    }
}

/// Everything a worker owns.
pub struct Worker<U: Underlay> {
    /// Index (for logs and status).
    pub index: usize,
    /// This worker's share of the underlay.
    pub underlay: U,
    /// This worker's TAP queue.
    pub tap: TapQueue,
    /// The per-frame work.
    pub pipeline: Pipeline,
    /// Counters.
    pub stats: Arc<WorkerStats>,
    /// Stop signal shared by all workers.
    pub stop: Arc<StopSignal>,
    /// Spin instead of sleeping while traffic flows (dedicated cores).
    pub busy_poll: bool,
}

impl<U: Underlay> std::fmt::Debug for Worker<U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("index", &self.index)
            .field("tap", &self.tap)
            .finish()
    }
}

impl<U: Underlay> Worker<U> {
    /// Runs until the stop signal is raised.
    pub fn run(mut self) -> io::Result<()> {
        let mut idle_rounds = 0u32;
        let mut idle_since: Option<Instant> = None;
        while !self.stop.is_stopped() {
            if self.round() > 0 {
                idle_rounds = 0;
                idle_since = None;
                continue;
            }
            idle_rounds = idle_rounds.saturating_add(1);
            if self.busy_poll {
                // Spin: the next frame is handled within a round, not after a wakeup. Only a
                // long silence puts the worker to sleep.
                let since = *idle_since.get_or_insert_with(Instant::now);
                if since.elapsed() < BUSY_POLL_IDLE_LIMIT {
                    std::hint::spin_loop();
                    continue;
                }
            } else if idle_rounds < IDLE_ROUNDS_WITH_TX_OUTSTANDING
                && self.underlay.has_outstanding()
            {
                continue;
            }
            let timeout = if self.underlay.has_outstanding() {
                POLL_MS_WITH_TX_OUTSTANDING
            } else {
                POLL_MS_IDLE
            };
            let want_tap = self.underlay.can_send(&self.stats);
            self.sleep(want_tap, timeout);
            idle_since = None;
        }
        Ok(())
    }

    /// One round: reclaim, receive, send. Returns how much work it did.
    fn round(&mut self) -> usize {
        let Worker {
            underlay,
            tap,
            pipeline,
            stats,
            ..
        } = self;
        let mut work = underlay.reclaim(stats);
        work += underlay.receive(stats, |batch| pipeline.to_tap(tap, batch, stats));
        work += pipeline.from_tap(tap, underlay, stats);
        work
    }

    /// Blocks until the underlay or the TAP has work, the stop signal fires, or `timeout_ms`.
    fn sleep(&mut self, want_tap: bool, timeout_ms: i32) {
        self.stats.sleeps.add(1);
        let mut fds = [
            libc::pollfd {
                fd: self.underlay.poll_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.stop.fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                // A negative fd is ignored by poll: with nothing to send with there is no
                // point waking for the TAP.
                fd: if want_tap { self.tap.fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    }
}

/// The running workers, as one value: dropping it stops every worker and waits for it, so
/// that no error path between the first spawn and a running backend can leave a thread
/// forwarding on its TAP queue (and, with `--backend auto`, beside the fallback started next).
pub struct WorkerSet {
    stop: Arc<StopSignal>,
    /// Workers wait at this gate until [`WorkerSet::release`]: frames taken over from a
    /// predecessor must not be read before the peer tables can forward them.
    gate: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    threads: Vec<(usize, Option<JoinHandle<io::Result<()>>>)>,
}

impl std::fmt::Debug for WorkerSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerSet")
            .field("workers", &self.threads.len())
            .finish()
    }
}

impl WorkerSet {
    /// No workers yet, and the stop signal they will share.
    pub fn new() -> io::Result<WorkerSet> {
        Ok(WorkerSet {
            stop: Arc::new(StopSignal::new()?),
            gate: Arc::default(),
            threads: Vec::new(),
        })
    }

    /// The stop signal to give each worker.
    pub fn stop_signal(&self) -> Arc<StopSignal> {
        Arc::clone(&self.stop)
    }

    /// Starts `worker` on its own thread, pinned to `core` if given, after `setup` runs there
    /// (dropping privileges, say).
    pub fn spawn<U: Underlay + Send + 'static>(
        &mut self,
        worker: Worker<U>,
        core: Option<usize>,
        setup: impl FnOnce() + Send + 'static,
    ) -> io::Result<()> {
        let index = worker.index;
        let gate = Arc::clone(&self.gate);
        let thread = std::thread::Builder::new()
            .name(format!("vxdp-worker-{index}"))
            .spawn(move || {
                if let Some(id) = core {
                    core_affinity::set_for_current(core_affinity::CoreId { id });
                }
                setup();
                let (open, opened) = &*gate;
                let mut go = open.lock().unwrap_or_else(|e| e.into_inner());
                while !*go {
                    go = opened.wait(go).unwrap_or_else(|e| e.into_inner());
                }
                drop(go);
                worker.run()
            })?;
        self.threads.push((index, Some(thread)));
        Ok(())
    }

    /// Lets the workers started so far (and any started later) begin forwarding.
    pub fn release(&self) {
        let (open, opened) = &*self.gate;
        *open.lock().unwrap_or_else(|e| e.into_inner()) = true;
        opened.notify_all();
    }

    /// How many workers were started.
    pub fn len(&self) -> usize {
        self.threads.len()
    }

    /// Whether none was started.
    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }

    /// An error naming the first worker that stopped although nobody asked it to: a dead
    /// worker leaves its TAP queue unread and, on AF_XDP, its socket in the XSKMAP, so the
    /// backend cannot go on.
    pub fn check_alive(&mut self) -> Result<(), String> {
        for (index, slot) in &mut self.threads {
            if slot.as_ref().is_some_and(JoinHandle::is_finished) {
                let why = match slot.take().map(JoinHandle::join) {
                    Some(Ok(Ok(()))) | None => "returned".to_string(),
                    Some(Ok(Err(e))) => format!("failed: {e}"),
                    Some(Err(panic)) => format!(
                        "panicked: {}",
                        panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_default()
                    ),
                };
                return Err(format!(
                    "the worker of queue {index} stopped unexpectedly ({why})"
                ));
            }
        }
        Ok(())
    }

    /// Stops every worker and waits for them; errors they ended with are logged.
    pub fn stop_and_join(&mut self) {
        self.stop.stop();
        // Workers still at the gate go through it and see the stop at once.
        self.release();
        for (index, slot) in &mut self.threads {
            if let Some(t) = slot.take() {
                match t.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(queue = *index, "worker ended with an error: {e}"),
                    Err(_) => tracing::warn!(queue = *index, "worker panicked"),
                }
            }
        }
    }
}

impl Drop for WorkerSet {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_signal_wakes_poll() {
        let s = StopSignal::new().unwrap();
        s.stop();
        assert!(s.is_stopped());
        let mut fds = [libc::pollfd {
            fd: s.fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: valid pollfd array.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 1000) };
        assert_eq!(n, 1);
    }
}
