//! The static buffer plan: every buffer of a compiled function gets a fixed place in one arena.
//!
//! Sizes are known at compile time, so memory is assigned once: a buffer is live from the
//! first kernel that touches it to the last (pinned buffers — leaves, state, outputs — for the
//! whole function), and buffers whose lifetimes do not overlap share memory. Placement is
//! greedy, largest buffer first, each at the lowest offset that clears every placed buffer it
//! is live with. [`BufferPlan::verify`] checks the result independently of how it was made.
//!
//! A split loop body (`opt::split`) runs as `parts` copies side by side, each at its own pace,
//! so its buffers follow two more rules: the parts' private temporaries are planned as one
//! window of their own, repeated once per part (a part's copy of a buffer is at
//! `offset + p · part_stride`) — the windows placed together like one buffer live wherever a
//! temporary is, so that memory used only outside the split region can share their place —
//! and every other buffer the parts touch is kept
//! live across the whole split region, so that no part can overwrite memory another still
//! reads. Part p reads and writes block p of a `Blocks` buffer (`part_stride` = a block).

use super::lower::{Kernel, Lowered, Share};
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
    pub share: Share,
    /// How far part p's view of the buffer is from part 0's, times p (0: the same for all).
    pub part_stride: usize,
    /// A scan's view: at run time it starts `Σ t_s · stride` elements after `offset`, t_s the
    /// iteration of each scan s listed as (s, stride) — the scans of the views it is a view
    /// of, outermost last.
    pub shifts: Vec<(usize, usize)>,
}

impl PlannedBuffer {
    /// One past the last element any part may touch.
    fn footprint_end(&self, parts: usize) -> usize {
        match self.share {
            Share::Private => self.offset + self.len + (parts - 1) * self.part_stride,
            Share::Whole | Share::Blocks => self.offset + self.len,
        }
    }
}

