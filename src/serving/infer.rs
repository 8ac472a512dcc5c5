//! Running a routed request: inputs checked against the version's signature
//! (`InputCheck`, `order_inputs`) and put in its order, run inline or queued for a worker
//! (`exec` decides), the shadow copy sent on; and the one error type of a request (`InferError`).
//! Must never import `http`: the HTTP layer maps `InferError` to a status.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{pool, Route, ServedVersion, Server};
use crate::backend::{BackendError, ModelSignature};
use crate::metrics::Outcome;
use crate::tensor::{DataType, Tensor};

/// Why a request could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the server is overloaded: the inference queue is full")]
    Overloaded,
    /// Triton's text first (clients match on it), vigil's reason after.
    #[error("Request for unknown model: '{model}' has no available versions; {reason}")]
    NotReady { model: String, reason: String },
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl InferError {
    /// The `outcome` label this error is counted under.
    pub fn outcome(&self) -> Outcome {
        match self {
            InferError::NotFound(_) | InferError::Invalid(_) => Outcome::BadRequest,
            InferError::Overloaded | InferError::NotReady { .. } => Outcome::Overloaded,
            InferError::Backend(BackendError::Run(_)) => Outcome::BadRequest,
            InferError::Backend(_) => Outcome::Error,
        }
    }
}

impl Server {
    /// Runs a routed request; in shadow mode the canary gets a copy once the stable
    /// answer exists, on a bounded number of slots, never delaying or failing the caller.
    /// `id` is the request id; a request the version's sampler takes is handed to the
    /// payload log with its answer (and the shadow canary's, under the same id).
    pub async fn infer_routed(
        self: &Arc<Self>,
        route: &Route,
        inputs: Vec<Tensor>,
        id: Option<&str>,
    ) -> Result<Vec<Tensor>, InferError> {
        let logged = id
            .filter(|_| route.version.sampler.take(route.sample))
            .map(|id| (id.to_string(), inputs.clone()));
        let shadow_copy = route.shadow.as_ref().and_then(|canary| {
            match self.shadow_slots.clone().try_acquire_owned() {
                Ok(permit) => Some((canary.clone(), inputs.clone(), permit)),
                Err(_) => {
                    self.metrics.count_shadow_skipped(&canary.model);
                    None
                }
            }
        });
        let time = crate::retrain::now_unix();
        let start = Instant::now();
        let result = self.infer(&route.version, inputs).await;
        let latency = start.elapsed();
        let shadow_judge = super::analysis::answered(route, latency, &result);
        let shadow_feedback = match (id, &route.feedback, &shadow_copy) {
            (Some(id), Some(f), Some(_)) => Some((id.to_string(), f.clone())),
            _ => None,
        };
        if let (Some(id), Some(f), Ok(outputs)) = (id, &route.feedback, &result) {
            let trip = keep_for_feedback(f, id, (&route.version, route.role), outputs, time);
            self.quality_degraded_later(&route.version.model, trip);
        }
        let shadow_log = match (&logged, &shadow_copy) {
            (Some((id, _)), Some((_, copy, _))) => Some((id.clone(), copy.clone())),
            _ => None,
        };
        if let Some((id, inputs)) = logged {
            self.payload.submit(payload_record(
                &route.version,
                route.role,
                id,
                (time, latency),
                inputs,
                &result,
            ));
        }
        if let Some((canary, copy, permit)) = shadow_copy {
            let server = self.clone();
            tokio::spawn(async move {
                let time = crate::retrain::now_unix();
                let start = Instant::now();
                let answer = server.infer(&canary, copy).await;
                if let Some(j) = shadow_judge {
                    j.record(start.elapsed(), &answer);
                }
                if let (Some((id, f)), Ok(outputs)) = (&shadow_feedback, &answer) {
                    let shadow = (&*canary, crate::payload::Role::Shadow);
                    let trip = keep_for_feedback(f, id, shadow, outputs, time);
                    server.quality_degraded_later(&canary.model, trip);
                }
                if let Some((id, inputs)) = shadow_log {
                    server.payload.submit(payload_record(
                        &canary,
                        crate::payload::Role::Shadow,
                        id,
                        (time, start.elapsed()),
                        inputs,
                        &answer,
                    ));
                }
                if answer.is_ok() {
                    canary.metrics.count(Outcome::Success);
                    canary
                        .metrics
                        .request
                        .observe(start.elapsed().as_secs_f64());
                }
                drop(permit);
            });
        }
        result
    }

