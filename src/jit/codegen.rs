//! Code generation: lowered kernels to one Cranelift function.
//!
//! The function has the signature `fn(arena: *mut u8, steps: i64) -> i32`: every buffer is at
//! a constant offset from `arena` (the buffer plan fixed them), `steps` is the number of loop
//! iterations (ignored by straight-line programs), and the result is 0, or the 1-based index
//! of the kernel whose checked access failed.
//!
//! A `Map` or `Reduce` kernel becomes a loop nest. Its axes are first simplified — unit axes
//! dropped, neighbouring axes that every map walks evenly merged — so that most elementwise
//! work is one flat loop. The innermost loop runs four lanes at a time (`f32x4`) when every
//! buffer it reads is walked with stride 0 or 1 — two vectors per trip where the expression is
//! small, the loop's test at the bottom — and finishes with a scalar tail; a reduction
//! over the innermost axis keeps its partial result in a register. Matrix products and
//! convolutions are calls into `runtime`. A nest of at least [`SHARED_MIN_ELEMENTS`] whose
//! outermost axis is not reduced gets a function of its own, `fn(arena, lo, hi) -> i32` over
//! outermost indices `lo..hi`, which the main function hands to `runtime::parallel` to run in
//! parts on several threads.
//!
//! A function computes in one dtype, f32 or f64 (`JitOptions::dtype`). f64 code is the same
//! loop nests with scalar innermost loops (no SIMD), elements 8 bytes wide, and every
//! transcendental function a call into the runtime.

use super::lower::{BufferId, Expr, Kernel};
use super::math::{self, Lanes};
use super::plan::BufferPlan;
use crate::ir::{BinaryOp, ReduceOp, UnaryOp};
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    types, Block, ConstantData, Endianness, FuncRef, InstBuilder, MemFlagsData, Value,
};
use cranelift_frontend::{FunctionBuilder, Variable};
use std::collections::HashMap;
use std::ops::Range;

/// The runtime functions a function may call, as imported into it.
pub struct RuntimeRefs {
    pub matmul: FuncRef,
    pub conv: FuncRef,
    /// `runtime::unary` for each of `runtime::UNARY_OPS`, in its order.
    pub unary: [FuncRef; 8],
    pub powf: FuncRef,
    /// `parallel(piece, arena, extent, pieces) -> status`: runs a shared kernel's function.
    pub parallel: FuncRef,
    /// `parts(body, arena, steps, parts) -> status`: runs a split loop body's parts.
    pub parts: FuncRef,
    /// `tick(kernel)`: starts timing a kernel (-1: stops), when profiling.
    pub tick: FuncRef,
    /// `exchange(descriptor, arena) -> status`: runs a [`Segment::Exchange`].
    pub exchange: FuncRef,
    /// `wide_unary(op, dst, src, n)`: one transcendental function of a row (`super::wide`).
    pub wide_unary: FuncRef,
}

/// One piece of a function's control flow over its kernels.
#[derive(Clone, Debug, PartialEq)]
pub enum Segment {
    /// Kernels run once, in order.
    Kernels(Range<usize>),
    /// The function's `steps` runs of a loop body. The body is present twice (`first` and
    /// `second`), reading and writing the carried state in opposite buffers, so that a step
    /// never has to copy state.
    Loop {
        first: Range<usize>,
        second: Range<usize>,
        until: Option<Until>,
    },
    /// The same loop split into `parts` (see `opt::split`): a function of its own,
    /// `fn(arena, steps, part) -> status`, runs the whole loop on one block of samples, and
    /// `runtime::parts` runs it once per part.
    Parts {
        first: Range<usize>,
        second: Range<usize>,
        parts: usize,
    },
    /// Ends the function with status [`DIVERGED`] unless every one of these scalar buffers
    /// holds a finite number.
    Guard(Vec<BufferId>),
    /// Hands the buffers of `Lowered::exchanges[k]` to that exchange (a data-parallel job's
    /// sum over its processes) and goes on with what it wrote back.
    Exchange(usize),
}

/// A loop's stopping test: after each step, a `flag` of 0 ends the loop. The steps run are
/// written to `steps_run` (a float); a loop that stops after a number of steps of the other
/// parity than the function's `steps` then copies its carried state over to where `steps`
/// steps would have left it (`to_even`: odd buffers to even ones; `to_odd`: the reverse), so
/// that callers find the final state in one place.
#[derive(Clone, Debug, PartialEq)]
pub struct Until {
    pub flag: BufferId,
    pub steps_run: BufferId,
    pub to_even: Range<usize>,
    pub to_odd: Range<usize>,
}

/// How the kernels form the function: its segments, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Layout(pub Vec<Segment>);

impl Layout {
    /// Every kernel once, in order.
    pub fn straight(kernels: usize) -> Layout {
        Layout(vec![Segment::Kernels(0..kernels)])
    }

    /// How many times each kernel runs in a run of `steps` loop steps (all parts together).
    pub fn runs(&self, kernels: usize, steps: usize) -> Vec<usize> {
        let mut runs = vec![0; kernels];
        let mut add = |range: &Range<usize>, n: usize| range.clone().for_each(|k| runs[k] += n);
        for segment in &self.0 {
            match segment {
                Segment::Kernels(range) => add(range, 1),
                Segment::Loop { first, second, .. } => {
                    add(first, steps.div_ceil(2));
                    add(second, steps / 2);
                }
                Segment::Parts {
                    first,
                    second,
                    parts,
                } => {
                    add(first, parts * steps.div_ceil(2));
                    add(second, parts * (steps / 2));
                }
                Segment::Guard(_) | Segment::Exchange(_) => {}
            }
        }
        runs
    }

    /// [`runs`](Self::runs), with the kernels of a scan's body counted once per iteration;
    /// a split scan's kernels run once per part.
    pub fn kernel_runs(&self, lowered: &super::lower::Lowered, steps: usize) -> Vec<usize> {
        let kernels = &lowered.kernels;
        let mut runs = self.runs(kernels.len(), steps);
        for (k, kernel) in kernels.iter().enumerate() {
            if let Kernel::Scan(scan) = kernel {
                let parts = if lowered.split_scans.contains(&k) {
                    lowered.parts
                } else {
                    1
                };
                for r in &mut runs[k + 1..=k + scan.body] {
                    *r *= scan.trips * parts;
                }
            }
        }
        runs
    }
}

/// The status of a function stopped by a [`Segment::Guard`].
pub const DIVERGED: i32 = -1;

/// The status of a function whose loop saw [`super::runtime::INTERRUPT`] raised.
pub const INTERRUPTED: i32 = -2;

