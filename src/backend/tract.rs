//! tract: the embedded, pure-Rust engine. Always built, nothing to install.
//!
//! The optimized plan is immutable and shared by every worker; each run gets its own
//! state. Dimensions an exporter left unnamed (skl2onnx's batch dimension) become
//! symbols, so one plan serves any batch size. Two-class tree ensembles, which tract
//! gets wrong, are rewritten first (`tract_trees`) or refused.

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::{DimFact, ShapeFactoid};

use super::{BackendError, ModelFile, Session};
use crate::tensor::bytes::ByteStrings;
use crate::tensor::spec::TensorSpec;
use crate::tensor::{DataType, Tensor as VTensor, TensorData};

pub struct TractSession {
    plan: Arc<TypedSimplePlan>,
    /// For each tract input, the index of the matching signature input.
    input_order: Vec<usize>,
    outputs: Vec<TensorSpec>,
}

fn datum_type(d: DataType) -> DatumType {
    match d {
        DataType::Bool => DatumType::Bool,
        DataType::Uint8 => DatumType::U8,
        DataType::Uint16 => DatumType::U16,
        DataType::Uint32 => DatumType::U32,
        DataType::Uint64 => DatumType::U64,
        DataType::Int8 => DatumType::I8,
        DataType::Int16 => DatumType::I16,
        DataType::Int32 => DatumType::I32,
        DataType::Int64 => DatumType::I64,
        DataType::Fp32 => DatumType::F32,
        DataType::Fp64 => DatumType::F64,
        DataType::Bytes => DatumType::String,
    }
}

impl TractSession {
    pub fn load(file: &ModelFile) -> Result<TractSession, BackendError> {
        // tract gets two-class tree ensembles wrong: rewrite them, or refuse the model.
        let rewritten = super::tract_trees::rewrite(&file.proto).map_err(|r| {
            BackendError::Unsupported(format!(
                "node '{}' is a two-class TreeEnsembleClassifier that tract cannot evaluate \
                 the way ONNX Runtime does ({}); serve this model with ONNX Runtime \
                 (backend = \"ort\" in its config.toml, or --backend ort)",
                r.node, r.reason
            ))
        })?;
        let proto = rewritten.as_ref().unwrap_or(&file.proto);
        let load = |e: TractError| BackendError::Load(format!("{e:#}"));
        let dir = file.dir().to_str();
        let onnx = tract_onnx::onnx();
        let parsed = onnx.parse(proto, dir).map_err(load)?;
        if !parsed.unresolved_inputs.is_empty() {
            return Err(BackendError::Load(format!(
                "unresolved inputs: {:?}",
                parsed.unresolved_inputs
            )));
        }
        let mut model = parsed.model;
        let batch = model.sym("batch");
        let mut input_order = Vec::new();
        for (i, outlet) in model
            .input_outlets()
            .map_err(load)?
            .to_vec()
            .iter()
            .enumerate()
        {
            let name = model.node(outlet.node).name.clone();
            let index = file
                .signature
                .inputs
                .iter()
                .position(|s| s.name == name)
                .ok_or_else(|| BackendError::Load(format!("tract input '{name}' is undeclared")))?;
            input_order.push(index);
            let spec = &file.signature.inputs[index];
            let dims: TVec<DimFact> = spec
                .shape
                .iter()
                .enumerate()
                .map(|(j, &d)| {
                    let dim: TDim = if d >= 0 {
                        (d as usize).into()
                    } else if j == 0 {
                        batch.clone().into()
                    } else {
                        model.sym(&format!("{name}_d{j}")).into()
                    };
                    DimFact::from(dim)
                })
                .collect();
            let fact =
                InferenceFact::dt_shape(datum_type(spec.datatype), ShapeFactoid::closed(dims));
            model.set_input_fact(i, fact).map_err(load)?;
        }
        let typed = model.into_typed().map_err(load)?;
        let optimized = match typed.clone().into_optimized() {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "tract could not optimize the model; running it decluttered");
                typed.into_decluttered().map_err(load)?
            }
        };
        let plan = optimized.into_runnable().map_err(load)?;
        Ok(TractSession {
            plan,
            input_order,
            outputs: file.signature.outputs.clone(),
        })
    }
}

fn to_tract(t: &VTensor) -> Result<TValue, BackendError> {
    let shape = &t.shape;
    let err = |e: TractError| BackendError::Run(format!("input '{}': {e}", t.name));
    let tensor = crate::dispatch_numeric!(&t.data,
        v => Tensor::from_shape(shape, v).map_err(err)?,
        bool b => Tensor::from_shape(shape, b).map_err(err)?,
        bytes s => {
            let strings = s
                .iter()
                .map(|e| std::str::from_utf8(e).map(str::to_owned))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| BackendError::Run(format!("input '{}': BYTES elements must be UTF-8 for this model", t.name)))?;
            tract_ndarray::ArrayD::from_shape_vec(shape.clone(), strings)
                .map_err(|e| BackendError::Run(format!("input '{}': {e}", t.name)))?
                .into_tensor()
        }
    );
    Ok(tensor.into_tvalue())
}

fn from_tract(spec: &TensorSpec, value: &Tensor) -> Result<VTensor, BackendError> {
    let err = |e: TractError| BackendError::Run(format!("output '{}': {e}", spec.name));
    let value = value.cast_to_dt(datum_type(spec.datatype)).map_err(err)?;
    macro_rules! take {
        ($variant:ident, $t:ty) => {
            // tract's tensors are contiguous, row-major: one copy of the storage (an
            // ndarray view's element iterator cost ~3 % of a one-row request's CPU).
            TensorData::$variant(
                value
                    .try_as_plain_ram()
                    .and_then(|v| v.as_slice::<$t>().map(<[$t]>::to_vec))
                    .map_err(err)?,
            )
        };
    }
    let data = match spec.datatype {
        DataType::Bool => take!(Bool, bool),
        DataType::Uint8 => take!(Uint8, u8),
        DataType::Uint16 => take!(Uint16, u16),
        DataType::Uint32 => take!(Uint32, u32),
        DataType::Uint64 => take!(Uint64, u64),
        DataType::Int8 => take!(Int8, i8),
        DataType::Int16 => take!(Int16, i16),
        DataType::Int32 => take!(Int32, i32),
        DataType::Int64 => take!(Int64, i64),
        DataType::Fp32 => take!(Fp32, f32),
        DataType::Fp64 => take!(Fp64, f64),
        DataType::Bytes => TensorData::Bytes(
            ByteStrings::try_from_iter(value.to_plain_array_view::<String>().map_err(err)?.iter())
                .map_err(|e| BackendError::Run(format!("output '{}': {e}", spec.name)))?,
        ),
    };
    Ok(VTensor {
        name: spec.name.clone(),
        shape: value.shape().to_vec(),
        data,
    })
}

impl Session for TractSession {
    fn run(&self, inputs: &[VTensor]) -> Result<Vec<VTensor>, BackendError> {
        let values = self
            .input_order
            .iter()
            .map(|&i| to_tract(&inputs[i]))
            .collect::<Result<TVec<_>, _>>()?;
        let outputs = self
            .plan
            .run(values)
            .map_err(|e| BackendError::Run(format!("{e:#}")))?;
        if outputs.len() != self.outputs.len() {
            return Err(BackendError::Run(format!(
                "tract produced {} outputs, the model declares {}",
                outputs.len(),
                self.outputs.len()
            )));
        }
        self.outputs
            .iter()
            .zip(outputs.iter())
            .map(|(spec, v)| from_tract(spec, v))
            .collect()
    }
}