    /// Validates `inputs` against the version's signature, puts them in its order, runs
    /// them (inline or on a worker) and returns every declared output.
    pub async fn infer(
        &self,
        version: &Arc<ServedVersion>,
        inputs: Vec<Tensor>,
    ) -> Result<Vec<Tensor>, InferError> {
        // A guard, not inc/dec: a client that hangs up drops this future mid-await.
        let in_flight = crate::metrics::GaugeGuard::raise(&self.metrics.in_flight);
        let result = self.infer_inner(version, inputs).await;
        drop(in_flight);
        if let Err(e) = &result {
            version.metrics.count(e.outcome());
            version.stats.record_failure();
        }
        result
    }

    async fn infer_inner(
        &self,
        version: &Arc<ServedVersion>,
        inputs: Vec<Tensor>,
    ) -> Result<Vec<Tensor>, InferError> {
        let ordered = order_inputs(&version.model, &version.signature, inputs)?;
        let rows = ordered
            .first()
            .and_then(|t| t.shape.first().copied())
            .unwrap_or(1);
        let elements: usize = ordered.iter().map(|t| t.data.len()).sum();
        // A request to a pooled version counts itself in flight until answered, so that a
        // lone one can skip the hop; an inline version's requests need not count.
        let pooled = !version.exec.inline_for(elements);
        let in_flight = pooled.then(|| version.exec.enter());
        if !pooled
            || (in_flight.as_ref().is_some_and(|f| f.lone())
                && version.exec.lone_inline_for(elements))
        {
            // Cheaper than the hop to a worker: run here, on the async thread. The same
            // execution as a worker's (panics caught, drift observed, batch size counted).
            let pool::Executed {
                outputs,
                compute,
                cpu,
            } = pool::execute(version, &ordered, rows);
            drop(ordered);
            if let (Some(cpu), true) = (cpu, outputs.is_ok()) {
                version.exec.record(elements, cpu);
            }
            version.metrics.queue.observe(0.0);
            version.metrics.compute.observe(compute.as_secs_f64());
            let outputs = outputs?;
            version
                .stats
                .record_success(rows as u64, Duration::ZERO, compute);
            return Ok(outputs);
        }
        let rx = self
            .pool
            .submit(version.clone(), ordered)
            .map_err(|_| InferError::Overloaded)?;
        let done = rx.await.map_err(|_| {
            InferError::Backend(BackendError::Run("the inference worker stopped".into()))
        })?;
        version.metrics.queue.observe(done.queued.as_secs_f64());
        version.metrics.compute.observe(done.compute.as_secs_f64());
        let outputs = done.outputs?;
        version
            .stats
            .record_success(rows as u64, done.queued, done.compute);
        Ok(outputs)
    }
}

/// Keeps an answer's predictions (one value per row of the prediction output, and the
/// top probability per row when an output holds probabilities) for the feedback join;
/// `time` is when the request started running. Returns the trip of an expected accuracy
/// that crossed below `min_quality.expected_accuracy`.
fn keep_for_feedback(
    f: &crate::payload::Feedback,
    id: &str,
    (version, role): (&ServedVersion, crate::payload::Role),
    outputs: &[Tensor],
    time: f64,
) -> Option<crate::payload::QualityTrip> {
    let index = match f.prediction_output() {
        Some(name) => version
            .signature
            .outputs
            .iter()
            .position(|o| o.name == name),
        None => Some(0),
    };
    let preds = index
        .and_then(|i| outputs.get(i))
        .and_then(crate::payload::Predictions::from_output);
    let mut preds = preds?;
    if preds.classify {
        preds.confidence = crate::payload::feedback::confidence(outputs, preds.values.len());
    }
    f.record_at(id, version.version, role, preds, time)
}

