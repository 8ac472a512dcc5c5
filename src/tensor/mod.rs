//! The one in-memory tensor type every layer speaks: a name, a shape and typed, row-major
//! data. The HTTP codec decodes into it, engines read and produce it, the monitor reads it.
//!
//! Data is stored typed (`Vec<f32>`, `Vec<i64>`, ...) rather than as raw bytes so that
//! engines can borrow aligned slices without another copy. Per-datatype code is written
//! once through the `dispatch!` macro instead of once per type.
//!
//! `BYTES` elements live in one buffer with a 4-byte end offset each ([`bytes::ByteStrings`]),
//! not one `Vec` each: a `Vec<Vec<u8>>` costs 24 bytes per element even for empty
//! strings, so a body of a million `""` (3 bytes each) would decode to eight times its
//! size. Packed, decoded BYTES never take more than 4/3 of the body that carried them.

pub mod bytes;
pub mod spec;

use std::fmt;

use bytes::{ByteStrings, TooLarge};

/// A KServe V2 datatype. `BYTES` elements are arbitrary byte strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataType {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp32,
    Fp64,
    Bytes,
}

impl DataType {
    pub const ALL: [DataType; 12] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Uint16,
        DataType::Uint32,
        DataType::Uint64,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp32,
        DataType::Fp64,
        DataType::Bytes,
    ];

    /// The V2 protocol name (`"FP32"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Uint16 => "UINT16",
            DataType::Uint32 => "UINT32",
            DataType::Uint64 => "UINT64",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Bytes => "BYTES",
        }
    }

    /// Parses a V2 datatype name.
    pub fn parse(s: &str) -> Option<DataType> {
        DataType::ALL.into_iter().find(|d| d.as_str() == s)
    }

    /// Triton's model-configuration name (`"TYPE_FP32"`, `"TYPE_STRING"`).
    pub fn triton_config_name(self) -> &'static str {
        match self {
            DataType::Bool => "TYPE_BOOL",
            DataType::Uint8 => "TYPE_UINT8",
            DataType::Uint16 => "TYPE_UINT16",
            DataType::Uint32 => "TYPE_UINT32",
            DataType::Uint64 => "TYPE_UINT64",
            DataType::Int8 => "TYPE_INT8",
            DataType::Int16 => "TYPE_INT16",
            DataType::Int32 => "TYPE_INT32",
            DataType::Int64 => "TYPE_INT64",
            DataType::Fp32 => "TYPE_FP32",
            DataType::Fp64 => "TYPE_FP64",
            DataType::Bytes => "TYPE_STRING",
        }
    }

    /// Bytes per element in the binary tensor format; `None` for `BYTES` (length-prefixed).
    pub fn element_size(self) -> Option<usize> {
        match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => Some(1),
            DataType::Uint16 | DataType::Int16 => Some(2),
            DataType::Uint32 | DataType::Int32 | DataType::Fp32 => Some(4),
            DataType::Uint64 | DataType::Int64 | DataType::Fp64 => Some(8),
            DataType::Bytes => None,
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Typed, row-major tensor contents.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    Bool(Vec<bool>),
    Uint8(Vec<u8>),
    Uint16(Vec<u16>),
    Uint32(Vec<u32>),
    Uint64(Vec<u64>),
    Int8(Vec<i8>),
    Int16(Vec<i16>),
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Fp32(Vec<f32>),
    Fp64(Vec<f64>),
    Bytes(ByteStrings),
}

/// Runs `$body` with `$v` bound to the inner `Vec` of every variant (BYTES included).
#[macro_export]
macro_rules! dispatch {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            $crate::tensor::TensorData::Bool($v) => $body,
            $crate::tensor::TensorData::Uint8($v) => $body,
            $crate::tensor::TensorData::Uint16($v) => $body,
            $crate::tensor::TensorData::Uint32($v) => $body,
            $crate::tensor::TensorData::Uint64($v) => $body,
            $crate::tensor::TensorData::Int8($v) => $body,
            $crate::tensor::TensorData::Int16($v) => $body,
            $crate::tensor::TensorData::Int32($v) => $body,
            $crate::tensor::TensorData::Int64($v) => $body,
            $crate::tensor::TensorData::Fp32($v) => $body,
            $crate::tensor::TensorData::Fp64($v) => $body,
            $crate::tensor::TensorData::Bytes($v) => $body,
        }
    };
}

