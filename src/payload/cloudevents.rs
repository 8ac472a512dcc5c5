//! The CloudEvents sink of the payload log (`[logging] cloudevents_url`): each logged
//! request and its response are POSTed as two events in KServe's inference-logger format,
//! binary content mode: the body is the V2 request (or response) JSON and the attributes
//! are headers (`ce-specversion: 1.0`, `ce-id` = the request id, `ce-type`
//! `org.kubeflow.serving.inference.request` / `.response`, `ce-source`, `ce-time`, and
//! KServe's extensions `ce-inferenceservicename` (the model), `ce-component`,
//! `ce-endpoint`), so Knative Eventing or a Kafka bridge takes them unchanged.
//!
//! The writer thread hands each record's pair to this sink's own bounded queue and never
//! waits for it: a slow sink fills the queue (`vigil_payload_dropped_total{reason=
//! "sink_full"}`), a dead one fails its POSTs (`reason="sink_error"`) and is then skipped
//! for a growing pause (1 s doubling to 30 s, every record of the pause counted the same
//! way), so neither slows the payload files or inference.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

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
    headers: Vec<(&'static str, String)>,
    request: Vec<u8>,
    response: Vec<u8>,
    id: String,
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
        let visible = |s: &str| -> String {
            s.chars()
                .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
                .collect()
        };
        Pair {
            model: r.model.clone(),
            url,
            headers: vec![
                ("ce-specversion", "1.0".to_string()),
                (
                    "ce-source",
                    visible(&format!("/v2/models/{}/versions/{}", r.model, r.version)),
                ),
                ("ce-time", crate::retrain::rfc3339(r.time)),
                ("ce-inferenceservicename", visible(&r.model)),
                ("ce-component", "predictor".to_string()),
                ("ce-endpoint", endpoint.to_string()),
                ("ce-modelversion", r.version.to_string()),
            ],
            request,
            response,
            id: visible(&r.id),
        }
    }
}

/// The sink's queue (the writer thread holds it).
pub(super) struct Sink {
    tx: Sender<Pair>,
    metrics: PayloadFamilies,
}

impl Sink {
    pub(super) fn start(metrics: PayloadFamilies) -> Sink {
        let (tx, rx) = crossbeam_channel::bounded(SINK_QUEUE);
        let m = metrics.clone();
        crate::supervise::spawn_thread("payload_sink", "vigil-ce-sink", move || send_loop(&rx, &m));
        Sink { tx, metrics }
    }

    /// Queues a pair; never blocks (a full queue drops it, counted `sink_full`).
    pub(super) fn offer(&self, pair: Pair) {
        if let Err(e) = self.tx.try_send(pair) {
            let (TrySendError::Full(p) | TrySendError::Disconnected(p)) = e;
            super::count_drop(&self.metrics, &p.model, super::DropReason::SinkFull, 1);
        }
    }
}

/// Posts pairs one after the other on a runtime of its own.
fn send_loop(rx: &Receiver<Pair>, metrics: &PayloadFamilies) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the CloudEvents sink; its records are dropped");
            for p in rx {
                super::count_drop(metrics, &p.model, super::DropReason::SinkError, 1);
            }
            return;
        }
    };
    let client = reqwest::Client::builder()
        .user_agent(concat!("vigil/", env!("CARGO_PKG_VERSION")))
        .timeout(POST_TIMEOUT)
        .build()
        .expect("an HTTP client with default settings");
    // Per URL: skipped until, and the pause after the next failure.
    let mut down: HashMap<Arc<str>, (Instant, Duration)> = HashMap::new();
    for p in rx {
        if down
            .get(&p.url)
            .is_some_and(|(until, _)| Instant::now() < *until)
        {
            super::count_drop(metrics, &p.model, super::DropReason::SinkError, 1);
            continue;
        }
        let result = rt.block_on(async {
            post(&client, &p, CE_REQUEST, &p.request).await?;
            post(&client, &p, CE_RESPONSE, &p.response).await
        });
        match result {
            Ok(()) => {
                if down.remove(&p.url).is_some() {
                    tracing::info!(url = %p.url, "the CloudEvents sink answers again");
                }
            }
            Err(e) => {
                super::count_drop(metrics, &p.model, super::DropReason::SinkError, 1);
                let pause = down
                    .get(&p.url)
                    .map_or(Duration::from_secs(1), |(_, d)| (*d * 2).min(MAX_PAUSE));
                if !down.contains_key(&p.url) {
                    tracing::warn!(url = %p.url, error = %e, "the CloudEvents sink fails; its records are dropped and counted until it answers");
                }
                down.insert(p.url.clone(), (Instant::now() + pause, pause));
            }
        }
    }
}

async fn post(client: &reqwest::Client, p: &Pair, kind: &str, body: &[u8]) -> Result<(), String> {
    let mut req = client
        .post(&*p.url)
        .header("content-type", "application/json")
        .header("ce-id", &p.id)
        .header("ce-type", kind)
        .body(body.to_vec());
    for (k, v) in &p.headers {
        req = req.header(*k, v);
    }
    match req.send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("HTTP {}", r.status().as_u16())),
        Err(e) => Err(e.to_string()),
    }
}
