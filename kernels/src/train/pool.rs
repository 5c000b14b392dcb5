//! Persistent worker threads for the trainer's steps, so that a step spawns
//! no thread and allocates nothing.
//!
//! [`Pool::run`] publishes a borrowed job to the threads, runs its own share
//! on the calling thread and returns only when every thread has finished its
//! share: the job never outlives the borrow. A panicking share is caught on
//! its thread and re-raised on the caller, so the pool never deadlocks.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// A share of work: called with the share's index.
type Job = dyn Fn(usize) + Sync;

struct State {
    /// Bumped by every [`Pool::run`].
    generation: u64,
    /// The job of the current generation, valid until `pending` reaches 0.
    job: Option<*const Job>,
    /// Threads that have not finished the current generation.
    pending: usize,
    /// Whether a share of the current generation panicked.
    panicked: bool,
    shutdown: bool,
}

// SAFETY: the only non-Send field is the job pointer. It points to a `Sync`
// closure, and it is dereferenced only between `Pool::run` publishing it and
// `Pool::run` returning, which waits for every thread; during that time the
// closure it points to is borrowed by `run` and alive.
unsafe impl Send for State {}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    done: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No code panics while holding the lock, so poisoning cannot happen;
        // take the state either way.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `extra` threads plus the caller.
pub(crate) struct Pool {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    /// A pool of `extra` threads (0: every share runs on the caller).
    pub fn new(extra: usize) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State { generation: 0, job: None, pending: 0, panicked: false, shutdown: false }),
            wake: Condvar::new(),
            done: Condvar::new(),
        });
        let threads = (0..extra)
            .map(|i| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("qecd-train-{i}"))
                    .spawn(move || serve(&shared, i))
                    .expect("the OS starts a trainer thread")
            })
            .collect();
        Self { shared, threads }
    }

    /// Runs `job(i)` for every `i` in `0..=extra`: `i < extra` on the pool's
    /// threads, `extra` on this one. Returns when all have returned; panics if
    /// any of them did.
    pub fn run(&self, job: &(dyn Fn(usize) + Sync)) {
        let extra = self.threads.len();
        if extra == 0 {
            return job(0);
        }
        {
            let mut st = self.shared.lock();
            // SAFETY: erases the borrow's lifetime from the pointer only; it
            // is dereferenced while this call still holds the borrow (see `State`).
            let ptr: *const Job = unsafe { std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const Job>(job) };
            st.job = Some(ptr);
            st.pending = extra;
            st.generation += 1;
        }
        self.shared.wake.notify_all();
        let mine = catch_unwind(AssertUnwindSafe(|| job(extra)));
        let mut st = self.shared.lock();
        while st.pending > 0 {
            st = self.shared.done.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.job = None;
        let panicked = std::mem::take(&mut st.panicked);
        drop(st);
        if let Err(payload) = mine {
            resume_unwind(payload);
        }
        assert!(!panicked, "a trainer thread panicked");
    }
}

/// A pool thread: waits for a generation, runs share `i` of its job, reports.
fn serve(shared: &Shared, i: usize) {
    let mut seen = 0;
    loop {
        let job = {
            let mut st = shared.lock();
            while st.generation == seen && !st.shutdown {
                st = shared.wake.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            if st.shutdown {
                return;
            }
            seen = st.generation;
            st.job.expect("a new generation publishes its job")
        };
        // SAFETY: `Pool::run` keeps the job alive until this thread reports below.
        let ok = catch_unwind(AssertUnwindSafe(|| unsafe { (*job)(i) })).is_ok();
        let mut st = shared.lock();
        st.panicked |= !ok;
        st.pending -= 1;
        if st.pending == 0 {
            shared.done.notify_all();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_share_runs_once_per_run() {
        let pool = Pool::new(3);
        let counts: Vec<AtomicUsize> = (0..4).map(|_| AtomicUsize::new(0)).collect();
        for _ in 0..100 {
            pool.run(&|i| {
                counts[i].fetch_add(1, Ordering::Relaxed);
            });
        }
        assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 100));
    }

    #[test]
    fn a_panicking_share_reaches_the_caller_and_the_pool_goes_on() {
        let pool = Pool::new(2);
        let caught = catch_unwind(AssertUnwindSafe(|| {
            pool.run(&|i| assert_ne!(i, 0, "share 0 fails"));
        }));
        assert!(caught.is_err());
        let hits = AtomicUsize::new(0);
        pool.run(&|_| {
            hits.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(hits.load(Ordering::Relaxed), 3);
    }
}