/// A payload-log record of one answer (or failure).
fn payload_record(
    version: &ServedVersion,
    role: crate::payload::Role,
    id: String,
    (time, latency): (f64, Duration),
    inputs: Vec<Tensor>,
    result: &Result<Vec<Tensor>, InferError>,
) -> crate::payload::Record {
    let (status, error, outputs) = match result {
        Ok(outputs) => (Outcome::Success.as_str(), None, outputs.clone()),
        Err(e) => (e.outcome().as_str(), Some(e.to_string()), Vec::new()),
    };
    crate::payload::Record {
        id,
        time,
        model: version.model.clone(),
        version: version.version,
        role,
        latency,
        status,
        error,
        inputs,
        outputs,
    }
}

/// Checks a request's inputs against a signature one descriptor at a time (name known
/// and given once, datatype, shape), before any data is decoded: the HTTP decoder runs it
/// on the header, so data that cannot be served is never turned into tensors. Messages
/// begin with Triton's text for the same fault (clients match on it); vigil's detail follows.
pub struct InputCheck<'a> {
    signature: &'a ModelSignature,
    /// The model's name, for Triton's "... for model 'm'"; empty when not known.
    model: &'a str,
    seen: Vec<bool>,
    /// Elements of all inputs together may not exceed this (`--max-tensor-elements`).
    max_elements: usize,
    /// Elements of the inputs described so far.
    total_elements: usize,
}

/// An input whose descriptor [`InputCheck::describe`] accepted.
#[derive(Debug, Clone, Copy)]
pub struct Described {
    pub datatype: DataType,
    /// Elements its shape holds.
    pub elements: usize,
}

/// Where a front found an input's raw data (the binary tensor layout), as its messages
/// name it: HTTP's `binary_data_size` parameter, gRPC's `raw_input_contents` entry.
#[derive(Debug, Clone, Copy)]
pub enum RawField {
    BinaryDataSize,
    RawInputContents,
}

impl RawField {
    /// "binary_data_size is 12" / "its raw_input_contents has 12 bytes".
    fn is(self, size: usize) -> String {
        match self {
            RawField::BinaryDataSize => format!("binary_data_size is {size}"),
            RawField::RawInputContents => format!("its raw_input_contents has {size} bytes"),
        }
    }

    /// "binary_data_size 12" / "its raw_input_contents of 12 bytes".
    fn of(self, size: usize) -> String {
        match self {
            RawField::BinaryDataSize => format!("binary_data_size {size}"),
            RawField::RawInputContents => format!("its raw_input_contents of {size} bytes"),
        }
    }
}

/// Checks that `size` bytes of raw data (little-endian elements; BYTES as a 4-byte length
/// and the bytes, per element) fit the input [`InputCheck::describe`] accepted: exactly its
/// elements for a fixed-size datatype, at most `size / 4` BYTES elements. Both fronts call
/// it before any data is converted.
pub fn check_raw_size(
    name: &str,
    shape: &[usize],
    input: Described,
    size: usize,
    field: RawField,
) -> Result<(), InferError> {
    let Described { datatype, elements } = input;
    match datatype.element_size() {
        Some(width) if elements.checked_mul(width) != Some(size) => {
            Err(InferError::Invalid(format!(
                "input '{name}': shape {shape:?} needs {elements} elements ({} bytes of {datatype}), but {}",
                elements.saturating_mul(width),
                field.is(size)
            )))
        }
        None if elements > size / 4 => Err(InferError::Invalid(format!(
            "input '{name}': shape {shape:?} needs {elements} elements, but {} holds at most {} BYTES elements (4-byte length each)",
            field.of(size),
            size / 4
        ))),
        _ => Ok(()),
    }
}

/// Triton's way of printing a shape: `[-1,16]`.
/// The requested outputs, checked by name against the model's: their indices in
/// `sig.outputs`, in the order asked. An unknown name is refused in Triton's words; a
/// name asked twice is refused too (each copy would be answered again, so a request of a
/// few hundred KB could make the server build gigabytes).
pub fn pick_outputs<'n>(
    sig: &ModelSignature,
    model: &str,
    names: impl IntoIterator<Item = &'n str>,
) -> Result<Vec<usize>, String> {
    let mut taken = vec![false; sig.outputs.len()];
    let mut picked = Vec::new();
    for name in names {
        let i = sig
            .outputs
            .iter()
            .position(|spec| spec.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = sig.outputs.iter().map(|o| o.name.as_str()).collect();
                format!(
                    "unexpected inference output '{name}' for model '{model}': the model's outputs are {names:?}"
                )
            })?;
        if std::mem::replace(&mut taken[i], true) {
            return Err(format!(
                "output '{name}' is requested more than once for model '{model}': name each output once"
            ));
        }
        picked.push(i);
    }
    Ok(picked)
}

