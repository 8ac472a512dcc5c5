//! One input's JSON `data` (nested or flat arrays, or a scalar) parsed straight into a
//! typed vector, each element checked against the datatype, never more than the shape's
//! count. A big array is parsed in groups of whole elements copied out of the body, so
//! that the body's pages can be given back as the tensor grows ([`json_data_from`]).
//! Knows only tensors, the body buffer and the codec's error; never imports the rest of
//! `http`.

use std::ops::Range;

use serde_json::Value;

use super::buffer::Body;
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

/// `data` texts of at least this many bytes are parsed a group of about this size at a
/// time by [`json_data_from`], each group's body pages given back before it is parsed.
pub(super) const GROUP: usize = 1 << 20;

/// Parses an input's `data` (nested or flat JSON arrays, row-major, or one scalar)
/// straight into a typed vector, checking each element against the datatype and never
/// taking more than `limit` elements. Returns how many elements it saw.
pub(super) fn json_data(
    datatype: DataType,
    text: &[u8],
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
    builder.parse(text)?;
    Ok(builder.count)
}

/// [`json_data`] for the `data` text at `range` of `body` (valid JSON: the request's
/// header was parsed), appending to `data` and giving the body's bytes back as it goes.
/// A text of [`GROUP`] bytes or more that is an array is cut at commas (outside strings
/// and objects) into groups of about [`GROUP`] bytes. Each group is copied out a piece at
/// a time, each piece's pages released once copied, and closed into a JSON value with
/// the brackets open at its ends: `[[1,2` | `3],[4` | `5]]` become `[[1,2]]`, `[[3],[4]]`,
/// `[[5]]`. The parser never borrows the body, and since nested arrays flatten, the
/// elements, their order and the errors are those of one parse of the whole text.
pub(super) fn json_data_from(
    datatype: DataType,
    body: &mut impl Body,
    range: Range<usize>,
    limit: usize,
    data: &mut TensorData,
) -> Result<usize, DecodeError> {
    let missing = || bad("the input's data lies outside the body (this is a bug)");
    let text = body.bytes().get(range.clone()).ok_or_else(missing)?;
    if text.len() < GROUP || text.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'[') {
        let count = json_data(datatype, text, limit, Mode::Keep(data))?;
        body.release(range);
        return Ok(count);
    }
    let mut builder = DataBuilder {
        data,
        counting: false,
        datatype,
        count: 0,
        limit,
        error: None,
    };
    let mut scan = Scan::default();
    let mut group = Vec::new();
    let mut start = range.start;
    while start < range.end {
        let open = scan.arrays;
        let text = body.bytes().get(..range.end).ok_or_else(missing)?;
        let end = scan.next(text, start, start + GROUP);
        if group.capacity() > 4 * GROUP {
            group = Vec::new(); // a huge element's copy: give it back
        }
        group.clear();
        group.reserve(open + (end - start) + scan.arrays);
        group.resize(open, b'[');
        while start < end {
            let piece = end.min(start + GROUP);
            let text = body.bytes().get(start..piece).ok_or_else(missing)?;
            group.extend_from_slice(text);
            body.release(range.start..piece);
            start = piece;
        }
        group.resize(group.len() + scan.arrays, b']');
        builder.parse(&group)?;
        start = end + 1; // past the comma
    }
    body.release(range);
    Ok(builder.count)
}

/// Where a scan of a JSON text is: inside how many arrays and objects, and whether in a
/// string (just after a backslash).
#[derive(Default)]
struct Scan {
    arrays: usize,
    objects: usize,
    in_string: bool,
    escaped: bool,
}

impl Scan {
    /// From `from`, the index of the first comma at or after `want` that is inside an
    /// array and outside any object or string, or `text.len()`.
    fn next(&mut self, text: &[u8], from: usize, want: usize) -> usize {
        for (i, &b) in text[from..].iter().enumerate() {
            if self.in_string {
                match b {
                    _ if self.escaped => self.escaped = false,
                    b'\\' => self.escaped = true,
                    b'"' => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'[' => self.arrays += 1,
                b']' => self.arrays = self.arrays.saturating_sub(1),
                b'{' => self.objects += 1,
                b'}' => self.objects = self.objects.saturating_sub(1),
                b',' if from + i >= want && self.objects == 0 && self.arrays > 0 => {
                    return from + i
                }
                _ => {}
            }
        }
        text.len()
    }
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
    /// Parses one JSON value (an array, or one scalar), adding its elements.
    fn parse(&mut self, text: &[u8]) -> Result<(), DecodeError> {
        let mut de = serde_json::Deserializer::from_slice(text);
        let parsed = serde::de::DeserializeSeed::deserialize(&mut *self, &mut de);
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        parsed
            .and_then(|()| de.end())
            .map_err(|e| bad(format!("invalid data: {e}")))
    }

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