/// Translates the kernels of one function, in the spirit of cranelift-jit-demo's
/// `FunctionTranslator`: one `translate_*` method per construct.
pub struct FunctionTranslator<'a> {
    pub builder: FunctionBuilder<'a>,
    /// The arena's base address: the function's first parameter.
    pub arena: Value,
    pub plan: &'a BufferPlan,
    pub runtime: RuntimeRefs,
    /// For each kernel, where its runtime descriptor is (calls only).
    pub descriptors: &'a [Option<super::Descriptor>],
    /// Where each [`Segment::Exchange`]'s descriptor is.
    pub exchanges: &'a [i64],
    /// Emit a range check before every load and store.
    pub bounds_checks: bool,
    /// The target has fused multiply-add instructions.
    pub fma: bool,
    /// One element: f32 (whose code also has four-lane vectors) or f64 (scalar only).
    pub scalar: Lanes,
    /// A map of one transcendental function of a contiguous row calls `wide::unary_row`.
    pub wide: bool,
    /// Returns its parameter: the status of a failed check.
    pub fail: Block,
    /// The kernel being translated (its 1-based index is the status of a failed check).
    pub kernel: usize,
    /// Kernels shared between threads: their own function, outermost extent and pieces.
    pub shared: HashMap<usize, (FuncRef, usize, usize)>,
    /// Map kernels that flag values they write that are not finite: kernel → flag buffer.
    pub checks: &'a HashMap<usize, BufferId>,
    /// Call `tick` before every kernel (profiling).
    pub profile: bool,
    /// In a split body's function: the part it runs (its third parameter). Buffers are then
    /// addressed at `offset + part · part_stride`.
    pub part: Option<Value>,
    /// The split body's function, for the main function to hand to `runtime::parts`.
    pub part_function: Option<FuncRef>,
    /// The function of each scan split into parts, by its head kernel: the whole scan on one
    /// part, handed to `runtime::parts` where the scan runs.
    pub scan_parts: HashMap<usize, FuncRef>,
    /// The iteration index of each scan whose loop is being emitted, by the scan's number: it
    /// moves the scan's views.
    pub iterations: HashMap<usize, Value>,
}

/// One operand position of a loop nest: where it reads (or writes) and how it walks.
struct Slot {
    /// The buffer read, or `None` for an index value.
    buffer: Option<BufferId>,
    /// Element position at index 0: arena offset for buffers, the index value's offset else.
    base: usize,
    strides: Vec<usize>,
    /// Along the innermost axis, each element is read twice: index i is at `(i / 2) ·
    /// stride` (a value broadcast over the 2 × 2 windows of a pooling, read at pixel level).
    pairs: bool,
}

/// An expression node over slots, in evaluation order.
enum Node {
    Load(usize),
    Index(usize),
    Const(f64),
    Unary(UnaryOp, usize),
    Binary(BinaryOp, usize, usize),
    Where(usize, usize, usize),
}

/// A `Map` or `Reduce` kernel flattened for code generation; slot 0 is the output.
struct Nest {
    dims: Vec<usize>,
    slots: Vec<Slot>,
    nodes: Vec<Node>,
    reduce: Option<ReduceOp>,
    /// The arena position of a flag set to NaN when a value written is not finite.
    check: Option<usize>,
}

impl Nest {
    fn new(plan: &BufferPlan, dims: &[usize], out: (BufferId, &super::lower::Affine)) -> Nest {
        let mut nest = Nest {
            dims: dims.to_vec(),
            slots: Vec::new(),
            nodes: Vec::new(),
            reduce: None,
            check: None,
        };
        nest.slots.push(Slot {
            buffer: Some(out.0),
            base: plan.buffers[out.0].offset + out.1.offset,
            strides: out.1.strides.clone(),
            pairs: false,
        });
        nest
    }

    /// Appends `expr`'s nodes; returns the index of its root.
    fn flatten(&mut self, plan: &BufferPlan, expr: &Expr) -> usize {
        let node = match expr {
            Expr::Load { buffer, map } => {
                self.slots.push(Slot {
                    buffer: Some(*buffer),
                    base: plan.buffers[*buffer].offset + map.offset,
                    strides: map.strides.clone(),
                    pairs: false,
                });
                Node::Load(self.slots.len() - 1)
            }
            Expr::Index(map) => {
                self.slots.push(Slot {
                    buffer: None,
                    base: map.offset,
                    strides: map.strides.clone(),
                    pairs: false,
                });
                Node::Index(self.slots.len() - 1)
            }
            Expr::Const(c) => Node::Const(*c),
            Expr::Unary(op, a) => {
                let a = self.flatten(plan, a);
                Node::Unary(*op, a)
            }
            Expr::Binary(op, a, b) => {
                let a = self.flatten(plan, a);
                let b = self.flatten(plan, b);
                Node::Binary(*op, a, b)
            }
            Expr::Where(args) => {
                let c = self.flatten(plan, &args[0]);
                let a = self.flatten(plan, &args[1]);
                let b = self.flatten(plan, &args[2]);
                Node::Where(c, a, b)
            }
        };
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// The loop nest of a `Map` or `Reduce` kernel, simplified; `None` for calls and empty
    /// kernels.
    fn of(plan: &BufferPlan, kernel: &Kernel) -> Option<Nest> {
        let (dims, out, expr, reduce) = match kernel {
            Kernel::Map { dims, out, expr } => (dims, out, expr, None),
            Kernel::Reduce {
                op,
                dims,
                out,
                expr,
            } => (dims, out, expr, Some(*op)),
            Kernel::MatMul(_) | Kernel::Conv(_) | Kernel::Scan(_) => return None,
        };
        if dims.contains(&0) {
            return None;
        }
        let mut nest = Nest::new(plan, dims, (out.buffer, &out.map));
        nest.flatten(plan, expr);
        nest.reduce = reduce;
        nest.simplify();
        Some(nest)
    }

    /// Prepares the nest to be shared between threads along its outermost axis: a single
    /// flat axis is first cut into `pieces` rows whose length is a multiple of four (so every
    /// row keeps its SIMD loop). Returns the outermost axis's extent, or `None` when the nest
    /// is too small to be worth sharing or its outermost axis is reduced (two threads would
    /// write the same results).
    fn split(&mut self, pieces: usize) -> Option<usize> {
        let elements: usize = self.dims.iter().product();
        if pieces < 2 || elements < SHARED_MIN_ELEMENTS {
            return None;
        }
        if self.dims.len() == 1 {
            let n = self.dims[0];
            if !n.is_multiple_of(4 * pieces) {
                return None;
            }
            let row = n / pieces;
            self.dims = vec![pieces, row];
            for slot in &mut self.slots {
                let s = slot.strides[0];
                let outer = if slot.pairs { s * row / 2 } else { s * row };
                slot.strides = vec![outer, s];
            }
        }
        (self.slots[0].strides[0] != 0).then_some(self.dims[0])
    }

    /// Drops unit axes and merges neighbouring axes that every slot walks evenly.
    fn simplify(&mut self) {
        let keep: Vec<usize> = (0..self.dims.len())
            .filter(|&k| self.dims[k] != 1)
            .collect();
        self.dims = keep.iter().map(|&k| self.dims[k]).collect();
        for slot in &mut self.slots {
            slot.strides = keep.iter().map(|&k| slot.strides[k]).collect();
        }
        let mut k = self.dims.len();
        while k > 1 {
            k -= 1;
            let d = self.dims[k];
            if self
                .slots
                .iter()
                .all(|s| s.strides[k - 1] == s.strides[k] * d)
            {
                self.dims[k - 1] *= d;
                self.dims.remove(k);
                for slot in &mut self.slots {
                    slot.strides.remove(k - 1);
                }
            }
        }
        if self.dims.is_empty() {
            self.dims.push(1);
            for slot in &mut self.slots {
                slot.strides.push(0);
            }
        }
        self.merge_pairs();
    }

    /// An innermost axis of 2 that some slots do not move along (a pooling window's column):
    /// merged with the axis outside it, those slots reading each element twice, so that the
    /// innermost loop is long enough for SIMD. Outputs and index values must walk evenly.
    fn merge_pairs(&mut self) {
        let r = self.dims.len();
        if r < 2 || self.dims[r - 1] != 2 {
            return;
        }
        // Slot 0 is the output.
        let outputs = 1;
        let kinds: Option<Vec<bool>> = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let (outer, inner) = (s.strides[r - 2], s.strides[r - 1]);
                if outer == 2 * inner {
                    Some(false)
                } else if inner == 0 && i >= outputs && s.buffer.is_some() {
                    Some(true)
                } else {
                    None
                }
            })
            .collect();
        let Some(kinds) = kinds else {
            return;
        };
        self.dims[r - 2] *= 2;
        self.dims.pop();
        for (slot, pairs) in self.slots.iter_mut().zip(kinds) {
            let inner = slot.strides.pop().expect("an inner stride");
            if pairs {
                slot.pairs = true;
            } else {
                *slot.strides.last_mut().expect("an outer stride") = inner;
            }
        }
    }
}

