//! Feature plans: which values of a model's inputs (or outputs) are monitored and what
//! each is called, from the declared signature. Knows nothing of profiles, windows,
//! scores or metrics.

use crate::tensor::spec::TensorSpec;
use crate::tensor::DataType;

/// How a feature's value is read from a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extract {
    /// Column `col` of a 2-D tensor.
    Column { col: usize },
    /// The single value of a 1-D tensor's row.
    Scalar,
    /// A per-row summary of a tensor of higher rank (or of dynamic width).
    Summary(Summary),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Summary {
    Mean,
    Std,
    Min,
    Max,
}

impl Summary {
    const ALL: [Summary; 4] = [Summary::Mean, Summary::Std, Summary::Min, Summary::Max];
    fn name(self) -> &'static str {
        match self {
            Summary::Mean => "mean",
            Summary::Std => "std",
            Summary::Min => "min",
            Summary::Max => "max",
        }
    }
}

/// One monitored feature: where it comes from and what it is called.
#[derive(Clone, Debug)]
pub struct FeatureDef {
    pub name: String,
    /// Index of the tensor in the signature's inputs (or outputs).
    pub tensor: usize,
    pub tensor_name: String,
    /// Column, or summary number (mean 0, std 1, min 2, max 3).
    pub index: usize,
    pub extract: Extract,
}

/// The features a signature yields: each column of a 2-D tensor, the value of a 1-D
/// one, per-row mean/std/min/max of anything else. BYTES tensors are not monitored.
pub fn plan(specs: &[TensorSpec]) -> Vec<FeatureDef> {
    let monitored: Vec<(usize, &TensorSpec)> = specs
        .iter()
        .enumerate()
        .filter(|(_, s)| s.datatype != DataType::Bytes && !s.shape.is_empty())
        .collect();
    let prefix = |s: &TensorSpec| {
        if monitored.len() > 1 {
            format!("{}.", s.name)
        } else {
            String::new()
        }
    };
    let mut out = Vec::new();
    for (i, s) in &monitored {
        match s.shape.len() {
            1 => out.push(FeatureDef {
                name: s.name.clone(),
                tensor: *i,
                tensor_name: s.name.clone(),
                index: 0,
                extract: Extract::Scalar,
            }),
            2 if s.shape[1] > 0 => {
                for col in 0..s.shape[1] as usize {
                    out.push(FeatureDef {
                        name: format!("{}f{col}", prefix(s)),
                        tensor: *i,
                        tensor_name: s.name.clone(),
                        index: col,
                        extract: Extract::Column { col },
                    });
                }
            }
            _ => {
                for (k, stat) in Summary::ALL.into_iter().enumerate() {
                    out.push(FeatureDef {
                        name: format!("{}.{}", s.name, stat.name()),
                        tensor: *i,
                        tensor_name: s.name.clone(),
                        index: k,
                        extract: Extract::Summary(stat),
                    });
                }
            }
        }
    }
    out
}
