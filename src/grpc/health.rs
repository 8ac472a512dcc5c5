//! `grpc.health.v1.Health`: tonic-health's service (SERVING while the server is ready,
//! NOT_SERVING from shutdown on), with one change: when the drain begins, every open
//! `Watch` stream is told NOT_SERVING and then ended, so that a prober's stream (Kubernetes,
//! a load balancer, a sidecar) does not hold the drain until `--shutdown-grace`.

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{self, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};

pub struct Health {
    inner: HealthService,
    /// True from the start of the drain on.
    drain: watch::Receiver<bool>,
}

/// The health service reporting what `reporter` is told, ending watches at `drain`.
pub fn server(reporter: &HealthReporter, drain: watch::Receiver<bool>) -> HealthServer<Health> {
    HealthServer::new(Health {
        inner: HealthService::from_health_reporter(reporter.clone()),
        drain,
    })
}

#[tonic::async_trait]
impl health_server::Health for Health {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        health_server::Health::check(&self.inner, request).await
    }

    type WatchStream = ReceiverStream<Result<HealthCheckResponse, Status>>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let mut updates = health_server::Health::watch(&self.inner, request)
            .await?
            .into_inner();
        let mut drain = self.drain.clone();
        let (tx, rx) = mpsc::channel(4);
        let not_serving = ServingStatus::NotServing as i32;
        tokio::spawn(async move {
            let mut last = None;
            loop {
                tokio::select! {
                    // An update already there goes out before the drain ends the stream.
                    biased;
                    update = updates.next() => match update {
                        Some(Ok(r)) => {
                            last = Some(r.status);
                            if tx.send(Ok(r)).await.is_err() {
                                return;
                            }
                        }
                        Some(Err(e)) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                        None => return,
                    },
                    () = async { let _ = drain.wait_for(|&d| d).await; } => break,
                    () = tx.closed() => return,
                }
            }
            if last != Some(not_serving) {
                let _ = tx
                    .send(Ok(HealthCheckResponse {
                        status: not_serving,
                    }))
                    .await;
            }
            // Dropping `tx` ends the stream (status OK).
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
