//! ONNX Runtime, loaded at run time from `libonnxruntime.so` (feature `ort`).
//!
//! The library is found, in order: `--ort-library`, `ORT_DYLIB_PATH`, a
//! `libonnxruntime.so*` next to the vigil binary. `ort::init_from` must run before any
//! other ort call (ort panics when its library is missing), so [`init`] is the only
//! door in. `Session::run` needs `&mut`, so a model keeps one session per worker and a
//! run locks one of them; with as many sessions as workers the lock is never contended.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session as OrtInner, SessionInputValue};
use ort::value::{DynValue, Tensor as OrtTensor, TensorElementType, TensorRef, ValueType};

use super::{BackendError, ModelFile, Session};
use crate::tensor::bytes::ByteStrings;
use crate::tensor::spec::TensorSpec;
use crate::tensor::{Tensor, TensorData};

static ENV: OnceLock<Result<Environment, String>> = OnceLock::new();

/// Where the ONNX Runtime library is looked for, in order.
fn candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = explicit {
        return vec![p.to_path_buf()];
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return vec![PathBuf::from(p)];
    }
    let mut found = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            let mut libs: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("libonnxruntime.so"))
                })
                .collect();
            libs.sort();
            found.extend(libs);
        }
    }
    found
}

/// Loads the ONNX Runtime library once per process. `Err` says why it is not usable.
pub fn init(explicit: Option<&Path>) -> Result<(), String> {
    ENV.get_or_init(|| {
        let paths = candidates(explicit);
        let Some(path) = paths.first() else {
            return Err(
                "no library: pass --ort-library, set ORT_DYLIB_PATH, or put \
                        libonnxruntime.so next to the vigil binary"
                    .to_string(),
            );
        };
        if !path.is_file() {
            return Err(format!("{} does not exist", path.display()));
        }
        let env = ort::init_from(path)
            .map_err(|e| format!("cannot load {}: {e}", path.display()))?
            .with_name("vigil")
            .build()
            .map_err(|e| format!("cannot start ONNX Runtime from {}: {e}", path.display()))?;
        tracing::info!(library = %path.display(), "ONNX Runtime loaded");
        Ok(env)
    })
    .as_ref()
    .map(|_| ())
    .map_err(Clone::clone)
}

fn environment() -> Result<&'static Environment, BackendError> {
    match ENV.get() {
        Some(Ok(env)) => Ok(env),
        Some(Err(reason)) => Err(BackendError::Unavailable {
            engine: super::Engine::Ort,
            reason: reason.clone(),
        }),
        None => Err(BackendError::Unavailable {
            engine: super::Engine::Ort,
            reason: "not initialised".into(),
        }),
    }
}

pub struct OrtSession {
    sessions: Vec<Mutex<OrtInner>>,
    next: AtomicUsize,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
}

impl OrtSession {
    pub fn load(file: &ModelFile, count: usize) -> Result<OrtSession, BackendError> {
        let env = environment()?;
        let load = |e: ort::Error| BackendError::Load(e.to_string());
        let mut sessions = Vec::with_capacity(count);
        for _ in 0..count.max(1) {
            let session = OrtInner::builder(env)
                .map_err(load)?
                .with_optimization_level(GraphOptimizationLevel::Level3)
                .map_err(|e| BackendError::Load(e.to_string()))?
                .with_intra_threads(1)
                .map_err(|e| BackendError::Load(e.to_string()))?
                .with_inter_threads(1)
                .map_err(|e| BackendError::Load(e.to_string()))?
                // No CPU arena: its regions only grow (a batch's buffers stay resident for
                // the session's life, ~4 MB on benches/load.py's heavy MLP); plain malloc
                // reuses them as well and gives them back when traffic stops (memtrim).
                .with_execution_providers([ort::ep::CPU::default()
                    .with_arena_allocator(false)
                    .build()])
                .map_err(|e| BackendError::Load(e.to_string()))?
                .commit_from_file(&file.path)
                .map_err(load)?;
            sessions.push(Mutex::new(session));
        }
        Ok(OrtSession {
            sessions,
            next: AtomicUsize::new(0),
            inputs: file.signature.inputs.clone(),
            outputs: file.signature.outputs.clone(),
        })
    }

