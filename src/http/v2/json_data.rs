//! One input's JSON `data` (nested or flat arrays, or a scalar) parsed straight into a
//! typed vector, each element checked against the datatype, never more than the shape's
//! count. Knows only tensors and the codec's error; never imports the rest of `http`.

use serde_json::Value;

use super::error::{bad, DecodeError};
use crate::tensor::{DataType, TensorData};

/// What [`json_data`] does with the elements it parses.
pub(super) enum Mode<'d> {
    /// Appends them to the vector (allocated beforehand at the shape's size).
    Keep(&'d mut TensorData),
    /// Only checks and counts them.
    Count,
}

/// Elements a counting pass holds at once before it empties its scratch vector.
const COUNT_SCRATCH: usize = 4096;

/// Parses an input's `data` (nested or flat JSON arrays, row-major, or one scalar)
/// straight into a typed vector, checking each element against the datatype and never
/// taking more than `limit` elements. Returns how many elements it saw.
pub(super) fn json_data(
    datatype: DataType,
    text: &str,
    limit: usize,
    mode: Mode<'_>,
) -> Result<usize, DecodeError> {
    let mut scratch;
    let (data, counting) = match mode {
        Mode::Keep(data) => (data, false),
        Mode::Count => {
            scratch = TensorData::with_capacity(datatype, COUNT_SCRATCH, 0);
            (&mut scratch, true)
        }
    };
    let mut builder = DataBuilder {
        data,
        counting,
        datatype,
        count: 0,
        limit,
        error: None,
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = serde::de::DeserializeSeed::deserialize(&mut builder, &mut de);
    if let Some(e) = builder.error {
        return Err(e);
    }
    parsed
        .and_then(|()| de.end())
        .map_err(|e| bad(format!("invalid data: {e}")))?;
    Ok(builder.count)
}

/// Receives the elements of `data` as serde_json parses them.
struct DataBuilder<'d> {
    data: &'d mut TensorData,
    /// Only counting: `data` is a scratch vector, emptied every [`COUNT_SCRATCH`] elements.
    counting: bool,
    datatype: DataType,
    count: usize,
    limit: usize,
    /// The first problem found (a JSON syntax error is reported by serde_json instead).
    error: Option<DecodeError>,
}

/// How an element looked, for error messages.
enum Seen<'a> {
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(&'a str),
    Other(&'static str),
}

impl std::fmt::Display for Seen<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Seen::Bool(b) => write!(f, "{b}"),
            Seen::I64(x) => write!(f, "{x}"),
            Seen::U64(x) => write!(f, "{x}"),
            Seen::F64(x) => write!(f, "{x}"),
            Seen::Str(s) => write!(f, "{}", Value::String((*s).to_string())),
            Seen::Other(what) => write!(f, "{what}"),
        }
    }
}

impl DataBuilder<'_> {
    fn fail<E: serde::de::Error>(&mut self, e: DecodeError) -> Result<(), E> {
        self.error = Some(e);
        Err(E::custom("invalid tensor data"))
    }

    fn push<E: serde::de::Error>(&mut self, seen: Seen<'_>) -> Result<(), E> {
        let i = self.count;
        if i >= self.limit {
            return self.fail(bad(format!(
                "more data elements than the shape's {}",
                self.limit
            )));
        }
        let datatype = self.datatype;
        let wrong = |seen: &Seen<'_>| {
            bad(format!(
                "element {i} ({seen}) is not a valid {datatype} value"
            ))
        };
        macro_rules! int {
            ($v:ident, $t:ty) => {{
                let x = match seen {
                    Seen::I64(x) => <$t>::try_from(x).ok(),
                    Seen::U64(x) => <$t>::try_from(x).ok(),
                    _ => None,
                };
                match x {
                    Some(x) => $v.push(x),
                    None => return self.fail(wrong(&seen)),
                }
            }};
        }
        let float = match seen {
            Seen::I64(x) => Some(x as f64),
            Seen::U64(x) => Some(x as f64),
            Seen::F64(x) => Some(x),
            Seen::Str("NaN" | "nan") => Some(f64::NAN),
            Seen::Str("Infinity" | "inf" | "+inf") => Some(f64::INFINITY),
            Seen::Str("-Infinity" | "-inf") => Some(f64::NEG_INFINITY),
            _ => None,
        };
        if self.counting && self.data.len() >= COUNT_SCRATCH {
            self.data.clear();
        }
        match &mut *self.data {
            TensorData::Bool(v) => match seen {
                Seen::Bool(b) => v.push(b),
                _ => return self.fail(wrong(&seen)),
            },
            TensorData::Uint8(v) => int!(v, u8),
            TensorData::Uint16(v) => int!(v, u16),
            TensorData::Uint32(v) => int!(v, u32),
            TensorData::Uint64(v) => int!(v, u64),
            TensorData::Int8(v) => int!(v, i8),
            TensorData::Int16(v) => int!(v, i16),
            TensorData::Int32(v) => int!(v, i32),
            TensorData::Int64(v) => int!(v, i64),
            TensorData::Fp32(v) => match float {
                Some(x) if x.is_finite() && x.abs() > f32::MAX as f64 => {
                    return self.fail(bad(format!(
                        "element {i} ({seen}) is out of range for FP32"
                    )))
                }
                Some(x) => v.push(x as f32),
                None => return self.fail(wrong(&seen)),
            },
            TensorData::Fp64(v) => match float {
                Some(x) => v.push(x),
                None => return self.fail(wrong(&seen)),
            },
            TensorData::Bytes(v) => match seen {
                Seen::Str(s) => {
                    if let Err(e) = v.push(s.as_bytes()) {
                        return self.fail(bad(format!("element {i}: {e}")));
                    }
                }
                _ => return self.fail(wrong(&seen)),
            },
        }
        self.count += 1;
        Ok(())
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for &mut DataBuilder<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for &mut DataBuilder<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "an array of {} values", self.datatype)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(&mut *self)?.is_some() {}
        Ok(())
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        self.push(Seen::Bool(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.push(Seen::I64(v))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.push(Seen::U64(v))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.push(Seen::F64(v))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        self.push(Seen::Str(v))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.push(Seen::Other("null"))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, _map: A) -> Result<(), A::Error> {
        self.push(Seen::Other("an object"))
    }
}