/// Where every buffer of one compiled function lives.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct BufferPlan {
    pub buffers: Vec<PlannedBuffer>,
    /// The arena's length in f32 elements.
    pub arena_len: usize,
    /// Parts of a split loop body or scan (1: none), and the kernels of each split region.
    pub parts: usize,
    pub part_kernels: Vec<std::ops::Range<usize>>,
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
    /// Plans the buffers of `lowered` for its kernels (run in order).
    pub fn new(lowered: &Lowered) -> BufferPlan {
        let (buffers, kernels) = (&lowered.buffers, &lowered.kernels);
        let parts = lowered.parts.max(1);
        let regions = if parts > 1 {
            lowered.part_kernels.clone()
        } else {
            Vec::new()
        };
        let region_of = |k: usize| regions.iter().find(|r| r.contains(&k));
        let last = kernels.len().saturating_sub(1);
        // The memory a buffer stands for: itself, or the buffer its view is (transitively) of.
        let root = |mut b: usize| {
            while let Some(v) = buffers[b].view {
                b = v.of;
            }
            b
        };
        // The outermost loop around each kernel, as the kernels it spans.
        let mut around: Vec<Option<(usize, usize)>> = vec![None; kernels.len()];
        for (k, kernel) in kernels.iter().enumerate() {
            if let (Kernel::Scan(scan), None) = (kernel, around[k]) {
                let span = (k, k + scan.body);
                for slot in &mut around[k..=k + scan.body] {
                    *slot = Some(span);
                }
            }
        }
        let mut live: Vec<Option<(usize, usize)>> = vec![None; buffers.len()];
        for (k, kernel) in kernels.iter().enumerate() {
            kernel.for_each_access(|b, _, _| {
                let b = root(b);
                let mut span = around[k].unwrap_or((k, k));
                if let Some(region) = region_of(k).filter(|_| buffers[b].share != Share::Private) {
                    span = (region.start, region.end - 1);
                }
                let known = live[b].get_or_insert(span);
                known.0 = known.0.min(span.0);
                known.1 = known.1.max(span.1);
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
                share: spec.share,
                part_stride: match spec.share {
                    Share::Blocks => spec.len / parts,
                    Share::Whole | Share::Private => 0,
                },
                shifts: Vec::new(),
            })
            .collect();
        let views: Vec<usize> = (0..planned.len())
            .filter(|&i| buffers[i].view.is_some())
            .collect();
        let (private, shared): (Vec<usize>, Vec<usize>) = (0..planned.len())
            .filter(|&i| buffers[i].view.is_none())
            .partition(|&i| planned[i].share == Share::Private);
        let arena_len = if private.is_empty() {
            place(&mut planned, shared, 0)
        } else {
            // The parts' windows are planned first, then placed among the other buffers as
            // one stand-in buffer live wherever a private temporary is: memory that only
            // lives before or after the split region may share their place.
            let window = align(place(&mut planned, private.clone(), 0), ALIGN);
            let start = regions.iter().map(|r| r.start).min().unwrap_or(0);
            let end = regions.iter().map(|r| r.end).max().unwrap_or(1);
            let live = private
                .iter()
                .fold((start, end.saturating_sub(1)), |(lo, hi), &i| {
                    (lo.min(planned[i].live.0), hi.max(planned[i].live.1))
                });
            planned.push(PlannedBuffer {
                label: "the parts' windows".to_string(),
                offset: 0,
                len: parts * window,
                live,
                share: Share::Whole,
                part_stride: 0,
                shifts: Vec::new(),
            });
            let stand_in = planned.len() - 1;
            let mut order = shared;
            order.push(stand_in);
            let arena_len = place(&mut planned, order, 0);
            let base = planned.pop().map_or(0, |b| b.offset);
            for &i in &private {
                planned[i].offset += base;
                planned[i].part_stride = window;
            }
            arena_len
        };
        for &i in &views {
            let mut b = i;
            while let Some(v) = buffers[b].view {
                planned[i].shifts.push((v.scan, v.stride));
                b = v.of;
            }
            planned[i].offset = planned[b].offset;
            planned[i].live = planned[b].live;
        }
        BufferPlan {
            buffers: planned,
            arena_len,
            parts,
            part_kernels: regions,
        }
    }

    /// The arena's size in bytes: the peak memory of the function's buffers.
    pub fn peak_bytes(&self) -> usize {
        self.arena_len * std::mem::size_of::<f32>()
    }

    /// The most memory live at once: the largest total size of the buffers live during one
    /// kernel, a split body's private temporaries once per part (each part holds its own
    /// copy). No placement can make the arena smaller than this.
    pub fn live_bytes(&self) -> usize {
        let end = self.buffers.iter().map(|b| b.live.1 + 1).max().unwrap_or(0);
        let mut change = vec![0isize; end + 1];
        for b in self.buffers.iter().filter(|b| b.shifts.is_empty()) {
            let copies = match b.share {
                Share::Private => self.parts.max(1),
                Share::Whole | Share::Blocks => 1,
            };
            change[b.live.0] += (copies * b.len) as isize;
            change[b.live.1 + 1] -= (copies * b.len) as isize;
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
        self.buffers
            .iter()
            .filter(|b| b.shifts.is_empty())
            .map(|b| b.len)
            .sum::<usize>()
            * std::mem::size_of::<f32>()
    }

    /// Checks that no two simultaneously live buffers overlap (a part's private copies
    /// against the other buffers, and against each other within the parts' window), that
    /// every buffer lies inside the arena, and that every kernel stays inside the buffers it
    /// touches (a part kernel inside part 0's block or copy).
    pub fn verify(&self, kernels: &[Kernel]) -> Result<(), PlanError> {
        let parts = self.parts.max(1);
        let window = self
            .buffers
            .iter()
            .filter(|b| b.share == Share::Private)
            .map(|b| (b.offset, b.part_stride))
            .min();
        for b in &self.buffers {
            let outside_window = b.share == Share::Private
                && window.is_some_and(|(base, stride)| b.offset + b.len > base + stride);
            if b.footprint_end(parts) > self.arena_len || outside_window {
                return Err(PlanError::OutsideArena {
                    buffer: b.label.clone(),
                });
            }
        }
        for (i, a) in self.buffers.iter().enumerate() {
            if !a.shifts.is_empty() {
                continue;
            }
            for b in self.buffers[i + 1..].iter().filter(|b| b.shifts.is_empty()) {
                let both_private = a.share == Share::Private && b.share == Share::Private;
                let (a_end, b_end) = if both_private {
                    (a.offset + a.len, b.offset + b.len)
                } else {
                    (a.footprint_end(parts), b.footprint_end(parts))
                };
                let disjoint = a_end <= b.offset || b_end <= a.offset;
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
            let in_parts = parts > 1 && self.part_kernels.iter().any(|r| r.contains(&k));
            let mut error = None;
            kernel.for_each_access(|b, extent, _| {
                let buffer = &self.buffers[b];
                let len = match buffer.share {
                    Share::Blocks if in_parts => buffer.len / parts,
                    _ => buffer.len,
                };
                if extent > len && error.is_none() {
                    error = Some(PlanError::OutOfBuffer {
                        kernel: k,
                        buffer: buffer.label.clone(),
                        extent,
                        len,
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
        if self.parts > 1 {
            for region in &self.part_kernels {
                writeln!(
                    f,
                    "split: kernels {}..{} run as {} parts, each on its own block of samples",
                    region.start, region.end, self.parts
                )?;
            }
        }
        for b in &self.buffers {
            if !b.shifts.is_empty() {
                let moves: Vec<String> = b
                    .shifts
                    .iter()
                    .map(|(scan, stride)| {
                        format!("{} bytes per iteration of scan {scan}", stride * 4)
                    })
                    .collect();
                writeln!(
                    f,
                    "  {:>22}  view, moved {}: {}",
                    "",
                    moves.join(", "),
                    b.label
                )?;
                continue;
            }
            let share = match b.share {
                Share::Whole => String::new(),
                Share::Blocks => format!("  (in {} blocks)", self.parts),
                Share::Private => format!("  (a copy per part, every {} bytes)", b.part_stride * 4),
            };
            writeln!(
                f,
                "  [{:>9}, {:>9})  live {:>4}..={:<4} {}{share}",
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

/// Places the buffers `which` at or after `base`, largest first, each at the lowest offset
/// that clears every placed buffer it is live with; returns the end of the last.
fn place(planned: &mut [PlannedBuffer], mut which: Vec<usize>, base: usize) -> usize {
    which.sort_by_key(|&i| (std::cmp::Reverse(planned[i].len), planned[i].live.0));
    let mut placed: Vec<usize> = Vec::new();
    let mut end_of_all = base;
    for i in which {
        let mut blocking: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&j| overlaps(planned[i].live, planned[j].live))
            .map(|&j| (planned[j].offset, planned[j].offset + planned[j].len))
            .collect();
        blocking.sort_unstable();
        let mut offset = base;
        for (start, end) in blocking {
            if offset + planned[i].len <= start {
                break;
            }
            offset = offset.max(align(end, planned[i].len));
        }
        planned[i].offset = offset;
        end_of_all = end_of_all.max(offset + planned[i].len);
        placed.push(i);
    }
    end_of_all
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
    use crate::jit::lower::{Affine, BufferSpec, Expr, Place, Share};

    fn spec(len: usize) -> BufferSpec {
        BufferSpec {
            label: format!("b{len}"),
            len,
            pinned: false,
            share: Share::Whole,
            view: None,
        }
    }

    fn lowered(buffers: Vec<BufferSpec>, kernels: Vec<Kernel>) -> Lowered {
        Lowered {
            buffers,
            kernels,
            ..Lowered::default()
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
        let lowered = lowered(
            vec![spec(100), spec(100), spec(100), spec(100)],
            vec![copy(0, 1, 100), copy(1, 2, 100), copy(2, 3, 100)],
        );
        let (plan, kernels) = (BufferPlan::new(&lowered), &lowered.kernels);
        plan.verify(kernels).expect("valid plan");
        assert!(plan.arena_len < 4 * 100, "arena {}", plan.arena_len);
        // Two buffers are live during each copy: no placement needs less.
        assert_eq!(plan.live_bytes(), 2 * 100 * 4);
        // The second buffer starts at the next 64-byte boundary.
        assert_eq!(plan.peak_bytes(), (112 + 100) * 4);
    }

    #[test]
    fn verify_rejects_overlap() {
        let lowered = lowered(vec![spec(10), spec(10)], vec![copy(0, 1, 10)]);
        let (mut plan, kernels) = (BufferPlan::new(&lowered), &lowered.kernels);
        plan.buffers[1].offset = plan.buffers[0].offset;
        assert!(matches!(
            plan.verify(kernels),
            Err(PlanError::Overlap { .. })
        ));
    }
}
