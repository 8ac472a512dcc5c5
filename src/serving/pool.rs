//! The inference worker pool: model compute never runs on tokio's async workers.
//!
//! Requests enter a bounded queue; a fixed set of OS threads take work from it and run
//! the engine. A full queue is refused at once ([`Overloaded`]), never waited on, so
//! the HTTP layer can answer 503 with `Retry-After`. Each job carries its own version
//! handle: a version swapped out while a job waits still runs that job, and is freed
//! when the last job holding it ends.
//!
//! Dynamic batching: a version with `max_batch_size > 1` queues its jobs in its own
//! [`Batcher`] and puts one ticket for the version in the shared queue. The worker that
//! takes the ticket gathers the version's waiting jobs (whole requests, compatible
//! shapes, at most `max_batch_size` rows), concatenates them along the first dimension,
//! runs them once and splits the outputs back. It waits for more requests, up to
//! `max_queue_delay`, only while other requests of the version are in flight (a lone
//! request runs at once) and stops waiting as soon as a preferred size or the maximum is
//! reached. A batch that fails, or whose outputs do not have the batch as their first
//! dimension, is run again request by request, so every request gets exactly the answer
//! it would get alone.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_channel::{bounded, Sender, TrySendError};
use tokio::sync::oneshot;

use super::ServedVersion;
use crate::backend::{BackendError, ModelSignature};
use crate::config::BatchingConfig;
use crate::tensor::{Tensor, TensorData};

/// What a worker hands back: the outputs and where the time went.
pub struct JobDone {
    pub outputs: Result<Vec<Tensor>, BackendError>,
    pub queued: Duration,
    pub compute: Duration,
}

struct Job {
    version: Arc<ServedVersion>,
    inputs: Vec<Tensor>,
    enqueued: Instant,
    reply: oneshot::Sender<JobDone>,
}

impl Job {
    /// Rows along the batch dimension, if every input agrees on it.
    fn rows(&self) -> Option<usize> {
        rows_of(&self.inputs)
    }

    /// Whether `other` can share a batch with this job: same inputs with the same
    /// dimensions after the first.
    fn batches_with(&self, other: &Job) -> bool {
        other.rows().is_some()
            && self.inputs.len() == other.inputs.len()
            && self
                .inputs
                .iter()
                .zip(&other.inputs)
                .all(|(a, b)| a.shape[1..] == b.shape[1..] && a.datatype() == b.datatype())
    }
}

enum Work {
    One(Job),
    /// The version's batcher has jobs waiting.
    Batch(Arc<ServedVersion>),
}

/// The queue is full (or the pool is stopping): try again later.
#[derive(Debug)]
pub struct Overloaded;

/// A version's batching settings, resolved against its signature.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchSettings {
    /// 1: no batching.
    pub max_batch: usize,
    pub delay: Duration,
    pub max_queue: usize,
    pub preferred: Vec<usize>,
}

impl BatchSettings {
    /// `[batching]` for a model: off when some input's first dimension is fixed (the
    /// batch cannot grow), else `max_batch_size` or the default. `queue` is the default
    /// queue bound (the server's `--queue-size`).
    pub fn resolve(
        config: &BatchingConfig,
        signature: &ModelSignature,
        queue: usize,
    ) -> BatchSettings {
        let batchable = !signature.inputs.is_empty()
            && signature
                .inputs
                .iter()
                .all(|i| i.shape.first().is_some_and(|&d| d < 0));
        let max_batch = if batchable {
            config
                .max_batch_size
                .unwrap_or(BatchingConfig::DEFAULT_MAX_BATCH)
        } else {
            1
        };
        BatchSettings {
            max_batch,
            delay: Duration::from_micros(config.max_queue_delay_us),
            max_queue: config.max_queue_size.unwrap_or(queue).max(1),
            preferred: config.preferred_batch_sizes.clone(),
        }
    }
}

