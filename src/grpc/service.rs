//! The RPCs of `inference.GRPCInferenceService`. Each one translates: messages to the
//! calls the HTTP handlers make on `serving` (the same routing, batching, drift, shadow
//! copies, statistics), results and errors ([`super::status`]) back to messages.

use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};

use super::auth::{authorize, Class};
use super::codec::{self, Checked};
use super::proto::{self, grpc_inference_service_server::GrpcInferenceService};
use super::status::{control_status, infer_status, internal, CodecError};
use super::GrpcOptions;
use crate::metrics::{Outcome, Protocol};
use crate::serving::reload::Reloader;
use crate::serving::{InferError, PendingRoute, Refused, Route, ServedVersion, Server};
use crate::tensor::spec::TensorSpec;

/// The extensions of the protocol this server implements, as ServerMetadata lists them.
const EXTENSIONS: &[&str] = &[
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
    "statistics",
];

pub struct Inference {
    pub(super) server: Arc<Server>,
    pub(super) reloader: Arc<Reloader>,
    pub(super) opts: Arc<GrpcOptions>,
}

enum InferFailure {
    Codec(CodecError),
    Serving(InferError),
}

/// `""`: no version given; otherwise a positive integer.
fn version_of(v: &str) -> Result<Option<u64>, Status> {
    if v.is_empty() {
        return Ok(None);
    }
    v.parse::<u64>()
        .ok()
        .filter(|&n| n > 0)
        .map(Some)
        .ok_or_else(|| Status::invalid_argument(format!("version '{v}' is not a positive integer")))
}

fn tensor_metadata(specs: &[TensorSpec]) -> Vec<proto::model_metadata_response::TensorMetadata> {
    specs
        .iter()
        .map(|s| proto::model_metadata_response::TensorMetadata {
            name: s.name.clone(),
            datatype: s.datatype.as_str().to_string(),
            shape: s.shape.clone(),
        })
        .collect()
}

fn config_type(d: crate::tensor::DataType) -> proto::DataType {
    use crate::tensor::DataType as D;
    match d {
        D::Bool => proto::DataType::TypeBool,
        D::Uint8 => proto::DataType::TypeUint8,
        D::Uint16 => proto::DataType::TypeUint16,
        D::Uint32 => proto::DataType::TypeUint32,
        D::Uint64 => proto::DataType::TypeUint64,
        D::Int8 => proto::DataType::TypeInt8,
        D::Int16 => proto::DataType::TypeInt16,
        D::Int32 => proto::DataType::TypeInt32,
        D::Int64 => proto::DataType::TypeInt64,
        D::Fp32 => proto::DataType::TypeFp32,
        D::Fp64 => proto::DataType::TypeFp64,
        D::Bytes => proto::DataType::TypeString,
    }
}

fn duration(count: u64, ns: u64) -> Option<proto::StatisticDuration> {
    Some(proto::StatisticDuration { count, ns })
}

fn version_stats(v: &ServedVersion) -> proto::ModelStatistics {
    let st = v.stats.snapshot();
    proto::ModelStatistics {
        name: v.model.clone(),
        version: v.version.to_string(),
        last_inference: st.last_inference_ms,
        inference_count: st.inference_count,
        execution_count: st.success_count,
        inference_stats: Some(proto::InferStatistics {
            success: duration(st.success_count, st.success_ns),
            fail: duration(st.fail_count, 0),
            queue: duration(st.success_count, st.queue_ns),
            compute_input: duration(st.success_count, 0),
            compute_infer: duration(st.success_count, st.compute_ns),
            compute_output: duration(st.success_count, 0),
        }),
        batch_stats: Vec::new(),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| internal(format!("background task failed: {e}")))
}

impl Inference {
    fn gate<T>(&self, req: &Request<T>, class: Class) -> Result<(), Status> {
        authorize(&self.opts, &self.server.metrics, req.metadata(), class)
    }

