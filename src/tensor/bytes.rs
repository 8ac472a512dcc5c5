//! The packed `BYTES` strings of one tensor: one buffer and a 4-byte end offset each,
//! so that a million empty strings do not cost 24 bytes apiece. Owns the 4 GiB limit
//! ([`TooLarge`]); imports nothing of vigil.

use std::fmt;

/// Byte strings packed one after the other in one buffer, with each one's end offset.
/// Offsets are `u32`, so all the strings of one tensor together hold less than 4 GiB
/// (the binary format's length prefixes are `u32` too); the constructors refuse more.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ByteStrings {
    data: Vec<u8>,
    ends: Vec<u32>,
}

/// The strings of one tensor would hold 4 GiB or more.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("BYTES elements of one tensor hold 4 GiB or more together")]
pub struct TooLarge;

impl ByteStrings {
    pub fn new() -> ByteStrings {
        ByteStrings::default()
    }

    /// Room for `elements` strings of `bytes` bytes in total.
    pub fn with_capacity(elements: usize, bytes: usize) -> ByteStrings {
        ByteStrings {
            data: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(elements),
        }
    }

    /// `n` empty strings.
    pub fn empty_strings(n: usize) -> ByteStrings {
        ByteStrings {
            data: Vec::new(),
            ends: vec![0; n],
        }
    }

    /// Collects strings, or [`TooLarge`] if they hold 4 GiB or more together.
    pub fn try_from_iter<I, S>(items: I) -> Result<ByteStrings, TooLarge>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        let items = items.into_iter();
        let mut out = ByteStrings::with_capacity(items.size_hint().0, 0);
        for s in items {
            out.push(s.as_ref())?;
        }
        Ok(out)
    }

    pub fn clear(&mut self) {
        self.data.clear();
        self.ends.clear();
    }

    pub fn push(&mut self, s: &[u8]) -> Result<(), TooLarge> {
        let end = u32::try_from(self.data.len() + s.len()).map_err(|_| TooLarge)?;
        self.data.extend_from_slice(s);
        self.ends.push(end);
        Ok(())
    }

    /// Number of strings.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Bytes of all strings together.
    pub fn total_bytes(&self) -> usize {
        self.data.len()
    }

    fn start(&self, i: usize) -> usize {
        match i {
            0 => 0,
            _ => self.ends[i - 1] as usize,
        }
    }

    /// String `i`; `None` past the end.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)? as usize;
        Some(&self.data[self.start(i)..end])
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        (0..self.len()).map(|i| {
            let end = self.ends[i] as usize;
            &self.data[self.start(i)..end]
        })
    }

    /// Strings `range` on their own. Panics if `range` is out of bounds, as slicing does.
    pub fn slice(&self, range: std::ops::Range<usize>) -> ByteStrings {
        let base = self.start(range.start);
        let end = self.start(range.end);
        ByteStrings {
            data: self.data[base..end].to_vec(),
            ends: self.ends[range].iter().map(|&e| e - base as u32).collect(),
        }
    }

    /// The parts one after the other, or [`TooLarge`].
    pub fn concat(parts: &[&ByteStrings]) -> Result<ByteStrings, TooLarge> {
        let bytes: usize = parts.iter().map(|p| p.data.len()).sum();
        u32::try_from(bytes).map_err(|_| TooLarge)?;
        let mut out = ByteStrings::with_capacity(parts.iter().map(|p| p.len()).sum(), bytes);
        for p in parts {
            let base = out.data.len() as u32;
            out.data.extend_from_slice(&p.data);
            out.ends.extend(p.ends.iter().map(|&e| e + base));
        }
        Ok(out)
    }
}

impl fmt::Debug for ByteStrings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.iter().map(String::from_utf8_lossy))
            .finish()
    }
}
