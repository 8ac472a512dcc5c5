//! Inference engines behind one small synchronous trait.
//!
//! A backend turns a model file into a [`Session`]: immutable, shareable, already
//! warmed. The serving layer swaps whole sessions atomically, so nothing here is mutable
//! after load. Engines: tract (pure Rust, always built) and ONNX Runtime (feature `ort`,
//! loaded at run time from a shared library).
//!
//! The model's declared signature ([`ModelSignature`]) is read from the ONNX file itself,
//! the same way for every engine, so metadata and request validation never depend on
//! which engine serves a model.

mod onnx_meta;
#[cfg(feature = "ort")]
pub mod ort;
pub mod tract;
mod tract_trees;

use std::fmt;
use std::path::Path;

use crate::tensor::spec::TensorSpec;
use crate::tensor::Tensor;

/// The engine choice is settings vocabulary (`--backend`, `config.toml`); it lives in `config`.
pub use crate::config::BackendChoice;
pub use onnx_meta::{read_signature, ModelFile};

/// A model's declared inputs and outputs, in declaration order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelSignature {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

/// The engines vigil can run a model on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Tract,
    Ort,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Tract => "tract",
            Engine::Ort => "ort",
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors of loading or running a model, without HTTP in sight.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The file cannot be read or is not a valid ONNX model.
    #[error("cannot read model: {0}")]
    Read(String),
    /// The model is valid ONNX but this engine cannot (or must not) serve it.
    #[error("{0}")]
    Unsupported(String),
    /// The engine failed while preparing the model.
    #[error("engine failed to load the model: {0}")]
    Load(String),
    /// The requested engine is not available in this process.
    #[error("engine {engine} is not available: {reason}")]
    Unavailable { engine: Engine, reason: String },
    /// The inputs were rejected by the engine at run time.
    #[error("inference failed: {0}")]
    Run(String),
}

/// A loaded, immutable model that can run many inferences at once.
pub trait Session: Send + Sync {
    /// Runs the model. `inputs` are in the order of the signature's inputs, already
    /// checked against it; the result holds every declared output, in order.
    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError>;
}

/// A loaded model and what it is.
pub struct Loaded {
    pub engine: Engine,
    pub signature: ModelSignature,
    pub session: Box<dyn Session>,
    /// How long the warm-up input took; `None` when the warm-up could not run.
    pub warmup: Option<Warmup>,
}

/// Compute time of the warm-up input (zeros, dynamic dimensions at 1), measured after
/// the first run paid for lazy initialisation, in CPU time of the running thread (so
/// that a busy machine does not make a model look slow).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Warmup {
    /// 90th percentile of the timed runs.
    pub p90: std::time::Duration,
    /// Timed runs behind it.
    pub runs: usize,
    /// Elements of all inputs together.
    pub elements: usize,
}

impl Warmup {
    /// Timed runs after the first, at most.
    pub const RUNS: usize = 50;
    /// Time spent on timed runs, at most (a heavy model stops early).
    pub const BUDGET: std::time::Duration = std::time::Duration::from_millis(100);
}

/// Process-wide engine state: which engines exist and how to build sessions on them.
pub struct Backends {
    default: BackendChoice,
    /// Sessions per ort model; each is locked by one worker at a time.
    ort_sessions: usize,
    #[cfg_attr(not(feature = "ort"), allow(dead_code))]
    ort_library: Option<std::path::PathBuf>,
}

/// How to set the engines up.
pub struct BackendOptions<'a> {
    pub default: BackendChoice,
    pub ort_library: Option<&'a Path>,
    /// Parallel runs per model (the worker count): ort keeps this many sessions.
    pub parallelism: usize,
}

impl Backends {
    /// Sets up the engines. ONNX Runtime is loaded now unless the default engine is
    /// tract (then only when a model asks for it). With `auto`, a missing library is
    /// not an error: the log says why tract is used instead.
    pub fn new(opts: BackendOptions<'_>) -> Result<Backends, BackendError> {
        let backends = Backends {
            default: opts.default,
            ort_sessions: opts.parallelism.max(1),
            ort_library: opts.ort_library.map(Path::to_path_buf),
        };
        match opts.default {
            BackendChoice::Ort => {
                if let Err(reason) = backends.ort_status() {
                    return Err(BackendError::Unavailable {
                        engine: Engine::Ort,
                        reason,
                    });
                }
                tracing::info!(engine = "ort", "backend ort chosen on the command line");
            }
            BackendChoice::Auto => match backends.ort_status() {
                Ok(()) => tracing::info!(
                    engine = "ort",
                    "backend auto: using ONNX Runtime, its library loaded"
                ),
                Err(reason) => {
                    tracing::info!(engine = "tract", %reason, "backend auto: using tract, ONNX Runtime is not available")
                }
            },
            BackendChoice::Tract => {
                tracing::info!(engine = "tract", "backend tract chosen on the command line")
            }
        }
        Ok(backends)
    }

