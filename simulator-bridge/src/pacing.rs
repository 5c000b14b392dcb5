//! The clock of a sender that plays rounds in real time, as an FPGA does:
//! tick `k` is due `k` periods after the start. Used by `qecd replay` and by
//! the bridge's transport floor (`bridge_floor` in benches/).

use std::time::{Duration, Instant};

/// A deadline clock for one sending thread.
pub struct Pacer {
    start: Instant,
    period_ns: f64,
}

impl Pacer {
    /// Starts the clock now. It asks the kernel to end this thread's sleeps
    /// on time (Linux lets a sleep overrun by the thread's timer slack, 50 µs
    /// by default; this sets it to 1 ns, best effort), so that [`Pacer::wait`]
    /// sleeps most of a period and spins only its last 25 µs, leaving the
    /// cores to what is being measured. Call it on the thread that waits.
    pub fn start(period_us: f64) -> Self {
        // SAFETY: PR_SET_TIMERSLACK takes one integer argument and touches
        // nothing but the calling thread's timer slack.
        unsafe {
            libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
        }
        Self { start: Instant::now(), period_ns: period_us * 1e3 }
    }

    /// When tick `k` is due.
    pub fn deadline(&self, k: usize) -> Instant {
        self.start + Duration::from_nanos((k as f64 * self.period_ns) as u64)
    }

    /// Waits until tick `k` is due (sleeping until shortly before, then
    /// spinning) and returns how late it is.
    pub fn wait(&self, k: usize) -> Duration {
        let deadline = self.deadline(k);
        loop {
            let now = Instant::now();
            if now >= deadline {
                return now - deadline;
            }
            let left = deadline - now;
            if left > Duration::from_micros(40) {
                std::thread::sleep(left - Duration::from_micros(25));
            } else {
                std::hint::spin_loop();
            }
        }
    }

    /// Whether a tick that began `lag` late missed a whole period.
    pub fn is_late(&self, lag: Duration) -> bool {
        lag.as_nanos() as f64 > self.period_ns
    }

    /// Since the start.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_never_early_and_deadlines_step_by_the_period() {
        let pacer = Pacer::start(200.0);
        assert_eq!(pacer.deadline(5) - pacer.deadline(0), Duration::from_micros(1000));
        for k in 0..20 {
            pacer.wait(k);
            assert!(Instant::now() >= pacer.deadline(k));
        }
        assert!(pacer.is_late(Duration::from_micros(201)) && !pacer.is_late(Duration::from_micros(199)));
    }
}
