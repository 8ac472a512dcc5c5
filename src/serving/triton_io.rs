//! A Triton configuration's `input`/`output` checked against the ONNX file's signature:
//! names, data types and dims (with Triton's meaning of `max_batch_size`: a batch
//! dimension first, not written in `dims`). Where the configuration fixes a dimension
//! the file leaves dynamic, the served signature takes the configuration's, so requests
//! are checked as Triton would check them.

use crate::backend::ModelSignature;
use crate::config::triton::{TritonConfig, TritonIo};
use crate::tensor::spec::TensorSpec;

/// The signature to serve, or why the configuration does not describe the model file.
pub fn conform(mut sig: ModelSignature, t: &TritonConfig) -> Result<ModelSignature, String> {
    conform_list(&mut sig.inputs, &t.inputs, t.max_batch_size, "input")?;
    conform_list(&mut sig.outputs, &t.outputs, t.max_batch_size, "output")?;
    if t.max_batch_size > 0 {
        if let Some(s) = sig.inputs.iter().find(|s| s.shape.first() != Some(&-1)) {
            return Err(format!(
                "config.pbtxt: max_batch_size is {} but the model's input '{}' has shape {} \
                 (with max_batch_size > 0 the first dimension must be dynamic: the batch)",
                t.max_batch_size,
                s.name,
                super::infer::dims_str(&s.shape)
            ));
        }
    }
    Ok(sig)
}

fn conform_list(
    specs: &mut [TensorSpec],
    declared: &[TritonIo],
    max_batch_size: usize,
    what: &str,
) -> Result<(), String> {
    for io in declared {
        let Some(i) = specs.iter().position(|s| s.name == io.name) else {
            let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            return Err(format!(
                "config.pbtxt: unexpected inference {what} '{}': the model's {what}s are {names:?}",
                io.name
            ));
        };
        let spec = &mut specs[i];
        if io.data_type != "TYPE_INVALID" && io.data_type != spec.datatype.triton_config_name() {
            return Err(format!(
                "config.pbtxt: {what} '{}' has data_type {} but the model file says {}",
                io.name,
                io.data_type,
                spec.datatype.triton_config_name()
            ));
        }
        let full: Vec<i64> = if max_batch_size > 0 {
            std::iter::once(-1).chain(io.dims.iter().copied()).collect()
        } else {
            io.dims.clone()
        };
        let mismatch = format!(
            "config.pbtxt: {what} '{}' has dims {} (full shape {}), the model file says {}",
            io.name,
            super::infer::dims_str(&io.dims),
            super::infer::dims_str(&full),
            super::infer::dims_str(&spec.shape)
        );
        if full.len() != spec.shape.len() {
            return Err(mismatch);
        }
        for (have, &want) in spec.shape.iter_mut().zip(&full) {
            match (*have, want) {
                (-1, w) => *have = w,
                (_, -1) => {}
                (h, w) if h == w => {}
                _ => return Err(mismatch),
            }
        }
    }
    Ok(())
}

/// `max_batch_size` as Triton's configuration means it, for a served version: the
/// `config.pbtxt`'s when it sets one; else the largest batch vigil forms when it batches
/// and every input's first dimension is dynamic; else 0. When it is above 0, the
/// configuration's `dims` leave the first (batch) dimension out. Both fronts' config
/// endpoints answer with it.
pub fn config_max_batch_size(triton: Option<&TritonConfig>, v: &super::ServedVersion) -> usize {
    let batching = v.batcher.settings().max_batch;
    let batch_dim = !v.signature.inputs.is_empty()
        && v.signature
            .inputs
            .iter()
            .all(|s| s.shape.first() == Some(&-1));
    match triton {
        Some(t) if t.max_batch_size > 0 => t.max_batch_size,
        _ if batching > 1 && batch_dim => batching,
        _ => 0,
    }
}

/// A tensor's `dims` in the configuration: without the batch dimension when batched.
pub fn config_dims(spec: &TensorSpec, batched: bool) -> &[i64] {
    if batched {
        spec.shape.get(1..).unwrap_or_default()
    } else {
        &spec.shape[..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::DataType;

    fn sig(shape: &[i64]) -> ModelSignature {
        let spec = |n: &str| TensorSpec {
            name: n.into(),
            datatype: DataType::Int32,
            shape: shape.to_vec(),
        };
        ModelSignature {
            inputs: vec![spec("INPUT0"), spec("INPUT1")],
            outputs: vec![spec("OUTPUT0")],
        }
    }

    fn config(text: &str) -> TritonConfig {
        TritonConfig::from_text(text).unwrap()
    }

    #[test]
    fn dims_mean_what_they_mean_in_triton() {
        let t = config(
            "max_batch_size: 8 input [{ name: \"INPUT0\" data_type: TYPE_INT32 dims: [16] }]",
        );
        let s = conform(sig(&[-1, -1]), &t).unwrap();
        assert_eq!(s.inputs[0].shape, [-1, 16]);
        assert_eq!(s.inputs[1].shape, [-1, -1]);
        let t = config("max_batch_size: 0 input [{ name: \"INPUT0\" dims: [2, 16] }]");
        assert_eq!(
            conform(sig(&[-1, 16]), &t).unwrap().inputs[0].shape,
            [2, 16]
        );
    }

    #[test]
    fn a_config_that_does_not_describe_the_file_is_refused() {
        for (text, shape, want) in [
            (
                "input [{ name: \"nope\" dims: [16] }]",
                &[-1, 16][..],
                "unexpected inference input 'nope'",
            ),
            (
                "input [{ name: \"INPUT0\" data_type: TYPE_FP32 dims: [-1, 16] }]",
                &[-1, 16],
                "data_type TYPE_FP32",
            ),
            (
                "max_batch_size: 4 input [{ name: \"INPUT0\" dims: [8] }]",
                &[-1, 16],
                "dims [8]",
            ),
            (
                "input [{ name: \"INPUT0\" dims: [16] }]",
                &[-1, 16],
                "full shape [16]",
            ),
            (
                "max_batch_size: 4",
                &[2, 16],
                "first dimension must be dynamic",
            ),
            (
                "output [{ name: \"OUTPUT0\" data_type: TYPE_INT64 dims: [-1, 16] }]",
                &[-1, 16],
                "output 'OUTPUT0'",
            ),
        ] {
            let err = conform(sig(shape), &config(text)).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }
}