/// Runs `$num` for every fixed-size numeric variant and `$bool`/`$bytes` for the others;
/// `$num` sees `$v: &Vec<T>` with `T` a primitive number.
#[macro_export]
macro_rules! dispatch_numeric {
    ($data:expr, $v:ident => $num:expr, bool $b:ident => $bool:expr, bytes $s:ident => $bytes:expr) => {
        match $data {
            $crate::tensor::TensorData::Bool($b) => $bool,
            $crate::tensor::TensorData::Bytes($s) => $bytes,
            $crate::tensor::TensorData::Uint8($v) => $num,
            $crate::tensor::TensorData::Uint16($v) => $num,
            $crate::tensor::TensorData::Uint32($v) => $num,
            $crate::tensor::TensorData::Uint64($v) => $num,
            $crate::tensor::TensorData::Int8($v) => $num,
            $crate::tensor::TensorData::Int16($v) => $num,
            $crate::tensor::TensorData::Int32($v) => $num,
            $crate::tensor::TensorData::Int64($v) => $num,
            $crate::tensor::TensorData::Fp32($v) => $num,
            $crate::tensor::TensorData::Fp64($v) => $num,
        }
    };
}

/// Why raw bytes could not become a tensor.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("{datatype} data of {got} bytes is not a whole number of {size}-byte elements")]
    Ragged {
        datatype: DataType,
        got: usize,
        size: usize,
    },
    #[error("BYTES element {index} is truncated (needs {need} bytes, {left} left)")]
    TruncatedBytes {
        index: usize,
        need: usize,
        left: usize,
    },
    #[error("BOOL byte {index} is {value}, expected 0 or 1")]
    BadBool { index: usize, value: u8 },
    #[error("{0}")]
    TooLarge(#[from] TooLarge),
}

/// The length of the BYTES element that starts `rest` (its 4-byte prefix), checked
/// against what is left.
fn bytes_element(rest: &[u8], index: usize) -> Result<usize, DecodeError> {
    let Some((prefix, after)) = rest.split_first_chunk::<4>() else {
        return Err(DecodeError::TruncatedBytes {
            index,
            need: 4,
            left: rest.len(),
        });
    };
    let n = u32::from_le_bytes(*prefix) as usize;
    if after.len() < n {
        return Err(DecodeError::TruncatedBytes {
            index,
            need: n,
            left: after.len(),
        });
    }
    Ok(n)
}

/// Little-endian element conversions for the fixed-size numeric types.
pub trait Element: Copy + Send + Sync + 'static {
    const SIZE: usize;
    fn from_le(b: &[u8]) -> Self;
    fn write_le(self, out: &mut Vec<u8>);
}