    /// Routes the request through `serving`'s one routing path ([`PendingRoute::settle`],
    /// as the HTTP front does), decodes, runs and encodes. Returns the version it was
    /// counted on.
    async fn infer_on(
        &self,
        plan: PendingRoute,
        req: proto::ModelInferRequest,
    ) -> (
        Arc<ServedVersion>,
        Result<proto::ModelInferResponse, InferFailure>,
    ) {
        let max = self.opts.max_tensor_elements;
        let (served, settled) = plan.settle(|v| codec::check(&req, &v.signature, max));
        let result = match settled {
            Ok((route, c)) => self.run(&route, c, req).await,
            Err(Refused::Request(e)) => Err(InferFailure::Codec(e)),
            Err(Refused::Serving(e)) => Err(InferFailure::Serving(e)),
        };
        (served, result)
    }

    async fn run(
        &self,
        route: &Route,
        checked: Checked,
        req: proto::ModelInferRequest,
    ) -> Result<proto::ModelInferResponse, InferFailure> {
        let served = &route.version;
        let inputs =
            codec::decode(req.inputs, req.raw_input_contents).map_err(InferFailure::Codec)?;
        // As on HTTP: a logged model's requests all carry an id (the client's, else one
        // assigned here and returned) for feedback and the payload log.
        let id = Some(req.id)
            .filter(|i| !i.is_empty())
            .or_else(|| route.wants_id().then(crate::payload::new_request_id));
        let outputs = self
            .server
            .infer_routed(route, inputs, id.as_deref())
            .await
            .map_err(InferFailure::Serving)?;
        Ok(codec::encode(
            &served.model,
            served.version,
            id.unwrap_or_default(),
            &outputs,
            &checked,
        ))
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for Inference {
    async fn server_live(
        &self,
        request: Request<proto::ServerLiveRequest>,
    ) -> Result<Response<proto::ServerLiveResponse>, Status> {
        self.gate(&request, Class::Health)?;
        Ok(Response::new(proto::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        request: Request<proto::ServerReadyRequest>,
    ) -> Result<Response<proto::ServerReadyResponse>, Status> {
        self.gate(&request, Class::Health)?;
        Ok(Response::new(proto::ServerReadyResponse {
            ready: self.server.is_ready(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<proto::ModelReadyRequest>,
    ) -> Result<Response<proto::ModelReadyResponse>, Status> {
        self.gate(&request, Class::Api)?;
        let req = request.into_inner();
        let version = version_of(&req.version)?;
        let table = self.server.table();
        // As Triton answers: a model that is not served (never loaded, or unloaded) is
        // not ready; it is not an error (clients check `is_model_ready` after an unload).
        let ready = table
            .models
            .get(&req.name)
            .is_some_and(|entry| match version {
                Some(v) => entry.versions.contains_key(&v),
                None => entry.is_ready(),
            });
        Ok(Response::new(proto::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        request: Request<proto::ServerMetadataRequest>,
    ) -> Result<Response<proto::ServerMetadataResponse>, Status> {
        self.gate(&request, Class::Api)?;
        Ok(Response::new(proto::ServerMetadataResponse {
            name: "vigil".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: EXTENSIONS.iter().map(|e| e.to_string()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<proto::ModelMetadataRequest>,
    ) -> Result<Response<proto::ModelMetadataResponse>, Status> {
        self.gate(&request, Class::Api)?;
        let req = request.into_inner();
        let version = version_of(&req.version)?;
        let table = self.server.table();
        let entry = crate::serving::lookup_entry(&table, &req.name).map_err(infer_status)?;
        let v = self
            .server
            .resolve(&req.name, version)
            .map_err(infer_status)?;
        Ok(Response::new(proto::ModelMetadataResponse {
            name: entry.name.clone(),
            versions: entry.versions.keys().map(u64::to_string).collect(),
            // Triton's name for an ONNX model, whichever engine runs it (as on HTTP).
            platform: "onnxruntime_onnx".into(),
            inputs: tensor_metadata(&v.signature.inputs),
            outputs: tensor_metadata(&v.signature.outputs),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<proto::ModelInferRequest>,
    ) -> Result<Response<proto::ModelInferResponse>, Status> {
        self.gate(&request, Class::Api)?;
        let (md, _, req) = request.into_parts();
        let version = version_of(&req.model_version)?;
        let plan = self
            .server
            .plan_route(&req.model_name, version, |name| {
                md.get(name.to_ascii_lowercase())
                    .map(|v| v.as_bytes().to_vec())
            })
            .map_err(infer_status)?;
        let start = Instant::now();
        let (served, result) = self.infer_on(plan, req).await;
        let outcome = match &result {
            Ok(_) => {
                served.metrics.count(Outcome::Success);
                served
                    .metrics
                    .request
                    .observe(start.elapsed().as_secs_f64());
                Outcome::Success
            }
            // Errors inside `serving` are already counted there.
            Err(InferFailure::Codec(_)) => {
                served.metrics.count(Outcome::BadRequest);
                served.stats.record_failure();
                Outcome::BadRequest
            }
            Err(InferFailure::Serving(e)) => e.outcome(),
        };
        self.server
            .metrics
            .count_protocol(Protocol::Grpc, &served.model, outcome);
        match result {
            Ok(r) => Ok(Response::new(r)),
            Err(InferFailure::Codec(e)) => Err(e.into()),
            Err(InferFailure::Serving(e)) => Err(infer_status(e)),
        }
    }

    async fn model_config(
        &self,
        request: Request<proto::ModelConfigRequest>,
    ) -> Result<Response<proto::ModelConfigResponse>, Status> {
        self.gate(&request, Class::Api)?;
        let req = request.into_inner();
        let version = version_of(&req.version)?;
        let v = self
            .server
            .resolve(&req.name, version)
            .map_err(infer_status)?;
        let b = v.batcher.settings();
        // As the HTTP config endpoint: Triton's meaning of max_batch_size (dims without
        // the batch dimension when it is above 0), from config.pbtxt when there is one.
        let entry = {
            let table = self.server.table();
            crate::serving::lookup_entry(&table, &req.name)
                .map_err(infer_status)?
                .clone()
        };
        let triton = entry.config.triton.as_ref();
        let max_batch_size = crate::serving::triton_io::config_max_batch_size(triton, &v);
        let batched = max_batch_size > 0;
        let dims = |s: &crate::tensor::spec::TensorSpec| {
            crate::serving::triton_io::config_dims(s, batched).to_vec()
        };
        let io_in = v
            .signature
            .inputs
            .iter()
            .map(|s| proto::ModelInput {
                name: s.name.clone(),
                data_type: config_type(s.datatype).into(),
                dims: dims(s),
            })
            .collect();
        let io_out = v
            .signature
            .outputs
            .iter()
            .map(|s| proto::ModelOutput {
                name: s.name.clone(),
                data_type: config_type(s.datatype).into(),
                dims: dims(s),
            })
            .collect();
        let config = proto::ModelConfig {
            name: req.name.clone(),
            platform: "onnxruntime_onnx".into(),
            backend: v.engine.as_str().into(),
            version_policy: Some(proto::ModelVersionPolicy {
                policy_choice: Some(policy_choice(entry.config.version_policy.policy().ok())),
            }),
            max_batch_size: i32::try_from(max_batch_size).unwrap_or(i32::MAX),
            input: io_in,
            output: io_out,
            dynamic_batching: (b.max_batch > 1).then(|| proto::ModelDynamicBatching {
                preferred_batch_size: b
                    .preferred
                    .iter()
                    .map(|&p| i32::try_from(p).unwrap_or(i32::MAX))
                    .collect(),
                max_queue_delay_microseconds: u64::try_from(b.delay.as_micros())
                    .unwrap_or(u64::MAX),
            }),
        };
        Ok(Response::new(proto::ModelConfigResponse {
            config: Some(config),
        }))
    }

    async fn model_statistics(
        &self,
        request: Request<proto::ModelStatisticsRequest>,
    ) -> Result<Response<proto::ModelStatisticsResponse>, Status> {
        self.gate(&request, Class::Api)?;
        let req = request.into_inner();
        let version = version_of(&req.version)?;
        let table = self.server.table();
        let model_stats = if req.name.is_empty() {
            table
                .models
                .values()
                .flat_map(|e| e.versions.values().map(|v| version_stats(v)))
                .collect()
        } else {
            let entry = crate::serving::lookup_entry(&table, &req.name).map_err(infer_status)?;
            match version {
                Some(_) => {
                    let v = self
                        .server
                        .resolve(&req.name, version)
                        .map_err(infer_status)?;
                    vec![version_stats(&v)]
                }
                None => entry.versions.values().map(|v| version_stats(v)).collect(),
            }
        };
        Ok(Response::new(proto::ModelStatisticsResponse {
            model_stats,
        }))
    }

    async fn repository_index(
        &self,
        request: Request<proto::RepositoryIndexRequest>,
    ) -> Result<Response<proto::RepositoryIndexResponse>, Status> {
        self.gate(&request, Class::Admin)?;
        let ready_only = request.into_inner().ready;
        let reloader = self.reloader.clone();
        let rows = blocking(move || reloader.index()).await?;
        let models = rows
            .into_iter()
            .filter(|r| !ready_only || r.state == "READY")
            .map(|r| proto::repository_index_response::ModelIndex {
                name: r.name,
                version: r.version.unwrap_or_default(),
                state: r.state.to_string(),
                reason: r.reason,
            })
            .collect();
        Ok(Response::new(proto::RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        request: Request<proto::RepositoryModelLoadRequest>,
    ) -> Result<Response<proto::RepositoryModelLoadResponse>, Status> {
        self.gate(&request, Class::Admin)?;
        let req = request.into_inner();
        let model = req.model_name;
        // Triton's configuration override, as `load_model(name, config=...)` sends it.
        use proto::model_repository_parameter::ParameterChoice;
        let mut config = None;
        for (key, value) in &req.parameters {
            match (key.as_str(), value.parameter_choice.as_ref()) {
                ("config", Some(ParameterChoice::StringParam(text))) => {
                    config = Some(
                        crate::config::TritonConfig::load_override(&model, text)
                            .map_err(Status::invalid_argument)?,
                    );
                }
                ("config", _) => {
                    return Err(Status::invalid_argument(format!(
                        "failed to load '{model}', failed to parse the model configuration override: the config parameter must be a string holding JSON"
                    )))
                }
                (other, _) => {
                    return Err(Status::invalid_argument(format!(
                        "load parameter '{other}' is not supported (only 'config', Triton's configuration override)"
                    )))
                }
            }
        }
        let reloader = self.reloader.clone();
        blocking(move || reloader.load_with(&model, config))
            .await?
            .map_err(control_status)?;
        Ok(Response::new(proto::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<proto::RepositoryModelUnloadRequest>,
    ) -> Result<Response<proto::RepositoryModelUnloadResponse>, Status> {
        self.gate(&request, Class::Admin)?;
        let reloader = self.reloader.clone();
        let model = request.into_inner().model_name;
        blocking(move || reloader.unload(&model))
            .await?
            .map_err(control_status)?;
        Ok(Response::new(proto::RepositoryModelUnloadResponse {}))
    }
}

/// The version policy in force, as the configuration shows it (as on HTTP).
fn policy_choice(
    policy: Option<crate::config::VersionPolicy>,
) -> proto::model_version_policy::PolicyChoice {
    use crate::config::VersionPolicy;
    use proto::model_version_policy::{All, Latest, PolicyChoice, Specific};
    match policy {
        Some(VersionPolicy::All) => PolicyChoice::All(All {}),
        Some(VersionPolicy::Specific(v)) => PolicyChoice::Specific(Specific {
            versions: v
                .iter()
                .map(|&x| i64::try_from(x).unwrap_or(i64::MAX))
                .collect(),
        }),
        Some(VersionPolicy::Latest(n)) => PolicyChoice::Latest(Latest {
            num_versions: u32::try_from(n).unwrap_or(u32::MAX),
        }),
        None => PolicyChoice::Latest(Latest { num_versions: 1 }),
    }
}
