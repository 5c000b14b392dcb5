//! Worker threads that each own one decoder for the life of a `qecd.Decoder`.
//!
//! PyMatching's graphs cannot cross threads, so a decoder is built inside the
//! thread that uses it and stays there; batches travel to it over a channel.
//! Building once per thread (not once per call, as `decoder::decode_parallel`
//! does) keeps sinter's many small batches cheap.

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;

use decoder::{Decisions, DecodeError, Decoder, PackedShots};

/// Builds one worker's decoder, in the worker's own thread.
pub type Make = Arc<dyn Fn() -> Result<Box<dyn Decoder>, DecodeError> + Send + Sync>;

/// Fewest shots worth handing to a worker of their own.
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

/// Decoders on `threads` threads, built once.
pub struct Pool {
    workers: Vec<Worker>,
}

impl Pool {
    /// Starts `threads` workers (at least one) and waits until each has built
    /// its decoder; the first build error is returned and the workers stop.
    pub fn start(make: Make, threads: usize) -> Result<Self, DecodeError> {
        let mut workers = Vec::with_capacity(threads.max(1));
        let mut ready = Vec::with_capacity(threads.max(1));
        for t in 0..threads.max(1) {
            let (jobs, queue) = mpsc::channel::<Job>();
            let (built, ready_rx) = mpsc::channel::<Result<(), DecodeError>>();
            let make = make.clone();
            let thread = std::thread::Builder::new()
                .name(format!("qecd-decode-{t}"))
                .spawn(move || run(make, queue, built))
                .map_err(|e| DecodeError::Invalid(format!("cannot start a decoding thread: {e}")))?;
            workers.push(Worker { jobs: Some(jobs), thread: Some(thread) });
            ready.push(ready_rx);
        }
        let pool = Self { workers };
        for r in ready {
            r.recv().unwrap_or_else(|_| Err(DecodeError::Invalid("a decoding thread died while building".into())))?;
        }
        Ok(pool)
    }

    /// Number of workers.
    pub fn threads(&self) -> usize {
        self.workers.len()
    }

    /// Decodes `shots`, split into contiguous slices over the workers; the
    /// result is in shot order, as one decoder's over the whole batch.
    pub fn decode(&self, shots: PackedShots) -> Result<Decisions, DecodeError> {
        let n = shots.num_shots();
        let used = self.workers.len().min(n.div_ceil(MIN_SHOTS_PER_WORKER)).max(1);
        let per = n.div_ceil(used).max(1);
        let slices = if used == 1 {
            vec![shots]
        } else {
            (0..used).map(|w| shots.slice((w * per).min(n), ((w + 1) * per).min(n))).collect()
        };
        let mut replies = Vec::with_capacity(used);
        for (slice, worker) in slices.into_iter().zip(&self.workers) {
            let (reply, answer) = mpsc::channel();
            let jobs = worker.jobs.as_ref().expect("a running pool has its queues");
            jobs.send(Job { shots: slice, reply })
                .map_err(|_| DecodeError::Invalid("a decoding thread has stopped".into()))?;
            replies.push(answer);
        }
        let mut merged: Option<Decisions> = None;
        for answer in replies {
            let part =
                answer.recv().map_err(|_| DecodeError::Invalid("a decoding thread stopped mid-batch".into()))??;
            match merged.as_mut() {
                None => merged = Some(part),
                Some(m) => {
                    m.predictions.extend(&part.predictions);
                    match (m.confidence.as_mut(), part.confidence) {
                        (Some(c), Some(more)) => c.extend(more),
                        _ => m.confidence = None,
                    }
                }
            }
        }
        Ok(merged.expect("at least one worker answered"))
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

impl Drop for Pool {
    fn drop(&mut self) {
        for w in &mut self.workers {
            w.jobs.take();
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}