/// Four-lane iterations of a map's innermost loop run per trip (see `translate_inner`).
const UNROLL: i64 = 2;

/// Expressions of more nodes than this are not unrolled: their code would grow more than the
/// loop's own work shrinks.
const UNROLL_MAX_NODES: usize = 16;

/// Loop nests with fewer elements than this run on the calling thread alone: below it,
/// handing half to a second core costs more than it saves (measured with
/// `runtime::SHARED_MIN_MACS`: a [64, 64] map takes about a microsecond).
pub const SHARED_MIN_ELEMENTS: usize = 1 << 14;

/// The outermost extent a kernel is shared along between `pieces` threads, if it is shared.
pub fn shared_extent(plan: &BufferPlan, kernel: &Kernel, pieces: usize) -> Option<usize> {
    // A kernel reading or writing a scan's view needs the loop's index, which a kernel's own
    // function does not have.
    let mut moved = false;
    kernel.for_each_access(|b, _, _| moved |= !plan.buffers[b].shifts.is_empty());
    if moved {
        return None;
    }
    Nest::of(plan, kernel)?.split(pieces)
}

fn flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

impl FunctionTranslator<'_> {
    /// Emits the whole function body after the entry block has been set up.
    pub fn translate(&mut self, kernels: &[Kernel], layout: &Layout, steps: Value) {
        for segment in &layout.0 {
            match segment {
                Segment::Kernels(range) => self.translate_kernels(kernels, range.clone()),
                Segment::Loop {
                    first,
                    second,
                    until,
                } => self.translate_loop(
                    kernels,
                    (first.clone(), second.clone()),
                    until.as_ref(),
                    steps,
                ),
                Segment::Parts { .. } => {
                    let body = self.part_function.expect("a split body has its function");
                    self.call_parts(body, Some(steps));
                }
                Segment::Guard(buffers) => self.translate_guard(buffers),
                Segment::Exchange(k) => {
                    let at = self.exchanges[*k];
                    let descriptor = self.builder.ins().iconst(types::I64, at);
                    let call = self
                        .builder
                        .ins()
                        .call(self.runtime.exchange, &[descriptor, self.arena]);
                    let status = self.builder.inst_results(call)[0];
                    self.branch_on_status(status);
                }
            }
        }
        self.finish();
    }

    /// Fails with [`DIVERGED`] unless each scalar is finite: x − x is 0 for finite x and NaN
    /// for ±∞ and NaN.
    fn translate_guard(&mut self, buffers: &[BufferId]) {
        for &b in buffers {
            let at = self.plan.buffers[b].offset as i64;
            let at = self.builder.ins().iconst(types::I64, at);
            let address = self.element_address(at);
            let x = self
                .builder
                .ins()
                .load(self.scalar.float, flags(), address, 0);
            let zero = self.builder.ins().fsub(x, x);
            let broken = self.builder.ins().fcmp(FloatCC::Unordered, zero, zero);
            let next = self.builder.create_block();
            let code = self.builder.ins().iconst(types::I32, DIVERGED as i64);
            self.builder
                .ins()
                .brif(broken, self.fail, &[code.into()], next, &[]);
            self.builder.switch_to_block(next);
        }
    }

    /// Runs `function` (a split loop body's or scan's: `fn(arena, steps, part)`) once per
    /// part through `runtime::parts`, failing with the status of a part that failed.
    fn call_parts(&mut self, function: FuncRef, steps: Option<Value>) {
        self.tick(-1);
        let pointer = self.builder.func.dfg.value_type(self.arena);
        let function = self.builder.ins().func_addr(pointer, function);
        let parts = self.plan.parts as i64;
        let parts = self.builder.ins().iconst(types::I64, parts);
        let steps = steps.unwrap_or_else(|| self.builder.ins().iconst(types::I64, 0));
        let call = self
            .builder
            .ins()
            .call(self.runtime.parts, &[function, self.arena, steps, parts]);
        let status = self.builder.inst_results(call)[0];
        self.branch_on_status(status);
    }

    /// The body of a split scan's own function: the scan whose head is kernel `head`, on the
    /// part `part`.
    pub fn translate_scan_part(&mut self, kernels: &[Kernel], head: usize, part: Value) {
        self.part = Some(part);
        let Kernel::Scan(scan) = &kernels[head] else {
            unreachable!("split scans start at their head");
        };
        self.translate_kernels(kernels, head..head + 1 + scan.body);
        self.finish();
    }

    /// The body of a split loop's own function: the whole loop, on the part `part`.
    pub fn translate_part(
        &mut self,
        kernels: &[Kernel],
        (first, second): (Range<usize>, Range<usize>),
        steps: Value,
        part: Value,
    ) {
        self.part = Some(part);
        self.translate_loop(kernels, (first, second), None, steps);
        self.finish();
    }

    /// `steps` runs of the body, alternating between its two copies.
    fn translate_loop(
        &mut self,
        kernels: &[Kernel],
        (first, second): (Range<usize>, Range<usize>),
        until: Option<&Until>,
        steps: Value,
    ) {
        let header = self.builder.create_block();
        let first_block = self.builder.create_block();
        let second_block = self.builder.create_block();
        let exit = self.builder.create_block();
        // Where a stopping test ends the loop, with the steps run.
        let stopped = until.map(|until| {
            let block = self.builder.create_block();
            self.builder.append_block_param(block, types::I64);
            (until, block)
        });
        self.builder.append_block_param(header, types::I64);
        let zero = self.builder.ins().iconst(types::I64, 0);
        self.builder.ins().jump(header, &[zero.into()]);
        self.builder.switch_to_block(header);
        let step = self.builder.block_params(header)[0];
        let more = self.builder.ins().icmp(IntCC::SignedLessThan, step, steps);
        self.builder.ins().brif(more, first_block, &[], exit, &[]);
        self.builder.switch_to_block(first_block);
        self.poll_interrupt();
        self.translate_kernels(kernels, first);
        let next = self.builder.ins().iadd_imm_s(step, 1);
        if let Some((until, block)) = stopped {
            self.stop_if_done(until, next, block);
        }
        let more = self.builder.ins().icmp(IntCC::SignedLessThan, next, steps);
        self.builder.ins().brif(more, second_block, &[], exit, &[]);
        self.builder.switch_to_block(second_block);
        self.translate_kernels(kernels, second);
        let next = self.builder.ins().iadd_imm_s(step, 2);
        if let Some((until, block)) = stopped {
            self.stop_if_done(until, next, block);
        }
        self.builder.ins().jump(header, &[next.into()]);
        self.builder.switch_to_block(exit);
        let Some((until, stopped)) = stopped else {
            return;
        };
        // All steps run.
        let done = self.builder.create_block();
        self.store_count(until.steps_run, steps);
        self.builder.ins().jump(done, &[]);
        // Stopped after `run` steps: the state is where `run` steps leave it; move it to where
        // `steps` steps would have if the parities differ.
        self.builder.switch_to_block(stopped);
        let run = self.builder.block_params(stopped)[0];
        self.store_count(until.steps_run, run);
        let parities = self.builder.ins().bxor(run, steps);
        let differ = self.builder.ins().band_imm_u(parities, 1);
        let odd_run = self.builder.ins().band_imm_u(run, 1);
        let (to_even, to_odd) = (self.builder.create_block(), self.builder.create_block());
        let check = self.builder.create_block();
        self.builder.ins().brif(differ, check, &[], done, &[]);
        self.builder.switch_to_block(check);
        self.builder.ins().brif(odd_run, to_even, &[], to_odd, &[]);
        self.builder.switch_to_block(to_even);
        self.translate_kernels(kernels, until.to_even.clone());
        self.builder.ins().jump(done, &[]);
        self.builder.switch_to_block(to_odd);
        self.translate_kernels(kernels, until.to_odd.clone());
        self.builder.ins().jump(done, &[]);
        self.builder.switch_to_block(done);
    }

    /// Ends the function with [`INTERRUPTED`] when [`super::runtime::INTERRUPT`] is raised:
    /// one load and branch per two loop steps, so that a long relaxation stops within two
    /// steps of a request (Ctrl-C), before anything after the loop has run.
    fn poll_interrupt(&mut self) {
        let pointer = self.builder.func.dfg.value_type(self.arena);
        let at = super::runtime::INTERRUPT.as_ptr() as i64;
        let address = self.builder.ins().iconst(pointer, at);
        let raised = self.builder.ins().load(types::I32, flags(), address, 0);
        let code = self.builder.ins().iconst(types::I32, INTERRUPTED as i64);
        self.fail_unless_zero(raised, code);
    }

    /// Jumps to `stopped` with `run` when the stopping test's flag reads 0.
    fn stop_if_done(&mut self, until: &Until, run: Value, stopped: Block) {
        let address = self.scalar_address(until.flag);
        let flag = self
            .builder
            .ins()
            .load(self.scalar.float, flags(), address, 0);
        let zero = math::float(&mut self.builder, self.scalar, 0.0);
        let done = self.builder.ins().fcmp(FloatCC::Equal, flag, zero);
        let go_on = self.builder.create_block();
        self.builder
            .ins()
            .brif(done, stopped, &[run.into()], go_on, &[]);
        self.builder.switch_to_block(go_on);
    }

    /// Writes an integer count into a scalar buffer, as a float.
    fn store_count(&mut self, buffer: BufferId, count: Value) {
        let address = self.scalar_address(buffer);
        let value = self.builder.ins().fcvt_from_sint(self.scalar.float, count);
        self.builder.ins().store(flags(), value, address, 0);
    }

    /// The address of a buffer's first element.
    fn scalar_address(&mut self, buffer: BufferId) -> Value {
        let at = self.plan.buffers[buffer].offset as i64;
        let at = self.builder.ins().iconst(types::I64, at);
        self.element_address(at)
    }

    /// The address of element position `at` (an arena offset in elements).
    fn element_address(&mut self, at: Value) -> Value {
        let shift = if self.scalar.float == types::F64 {
            3
        } else {
            2
        };
        let bytes = self.builder.ins().ishl_imm_u(at, shift);
        self.builder.ins().iadd(self.arena, bytes)
    }

    /// Returns 0 at the end of the body; the failure block returns its status.
    fn finish(&mut self) {
        self.tick(-1);
        let ok = self.builder.ins().iconst(types::I32, 0);
        self.builder.ins().return_(&[ok]);
        self.builder.switch_to_block(self.fail);
        let status = self.builder.block_params(self.fail)[0];
        self.builder.ins().return_(&[status]);
        self.builder.seal_all_blocks();
    }

    /// When profiling, tells the runtime that kernel `k` starts (-1: that timing stops).
    fn tick(&mut self, k: i64) {
        if self.profile {
            let k = self.builder.ins().iconst(types::I64, k);
            self.builder.ins().call(self.runtime.tick, &[k]);
        }
    }

    fn translate_kernels(&mut self, kernels: &[Kernel], range: Range<usize>) {
        let mut k = range.start;
        while k < range.end {
            self.kernel = k;
            if let Kernel::Scan(scan) = &kernels[k] {
                match self.scan_parts.get(&k).filter(|_| self.part.is_none()) {
                    Some(&function) => self.call_parts(function, None),
                    None => self.translate_scan(kernels, k, scan),
                }
                k += 1 + scan.body;
                continue;
            }
            self.tick(k as i64);
            if let Some(&(piece, extent, pieces)) = self.shared.get(&k) {
                self.translate_shared(piece, extent, pieces);
                k += 1;
                continue;
            }
            match &kernels[k] {
                Kernel::Map { .. } | Kernel::Reduce { .. } => self.translate_nest(&kernels[k]),
                Kernel::MatMul(mm) => {
                    let moved = self.moved_operands(mm);
                    self.translate_call(self.runtime.matmul, &moved)
                }
                Kernel::Conv(_) => self.translate_call(self.runtime.conv, &[]),
                Kernel::Scan(_) => unreachable!("handled above"),
            }
            k += 1;
        }
    }

    /// A scan's loop: its body kernels (those after `head`) once per iteration, with the
    /// iteration index — counting down in a reverse scan — moving the scan's views.
    fn translate_scan(&mut self, kernels: &[Kernel], head: usize, scan: &super::lower::ScanKernel) {
        let header = self.builder.create_block();
        let body = self.builder.create_block();
        let exit = self.builder.create_block();
        self.builder.append_block_param(header, types::I64);
        let zero = self.builder.ins().iconst(types::I64, 0);
        self.builder.ins().jump(header, &[zero.into()]);
        self.builder.switch_to_block(header);
        let run = self.builder.block_params(header)[0];
        let more = self
            .builder
            .ins()
            .icmp_imm_s(IntCC::SignedLessThan, run, scan.trips as i64);
        self.builder.ins().brif(more, body, &[], exit, &[]);
        self.builder.switch_to_block(body);
        let t = if scan.reverse {
            let last = self.builder.ins().iconst(types::I64, scan.trips as i64 - 1);
            self.builder.ins().isub(last, run)
        } else {
            run
        };
        self.iterations.insert(scan.id, t);
        self.translate_kernels(kernels, head + 1..head + 1 + scan.body);
        self.iterations.remove(&scan.id);
        let next = self.builder.ins().iadd_imm_s(run, 1);
        self.builder.ins().jump(header, &[next.into()]);
        self.builder.switch_to_block(exit);
    }

    /// The operands of a product that are a scan's views (an iteration's row of a stacked
    /// value), each as the byte offset of its position in the descriptor and its position at
    /// this iteration (and part).
    fn moved_operands(&mut self, mm: &super::lower::MatMulKernel) -> Vec<(i32, Value)> {
        use super::runtime::MatMulDesc;
        let operands = [
            (
                std::mem::offset_of!(MatMulDesc, a),
                mm.a.buffer,
                mm.a.offset,
            ),
            (
                std::mem::offset_of!(MatMulDesc, b),
                mm.b.buffer,
                mm.b.offset,
            ),
            (std::mem::offset_of!(MatMulDesc, c), mm.c, 0),
        ];
        operands
            .into_iter()
            .filter(|&(_, buffer, _)| !self.plan.buffers[buffer].shifts.is_empty())
            .map(|(field, buffer, offset)| {
                let at = (self.plan.buffers[buffer].offset + offset) as i64;
                let at = self.builder.ins().iconst(types::I64, at);
                (field as i32, self.in_part(at, Some(buffer)))
            })
            .collect()
    }

    /// A runtime call with the kernel's descriptor (its part's, in a split body), its `moved`
    /// positions (byte offset in the descriptor, element position) stored first; a non-zero
    /// status fails the function.
    fn translate_call(&mut self, callee: FuncRef, moved: &[(i32, Value)]) {
        let at = self.descriptors[self.kernel].expect("calls have descriptors");
        let mut descriptor = self.builder.ins().iconst(types::I64, at.address);
        if let Some(part) = self.part {
            let offset = self.builder.ins().imul_imm_s(part, at.stride);
            descriptor = self.builder.ins().iadd(descriptor, offset);
        }
        for &(field, position) in moved {
            self.builder
                .ins()
                .store(flags(), position, descriptor, field);
        }
        let call = self.builder.ins().call(callee, &[descriptor, self.arena]);
        let status = self.builder.inst_results(call)[0];
        let code = self.status_code();
        self.fail_unless_zero(status, code);
    }

    /// Fails the function with the status a shared kernel's pieces returned, if not 0.
    fn branch_on_status(&mut self, status: Value) {
        self.fail_unless_zero(status, status);
    }

    fn fail_unless_zero(&mut self, status: Value, code: Value) {
        let failed = self.builder.ins().icmp_imm_s(IntCC::NotEqual, status, 0);
        let next = self.builder.create_block();
        self.builder
            .ins()
            .brif(failed, self.fail, &[code.into()], next, &[]);
        self.builder.switch_to_block(next);
    }

    fn status_code(&mut self) -> Value {
        self.builder
            .ins()
            .iconst(types::I32, (self.kernel + 1) as i64)
    }

    fn translate_nest(&mut self, kernel: &Kernel) {
        if let Some(mut nest) = Nest::of(self.plan, kernel) {
            nest.check = self.check_of(self.kernel);
            let rows = self.rows(&nest);
            self.translate_level(&nest, 0, &rows, None);
        }
    }

    /// The arena position of kernel `k`'s finiteness flag, if it has one.
    fn check_of(&self, k: usize) -> Option<usize> {
        self.checks.get(&k).map(|&b| self.plan.buffers[b].offset)
    }

    /// The element positions of every slot at index 0 (in a split body, in the part's view
    /// of each buffer).
    fn rows(&mut self, nest: &Nest) -> Vec<Value> {
        nest.slots
            .iter()
            .map(|s| {
                let base = self.builder.ins().iconst(types::I64, s.base as i64);
                self.in_part(base, s.buffer)
            })
            .collect()
    }

    /// `position` in `buffer` as this run sees it: `+ part · part_stride` in a split body,
    /// `+ t · stride` for each scan moving a view.
    fn in_part(&mut self, position: Value, buffer: Option<BufferId>) -> Value {
        let Some(b) = buffer else {
            return position;
        };
        let planned = &self.plan.buffers[b];
        let stride = planned.part_stride;
        let shifts = planned.shifts.clone();
        let mut position = match self.part {
            Some(part) if stride > 0 => {
                let offset = self.builder.ins().imul_imm_s(part, stride as i64);
                self.builder.ins().iadd(position, offset)
            }
            _ => position,
        };
        for (scan, stride) in shifts {
            let t = self.iterations[&scan];
            let offset = self.builder.ins().imul_imm_s(t, stride as i64);
            position = self.builder.ins().iadd(position, offset);
        }
        position
    }

    /// The body of a kernel's own function: its nest, split for `pieces` threads, over the
    /// outermost indices `lo..hi` (the function's parameters).
    pub fn translate_piece(&mut self, kernel: &Kernel, pieces: usize, (lo, hi): (Value, Value)) {
        let mut nest = Nest::of(self.plan, kernel).expect("shared kernels are loop nests");
        nest.split(pieces).expect("shared kernels split");
        nest.check = self.check_of(self.kernel);
        let rows = self.rows(&nest);
        self.translate_level(&nest, 0, &rows, Some((lo, hi)));
        self.finish();
    }

    /// A kernel shared between threads: a runtime call that runs the kernel's own function
    /// (`piece`) on parts of its outermost axis.
    fn translate_shared(&mut self, piece: FuncRef, extent: usize, pieces: usize) {
        let pointer = self.builder.func.dfg.value_type(self.arena);
        let function = self.builder.ins().func_addr(pointer, piece);
        let extent = self.builder.ins().iconst(types::I64, extent as i64);
        let pieces = self.builder.ins().iconst(types::I64, pieces as i64);
        let call = self.builder.ins().call(
            self.runtime.parallel,
            &[function, self.arena, extent, pieces],
        );
        let status = self.builder.inst_results(call)[0];
        self.branch_on_status(status);
    }

    /// The code of `wide::OPS` that the nest's rows are, where they are one such function of
    /// a row read and written contiguously, long enough, unchecked for finiteness.
    fn wide_row(&self, nest: &Nest) -> Option<i64> {
        let level = nest.dims.len() - 1;
        let [Node::Load(1), Node::Unary(op, 0)] = nest.nodes[..] else {
            return None;
        };
        let contiguous = nest.slots.len() == 2
            && nest
                .slots
                .iter()
                .all(|s| s.buffer.is_some() && !s.pairs && s.strides[level] == 1);
        let fits = self.wide
            && contiguous
            && nest.reduce.is_none()
            && nest.check.is_none()
            && nest.dims[level] >= super::wide::MIN_ROW;
        let code = super::wide::OPS.iter().position(|&o| o == op)?;
        fits.then_some(code as i64)
    }

    /// One row of a [`wide_row`](Self::wide_row) nest: a call to `wide::unary_row` (after
    /// checking the row's first and last elements, with bounds checks on).
    fn translate_wide_row(&mut self, nest: &Nest, rows: &[Value], op: i64) {
        let n = nest.dims[nest.dims.len() - 1] as i64;
        let mut addresses = [rows[0], rows[1]];
        for (address, (slot, &row)) in addresses.iter_mut().zip(nest.slots.iter().zip(rows)) {
            if self.bounds_checks {
                let last = self.builder.ins().iadd_imm_s(row, n - 1);
                self.address(slot, last, Lanes::SCALAR);
            }
            *address = self.address(slot, row, Lanes::SCALAR);
        }
        let op = self.builder.ins().iconst(types::I64, op);
        let n = self.builder.ins().iconst(types::I64, n);
        self.builder.ins().call(
            self.runtime.wide_unary,
            &[op, addresses[0], addresses[1], n],
        );
    }

    /// A counted loop `for i in (start..end).step_by(step)` around `body`, for bounds known
    /// at compile time: rotated, the test at the bottom, so an iteration takes one branch.
    fn counted_loop(
        &mut self,
        start: i64,
        end: i64,
        step: i64,
        body: &mut dyn FnMut(&mut Self, Value),
    ) {
        if start + step > end {
            return;
        }
        let inner = self.builder.create_block();
        let exit = self.builder.create_block();
        self.builder.append_block_param(inner, types::I64);
        let first = self.builder.ins().iconst(types::I64, start);
        self.builder.ins().jump(inner, &[first.into()]);
        self.builder.switch_to_block(inner);
        let i = self.builder.block_params(inner)[0];
        body(self, i);
        let next = self.builder.ins().iadd_imm_s(i, step);
        // next + step <= end
        let more = self
            .builder
            .ins()
            .icmp_imm_s(IntCC::SignedLessThanOrEqual, next, end - step);
        self.builder
            .ins()
            .brif(more, inner, &[next.into()], exit, &[]);
        self.builder.switch_to_block(exit);
    }

    /// The loops of `level` and the levels inside it; `range` bounds the outermost loop
    /// (a shared kernel's piece) instead of the axis's extent.
    fn translate_level(
        &mut self,
        nest: &Nest,
        level: usize,
        rows: &[Value],
        range: Option<(Value, Value)>,
    ) {
        if level + 1 == nest.dims.len() {
            return self.translate_inner(nest, rows);
        }
        let mut body = |this: &mut Self, i: Value| {
            let inner_rows: Vec<Value> = nest
                .slots
                .iter()
                .zip(rows)
                .map(|(slot, &row)| this.advance(row, i, slot.strides[level]))
                .collect();
            this.translate_level(nest, level + 1, &inner_rows, None);
        };
        match range {
            Some((lo, hi)) => self.loop_between(lo, hi, &mut body),
            None => self.counted_loop(0, nest.dims[level] as i64, 1, &mut body),
        }
    }

    /// `for i in lo..hi` around `body`, with bounds known only at run time.
    fn loop_between(&mut self, lo: Value, hi: Value, body: &mut dyn FnMut(&mut Self, Value)) {
        let header = self.builder.create_block();
        let inner = self.builder.create_block();
        let exit = self.builder.create_block();
        self.builder.append_block_param(header, types::I64);
        self.builder.ins().jump(header, &[lo.into()]);
        self.builder.switch_to_block(header);
        let i = self.builder.block_params(header)[0];
        let more = self.builder.ins().icmp(IntCC::SignedLessThan, i, hi);
        self.builder.ins().brif(more, inner, &[], exit, &[]);
        self.builder.switch_to_block(inner);
        body(self, i);
        let next = self.builder.ins().iadd_imm_s(i, 1);
        self.builder.ins().jump(header, &[next.into()]);
        self.builder.switch_to_block(exit);
    }

    /// The innermost loop's load of `slot` at index `i`: four lanes or one. Reads every
    /// other element with two loads and a shuffle — elements p..p+4 and p+3..p+7, so that
    /// nothing past the last element wanted (p+6) is touched — and pairs as two scalars
    /// spread over the lanes [a, a, b, b].
    fn inner_load(
        &mut self,
        slot: &Slot,
        row: Value,
        i: Value,
        level: usize,
        lanes: Lanes,
    ) -> Value {
        let stride = slot.strides[level];
        if slot.pairs {
            let half = self.builder.ins().ushr_imm_u(i, 1);
            let at = self.advance(row, half, stride);
            let first = self.load(slot, at, self.scalar);
            if lanes.width == 1 {
                return first;
            }
            let next = self.builder.ins().iadd_imm_s(at, stride as i64);
            let second = self.load(slot, next, self.scalar);
            let v = self.builder.ins().splat(lanes.float, first);
            let v = self.builder.ins().insertlane(v, second, 2);
            return self.builder.ins().insertlane(v, second, 3);
        }
        let at = self.advance(row, i, stride);
        if stride != 2 || lanes.width == 1 {
            return self.load(slot, at, lanes);
        }
        let next = self.builder.ins().iadd_imm_s(at, 3);
        let low = self.load(slot, at, lanes);
        let high = self.load(slot, next, lanes);
        let little = MemFlagsData::new().with_endianness(Endianness::Little);
        let low = self.builder.ins().bitcast(types::I8X16, little, low);
        let high = self.builder.ins().bitcast(types::I8X16, little, high);
        // Bytes of lanes 0 and 2 of `low` (p, p+2), then of lanes 1 and 3 of `high` (p+4, p+6).
        let mask: Vec<u8> = [0u8, 8, 20, 28]
            .iter()
            .flat_map(|&start| start..start + 4)
            .collect();
        let mask = self
            .builder
            .func
            .dfg
            .immediates
            .push(ConstantData::from(mask));
        let even = self.builder.ins().shuffle(low, high, mask);
        self.builder.ins().bitcast(lanes.float, little, even)
    }

    /// `row + i·stride`.
    fn advance(&mut self, row: Value, i: Value, stride: usize) -> Value {
        match stride {
            0 => row,
            1 => self.builder.ins().iadd(row, i),
            s => {
                let offset = self.builder.ins().imul_imm_s(i, s as i64);
                self.builder.ins().iadd(row, offset)
            }
        }
    }

    /// The innermost loop: a four-lane main loop and a scalar tail where the slots allow it.
    fn translate_inner(&mut self, nest: &Nest, rows: &[Value]) {
        let level = nest.dims.len() - 1;
        let n = nest.dims[level] as i64;
        if let Some(op) = self.wide_row(nest) {
            return self.translate_wide_row(nest, rows, op);
        }
        let accumulate = nest.reduce.is_some() && nest.slots[0].strides[level] == 0;
        // Four lanes where every output moves by one element, or stays for a reduction, and
        // every load moves by one, stays, reads every other element, or reads pairs.
        let outputs = 1;
        let simd = n >= 4
            && self.scalar == Lanes::SCALAR
            && nest.slots.iter().enumerate().all(|(i, s)| {
                let stride = s.strides[level];
                s.buffer.is_none()
                    || stride <= 1
                    || (i == 0 && accumulate)
                    || (i >= outputs && (s.pairs || stride == 2))
            });
        // Loads that do not move along the inner axis are read once.
        let mut invariant: Vec<Option<Value>> = vec![None; nest.slots.len()];
        for (i, slot) in nest.slots.iter().enumerate().skip(1) {
            if slot.buffer.is_some() && slot.strides[level] == 0 {
                invariant[i] = Some(self.load(slot, rows[i], self.scalar));
            }
        }
        let op = nest.reduce.unwrap_or(ReduceOp::Sum);
        let identity = match op {
            ReduceOp::Sum => 0.0,
            ReduceOp::Max => f32::NEG_INFINITY,
        };
        let scalar = self.scalar;
        let scalar_acc = self.builder.declare_var(scalar.float);
        let vector_acc = self.builder.declare_var(types::F32X4);
        if accumulate {
            let s = math::float(&mut self.builder, scalar, identity);
            self.builder.def_var(scalar_acc, s);
            if simd {
                let v = math::float(&mut self.builder, Lanes::VECTOR, identity);
                self.builder.def_var(vector_acc, v);
            }
        }
        // A checked map sums x − x over what it writes: 0 when every x is finite, else NaN.
        let checks = nest.check.map(|_| {
            let s = self.builder.declare_var(scalar.float);
            let v = self.builder.declare_var(types::F32X4);
            let zero = math::float(&mut self.builder, scalar, 0.0);
            self.builder.def_var(s, zero);
            if simd {
                let zero = math::float(&mut self.builder, Lanes::VECTOR, 0.0);
                self.builder.def_var(v, zero);
            }
            (s, v)
        });
        let main = if simd { n / 4 * 4 } else { 0 };
        // The four-lane loop unrolled UNROLL times where the expression is small, so that
        // the loop's own work is shared by several vectors.
        let unroll = if nest.nodes.len() <= UNROLL_MAX_NODES {
            UNROLL
        } else {
            1
        };
        let unrolled = if unroll > 1 {
            main / (4 * unroll) * (4 * unroll)
        } else {
            0
        };
        let step = |this: &mut Self, i: Value, lanes: Lanes, acc: Variable| {
            let value = this.evaluate(nest, rows, &invariant, i, lanes);
            if let Some((s, v)) = checks {
                let var = if lanes.width > 1 { v } else { s };
                let zero = this.builder.ins().fsub(value, value);
                let sum = this.builder.use_var(var);
                let sum = this.builder.ins().fadd(sum, zero);
                this.builder.def_var(var, sum);
            }
            if accumulate {
                let prev = this.builder.use_var(acc);
                let next = this.combine(op, lanes, prev, value);
                this.builder.def_var(acc, next);
            } else {
                let out = this.advance(rows[0], i, nest.slots[0].strides[level]);
                let value = match nest.reduce {
                    Some(op) => {
                        let prev = this.load(&nest.slots[0], out, lanes);
                        this.combine(op, lanes, prev, value)
                    }
                    None => value,
                };
                this.store(&nest.slots[0], out, value);
            }
        };
        self.counted_loop(0, unrolled, 4 * unroll, &mut |this, i| {
            for u in 0..unroll {
                let at = this.builder.ins().iadd_imm_s(i, 4 * u);
                step(this, at, Lanes::VECTOR, vector_acc)
            }
        });
        self.counted_loop(unrolled, main, 4, &mut |this, i| {
            step(this, i, Lanes::VECTOR, vector_acc)
        });
        self.counted_loop(main, n, 1, &mut |this, i| step(this, i, scalar, scalar_acc));
        if let (Some((s, v)), Some(flag)) = (checks, nest.check) {
            let mut total = self.builder.use_var(s);
            if simd {
                let lanes = self.builder.use_var(v);
                for lane in 0..4u8 {
                    let x = self.builder.ins().extractlane(lanes, lane);
                    total = self.builder.ins().fadd(total, x);
                }
            }
            // Only a NaN is stored, so that parts of one kernel on several threads agree.
            let broken = self.builder.ins().fcmp(FloatCC::Unordered, total, total);
            let raise = self.builder.create_block();
            let done = self.builder.create_block();
            self.builder.ins().brif(broken, raise, &[], done, &[]);
            self.builder.switch_to_block(raise);
            let at = self.builder.ins().iconst(types::I64, flag as i64);
            let address = self.element_address(at);
            self.builder.ins().store(flags(), total, address, 0);
            self.builder.ins().jump(done, &[]);
            self.builder.switch_to_block(done);
        }
        if accumulate {
            let mut total = self.builder.use_var(scalar_acc);
            if main > 0 {
                let v = self.builder.use_var(vector_acc);
                for lane in 0..4u8 {
                    let x = self.builder.ins().extractlane(v, lane);
                    total = self.combine(op, scalar, total, x);
                }
            }
            let prev = self.load(&nest.slots[0], rows[0], scalar);
            let value = self.combine(op, scalar, prev, total);
            self.store(&nest.slots[0], rows[0], value);
        }
    }

    fn combine(&mut self, op: ReduceOp, lanes: Lanes, acc: Value, x: Value) -> Value {
        match op {
            ReduceOp::Sum => self.builder.ins().fadd(acc, x),
            ReduceOp::Max => math::max(&mut self.builder, lanes, acc, x),
        }
    }

    /// The expression's value at inner index `i`.
    fn evaluate(
        &mut self,
        nest: &Nest,
        rows: &[Value],
        invariant: &[Option<Value>],
        i: Value,
        lanes: Lanes,
    ) -> Value {
        let level = nest.dims.len() - 1;
        let mut values: Vec<Value> = Vec::with_capacity(nest.nodes.len());
        for node in &nest.nodes {
            let v = match *node {
                Node::Load(s) => match invariant[s] {
                    Some(x) if lanes.width > 1 => self.builder.ins().splat(lanes.float, x),
                    Some(x) => x,
                    None => self.inner_load(&nest.slots[s], rows[s], i, level, lanes),
                },
                Node::Index(s) => {
                    let stride = nest.slots[s].strides[level];
                    let at = self.advance(rows[s], i, stride);
                    let first = self.builder.ins().fcvt_from_sint(self.scalar.float, at);
                    if lanes.width > 1 {
                        let first = self.builder.ins().splat(lanes.float, first);
                        let ramp: Vec<u8> = (0..4)
                            .flat_map(|l| ((l * stride) as f32).to_le_bytes())
                            .collect();
                        let ramp = self
                            .builder
                            .func
                            .dfg
                            .constants
                            .insert(ConstantData::from(ramp));
                        let ramp = self.builder.ins().vconst(lanes.float, ramp);
                        self.builder.ins().fadd(first, ramp)
                    } else {
                        first
                    }
                }
                Node::Const(c) => math::constant(&mut self.builder, lanes, c),
                Node::Unary(op, a) => self.translate_unary(op, lanes, values[a]),
                Node::Binary(op, a, b) => self.translate_binary(op, lanes, values[a], values[b]),
                Node::Where(c, a, b) => {
                    let zero = math::float(&mut self.builder, lanes, 0.0);
                    math::select_cmp(
                        &mut self.builder,
                        lanes,
                        FloatCC::NotEqual,
                        values[c],
                        zero,
                        values[a],
                        values[b],
                    )
                }
            };
            values.push(v);
        }
        *values.last().expect("expressions are not empty")
    }

    fn translate_unary(&mut self, op: UnaryOp, lanes: Lanes, x: Value) -> Value {
        let called = super::runtime::UNARY_OPS.iter().position(|&o| o == op);
        if let Some(k) = called.filter(|_| lanes.float == types::F64) {
            return self.call_per_lane(self.runtime.unary[k], lanes, x, None);
        }
        let b = &mut self.builder;
        match op {
            UnaryOp::Neg => b.ins().fneg(x),
            UnaryOp::Abs => b.ins().fabs(x),
            UnaryOp::StopGradient => x,
            UnaryOp::Sqrt => b.ins().sqrt(x),
            UnaryOp::Exp => math::exp(b, lanes, self.fma, x),
            UnaryOp::Log => math::log(b, lanes, self.fma, x),
            UnaryOp::Tanh => math::tanh(b, lanes, self.fma, x),
            UnaryOp::Sigmoid => math::sigmoid(b, lanes, self.fma, x),
            UnaryOp::Sign => {
                let one = math::float(b, lanes, 1.0);
                let minus_one = math::float(b, lanes, -1.0);
                let zero = math::float(b, lanes, 0.0);
                let negative =
                    math::select_cmp(b, lanes, FloatCC::LessThan, x, zero, minus_one, zero);
                math::select_cmp(b, lanes, FloatCC::GreaterThan, x, zero, one, negative)
            }
            UnaryOp::Powf(p) => self.translate_powf(lanes, x, p),
            UnaryOp::Sin => self.call_per_lane(self.runtime.unary[0], lanes, x, None),
            UnaryOp::Cos => self.call_per_lane(self.runtime.unary[1], lanes, x, None),
            UnaryOp::Tan => self.call_per_lane(self.runtime.unary[2], lanes, x, None),
            UnaryOp::Erf => self.call_per_lane(self.runtime.unary[7], lanes, x, None),
        }
    }

    /// x^p for a constant p: small integer and half powers inline, others through libm.
    fn translate_powf(&mut self, lanes: Lanes, x: Value, p: f64) -> Value {
        let b = &mut self.builder;
        let one = math::float(b, lanes, 1.0);
        match p {
            0.0 => one,
            1.0 => x,
            2.0 => b.ins().fmul(x, x),
            3.0 => {
                let x2 = b.ins().fmul(x, x);
                b.ins().fmul(x2, x)
            }
            -1.0 => b.ins().fdiv(one, x),
            -2.0 => {
                let x2 = b.ins().fmul(x, x);
                b.ins().fdiv(one, x2)
            }
            0.5 => b.ins().sqrt(x),
            _ => {
                let p = math::constant(b, self.scalar, p);
                self.call_per_lane(self.runtime.powf, lanes, x, Some(p))
            }
        }
    }

    /// Calls a scalar runtime function on each lane of `x` (with `extra` as a second
    /// argument when given).
    fn call_per_lane(
        &mut self,
        callee: FuncRef,
        lanes: Lanes,
        x: Value,
        extra: Option<Value>,
    ) -> Value {
        let call = |this: &mut Self, v: Value| {
            let args: Vec<Value> = std::iter::once(v).chain(extra).collect();
            let inst = this.builder.ins().call(callee, &args);
            this.builder.inst_results(inst)[0]
        };
        if lanes.width == 1 {
            return call(self, x);
        }
        let mut result = x;
        for lane in 0..lanes.width as u8 {
            let v = self.builder.ins().extractlane(x, lane);
            let y = call(self, v);
            result = self.builder.ins().insertlane(result, y, lane);
        }
        result
    }

    fn translate_binary(&mut self, op: BinaryOp, lanes: Lanes, x: Value, y: Value) -> Value {
        let b = &mut self.builder;
        match op {
            BinaryOp::Add => b.ins().fadd(x, y),
            BinaryOp::Sub => b.ins().fsub(x, y),
            BinaryOp::Mul => b.ins().fmul(x, y),
            BinaryOp::Div => b.ins().fdiv(x, y),
            BinaryOp::Max => math::max(b, lanes, x, y),
            BinaryOp::Greater | BinaryOp::Equal => {
                let cc = if op == BinaryOp::Greater {
                    FloatCC::GreaterThan
                } else {
                    FloatCC::Equal
                };
                let one = math::float(b, lanes, 1.0);
                let zero = math::float(b, lanes, 0.0);
                math::select_cmp(b, lanes, cc, x, y, one, zero)
            }
        }
    }

    /// The address of element position `at` (an arena offset in elements), after checking it
    /// against the slot's buffer when bounds checks are on.
    fn address(&mut self, slot: &Slot, at: Value, lanes: Lanes) -> Value {
        if self.bounds_checks {
            let id = slot.buffer.expect("memory slots have buffers");
            let buffer = &self.plan.buffers[id];
            // at − start <u len − width + 1, with len < width failing every access; in a split
            // body, start and len are the part's block or copy.
            let len = match (self.part, buffer.share) {
                (Some(_), super::lower::Share::Blocks) => buffer.len / self.plan.parts.max(1),
                _ => buffer.len,
            };
            let room = len as i64 - lanes.width as i64 + 1;
            let start = self.builder.ins().iconst(types::I64, buffer.offset as i64);
            let start = self.in_part(start, Some(id));
            let relative = self.builder.ins().isub(at, start);
            let inside = if room > 0 {
                self.builder
                    .ins()
                    .icmp_imm_s(IntCC::UnsignedLessThan, relative, room)
            } else {
                self.builder.ins().iconst(types::I8, 0)
            };
            let ok = self.builder.create_block();
            let code = self.status_code();
            self.builder
                .ins()
                .brif(inside, ok, &[], self.fail, &[code.into()]);
            self.builder.switch_to_block(ok);
        }
        self.element_address(at)
    }

    fn load(&mut self, slot: &Slot, at: Value, lanes: Lanes) -> Value {
        let address = self.address(slot, at, lanes);
        self.builder.ins().load(lanes.float, flags(), address, 0)
    }

    fn store(&mut self, slot: &Slot, at: Value, value: Value) {
        let lanes = if self.builder.func.dfg.value_type(value).is_vector() {
            Lanes::VECTOR
        } else {
            self.scalar
        };
        let address = self.address(slot, at, lanes);
        self.builder.ins().store(flags(), value, address, 0);
    }
}
