//! The arena a compiled function's buffers live in: one zeroed block of `f32`s.
//!
//! A relaxation step walks dozens of megabytes of small per-sample tensors (an LSTM's gate
//! errors and frozen factors at every time step), a few kilobytes from each of thousands of
//! buffers. On 4 KiB pages that is thousands of pages per step, far more than the TLB holds,
//! and a page walk for nearly every buffer touched. On Linux a large arena is therefore
//! mapped directly and marked for transparent huge pages (`MADV_HUGEPAGE`, honoured where the
//! system's policy is `madvise` or `always`), which cut the LSTM's fixed-mode step by about a
//! fifth on the machine the README's figures come from. Pages are zero when first touched, so
//! memory is committed as it is used, as with a zeroed allocation.

use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// Arenas at least this large are mapped on their own, on huge pages where offered.
#[cfg(target_os = "linux")]
const MAPPED_BYTES: usize = 2 << 20;

/// `len` zeros, owned; freed on drop.
pub struct Arena {
    ptr: NonNull<f32>,
    len: usize,
    /// The mapping made with `mmap` and its length in bytes (0: allocated by the global
    /// allocator).
    base: *mut std::ffi::c_void,
    mapped: usize,
}

// SAFETY: the arena owns its memory exclusively, like a `Vec<f32>`.
unsafe impl Send for Arena {}
// SAFETY: shared references only read, like a `&[f32]`.
unsafe impl Sync for Arena {}

impl Arena {
    /// `len` zeros, allocated fallibly: `None` when the memory cannot be had.
    pub fn zeroed(len: usize) -> Option<Arena> {
        let bytes = len.checked_mul(std::mem::size_of::<f32>())?;
        #[cfg(target_os = "linux")]
        if bytes >= MAPPED_BYTES {
            return Self::mapped(len, bytes);
        }
        if len == 0 {
            return Some(Arena {
                ptr: NonNull::dangling(),
                len: 0,
                base: std::ptr::null_mut(),
                mapped: 0,
            });
        }
        let layout = std::alloc::Layout::array::<f32>(len).ok()?;
        // SAFETY: `layout` has a non-zero size; a non-null result is a zeroed allocation of
        // exactly this layout, freed in `drop` with the same layout.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<f32>();
        Some(Arena {
            ptr: NonNull::new(ptr)?,
            len,
            base: std::ptr::null_mut(),
            mapped: 0,
        })
    }

    #[cfg(target_os = "linux")]
    fn mapped(len: usize, bytes: usize) -> Option<Arena> {
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
        let ptr = unsafe { base.cast::<u8>().add(skip) }.cast::<f32>();
        Some(Arena {
            ptr: NonNull::new(ptr)?,
            len,
            base,
            mapped,
        })
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
        if self.len > 0 {
            let layout = std::alloc::Layout::array::<f32>(self.len).expect("allocated with it");
            // SAFETY: allocated in `zeroed` with this layout.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr().cast(), layout) };
        }
    }
}

impl Deref for Arena {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        // SAFETY: `len` initialised f32s live at `ptr` for the arena's lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for Arena {
    fn deref_mut(&mut self) -> &mut [f32] {
        // SAFETY: as in `deref`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::Arena;

    /// Small and large (mapped) arenas start zeroed, hold what is written and free cleanly.
    #[test]
    fn arenas_are_zeroed_and_writable() {
        for len in [0, 1, 1000, 3 << 20] {
            let mut arena = Arena::zeroed(len).expect("allocated");
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