    /// `Ok` when ONNX Runtime is usable (loading it on first use), else why not.
    pub fn ort_status(&self) -> Result<(), String> {
        #[cfg(feature = "ort")]
        {
            ort::init(self.ort_library.as_deref())
        }
        #[cfg(not(feature = "ort"))]
        {
            Err("vigil was built without the `ort` feature".to_string())
        }
    }

    /// The engine a model gets: its own `backend` setting if any, else the server's.
    pub fn resolve(&self, model_choice: Option<BackendChoice>) -> Result<Engine, BackendError> {
        match model_choice.unwrap_or(self.default) {
            BackendChoice::Tract => Ok(Engine::Tract),
            BackendChoice::Ort => match self.ort_status() {
                Ok(()) => Ok(Engine::Ort),
                Err(reason) => Err(BackendError::Unavailable {
                    engine: Engine::Ort,
                    reason,
                }),
            },
            BackendChoice::Auto => Ok(if self.ort_status().is_ok() {
                Engine::Ort
            } else {
                Engine::Tract
            }),
        }
    }

    /// Loads `path` on the engine chosen for it and warms it up with one inference.
    pub fn load(
        &self,
        path: &Path,
        model_choice: Option<BackendChoice>,
    ) -> Result<Loaded, BackendError> {
        let engine = self.resolve(model_choice)?;
        let file = ModelFile::read(path)?;
        let signature = file.signature.clone();
        let session: Box<dyn Session> = match engine {
            Engine::Tract => Box::new(tract::TractSession::load(&file)?),
            #[cfg(feature = "ort")]
            Engine::Ort => Box::new(ort::OrtSession::load(&file, self.ort_sessions)?),
            #[cfg(not(feature = "ort"))]
            Engine::Ort => unreachable!("resolve() never picks ort without the feature"),
        };
        let mut loaded = Loaded {
            engine,
            signature,
            session,
            warmup: None,
        };
        match warm_up(&loaded) {
            Ok(w) => loaded.warmup = Some(w),
            Err(e) => {
                // Zeros with every dynamic dimension at 1 are not a valid input for every model
                // (a convolution over a dynamic 1x1 image, say). Only when the rest of the
                // shape is fixed is a failed warm-up proof that the model cannot run.
                let only_batch_dynamic = loaded
                    .signature
                    .inputs
                    .iter()
                    .all(|s| s.shape.iter().skip(1).all(|&d| d >= 0));
                if only_batch_dynamic {
                    return Err(e);
                }
                tracing::warn!(model = %path.display(), error = %e, "warm-up skipped: the model has dynamic non-batch dimensions");
            }
        }
        Ok(loaded)
    }
}

/// One inference on zeros of the declared shape (dynamic dimensions = 1), so the first
/// real request does not pay for lazy initialisation, and a model that cannot run at all
/// fails at load time rather than on a client's request. Then the same input is timed a
/// few more times (at most [`Warmup::RUNS`] runs within [`Warmup::BUDGET`]), so serving
/// can tell a model whose compute costs less than handing it to another thread.
pub fn warm_up(loaded: &Loaded) -> Result<Warmup, BackendError> {
    let inputs: Vec<Tensor> = loaded
        .signature
        .inputs
        .iter()
        .map(|spec| {
            let shape: Vec<usize> = spec
                .shape
                .iter()
                .map(|&d| if d < 0 { 1 } else { d as usize })
                .collect();
            let n = shape.iter().product();
            Tensor {
                name: spec.name.clone(),
                shape,
                data: crate::tensor::TensorData::zeros(spec.datatype, n),
            }
        })
        .collect();
    let run = || {
        loaded
            .session
            .run(&inputs)
            .map(|_| ())
            .map_err(|e| BackendError::Load(format!("warm-up inference failed: {e}")))
    };
    run()?;
    let started = std::time::Instant::now();
    let mut times = Vec::with_capacity(Warmup::RUNS);
    while times.len() < Warmup::RUNS && started.elapsed() < Warmup::BUDGET {
        let t = std::time::Instant::now();
        let (result, cpu) = crate::cputime::measure(run);
        result?;
        times.push(cpu.unwrap_or_else(|| t.elapsed()));
    }
    times.sort_unstable();
    // The 90th percentile (nearest rank); at least one run was timed (the budget starts
    // at zero elapsed).
    let rank = (times.len() * 9).div_ceil(10).max(1) - 1;
    Ok(Warmup {
        p90: times[rank],
        runs: times.len(),
        elements: inputs.iter().map(|t| t.data.len()).sum(),
    })
}
