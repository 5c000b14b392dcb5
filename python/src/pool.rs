//! The decoders of one `qecd.Decoder`, built once for its whole life: one
//! that the calling thread runs itself, and one on each worker thread.
//!
//! Building once (not once per call, as `decoder::decode_parallel` does)
//! keeps sinter's many small batches cheap. So does the calling thread's own
//! decoder: the first slice of every batch (with one thread, all of it) is
//! decoded where the call came in, with no hand-off to another thread, which
//! costs two context switches per call (about 45 µs; PyMatching's whole call
//! takes 7 µs for one d=5 shot). The other slices travel to the workers over
//! channels.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use decoder::{Decisions, DecodeError, Decoder, PackedShots};

/// A decoder that any thread may run (one at a time).
pub type BoxedDecoder = Box<dyn Decoder + Send>;

/// Builds one decoder.
pub type Make = Arc<dyn Fn() -> Result<BoxedDecoder, DecodeError> + Send + Sync>;

/// Fewest shots worth handing to a decoder of their own.
const MIN_SHOTS_PER_WORKER: usize = 64;

/// One batch for a worker, and where its answer goes.
struct Job {
    shots: PackedShots,
    reply: Sender<Result<Decisions, DecodeError>>,
}

/// A worker: its job queue and its thread.
struct Worker {
    jobs: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

/// `threads` decoders, built once: the caller's own and `threads - 1` workers.
pub struct Pool {
    /// The decoder that the calling thread runs: the first slice of a batch.
    /// The lock keeps two callers from running it at once.
    local: Mutex<BoxedDecoder>,
    /// Decoders on threads of their own, for the other slices.
    workers: Vec<Worker>,
}

impl Pool {
    /// Builds `threads` decoders (at least one): the caller's here, the
    /// workers' in their own threads, and waits until all are built; the
    /// first build error is returned and the workers stop.
    pub fn start(make: Make, threads: usize) -> Result<Self, DecodeError> {
        // Dropped on an early return, which stops the workers started so far.
        let mut workers = Workers(Vec::with_capacity(threads.saturating_sub(1)));
        let mut ready = Vec::with_capacity(threads.saturating_sub(1));
        for t in 1..threads.max(1) {
            let (jobs, queue) = mpsc::channel::<Job>();
            let (built, ready_rx) = mpsc::channel::<Result<(), DecodeError>>();
            let make = make.clone();
            let thread = std::thread::Builder::new()
                .name(format!("qecd-decode-{t}"))
                .spawn(move || run(make, queue, built))
                .map_err(|e| DecodeError::Invalid(format!("cannot start a decoding thread: {e}")))?;
            workers.0.push(Worker { jobs: Some(jobs), thread: Some(thread) });
            ready.push(ready_rx);
        }
        let local = make()?;
        for r in ready {
            r.recv().unwrap_or_else(|_| Err(DecodeError::Invalid("a decoding thread died while building".into())))?;
        }
        Ok(Self { local: Mutex::new(local), workers: workers.into_inner() })
    }

    /// Number of decoders, the caller's included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Decodes `shots`, split into contiguous slices: the first on the
    /// calling thread, the others on the workers. The result is in shot
    /// order, as one decoder's over the whole batch.
    pub fn decode(&self, shots: PackedShots) -> Result<Decisions, DecodeError> {
        let n = shots.num_shots();
        let used = self.threads().min(n.div_ceil(MIN_SHOTS_PER_WORKER)).max(1);
        if used == 1 {
            return self.decode_locally(&shots);
        }
        let per = n.div_ceil(used);
        let slice = |w: usize| shots.slice((w * per).min(n), ((w + 1) * per).min(n));
        let mut replies = Vec::with_capacity(used - 1);
        for (w, worker) in (1..used).zip(&self.workers) {
            let (reply, answer) = mpsc::channel();
            let jobs = worker.jobs.as_ref().expect("a running pool has its queues");
            jobs.send(Job { shots: slice(w), reply })
                .map_err(|_| DecodeError::Invalid("a decoding thread has stopped".into()))?;
            replies.push(answer);
        }
        let mut merged = self.decode_locally(&slice(0))?;
        for answer in replies {
            let part =
                answer.recv().map_err(|_| DecodeError::Invalid("a decoding thread stopped mid-batch".into()))??;
            merged.predictions.extend(&part.predictions);
            match (merged.confidence.as_mut(), part.confidence) {
                (Some(c), Some(more)) => c.extend(more),
                _ => merged.confidence = None,
            }
        }
        Ok(merged)
    }

    /// Decodes on the calling thread.
    fn decode_locally(&self, shots: &PackedShots) -> Result<Decisions, DecodeError> {
        // A panic mid-decode leaves nothing half-written that the next batch reads.
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        local.decode_batch(shots)
    }
}

/// A worker's life: build, report, then decode jobs until the queue closes.
fn run(make: Make, queue: Receiver<Job>, built: Sender<Result<(), DecodeError>>) {
    let mut decoder = match make() {
        Ok(d) => d,
        Err(e) => {
            let _ = built.send(Err(e));
            return;
        }
    };
    if built.send(Ok(())).is_err() {
        return;
    }
    for job in queue {
        // A caller that gave up no longer listens; the next job is unaffected.
        let _ = job.reply.send(decoder.decode_batch(&job.shots));
    }
}

/// Workers that are stopped and joined when dropped.
struct Workers(Vec<Worker>);

impl Workers {
    fn into_inner(mut self) -> Vec<Worker> {
        std::mem::take(&mut self.0)
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        stop(&mut self.0);
    }
}

/// Closes every queue, then waits for every thread.
fn stop(workers: &mut [Worker]) {
    for w in workers.iter_mut() {
        w.jobs.take();
    }
    for w in workers.iter_mut() {
        if let Some(t) = w.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        stop(&mut self.workers);
    }
}
