//! The arena a compiled function's buffers live in: one zeroed block of elements, `f32` or
//! `f64` (the function's dtype), aligned for either.
//!
//! A relaxation step walks dozens of megabytes of small per-sample tensors (an LSTM's gate
//! errors and frozen factors at every time step), a few kilobytes from each of thousands of
//! buffers. On 4 KiB pages that is thousands of pages per step, far more than the TLB holds,
//! and a page walk for nearly every buffer touched. On Linux a large arena is therefore
//! mapped directly and marked for transparent huge pages (`MADV_HUGEPAGE`, honoured where the
//! system's policy is `madvise` or `always`), which cut the LSTM's fixed-mode step by about a
//! fifth on the machine the README's figures come from. Pages are zero when first touched, so
//! memory is committed as it is used, as with a zeroed allocation.

use std::ptr::NonNull;

/// Arenas at least this large are mapped on their own, on huge pages where offered.
#[cfg(target_os = "linux")]
const MAPPED_BYTES: usize = 2 << 20;

/// `bytes` zero bytes, owned; freed on drop.
pub struct Arena {
    ptr: NonNull<u8>,
    bytes: usize,
    /// The mapping made with `mmap` and its length in bytes (0: allocated by the global
    /// allocator).
    base: *mut std::ffi::c_void,
    mapped: usize,
}

// SAFETY: the arena owns its memory exclusively, like a `Vec<u8>`.
unsafe impl Send for Arena {}
// SAFETY: shared references only read, like a `&[u8]`.
unsafe impl Sync for Arena {}

/// The allocator's alignment for arenas too small to be mapped: a cache line, which is more
/// than either element type needs.
const ALIGN_BYTES: usize = 64;

impl Arena {
    /// `bytes` zeros, allocated fallibly: `None` when the memory cannot be had.
    pub fn zeroed(bytes: usize) -> Option<Arena> {
        #[cfg(target_os = "linux")]
        if bytes >= MAPPED_BYTES {
            return Self::mapped(bytes);
        }
        if bytes == 0 {
            return Some(Arena {
                ptr: NonNull::<u64>::dangling().cast(),
                bytes: 0,
                base: std::ptr::null_mut(),
                mapped: 0,
            });
        }
        let layout = std::alloc::Layout::from_size_align(bytes, ALIGN_BYTES).ok()?;
        // SAFETY: `layout` has a non-zero size; a non-null result is a zeroed allocation of
        // exactly this layout, freed in `drop` with the same layout.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        Some(Arena {
            ptr: NonNull::new(ptr)?,
            bytes,
            base: std::ptr::null_mut(),
            mapped: 0,
        })
    }

    #[cfg(target_os = "linux")]
    fn mapped(bytes: usize) -> Option<Arena> {
        // One huge page more than needed, so that the arena can start on a huge-page boundary
        // and every page of it be a huge one.
        let mapped = bytes.checked_add(MAPPED_BYTES)?;
        // SAFETY: an anonymous private mapping of `mapped` readable and writable bytes, owned
        // by the arena and unmapped in `drop`; its pages read as zero until written.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        // A hint: where the system declines huge pages the arena works as it is.
        // SAFETY: the range is the mapping just made.
        unsafe { libc::madvise(base, mapped, libc::MADV_HUGEPAGE) };
        let skip = (MAPPED_BYTES - base as usize % MAPPED_BYTES) % MAPPED_BYTES;
        // SAFETY: `skip` < MAPPED_BYTES, so the arena's `bytes` lie inside the mapping.
        let ptr = unsafe { base.cast::<u8>().add(skip) };
        Some(Arena {
            ptr: NonNull::new(ptr)?,
            bytes,
            base,
            mapped,
        })
    }

    /// The arena's start, for compiled code.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The arena as elements of type `T`.
    pub fn elements<T: super::Float>(&self) -> &[T] {
        // SAFETY: the memory is initialised, aligned for `T` (the allocation's alignment or a
        // page boundary), and every bit pattern is a float.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast(), self.bytes / size_of::<T>()) }
    }

    /// [`elements`](Self::elements), writable.
    pub fn elements_mut<T: super::Float>(&mut self) -> &mut [T] {
        // SAFETY: as in `elements`, and `&mut self` makes the access exclusive.
        unsafe {
            std::slice::from_raw_parts_mut(self.ptr.as_ptr().cast(), self.bytes / size_of::<T>())
        }
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if self.mapped > 0 {
            // SAFETY: the mapping made in `mapped`, of this many bytes, no longer used.
            unsafe { libc::munmap(self.base, self.mapped) };
            return;
        }
        if self.bytes > 0 {
            let layout = std::alloc::Layout::from_size_align(self.bytes, ALIGN_BYTES)
                .expect("allocated with it");
            // SAFETY: allocated in `zeroed` with this layout.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Arena;

    /// Small and large (mapped) arenas start zeroed, hold what is written and free cleanly.
    #[test]
    fn arenas_are_zeroed_and_writable() {
        for len in [0, 1, 1000, 3 << 20] {
            let mut arena = Arena::zeroed(4 * len).expect("allocated");
            let arena = arena.elements_mut::<f32>();
            assert_eq!(arena.len(), len);
            assert!(arena.iter().all(|&x| x == 0.0));
            if len > 0 {
                arena[len - 1] = 2.5;
                assert_eq!(arena[len - 1], 2.5);
                arena[0] = -1.0;
                assert_eq!(arena[0], -1.0);
            }
        }
    }
}
