//! The static buffer plan: every buffer of a compiled function gets a fixed place in one arena.
//!
//! Sizes are known at compile time, so memory is assigned once: a buffer is live from the
//! first kernel that touches it to the last (pinned buffers — leaves, state, outputs — for the
//! whole function), and buffers whose lifetimes do not overlap share memory. Placement is
//! greedy, largest buffer first, each at the lowest offset that clears every placed buffer it
//! is live with. [`BufferPlan::verify`] checks the result independently of how it was made.

use super::lower::{BufferSpec, Kernel};
use std::fmt;

/// Offsets of buffers of at least this many elements are multiples of it (64 bytes: one cache
/// line, one AVX-512 vector); smaller buffers (scalars, say) are packed without gaps.
const ALIGN: usize = 16;

/// One buffer's place in the arena.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedBuffer {
    pub label: String,
    /// Offset from the arena's start, in f32 elements.
    pub offset: usize,
    /// Length in f32 elements.
    pub len: usize,
    /// The first and last kernel (by index) during which the buffer holds a live value.
    pub live: (usize, usize),
}

/// Where every buffer of one compiled function lives.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct BufferPlan {
    pub buffers: Vec<PlannedBuffer>,
    /// The arena's length in f32 elements.
    pub arena_len: usize,
}

/// A broken plan: a compiler bug, reported instead of running.
#[derive(Clone, Debug, PartialEq)]
pub enum PlanError {
    /// Two buffers live at the same time share memory.
    Overlap { first: String, second: String },
    /// A buffer reaches past the end of the arena.
    OutsideArena { buffer: String },
    /// A kernel touches an element past the end of its buffer.
    OutOfBuffer {
        kernel: usize,
        buffer: String,
        extent: usize,
        len: usize,
    },
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::Overlap { first, second } => {
                write!(
                    f,
                    "buffers `{first}` and `{second}` overlap while both live"
                )
            }
            PlanError::OutsideArena { buffer } => {
                write!(f, "buffer `{buffer}` reaches past the end of the arena")
            }
            PlanError::OutOfBuffer {
                kernel,
                buffer,
                extent,
                len,
            } => write!(
                f,
                "kernel {kernel} touches element {} of `{buffer}`, which has {len}",
                extent - 1
            ),
        }
    }
}

impl std::error::Error for PlanError {}

impl BufferPlan {
    /// Plans `buffers` for the kernels in `kernels` (run in order).
    pub fn new(buffers: &[BufferSpec], kernels: &[Kernel]) -> BufferPlan {
        let last = kernels.len().saturating_sub(1);
        let mut live: Vec<Option<(usize, usize)>> = vec![None; buffers.len()];
        for (k, kernel) in kernels.iter().enumerate() {
            kernel.for_each_access(|b, _, _| {
                let span = live[b].get_or_insert((k, k));
                span.0 = span.0.min(k);
                span.1 = span.1.max(k);
            });
        }
        let mut planned: Vec<PlannedBuffer> = buffers
            .iter()
            .zip(live)
            .map(|(spec, live)| PlannedBuffer {
                label: spec.label.clone(),
                offset: 0,
                len: spec.len,
                live: if spec.pinned {
                    (0, last)
                } else {
                    live.unwrap_or((0, 0))
                },
            })
            .collect();
        let mut order: Vec<usize> = (0..planned.len()).collect();
        order.sort_by_key(|&i| (std::cmp::Reverse(planned[i].len), planned[i].live.0));
        let mut placed: Vec<usize> = Vec::new();
        let mut arena_len = 0;
        for i in order {
            let mut blocking: Vec<(usize, usize)> = placed
                .iter()
                .filter(|&&j| overlaps(planned[i].live, planned[j].live))
                .map(|&j| (planned[j].offset, planned[j].offset + planned[j].len))
                .collect();
            blocking.sort_unstable();
            let mut offset = 0;
            for (start, end) in blocking {
                if offset + planned[i].len <= start {
                    break;
                }
                offset = offset.max(align(end, planned[i].len));
            }
            planned[i].offset = offset;
            arena_len = arena_len.max(offset + planned[i].len);
            placed.push(i);
        }
        BufferPlan {
            buffers: planned,
            arena_len,
        }
    }

    /// The arena's size in bytes: the peak memory of the function's buffers.
    pub fn peak_bytes(&self) -> usize {
        self.arena_len * std::mem::size_of::<f32>()
    }

    /// The most memory live at once: the largest total size of the buffers live during one
    /// kernel. No placement can make the arena smaller than this.
    pub fn live_bytes(&self) -> usize {
        let end = self.buffers.iter().map(|b| b.live.1 + 1).max().unwrap_or(0);
        let mut change = vec![0isize; end + 1];
        for b in &self.buffers {
            change[b.live.0] += b.len as isize;
            change[b.live.1 + 1] -= b.len as isize;
        }
        let mut live = 0isize;
        let mut peak = 0isize;
        for c in change {
            live += c;
            peak = peak.max(live);
        }
        peak as usize * std::mem::size_of::<f32>()
    }

