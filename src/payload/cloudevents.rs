//! The CloudEvents sink of the payload log (`[logging] cloudevents_url`): each logged
//! request and its response are POSTed as two events in KServe's inference-logger format,
//! binary content mode: the body is the V2 request (or response) JSON and the attributes
//! are headers (`ce-specversion: 1.0`, `ce-id` = the request id, `ce-type`
//! `org.kubeflow.serving.inference.request` / `.response`, `ce-source`, `ce-time`, and
//! KServe's extensions `ce-inferenceservicename` (the model), `ce-component`,
//! `ce-endpoint`), so Knative Eventing or a Kafka bridge takes them unchanged.
//!
//! The writer thread hands each record's pair to this sink's own bounded queue (1024
//! pairs, and at most `--payload-queue-bytes` of bodies queued or in flight) and never
//! waits for it; the sink's thread drives a current-thread runtime that takes pairs off
//! that queue (no other thread in between) and POSTs up to `--payload-sink-concurrency`
//! pairs at once over one client's keep-alive connections, each pair's headers built
//! once and its URL parsed once per sink. A slow sink fills the queue
//! (`vigil_payload_dropped_total{reason="sink_full"}`), a dead one fails its POSTs
//! (`reason="sink_error"`) and is then skipped for a growing pause (1 s doubling to 30 s,
//! every record of the pause counted the same way), so neither slows the payload files or
//! inference.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::sync::mpsc::{error::TrySendError, Receiver, Sender};

use super::record::Record;
use crate::metrics::PayloadFamilies;

pub const CE_REQUEST: &str = "org.kubeflow.serving.inference.request";
pub const CE_RESPONSE: &str = "org.kubeflow.serving.inference.response";

/// Record pairs waiting for the sink, at most.
const SINK_QUEUE: usize = 1024;
/// One POST, at most.
const POST_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// One record's two events, ready to send.
pub(super) struct Pair {
    model: String,
    url: Arc<str>,
    /// Every header but `ce-type`, built once for both events.
    headers: HeaderMap,
    request: bytes::Bytes,
    response: bytes::Bytes,
}

impl Pair {
    pub(super) fn of(r: &Record, url: Arc<str>) -> Pair {
        let (request, response) = r.v2_bodies();
        let endpoint = match r.role {
            super::Role::Canary | super::Role::Shadow => "canary",
            super::Role::Stable | super::Role::Standby => "default",
        };
        // Header values are visible ASCII; anything else in a client's id or a model's
        // name is replaced (the bodies keep them exactly).
        let visible = |s: &str| -> HeaderValue {
            let v: String = s
                .chars()
                .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
                .collect();
            HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static("?"))
        };
        let mut headers = HeaderMap::with_capacity(10);
        let mut put = |name: &'static str, value: HeaderValue| {
            headers.insert(HeaderName::from_static(name), value);
        };
        put("content-type", HeaderValue::from_static("application/json"));
        put("ce-specversion", HeaderValue::from_static("1.0"));
        put("ce-id", visible(&r.id));
        put(
            "ce-source",
            visible(&format!("/v2/models/{}/versions/{}", r.model, r.version)),
        );
        put("ce-time", visible(&crate::retrain::rfc3339(r.time)));
        put("ce-inferenceservicename", visible(&r.model));
        put("ce-component", HeaderValue::from_static("predictor"));
        put("ce-endpoint", HeaderValue::from_static(endpoint));
        put("ce-modelversion", HeaderValue::from(r.version));
        Pair {
            model: r.model.clone(),
            url,
            headers,
            request: request.into(),
            response: response.into(),
        }
    }
}

/// The sink's queue (the writer thread holds it).
pub(super) struct Sink {
    tx: Sender<Pair>,
    /// Body bytes of the pairs queued or in flight, and their cap.
    bytes: Arc<AtomicUsize>,
    budget: usize,
    metrics: PayloadFamilies,
}

/// How many pairs the sink POSTs at once, and how many body bytes it holds at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SinkOptions {
    pub concurrency: usize,
    pub queue_bytes: usize,
}

impl Sink {
    pub(super) fn start(metrics: PayloadFamilies, opts: SinkOptions) -> Sink {
        let (tx, mut rx) = tokio::sync::mpsc::channel(SINK_QUEUE);
        let bytes = Arc::new(AtomicUsize::new(0));
        let (m, b) = (metrics.clone(), bytes.clone());
        let n = opts.concurrency.max(1);
        crate::supervise::spawn_thread("payload_sink", "vigil-ce-sink", move || {
            send_loop(&mut rx, &m, n, &b)
        });
        Sink {
            tx,
            bytes,
            budget: opts.queue_bytes,
            metrics,
        }
    }

    /// Queues a pair; never blocks. A full queue (1024 pairs, or the byte cap) drops it,
    /// counted `sink_full`.
    pub(super) fn offer(&self, pair: Pair) {
        let w = pair.weight();
        let held = self.bytes.fetch_add(w, Ordering::AcqRel);
        if held > 0 && held + w > self.budget {
            self.bytes.fetch_sub(w, Ordering::AcqRel);
            super::count_drop(&self.metrics, &pair.model, super::DropReason::SinkFull, 1);
            return;
        }
        self.metrics.sink_bytes.add(w as i64);
        if let Err(e) = self.tx.try_send(pair) {
            let (TrySendError::Full(p) | TrySendError::Closed(p)) = e;
            release(&self.bytes, &self.metrics, w);
            super::count_drop(&self.metrics, &p.model, super::DropReason::SinkFull, 1);
        }
    }
}