macro_rules! element {
    ($($t:ty),*) => {$(
        impl Element for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            #[inline]
            fn from_le(b: &[u8]) -> Self {
                <$t>::from_le_bytes(b.try_into().expect("chunk has the element size"))
            }
            #[inline]
            fn write_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
element!(u8, u16, u32, u64, i8, i16, i32, i64, f32, f64);

/// The elements of `raw` that it holds whole, appended to `out`; returns the bytes used.
fn extend_le<T: Element>(out: &mut Vec<T>, raw: &[u8]) -> usize {
    let whole = raw.len() / T::SIZE * T::SIZE;
    out.extend(raw[..whole].chunks_exact(T::SIZE).map(T::from_le));
    whole
}

impl TensorData {
    pub fn datatype(&self) -> DataType {
        match self {
            TensorData::Bool(_) => DataType::Bool,
            TensorData::Uint8(_) => DataType::Uint8,
            TensorData::Uint16(_) => DataType::Uint16,
            TensorData::Uint32(_) => DataType::Uint32,
            TensorData::Uint64(_) => DataType::Uint64,
            TensorData::Int8(_) => DataType::Int8,
            TensorData::Int16(_) => DataType::Int16,
            TensorData::Int32(_) => DataType::Int32,
            TensorData::Int64(_) => DataType::Int64,
            TensorData::Fp32(_) => DataType::Fp32,
            TensorData::Fp64(_) => DataType::Fp64,
            TensorData::Bytes(_) => DataType::Bytes,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        dispatch!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The parts one after the other; `None` if their datatypes differ (or no parts), or
    /// if BYTES parts would hold 4 GiB or more together.
    pub fn concat(parts: &[&TensorData]) -> Option<TensorData> {
        let total = parts.iter().map(|p| p.len()).sum();
        macro_rules! cat {
            ($($var:ident),*) => {
                match parts.first()? {
                    TensorData::Bytes(_) => {
                        let strings = parts
                            .iter()
                            .map(|p| match p {
                                TensorData::Bytes(s) => Some(s),
                                _ => None,
                            })
                            .collect::<Option<Vec<_>>>()?;
                        TensorData::Bytes(ByteStrings::concat(&strings).ok()?)
                    }
                    $(TensorData::$var(_) => {
                        let mut out = Vec::with_capacity(total);
                        for p in parts {
                            match p {
                                TensorData::$var(v) => out.extend_from_slice(v),
                                _ => return None,
                            }
                        }
                        TensorData::$var(out)
                    })*
                }
            };
        }
        Some(cat!(
            Bool, Uint8, Uint16, Uint32, Uint64, Int8, Int16, Int32, Int64, Fp32, Fp64
        ))
    }

    /// Elements `range` as a tensor of their own.
    pub fn slice(&self, range: std::ops::Range<usize>) -> TensorData {
        macro_rules! cut {
            ($($var:ident),*) => {
                match self {
                    TensorData::Bytes(s) => TensorData::Bytes(s.slice(range)),
                    $(TensorData::$var(v) => TensorData::$var(v[range].to_vec()),)*
                }
            };
        }
        cut!(Bool, Uint8, Uint16, Uint32, Uint64, Int8, Int16, Int32, Int64, Fp32, Fp64)
    }

    /// `n` zero elements (empty strings for BYTES): the warm-up input.
    pub fn zeros(datatype: DataType, n: usize) -> TensorData {
        match datatype {
            DataType::Bool => TensorData::Bool(vec![false; n]),
            DataType::Uint8 => TensorData::Uint8(vec![0; n]),
            DataType::Uint16 => TensorData::Uint16(vec![0; n]),
            DataType::Uint32 => TensorData::Uint32(vec![0; n]),
            DataType::Uint64 => TensorData::Uint64(vec![0; n]),
            DataType::Int8 => TensorData::Int8(vec![0; n]),
            DataType::Int16 => TensorData::Int16(vec![0; n]),
            DataType::Int32 => TensorData::Int32(vec![0; n]),
            DataType::Int64 => TensorData::Int64(vec![0; n]),
            DataType::Fp32 => TensorData::Fp32(vec![0.0; n]),
            DataType::Fp64 => TensorData::Fp64(vec![0.0; n]),
            DataType::Bytes => TensorData::Bytes(ByteStrings::empty_strings(n)),
        }
    }

    /// An empty vector of `datatype` with room for `elements` elements (and, for BYTES,
    /// `string_bytes` bytes of strings).
    pub fn with_capacity(datatype: DataType, elements: usize, string_bytes: usize) -> TensorData {
        match datatype {
            DataType::Bool => TensorData::Bool(Vec::with_capacity(elements)),
            DataType::Uint8 => TensorData::Uint8(Vec::with_capacity(elements)),
            DataType::Uint16 => TensorData::Uint16(Vec::with_capacity(elements)),
            DataType::Uint32 => TensorData::Uint32(Vec::with_capacity(elements)),
            DataType::Uint64 => TensorData::Uint64(Vec::with_capacity(elements)),
            DataType::Int8 => TensorData::Int8(Vec::with_capacity(elements)),
            DataType::Int16 => TensorData::Int16(Vec::with_capacity(elements)),
            DataType::Int32 => TensorData::Int32(Vec::with_capacity(elements)),
            DataType::Int64 => TensorData::Int64(Vec::with_capacity(elements)),
            DataType::Fp32 => TensorData::Fp32(Vec::with_capacity(elements)),
            DataType::Fp64 => TensorData::Fp64(Vec::with_capacity(elements)),
            DataType::Bytes => {
                TensorData::Bytes(ByteStrings::with_capacity(elements, string_bytes))
            }
        }
    }

    /// Drops the elements, keeping the allocation.
    pub fn clear(&mut self) {
        dispatch!(self, v => v.clear())
    }

    /// Decodes the binary tensor extension's layout: little-endian elements, one byte per
    /// BOOL, and for BYTES a 4-byte little-endian length before each element.
    pub fn from_le_bytes(datatype: DataType, raw: &[u8]) -> Result<TensorData, DecodeError> {
        let mut out = TensorData::for_le_bytes(datatype, raw)?;
        let used = out.extend_from_le_bytes(raw)?;
        debug_assert_eq!(
            used,
            raw.len(),
            "for_le_bytes checked the elements are whole"
        );
        Ok(out)
    }

    /// An empty vector with room for the elements of `raw` in the binary layout, once
    /// `raw` is known to hold whole elements ([`DecodeError::Ragged`],
    /// [`DecodeError::TruncatedBytes`] otherwise). Then [`TensorData::extend_from_le_bytes`]
    /// fills it, in one call or piece by piece.
    pub fn for_le_bytes(datatype: DataType, raw: &[u8]) -> Result<TensorData, DecodeError> {
        match datatype.element_size() {
            Some(size) if raw.len() % size != 0 => Err(DecodeError::Ragged {
                datatype,
                got: raw.len(),
                size,
            }),
            Some(size) => Ok(TensorData::with_capacity(datatype, raw.len() / size, 0)),
            None => {
                // Walk the length prefixes first, so the strings are stored in buffers of
                // exactly their size.
                let (mut count, mut total, mut rest) = (0usize, 0usize, raw);
                while !rest.is_empty() {
                    let n = bytes_element(rest, count)?;
                    rest = &rest[4 + n..];
                    count += 1;
                    total += n;
                }
                Ok(TensorData::with_capacity(datatype, count, total))
            }
        }
    }

    /// Appends the elements that `raw` (the binary layout, as for
    /// [`TensorData::from_le_bytes`]) holds whole, and returns the bytes they took: what
    /// is left is the start of one element, for the next call. A BOOL byte other than 0
    /// or 1 is an error whose index counts the elements already held.
    pub fn extend_from_le_bytes(&mut self, raw: &[u8]) -> Result<usize, DecodeError> {
        Ok(match self {
            TensorData::Bool(v) => {
                if let Some(at) = raw.iter().position(|&b| b > 1) {
                    return Err(DecodeError::BadBool {
                        index: v.len() + at,
                        value: raw[at],
                    });
                }
                v.extend(raw.iter().map(|&b| b == 1));
                raw.len()
            }
            TensorData::Uint8(v) => {
                v.extend_from_slice(raw);
                raw.len()
            }
            TensorData::Uint16(v) => extend_le(v, raw),
            TensorData::Uint32(v) => extend_le(v, raw),
            TensorData::Uint64(v) => extend_le(v, raw),
            TensorData::Int8(v) => extend_le(v, raw),
            TensorData::Int16(v) => extend_le(v, raw),
            TensorData::Int32(v) => extend_le(v, raw),
            TensorData::Int64(v) => extend_le(v, raw),
            TensorData::Fp32(v) => extend_le(v, raw),
            TensorData::Fp64(v) => extend_le(v, raw),
            TensorData::Bytes(out) => {
                let mut rest = raw;
                while let Ok(n) = bytes_element(rest, out.len()) {
                    out.push(&rest[4..4 + n])?;
                    rest = &rest[4 + n..];
                }
                raw.len() - rest.len()
            }
        })
    }

    /// Appends the binary tensor layout of this data to `out`.
    pub fn write_le_bytes(&self, out: &mut Vec<u8>) {
        out.reserve(self.byte_size());
        dispatch_numeric!(self,
            v => {
                for x in v {
                    x.write_le(out);
                }
            },
            bool b => out.extend(b.iter().map(|&x| x as u8)),
            bytes s => {
                for e in s.iter() {
                    out.extend_from_slice(&(e.len() as u32).to_le_bytes());
                    out.extend_from_slice(e);
                }
            }
        )
    }

    /// Size of [`write_le_bytes`](Self::write_le_bytes)'s output.
    pub fn byte_size(&self) -> usize {
        match self {
            TensorData::Bytes(s) => 4 * s.len() + s.total_bytes(),
            other => other.len() * other.datatype().element_size().expect("fixed-size type"),
        }
    }
}

/// A named tensor: the unit of every request and response.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl Tensor {
    pub fn datatype(&self) -> DataType {
        self.data.datatype()
    }

    /// Number of elements the shape asks for, or `None` if it overflows.
    pub fn shape_elements(shape: &[usize]) -> Option<usize> {
        shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_round_trip_every_type() {
        let cases = vec![
            TensorData::Bool(vec![true, false, true]),
            TensorData::Uint8(vec![0, 255]),
            TensorData::Uint16(vec![0, 65535]),
            TensorData::Uint32(vec![7, u32::MAX]),
            TensorData::Uint64(vec![u64::MAX, 1]),
            TensorData::Int8(vec![-128, 127]),
            TensorData::Int16(vec![-1, 300]),
            TensorData::Int32(vec![i32::MIN, 5]),
            TensorData::Int64(vec![i64::MIN, i64::MAX]),
            TensorData::Fp32(vec![1.5, -0.0, f32::INFINITY]),
            TensorData::Fp64(vec![std::f64::consts::PI]),
            TensorData::Bytes(
                ByteStrings::try_from_iter([&b"ab"[..], b"", "é".as_bytes()]).unwrap(),
            ),
        ];
        for data in cases {
            let mut raw = Vec::new();
            data.write_le_bytes(&mut raw);
            assert_eq!(raw.len(), data.byte_size(), "{:?}", data.datatype());
            let back = TensorData::from_le_bytes(data.datatype(), &raw).unwrap();
            assert_eq!(back, data);
        }
    }

    #[test]
    fn concat_and_slice_round_trip() {
        let a = TensorData::Fp32(vec![1.0, 2.0]);
        let b = TensorData::Fp32(vec![3.0]);
        let ab = TensorData::concat(&[&a, &b]).unwrap();
        assert_eq!(ab, TensorData::Fp32(vec![1.0, 2.0, 3.0]));
        assert_eq!(ab.slice(0..2), a);
        assert_eq!(ab.slice(2..3), b);
        let s = TensorData::Bytes(ByteStrings::try_from_iter(["x"]).unwrap());
        assert_eq!(TensorData::concat(&[&a, &s]), None);
        assert_eq!(TensorData::concat(&[]), None);
    }

    #[test]
    fn packed_strings_concat_slice_and_index() {
        let strs = |items: &[&str]| ByteStrings::try_from_iter(items).unwrap();
        let a = TensorData::Bytes(strs(&["ab", "", "c"]));
        let b = TensorData::Bytes(strs(&["", "def"]));
        let ab = TensorData::concat(&[&a, &b]).unwrap();
        assert_eq!(ab, TensorData::Bytes(strs(&["ab", "", "c", "", "def"])));
        assert_eq!(ab.len(), 5);
        assert_eq!(ab.slice(0..3), a);
        assert_eq!(ab.slice(3..5), b);
        assert_eq!(ab.slice(1..4), TensorData::Bytes(strs(&["", "c", ""])));
        assert_eq!(ab.slice(2..2).len(), 0);
        let TensorData::Bytes(packed) = &ab else {
            unreachable!()
        };
        assert_eq!(packed.get(4), Some(&b"def"[..]));
        assert_eq!(packed.get(5), None);
        assert_eq!(packed.total_bytes(), 6);
        assert_eq!(ab.byte_size(), 5 * 4 + 6);
        assert_eq!(
            TensorData::zeros(DataType::Bytes, 3),
            TensorData::Bytes(strs(&["", "", ""]))
        );
        assert_eq!(format!("{packed:?}"), r#"["ab", "", "c", "", "def"]"#);
    }

    #[test]
    fn fp32_is_little_endian() {
        let mut raw = Vec::new();
        TensorData::Fp32(vec![1.0]).write_le_bytes(&mut raw);
        assert_eq!(raw, vec![0, 0, 0x80, 0x3f]);
    }

    #[test]
    fn bad_binary_is_an_error() {
        assert_eq!(
            TensorData::from_le_bytes(DataType::Fp32, &[0, 0, 0]),
            Err(DecodeError::Ragged {
                datatype: DataType::Fp32,
                got: 3,
                size: 4
            })
        );
        assert_eq!(
            TensorData::from_le_bytes(DataType::Bool, &[0, 2]),
            Err(DecodeError::BadBool { index: 1, value: 2 })
        );
        assert!(matches!(
            TensorData::from_le_bytes(DataType::Bytes, &[5, 0, 0, 0, b'a']),
            Err(DecodeError::TruncatedBytes { index: 0, .. })
        ));
        assert!(matches!(
            TensorData::from_le_bytes(DataType::Bytes, &[1, 0]),
            Err(DecodeError::TruncatedBytes { need: 4, .. })
        ));
    }

    #[test]
    fn datatype_names_round_trip() {
        for d in DataType::ALL {
            assert_eq!(DataType::parse(d.as_str()), Some(d));
        }
        assert_eq!(DataType::parse("FP16"), None);
    }
}