#[derive(Default)]
struct BatchState {
    jobs: VecDeque<Job>,
    /// A ticket for this version is in the shared queue or a worker is draining it.
    scheduled: bool,
}

/// One version's batching queue.
pub struct Batcher {
    settings: ArcSwap<BatchSettings>,
    state: Mutex<BatchState>,
    more: Condvar,
    /// Jobs submitted and not yet answered (queued here or running).
    in_flight: AtomicUsize,
}

impl Batcher {
    pub fn new(settings: BatchSettings) -> Batcher {
        Batcher {
            settings: ArcSwap::from_pointee(settings),
            state: Mutex::new(BatchState::default()),
            more: Condvar::new(),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// New settings take effect with the next request (no reload).
    pub fn configure(&self, settings: BatchSettings) {
        if **self.settings.load() != settings {
            self.settings.store(Arc::new(settings));
        }
    }

    pub fn settings(&self) -> Arc<BatchSettings> {
        self.settings.load_full()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BatchState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops waiting jobs whose clients have gone.
    fn drop_cancelled(&self, st: &mut BatchState) {
        st.jobs.retain(|j| {
            let keep = !j.reply.is_closed();
            if !keep {
                self.in_flight.fetch_sub(1, Ordering::Relaxed);
            }
            keep
        });
    }
}

/// How many jobs from the front form the next batch, and their rows: whole requests,
/// compatible with the first, at most `max` rows (the first job always goes).
fn batch_extent(jobs: &VecDeque<Job>, max: usize) -> (usize, usize) {
    let Some(first) = jobs.front() else {
        return (0, 0);
    };
    let Some(mut rows) = first.rows() else {
        return (1, 0);
    };
    let mut count = 1;
    for j in jobs.iter().skip(1) {
        match j.rows() {
            Some(r) if rows + r <= max && first.batches_with(j) => {
                rows += r;
                count += 1;
            }
            _ => break,
        }
    }
    (count, rows)
}

pub struct WorkerPool {
    capacity: usize,
    sender: Option<Sender<Work>>,
    threads: Vec<JoinHandle<()>>,
    stopping: Arc<std::sync::atomic::AtomicBool>,
}

impl WorkerPool {
    /// Starts `workers` threads fed by a queue of `queue_size` waiting jobs.
    pub fn new(workers: usize, queue_size: usize) -> WorkerPool {
        let (sender, receiver) = bounded::<Work>(queue_size.max(1));
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..workers.max(1))
            .map(|i| {
                let receiver = receiver.clone();
                // Workers hold a sender to hand a version's remaining batch to another
                // worker, so the channel never disconnects: `stopping` ends them instead.
                let tickets = sender.clone();
                let stopping = stopping.clone();
                std::thread::Builder::new()
                    .name(format!("vigil-infer-{i}"))
                    .spawn(move || loop {
                        match receiver.recv_timeout(Duration::from_millis(100)) {
                            Ok(Work::One(job)) => run_one(job),
                            Ok(Work::Batch(version)) => drain(&version, &tickets),
                            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                                if stopping.load(Ordering::Acquire) && receiver.is_empty() {
                                    break;
                                }
                            }
                            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                        }
                    })
                    .expect("spawning an inference worker thread")
            })
            .collect();
        WorkerPool {
            capacity: queue_size.max(1),
            sender: Some(sender),
            threads,
            stopping,
        }
    }

    /// The shared queue's bound (`--queue-size`).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Jobs waiting in the queue.
    pub fn queue_len(&self) -> usize {
        self.sender.as_ref().map_or(0, |s| s.len())
    }

    /// Queues a job; the answer arrives on the returned channel.
    pub fn submit(
        &self,
        version: Arc<ServedVersion>,
        inputs: Vec<Tensor>,
    ) -> Result<oneshot::Receiver<JobDone>, Overloaded> {
        let sender = self.sender.as_ref().ok_or(Overloaded)?;
        let (reply, rx) = oneshot::channel();
        let job = Job {
            version: version.clone(),
            inputs,
            enqueued: Instant::now(),
            reply,
        };
        let b = &version.batcher;
        let settings = b.settings.load();
        if settings.max_batch <= 1 {
            return match sender.try_send(Work::One(job)) {
                Ok(()) => Ok(rx),
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => Err(Overloaded),
            };
        }
        let mut st = b.lock();
        if st.jobs.len() >= settings.max_queue {
            return Err(Overloaded);
        }
        st.jobs.push_back(job);
        b.in_flight.fetch_add(1, Ordering::Relaxed);
        if !st.scheduled {
            if sender.try_send(Work::Batch(version.clone())).is_err() {
                st.jobs.pop_back();
                b.in_flight.fetch_sub(1, Ordering::Relaxed);
                return Err(Overloaded);
            }
            st.scheduled = true;
        }
        drop(st);
        b.more.notify_one();
        Ok(rx)
    }
}

impl Drop for WorkerPool {
    /// Closes the queue; workers finish what is queued and exit.
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        self.sender.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// What one execution took.
pub(super) struct Executed {
    pub outputs: Result<Vec<Tensor>, BackendError>,
    /// Wall time (what the metrics and stats show).
    pub compute: Duration,
    /// This thread's CPU time, on one execution in [`CPU_SAMPLE_EVERY`] per thread (what
    /// the execution mode is decided from).
    pub cpu: Option<Duration>,
}

/// Executions per thread between two CPU-time samples (the clock is a system call).
pub(super) const CPU_SAMPLE_EVERY: u32 = 8;

thread_local! {
    static EXECUTIONS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// One execution of the engine on `inputs` (`rows` along the batch dimension), with what
/// every execution records: the drift monitor's view and the batch-size metric.
pub(super) fn execute(version: &ServedVersion, inputs: &[Tensor], rows: usize) -> Executed {
    let sample = EXECUTIONS.with(|n| {
        let next = n.get().wrapping_add(1);
        n.set(next);
        next % CPU_SAMPLE_EVERY == 0
    });
    let start = Instant::now();
    let (outputs, cpu) = if sample {
        crate::cputime::measure(|| run_engine(version, inputs))
    } else {
        (run_engine(version, inputs), None)
    };
    let compute = start.elapsed();
    if let Ok(outputs) = &outputs {
        version.monitor.observe(inputs, outputs);
    }
    version.metrics.batch.observe(rows as f64);
    Executed {
        outputs,
        compute,
        cpu,
    }
}

/// Rows along the batch dimension, if every input agrees on it.
fn rows_of(inputs: &[Tensor]) -> Option<usize> {
    let first = *inputs.first()?.shape.first()?;
    inputs
        .iter()
        .all(|t| t.shape.first() == Some(&first))
        .then_some(first)
}

/// Runs the engine, turning a panic into an error.
fn run_engine(version: &ServedVersion, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| version.session.run(inputs)))
        .unwrap_or_else(|_| {
            Err(BackendError::Run(
                "the engine panicked on this input".into(),
            ))
        })
}

fn run_one(job: Job) {
    // The client went away while the job waited: do not run it.
    if job.reply.is_closed() {
        tracing::debug!(model = %job.version.model, "request cancelled before it ran");
        return;
    }
    let queued = job.enqueued.elapsed();
    let Executed {
        outputs,
        compute,
        cpu,
    } = execute(&job.version, &job.inputs, job.rows().unwrap_or(1));
    // Unbatched runs tell whether the version could run inline; a failed run (an input
    // the engine refused early) says nothing of what a good one costs.
    if let (Some(cpu), true) = (cpu, outputs.is_ok()) {
        let elements = job.inputs.iter().map(|t| t.data.len()).sum();
        job.version.exec.record(elements, cpu);
    }
    drop(job.inputs);
    // The caller may have gone (client disconnected): nothing to do.
    let _ = job.reply.send(JobDone {
        outputs,
        queued,
        compute,
    });
}

/// Serves a version's batch queue until it is empty (or another worker has been handed
/// the rest).
fn drain(version: &Arc<ServedVersion>, tickets: &Sender<Work>) {
    let b = &version.batcher;
    loop {
        let s = b.settings();
        let mut st = b.lock();
        loop {
            b.drop_cancelled(&mut st);
            if st.jobs.is_empty() {
                st.scheduled = false;
                return;
            }
            if s.max_batch <= 1 || s.delay.is_zero() {
                break;
            }
            let (count, rows) = batch_extent(&st.jobs, s.max_batch);
            let cannot_grow = count < st.jobs.len() || rows >= s.max_batch;
            let preferred = s.preferred.contains(&rows);
            let age = st.jobs[0].enqueued.elapsed();
            // Requests of this version running elsewhere: more are likely to arrive soon.
            let others = b.in_flight.load(Ordering::Relaxed) > st.jobs.len();
            if cannot_grow || preferred || age >= s.delay || !others {
                break;
            }
            st = b
                .more
                .wait_timeout(st, s.delay - age)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let (count, _) = batch_extent(&st.jobs, s.max_batch.max(1));
        let jobs: Vec<Job> = st.jobs.drain(..count).collect();
        // Hand the rest to another worker if one can take it; else keep going here.
        let keep_going =
            !st.jobs.is_empty() && tickets.try_send(Work::Batch(version.clone())).is_err();
        if st.jobs.is_empty() {
            st.scheduled = false;
        }
        drop(st);
        let n = jobs.len();
        run_batch(version, jobs);
        b.in_flight.fetch_sub(n, Ordering::Relaxed);
        if !keep_going {
            return;
        }
    }
}

/// Runs jobs of one version as one execution (or alone, when there is just one).
fn run_batch(version: &Arc<ServedVersion>, jobs: Vec<Job>) {
    if jobs.len() == 1 {
        return jobs.into_iter().for_each(run_one);
    }
    let rows: Vec<usize> = jobs.iter().map(|j| j.rows().unwrap_or(0)).collect();
    let total: usize = rows.iter().sum();
    let first = &jobs[0];
    let inputs: Option<Vec<Tensor>> = (0..first.inputs.len())
        .map(|i| {
            let parts: Vec<&TensorData> = jobs.iter().map(|j| &j.inputs[i].data).collect();
            let mut shape = first.inputs[i].shape.clone();
            shape[0] = total;
            Some(Tensor {
                name: first.inputs[i].name.clone(),
                shape,
                data: TensorData::concat(&parts)?,
            })
        })
        .collect();
    let Some(inputs) = inputs else {
        return jobs.into_iter().for_each(run_one);
    };
    let start = Instant::now();
    let result = run_engine(version, &inputs);
    let compute = start.elapsed();
    let outputs = match result {
        Ok(outputs)
            if outputs
                .iter()
                .all(|o| o.shape.first() == Some(&total) && o.data.len() % total.max(1) == 0) =>
        {
            outputs
        }
        // A failure may be one request's fault; outputs not split by row cannot be
        // handed out: either way each request runs alone.
        _ => return jobs.into_iter().for_each(run_one),
    };
    // Recorded only for a batch that is handed out (a failed one is re-run, and each of
    // those runs records itself).
    version.monitor.observe(&inputs, &outputs);
    version.metrics.batch.observe(total as f64);
    drop(inputs);
    let mut offset = 0;
    for (job, n) in jobs.into_iter().zip(rows) {
        let mine = outputs
            .iter()
            .map(|o| {
                let per_row = o.data.len() / total.max(1);
                let mut shape = o.shape.clone();
                shape[0] = n;
                Tensor {
                    name: o.name.clone(),
                    shape,
                    data: o.data.slice(offset * per_row..(offset + n) * per_row),
                }
            })
            .collect();
        offset += n;
        let _ = job.reply.send(JobDone {
            outputs: Ok(mine),
            queued: start.duration_since(job.enqueued),
            compute,
        });
    }
}