    /// What the arena would need if no buffers shared memory.
    pub fn unshared_bytes(&self) -> usize {
        self.buffers.iter().map(|b| b.len).sum::<usize>() * std::mem::size_of::<f32>()
    }

    /// Checks that no two simultaneously live buffers overlap, that every buffer lies inside
    /// the arena, and that every kernel stays inside the buffers it touches.
    pub fn verify(&self, kernels: &[Kernel]) -> Result<(), PlanError> {
        for b in &self.buffers {
            if b.offset + b.len > self.arena_len {
                return Err(PlanError::OutsideArena {
                    buffer: b.label.clone(),
                });
            }
        }
        for (i, a) in self.buffers.iter().enumerate() {
            for b in &self.buffers[i + 1..] {
                let disjoint = a.offset + a.len <= b.offset || b.offset + b.len <= a.offset;
                let empty = a.len == 0 || b.len == 0;
                if overlaps(a.live, b.live) && !disjoint && !empty {
                    return Err(PlanError::Overlap {
                        first: a.label.clone(),
                        second: b.label.clone(),
                    });
                }
            }
        }
        for (k, kernel) in kernels.iter().enumerate() {
            let mut error = None;
            kernel.for_each_access(|b, extent, _| {
                let buffer = &self.buffers[b];
                if extent > buffer.len && error.is_none() {
                    error = Some(PlanError::OutOfBuffer {
                        kernel: k,
                        buffer: buffer.label.clone(),
                        extent,
                        len: buffer.len,
                    });
                }
            });
            if let Some(e) = error {
                return Err(e);
            }
        }
        Ok(())
    }
}

impl fmt::Display for BufferPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "arena: {} bytes ({} bytes without sharing), {} buffers",
            self.peak_bytes(),
            self.unshared_bytes(),
            self.buffers.len()
        )?;
        let live = self.live_bytes();
        writeln!(
            f,
            "live at most: {live} bytes (arena / live = {:.3})",
            self.peak_bytes() as f64 / live.max(1) as f64
        )?;
        for b in &self.buffers {
            writeln!(
                f,
                "  [{:>9}, {:>9})  live {:>4}..={:<4} {}",
                b.offset * 4,
                (b.offset + b.len) * 4,
                b.live.0,
                b.live.1,
                b.label
            )?;
        }
        Ok(())
    }
}

fn overlaps(a: (usize, usize), b: (usize, usize)) -> bool {
    a.0 <= b.1 && b.0 <= a.1
}

/// The first offset at or after `x` where a buffer of `len` elements may start.
fn align(x: usize, len: usize) -> usize {
    if len < ALIGN {
        x
    } else {
        x.div_ceil(ALIGN) * ALIGN
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jit::lower::{Affine, Expr, Place};

    fn spec(len: usize) -> BufferSpec {
        BufferSpec {
            label: format!("b{len}"),
            len,
            pinned: false,
        }
    }

    fn copy(from: usize, to: usize, len: usize) -> Kernel {
        Kernel::Map {
            dims: vec![len],
            out: Place {
                buffer: to,
                map: Affine::contiguous(&[len]),
            },
            expr: Expr::Load {
                buffer: from,
                map: Affine::contiguous(&[len]),
            },
        }
    }

    #[test]
    fn dead_buffers_share_memory() {
        // a -> b -> c -> d: a and c can share, so can b and d.
        let buffers = [spec(100), spec(100), spec(100), spec(100)];
        let kernels = [copy(0, 1, 100), copy(1, 2, 100), copy(2, 3, 100)];
        let plan = BufferPlan::new(&buffers, &kernels);
        plan.verify(&kernels).expect("valid plan");
        assert!(plan.arena_len < 4 * 100, "arena {}", plan.arena_len);
        // Two buffers are live during each copy: no placement needs less.
        assert_eq!(plan.live_bytes(), 2 * 100 * 4);
        // The second buffer starts at the next 64-byte boundary.
        assert_eq!(plan.peak_bytes(), (112 + 100) * 4);
    }

    #[test]
    fn verify_rejects_overlap() {
        let buffers = [spec(10), spec(10)];
        let kernels = [copy(0, 1, 10)];
        let mut plan = BufferPlan::new(&buffers, &kernels);
        plan.buffers[1].offset = plan.buffers[0].offset;
        assert!(matches!(
            plan.verify(&kernels),
            Err(PlanError::Overlap { .. })
        ));
    }
}