    fn run_on(
        &self,
        session: &mut OrtInner,
        inputs: &[Tensor],
    ) -> Result<Vec<Tensor>, BackendError> {
        let run_err = |e: ort::Error| BackendError::Run(e.to_string());
        let mut feeds: Vec<(String, SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
        for (spec, t) in self.inputs.iter().zip(inputs) {
            let shape = t.shape.clone();
            let value: SessionInputValue<'_> = crate::dispatch_numeric!(&t.data,
                v => TensorRef::from_array_view((shape, v.as_slice())).map_err(run_err)?.into(),
                bool b => TensorRef::from_array_view((shape, b.as_slice())).map_err(run_err)?.into(),
                bytes s => {
                    let strings = s
                        .iter()
                        .map(|e| std::str::from_utf8(e).map(str::to_owned))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|_| BackendError::Run(format!("input '{}': BYTES elements must be UTF-8 for this model", spec.name)))?;
                    OrtTensor::from_string_array((shape, strings.as_slice())).map_err(run_err)?.into()
                }
            );
            feeds.push((spec.name.clone(), value));
        }
        let outputs = session.run(feeds).map_err(run_err)?;
        self.outputs
            .iter()
            .map(|spec| {
                let value = outputs.get(&spec.name).ok_or_else(|| {
                    BackendError::Run(format!("ONNX Runtime returned no output '{}'", spec.name))
                })?;
                from_ort(spec, value)
            })
            .collect()
    }
}

fn from_ort(spec: &TensorSpec, value: &DynValue) -> Result<Tensor, BackendError> {
    let err = |e: ort::Error| BackendError::Run(format!("output '{}': {e}", spec.name));
    let ValueType::Tensor { ty, .. } = value.dtype() else {
        return Err(BackendError::Run(format!(
            "output '{}' is not a tensor",
            spec.name
        )));
    };
    macro_rules! take {
        ($variant:ident, $t:ty) => {{
            let (shape, data) = value.try_extract_tensor::<$t>().map_err(err)?;
            (
                shape.iter().map(|&d| d as usize).collect::<Vec<_>>(),
                TensorData::$variant(data.to_vec()),
            )
        }};
    }
    let (shape, data) = match ty {
        TensorElementType::Bool => take!(Bool, bool),
        TensorElementType::Uint8 => take!(Uint8, u8),
        TensorElementType::Uint16 => take!(Uint16, u16),
        TensorElementType::Uint32 => take!(Uint32, u32),
        TensorElementType::Uint64 => take!(Uint64, u64),
        TensorElementType::Int8 => take!(Int8, i8),
        TensorElementType::Int16 => take!(Int16, i16),
        TensorElementType::Int32 => take!(Int32, i32),
        TensorElementType::Int64 => take!(Int64, i64),
        TensorElementType::Float32 => take!(Fp32, f32),
        TensorElementType::Float64 => take!(Fp64, f64),
        TensorElementType::String => {
            let (shape, strings) = value.try_extract_strings().map_err(err)?;
            (
                shape.iter().map(|&d| d as usize).collect(),
                TensorData::Bytes(
                    ByteStrings::try_from_iter(&strings)
                        .map_err(|e| BackendError::Run(format!("output '{}': {e}", spec.name)))?,
                ),
            )
        }
        other => {
            return Err(BackendError::Run(format!(
                "output '{}' has element type {other:?}, which vigil does not serve",
                spec.name
            )))
        }
    };
    if data.datatype() != spec.datatype {
        return Err(BackendError::Run(format!(
            "output '{}' is {}, the model declares {}",
            spec.name,
            data.datatype(),
            spec.datatype
        )));
    }
    Ok(Tensor {
        name: spec.name.clone(),
        shape,
        data,
    })
}

impl Session for OrtSession {
    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError> {
        let n = self.sessions.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        // Take a free session if there is one; otherwise wait for the one we were dealt.
        for i in 0..n {
            if let Ok(mut s) = self.sessions[(start + i) % n].try_lock() {
                return self.run_on(&mut s, inputs);
            }
        }
        let mut s = self.sessions[start]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.run_on(&mut s, inputs)
    }
}