impl Pair {
    /// The bytes it holds (its two bodies).
    fn weight(&self) -> usize {
        self.request.len() + self.response.len()
    }
}

fn release(bytes: &AtomicUsize, metrics: &PayloadFamilies, w: usize) {
    bytes.fetch_sub(w, Ordering::AcqRel);
    metrics.sink_bytes.sub(w as i64);
}

/// A pair's bytes, released however its POST ends (done, failed, or its task dropped).
struct Held {
    bytes: Arc<AtomicUsize>,
    metrics: PayloadFamilies,
    w: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        release(&self.bytes, &self.metrics, self.w);
    }
}

/// Per URL: skipped until, and the pause after the next failure.
type Down = Arc<Mutex<HashMap<Arc<str>, (Instant, Duration)>>>;

/// Takes pairs off the queue and POSTs up to `concurrency` of them at once, over one
/// client's keep-alive connections, on a current-thread runtime that this thread drives
/// (the queue is the runtime's own channel: no hand-off to another thread per pair).
/// While all are busy the queue fills, and the writer's offers are dropped as
/// `sink_full`.
fn send_loop(
    rx: &mut Receiver<Pair>,
    metrics: &PayloadFamilies,
    concurrency: usize,
    bytes: &Arc<AtomicUsize>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the CloudEvents sink; its records are dropped");
            while let Some(p) = rx.blocking_recv() {
                release(bytes, metrics, p.weight());
                super::count_drop(metrics, &p.model, super::DropReason::SinkError, 1);
            }
            return;
        }
    };
    let client = reqwest::Client::builder()
        .user_agent(concat!("vigil/", env!("CARGO_PKG_VERSION")))
        .timeout(POST_TIMEOUT)
        .pool_max_idle_per_host(concurrency)
        // A redirect is not a delivery: followed, a 301/302/303 turns the POST into a
        // bodiless GET whose 2xx counted the pair as sent (a sink URL missing its
        // trailing slash lost every event, unseen).
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("an HTTP client with default settings");
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let down: Down = Arc::default();
    // Each sink URL parsed once (a model's `cloudevents_url` is checked at load).
    let mut urls: HashMap<Arc<str>, Result<reqwest::Url, String>> = HashMap::new();
    rt.block_on(async {
        while let Some(p) = rx.recv().await {
            let held = Held {
                bytes: bytes.clone(),
                metrics: metrics.clone(),
                w: p.weight(),
            };
            let skipped = down
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&p.url)
                .is_some_and(|(until, _)| Instant::now() < *until);
            if skipped {
                super::count_drop(metrics, &p.model, super::DropReason::SinkError, 1);
                continue;
            }
            if urls.len() > 64 && !urls.contains_key(&p.url) {
                urls.clear(); // URLs of reloaded configs, never many
            }
            let url = urls
                .entry(p.url.clone())
                .or_insert_with(|| reqwest::Url::parse(&p.url).map_err(|e| e.to_string()))
                .clone();
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return; // the semaphore is never closed
            };
            let (client, down, metrics) = (client.clone(), down.clone(), metrics.clone());
            tokio::spawn(async move {
                let result = match url {
                    Ok(url) => {
                        let Pair {
                            headers,
                            request,
                            response,
                            ..
                        } = &p;
                        async {
                            post(&client, &url, headers.clone(), CE_REQUEST, request.clone())
                                .await?;
                            post(&client, &url, headers.clone(), CE_RESPONSE, response.clone())
                                .await
                        }
                        .await
                    }
                    Err(e) => Err(e),
                };
                drop((slot, held));
                let mut down = down.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                match result {
                    Ok(()) => {
                        if down.remove(&p.url).is_some() {
                            tracing::info!(url = %p.url, "the CloudEvents sink answers again");
                        }
                    }
                    Err(e) => {
                        super::count_drop(&metrics, &p.model, super::DropReason::SinkError, 1);
                        let now = Instant::now();
                        match down.get(&p.url) {
                            // Failures of POSTs that were in flight together pause it once.
                            Some((until, _)) if now < *until => {}
                            last => {
                                if last.is_none() {
                                    tracing::warn!(url = %p.url, error = %e, "the CloudEvents sink fails; its records are dropped and counted until it answers");
                                }
                                let pause = last
                                    .map_or(Duration::from_secs(1), |(_, d)| (*d * 2).min(MAX_PAUSE));
                                down.insert(p.url.clone(), (now + pause, pause));
                            }
                        }
                    }
                }
            });
        }
    });
    // The writer stopped: what is in flight gets its timeout to finish.
    rt.shutdown_timeout(POST_TIMEOUT);
}

async fn post(
    client: &reqwest::Client,
    url: &reqwest::Url,
    mut headers: HeaderMap,
    kind: &'static str,
    body: bytes::Bytes,
) -> Result<(), String> {
    headers.insert(
        HeaderName::from_static("ce-type"),
        HeaderValue::from_static(kind),
    );
    let req = client
        .request(reqwest::Method::POST, url.clone())
        .headers(headers)
        .body(body);
    match req.send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("HTTP {}", r.status().as_u16())),
        Err(e) => Err(e.to_string()),
    }
}
