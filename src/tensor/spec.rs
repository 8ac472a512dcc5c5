//! What a model declares for one input or output: the vocabulary that the backend reads
//! from the model file, the HTTP layer validates against and the monitor plans its
//! features from. Imports only the tensor's datatype.

use super::DataType;

/// A declared input or output: name, datatype and shape, `-1` for a dynamic dimension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
}

impl TensorSpec {
    /// Whether `shape` fits the declared shape (same rank, fixed dimensions equal).
    pub fn accepts_shape(&self, shape: &[usize]) -> bool {
        shape.len() == self.shape.len()
            && self
                .shape
                .iter()
                .zip(shape)
                .all(|(&want, &got)| want < 0 || want as usize == got)
    }

    /// The shape with dynamic dimensions shown as `-1`, for error messages.
    pub fn shape_str(&self) -> String {
        format!("{:?}", self.shape)
    }
}
