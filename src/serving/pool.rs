//! The inference worker pool: model compute never runs on tokio's async workers.
//!
//! Requests enter a bounded queue; a fixed set of OS threads take jobs from it and run
//! the engine. A full queue is refused at once ([`Overloaded`]), never waited on, so
//! the HTTP layer can answer 503 with `Retry-After`. Each job carries its own version
//! handle: a version swapped out while a job waits still runs that job, and is freed
//! when the last job holding it ends.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Sender, TrySendError};
use tokio::sync::oneshot;

use super::ServedVersion;
use crate::backend::BackendError;
use crate::tensor::Tensor;

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

/// The queue is full (or the pool is stopping): try again later.
#[derive(Debug)]
pub struct Overloaded;

pub struct WorkerPool {
    sender: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl WorkerPool {
    /// Starts `workers` threads fed by a queue of `queue_size` waiting jobs.
    pub fn new(workers: usize, queue_size: usize) -> WorkerPool {
        let (sender, receiver) = bounded::<Job>(queue_size.max(1));
        let threads = (0..workers.max(1))
            .map(|i| {
                let receiver = receiver.clone();
                std::thread::Builder::new()
                    .name(format!("vigil-infer-{i}"))
                    .spawn(move || {
                        for job in receiver {
                            // The client went away while the job waited: do not run it.
                            if job.reply.is_closed() {
                                tracing::debug!(model = %job.version.model, "request cancelled before it ran");
                                continue;
                            }
                            let queued = job.enqueued.elapsed();
                            let start = Instant::now();
                            // An engine that panics on some input must not take the worker
                            // (and, one by one, the pool) down: the panic becomes an error.
                            let outputs =
                                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                    job.version.session.run(&job.inputs)
                                }))
                                .unwrap_or_else(|_| {
                                    Err(BackendError::Run(
                                        "the engine panicked on this input".into(),
                                    ))
                                });
                            let compute = start.elapsed();
                            if let Ok(outputs) = &outputs {
                                job.version.monitor.observe(&job.inputs, outputs);
                            }
                            drop(job.inputs);
                            // The caller may have gone (client disconnected): nothing to do.
                            let _ = job.reply.send(JobDone {
                                outputs,
                                queued,
                                compute,
                            });
                        }
                    })
                    .expect("spawning an inference worker thread")
            })
            .collect();
        WorkerPool {
            sender: Some(sender),
            threads,
        }
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
        let (reply, rx) = oneshot::channel();
        let job = Job {
            version,
            inputs,
            enqueued: Instant::now(),
            reply,
        };
        match self.sender.as_ref().ok_or(Overloaded)?.try_send(job) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => Err(Overloaded),
        }
    }
}

impl Drop for WorkerPool {
    /// Closes the queue; workers finish what is queued and exit.
    fn drop(&mut self) {
        self.sender.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
