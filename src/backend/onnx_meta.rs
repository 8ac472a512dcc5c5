//! Reading an ONNX file once: its bytes, its protobuf, and the signature it declares.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use tract_onnx::pb;
use tract_onnx::pb::tensor_shape_proto::dimension::Value as Dim;
use tract_onnx::prelude::Framework;

use super::{BackendError, ModelSignature};
use crate::tensor::spec::TensorSpec;
use crate::tensor::DataType;

/// A model file read into memory (never mapped: a file replaced while it is being
/// served must not take the process down).
pub struct ModelFile {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    pub proto: pb::ModelProto,
    pub signature: ModelSignature,
}

impl ModelFile {
    pub fn read(path: &Path) -> Result<ModelFile, BackendError> {
        let bytes = std::fs::read(path)
            .map_err(|e| BackendError::Read(format!("{}: {e}", path.display())))?;
        let proto = tract_onnx::onnx()
            .proto_model_for_read(&mut bytes.as_slice())
            .map_err(|e| {
                BackendError::Read(format!("{} is not a valid ONNX model: {e}", path.display()))
            })?;
        let signature = read_signature(&proto)?;
        Ok(ModelFile {
            path: path.to_path_buf(),
            bytes,
            proto,
            signature,
        })
    }

    /// The directory holding the model (where external data files live).
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }
}

fn datatype_of(elem_type: i32) -> Option<DataType> {
    use pb::tensor_proto::DataType as P;
    let p = P::try_from(elem_type).ok()?;
    Some(match p {
        P::Float => DataType::Fp32,
        P::Uint8 => DataType::Uint8,
        P::Int8 => DataType::Int8,
        P::Uint16 => DataType::Uint16,
        P::Int16 => DataType::Int16,
        P::Int32 => DataType::Int32,
        P::Int64 => DataType::Int64,
        P::String => DataType::Bytes,
        P::Bool => DataType::Bool,
        P::Double => DataType::Fp64,
        P::Uint32 => DataType::Uint32,
        P::Uint64 => DataType::Uint64,
        _ => return None,
    })
}

fn spec_of(kind: &str, vi: &pb::ValueInfoProto) -> Result<TensorSpec, BackendError> {
    let tensor = match vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(pb::type_proto::Value::TensorType(t)) => t,
        None => {
            return Err(BackendError::Unsupported(format!(
                "{kind} '{}' is not a tensor (a sequence or map, e.g. sklearn's ZipMap: \
                 export with zipmap=False)",
                vi.name
            )))
        }
    };
    let datatype = datatype_of(tensor.elem_type).ok_or_else(|| {
        let name = pb::tensor_proto::DataType::try_from(tensor.elem_type)
            .map(|d| format!("{d:?}"))
            .unwrap_or_else(|_| tensor.elem_type.to_string());
        BackendError::Unsupported(format!(
            "{kind} '{}' has element type {name}, which vigil does not serve",
            vi.name
        ))
    })?;
    let shape = match &tensor.shape {
        Some(s) => s
            .dim
            .iter()
            .map(|d| match d.value {
                Some(Dim::DimValue(v)) if v >= 0 => v,
                _ => -1,
            })
            .collect(),
        None => {
            return Err(BackendError::Unsupported(format!(
                "{kind} '{}' declares no shape; vigil needs at least its rank",
                vi.name
            )))
        }
    };
    Ok(TensorSpec {
        name: vi.name.clone(),
        datatype,
        shape,
    })
}

/// The inputs (minus those fed by initializers) and outputs a model declares.
pub fn read_signature(proto: &pb::ModelProto) -> Result<ModelSignature, BackendError> {
    let graph = proto
        .graph
        .as_ref()
        .ok_or_else(|| BackendError::Read("the ONNX model has no graph".into()))?;
    let initialized: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs = graph
        .input
        .iter()
        .filter(|vi| !initialized.contains(vi.name.as_str()))
        .map(|vi| spec_of("input", vi))
        .collect::<Result<Vec<_>, _>>()?;
    let outputs = graph
        .output
        .iter()
        .map(|vi| spec_of("output", vi))
        .collect::<Result<Vec<_>, _>>()?;
    if outputs.is_empty() {
        return Err(BackendError::Read(
            "the ONNX model declares no outputs".into(),
        ));
    }
    Ok(ModelSignature { inputs, outputs })
}