pub fn dims_str<T: std::fmt::Display>(dims: &[T]) -> String {
    let parts: Vec<String> = dims.iter().map(ToString::to_string).collect();
    format!("[{}]", parts.join(","))
}

impl<'a> InputCheck<'a> {
    pub fn new(signature: &'a ModelSignature) -> InputCheck<'a> {
        InputCheck::for_model(signature, "")
    }

    /// A check whose messages name `model`, as Triton's do.
    pub fn for_model(signature: &'a ModelSignature, model: &'a str) -> InputCheck<'a> {
        InputCheck {
            signature,
            model,
            seen: vec![false; signature.inputs.len()],
            max_elements: usize::MAX,
            total_elements: 0,
        }
    }

    /// The same check, refusing a request whose inputs hold more than `max` elements
    /// together (`--max-tensor-elements`).
    pub fn with_limit(mut self, max: usize) -> InputCheck<'a> {
        self.max_elements = max;
        self
    }

    /// Checks one input as the client described it (its datatype's name, its shape)
    /// against the element limit and the signature, before any data is read: what both
    /// fronts' decoders run on every input.
    pub fn describe(
        &mut self,
        name: &str,
        datatype: &str,
        shape: &[usize],
    ) -> Result<Described, InferError> {
        let whose = format!("input '{name}'");
        let datatype = DataType::parse(datatype).ok_or_else(|| {
            InferError::Invalid(format!(
                "{whose}: unknown datatype '{datatype}' (expected one of {})",
                DataType::ALL.map(|d| d.as_str()).join(", ")
            ))
        })?;
        let elements = Tensor::shape_elements(shape)
            .ok_or_else(|| InferError::Invalid(format!("{whose}: shape {shape:?} is too large")))?;
        self.total_elements = self.total_elements.saturating_add(elements);
        if self.total_elements > self.max_elements {
            return Err(InferError::Invalid(format!(
                "{whose}: shape {shape:?} brings the request to {} elements, more than the limit of {} (--max-tensor-elements)",
                self.total_elements, self.max_elements
            )));
        }
        self.input(name, datatype, shape)?;
        Ok(Described { datatype, elements })
    }

    /// `" for model 'm'"`, or nothing when the model is not known.
    fn for_model_str(&self) -> String {
        if self.model.is_empty() {
            String::new()
        } else {
            format!(" for model '{}'", self.model)
        }
    }

    /// Checks one input's descriptor; returns its position in the signature.
    pub fn input(
        &mut self,
        name: &str,
        datatype: DataType,
        shape: &[usize],
    ) -> Result<usize, InferError> {
        let inputs = &self.signature.inputs;
        let Some(i) = inputs.iter().position(|s| s.name == name) else {
            let expected: Vec<&str> = inputs.iter().map(|s| s.name.as_str()).collect();
            return Err(InferError::Invalid(format!(
                "unexpected inference input '{name}'{}: the model's inputs are {expected:?}",
                self.for_model_str()
            )));
        };
        if std::mem::replace(&mut self.seen[i], true) {
            return Err(InferError::Invalid(format!(
                "input '{name}' is given twice"
            )));
        }
        let spec = &inputs[i];
        if datatype != spec.datatype {
            return Err(InferError::Invalid(format!(
                "inference input '{name}' data-type is '{datatype}', but {} expects '{}'",
                if self.model.is_empty() {
                    "the model".to_string()
                } else {
                    format!("model '{}'", self.model)
                },
                spec.datatype
            )));
        }
        if shape.contains(&0) {
            return Err(InferError::Invalid(format!(
                "input '{name}' has shape {}: empty tensors are not served",
                dims_str(shape)
            )));
        }
        if !spec.accepts_shape(shape) {
            return Err(InferError::Invalid(format!(
                "unexpected shape for input '{name}'{}. Expected {}, got {} (-1 = any size)",
                self.for_model_str(),
                dims_str(&spec.shape),
                dims_str(shape)
            )));
        }
        Ok(i)
    }

    /// Every declared input was given.
    pub fn finish(self) -> Result<(), InferError> {
        let missing: Vec<&str> = self
            .seen
            .iter()
            .zip(&self.signature.inputs)
            .filter(|(seen, _)| !**seen)
            .map(|(_, s)| s.name.as_str())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let want = self.signature.inputs.len();
        Err(InferError::Invalid(format!(
            "expected {want} inputs but got {} inputs{}: missing input {}",
            want - missing.len(),
            self.for_model_str(),
            missing
                .iter()
                .map(|m| format!("'{m}'"))
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

/// Checks every input against the signature (present once, no strangers, datatype,
/// shape, element count) and returns them in signature order.
pub fn order_inputs(
    model: &str,
    signature: &ModelSignature,
    inputs: Vec<Tensor>,
) -> Result<Vec<Tensor>, InferError> {
    let mut check = InputCheck::for_model(signature, model);
    let mut slots: Vec<Option<Tensor>> = (0..signature.inputs.len()).map(|_| None).collect();
    for t in inputs {
        let i = check.input(&t.name, t.datatype(), &t.shape)?;
        if Tensor::shape_elements(&t.shape) != Some(t.data.len()) {
            return Err(InferError::Invalid(format!(
                "input '{}' has shape {:?} but {} elements",
                t.name,
                t.shape,
                t.data.len()
            )));
        }
        slots[i] = Some(t);
    }
    check.finish()?;
    Ok(slots.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::spec::TensorSpec;

    fn sig() -> ModelSignature {
        let spec = |name: &str, datatype, shape: Vec<i64>| TensorSpec {
            name: name.into(),
            datatype,
            shape,
        };
        ModelSignature {
            inputs: vec![
                spec("x", DataType::Fp32, vec![-1, 4]),
                spec("s", DataType::Bytes, vec![-1]),
            ],
            outputs: vec![spec("y", DataType::Fp32, vec![-1])],
        }
    }

    /// The descriptor and raw-size checks both fronts share: one limit over all inputs,
    /// exact sizes for fixed-size datatypes, 4 bytes at least per BYTES element, each
    /// front's field named in its words.
    #[test]
    fn described_inputs_and_raw_sizes() {
        let sig = sig();
        let mut check = InputCheck::for_model(&sig, "m").with_limit(10);
        let x = check.describe("x", "FP32", &[2, 4]).unwrap();
        assert_eq!((x.datatype, x.elements), (DataType::Fp32, 8));
        check_raw_size("x", &[2, 4], x, 32, RawField::RawInputContents).unwrap();
        let e = check_raw_size("x", &[2, 4], x, 31, RawField::RawInputContents).unwrap_err();
        assert!(
            e.to_string()
                .contains("(32 bytes of FP32), but its raw_input_contents has 31 bytes"),
            "{e}"
        );
        let e = check_raw_size("x", &[2, 4], x, 12, RawField::BinaryDataSize).unwrap_err();
        assert!(e.to_string().contains("but binary_data_size is 12"), "{e}");
        // 8 + 3 elements: over the limit of 10 for the request as a whole.
        let e = check.describe("s", "BYTES", &[3]).unwrap_err();
        assert!(
            e.to_string()
                .contains("11 elements, more than the limit of 10 (--max-tensor-elements)"),
            "{e}"
        );
        let mut check = InputCheck::for_model(&sig, "m");
        let s = check.describe("s", "BYTES", &[3]).unwrap();
        check_raw_size("s", &[3], s, 12, RawField::BinaryDataSize).unwrap();
        let e = check_raw_size("s", &[3], s, 11, RawField::BinaryDataSize).unwrap_err();
        assert!(
            e.to_string()
                .contains("binary_data_size 11 holds at most 2 BYTES elements"),
            "{e}"
        );
        let e = check.describe("x", "FLOAT", &[1, 4]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("input 'x': unknown datatype 'FLOAT'"),
            "{e}"
        );
    }
}
