//! The buffer a request body is read into, and that decoding gives back as it goes: a
//! big body lives in an anonymous mapping of its own, whose pages [`BodyBuffer::release`]
//! returns to the kernel once their bytes are decoded, so that a request's peak memory
//! is about the larger of its body and its tensors rather than their sum. Small bodies
//! (the common, latency-bound case) stay on the heap, where releasing does nothing.
//! Imports nothing of vigil.

use std::ops::Range;

/// Bodies of at least this many bytes are read into a mapping of their own (Linux only).
pub const MAP_FROM: usize = 1 << 20;

/// A request body, appended to as it arrives; see the module doc.
pub struct BodyBuffer {
    store: Store,
}

enum Store {
    Heap(Vec<u8>),
    /// The body is the first `len` bytes of the mapping; `released` is the last run of
    /// pages given back, so that releasing a growing range advises only the new pages.
    #[cfg(target_os = "linux")]
    Mapped {
        map: memmap2::MmapMut,
        len: usize,
        released: Range<usize>,
    },
}

impl BodyBuffer {
    /// An empty buffer for a body expected to take `expected` bytes (its declared
    /// Content-Length, or 0): mapped when that is [`MAP_FROM`] or more.
    pub fn with_capacity(expected: usize) -> BodyBuffer {
        #[cfg(target_os = "linux")]
        if expected >= MAP_FROM {
            // A mapping that cannot be made (no address space) falls back to the heap.
            if let Ok(map) = memmap2::MmapMut::map_anon(expected) {
                return BodyBuffer {
                    store: Store::Mapped {
                        map,
                        len: 0,
                        released: 0..0,
                    },
                };
            }
        }
        BodyBuffer {
            store: Store::Heap(Vec::with_capacity(expected)),
        }
    }

    /// The body so far.
    pub fn bytes(&self) -> &[u8] {
        match &self.store {
            Store::Heap(v) => v,
            #[cfg(target_os = "linux")]
            Store::Mapped { map, len, .. } => &map[..*len],
        }
    }

    /// Appends `data`. A heap body that grows past [`MAP_FROM`] (a body sent without
    /// Content-Length) moves to a mapping, which then grows without copying.
    pub fn extend_from_slice(&mut self, data: &[u8]) {
        match &mut self.store {
            Store::Heap(v) => {
                #[cfg(target_os = "linux")]
                if v.len() + data.len() > v.capacity() && v.len() + data.len() >= MAP_FROM {
                    let want = (v.len() + data.len()).max(2 * v.capacity());
                    if let Ok(mut map) = memmap2::MmapMut::map_anon(want) {
                        map[..v.len()].copy_from_slice(v);
                        let len = v.len();
                        self.store = Store::Mapped {
                            map,
                            len,
                            released: 0..0,
                        };
                        return self.extend_from_slice(data);
                    }
                }
                v.extend_from_slice(data)
            }
            #[cfg(target_os = "linux")]
            Store::Mapped { map, len, .. } => {
                let end = *len + data.len();
                if end > map.len() {
                    let want = end.max(2 * map.len());
                    // SAFETY: an anonymous mapping has no file to outgrow, and nothing
                    // borrows it here (`&mut self`); a moved mapping is re-borrowed below.
                    let grown =
                        unsafe { map.remap(want, memmap2::RemapOptions::new().may_move(true)) };
                    if grown.is_err() {
                        // Out of address space: carry on on the heap (a copy).
                        let mut v = Vec::with_capacity(end);
                        v.extend_from_slice(&map[..*len]);
                        v.extend_from_slice(data);
                        self.store = Store::Heap(v);
                        return;
                    }
                }
                map[*len..end].copy_from_slice(data);
                *len = end;
            }
        }
    }

    /// Gives back to the kernel the memory of the pages that lie wholly inside `range`:
    /// they read as zeros from now on. Decoding calls it for bytes it will never read
    /// again. Does nothing for a heap body, or where a range holds no whole page.
    pub fn release(&mut self, range: Range<usize>) {
        match &mut self.store {
            Store::Heap(_) => {}
            #[cfg(target_os = "linux")]
            Store::Mapped { map, len, released } => {
                let page = page_size();
                let mut start = range.start.div_ceil(page) * page;
                let end = range.end.min(*len) / page * page;
                if released.contains(&start) {
                    start = released.end;
                } else {
                    *released = start..start;
                }
                if start >= end {
                    return;
                }
                released.end = end;
                // SAFETY: MADV_DONTNEED on a private anonymous mapping replaces the pages
                // with zero-filled ones: it acts as a write of zeros to `start..end`, which
                // lies inside the mapping (`end <= len <= map.len()`, both page-aligned as
                // the mapping starts on a page). `&mut self` proves that nothing borrows
                // the mapping's bytes while that happens.
                let advised = unsafe {
                    map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        start,
                        end - start,
                    )
                };
                // A refusal only keeps the memory in use; the bytes are unchanged.
                let _ = advised;
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn page_size() -> usize {
    use std::sync::OnceLock;
    static PAGE: OnceLock<usize> = OnceLock::new();
    // SAFETY: sysconf has no preconditions.
    *PAGE.get_or_init(|| match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as usize,
        _ => 4096,
    })
}

/// What decoding reads a request's data from: the body's bytes, and a way to give back
/// the bytes it will not read again.
pub(super) trait Body {
    fn bytes(&self) -> &[u8];
    /// Says decoding will not read `range` again; its bytes may read as zeros after.
    fn release(&mut self, range: Range<usize>);
}

impl Body for &[u8] {
    fn bytes(&self) -> &[u8] {
        self
    }

    fn release(&mut self, _: Range<usize>) {}
}

impl Body for BodyBuffer {
    fn bytes(&self) -> &[u8] {
        BodyBuffer::bytes(self)
    }

    fn release(&mut self, range: Range<usize>) {
        BodyBuffer::release(self, range)
    }
}
