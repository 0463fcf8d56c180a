//! Loops: a [`LoopProgram`] lowered into one function — the prologue once, then the body
//! `steps` times, split into parts where its samples are independent: one part per thread, or
//! more where a part's block of them would not stay in cache.
//!
//! [`lower_loop`] appends a loop's kernels to a function under construction; the leaves its
//! programs read are found by the caller (a [`JitLoop`] binds them at every run, a compiled
//! training step keeps some resident). Carried state — read and written by the body — has two
//! buffers, even steps writing one and odd steps the other, so no step copies state.

use super::codegen::{Segment, Until};
use super::lower::{self, Affine, BufferId, Expr, Kernel, Lowered, Place, Share};
use super::{bind_leaves, verify_program, Float, Function, JitError, JitOptions, LeafSlot};
use crate::interp::Bindings;
use crate::ir::{LeafKind, LoopProgram, Program, Shape, ValueId, STEPS_RUN};
use crate::opt::split::{sample_major, split_rows, Split};
use std::collections::{BTreeSet, HashMap};

/// Bytes of per-sample values (a part's block of them) above which a loop body is split into
/// more parts than threads, as long as a part keeps [`MIN_PART_SAMPLES`] samples: about a
/// last-level cache. Each part runs every step on its block, so a block that stays in cache
/// across the steps is read from memory once.
const SHARED_CACHE_BYTES: usize = 32 << 20;

/// The fewest samples of a part split for [`SHARED_CACHE_BYTES`]: products on fewer rows lose
/// more to their packing than the cache gains.
const MIN_PART_SAMPLES: usize = 16;

/// Bytes of a part's block above which it is split further still, as long as its products
/// keep [`MIN_PRODUCT_ROWS`] rows: about a core's own (second-level) cache. A recurrent
/// relaxation's products run over every time step's rows, so its parts can be single samples:
/// the LSTM's fixed-mode relaxation at 200 steps (64 samples) ran 1.3x faster in 64 parts (a
/// megabyte each) than in 4, on a Xeon with 2 MB of L2 per core. Feed-forward products run
/// over a part's samples: the convolutional, residual and feed-forward examples ran slower or
/// no faster split finer than the shared cache asks, and so does an unrolled loop's body
/// (see [`MIN_PART_ELEMENTS`]).
const CORE_CACHE_BYTES: usize = 1 << 20;

/// The fewest rows of a part's products (all but small ones: see [`large_enough`]) when split
/// for [`CORE_CACHE_BYTES`].
const MIN_PRODUCT_ROWS: usize = 128;

/// The fewest elements a part's computed values hold on average when split for
/// [`CORE_CACHE_BYTES`].
const MIN_PART_ELEMENTS: usize = 4096;

/// A loop body split into parts (see `opt::split`), where it splits and the work every part
/// would repeat is small: at most a tenth of the body's. One part per thread, or a multiple of
/// that where a part's block of the per-sample values would not fit in cache.
fn split_body(body: &Program, threads: usize) -> Option<Split> {
    // A body that updates the parameters (the incremental schedule) reads their new values
    // in every sample's next step: its parts would have to meet at every step.
    if body
        .outputs
        .iter()
        .any(|o| body.leaf_named(LeafKind::Param, &o.name).is_some())
    {
        return None;
    }
    let split = |parts: usize| {
        let split = split_rows(body, parts, |leaf| {
            leaf.op != crate::ir::Op::Leaf(LeafKind::Param)
        })?;
        (split.repeated_flops * 10 <= crate::ir::flops(body)).then_some(split)
    };
    let mut chosen = split(threads)?;
    loop {
        let (bytes, samples) = block_size(&chosen);
        let for_shared = bytes > SHARED_CACHE_BYTES && samples >= 2 * MIN_PART_SAMPLES;
        if !for_shared && bytes <= CORE_CACHE_BYTES {
            return Some(chosen);
        }
        match split(chosen.parts * 2) {
            Some(finer) if for_shared || large_enough(&finer) => chosen = finer,
            _ => return Some(chosen),
        }
    }
}

/// The bytes of one part's block of the per-sample values, and the fewest rows of a block.
fn block_size(split: &Split) -> (usize, usize) {
    let mut bytes = 0;
    let mut rows = usize::MAX;
    for (node, axis) in split.program.nodes.iter().zip(&split.axes) {
        if let Some(a) = *axis {
            bytes += node.shape.numel() * std::mem::size_of::<f32>();
            rows = rows.min(node.shape.dims()[a]);
        }
    }
    (bytes, rows)
}

/// Whether a part's products keep [`MIN_PRODUCT_ROWS`] rows and its convolutions
/// [`MIN_PART_SAMPLES`] samples — all but small ones, which do at most an eighth of the body's
/// work (a recurrent relaxation's message to its last step, over one step's rows) — and its
/// values hold [`MIN_PART_ELEMENTS`] elements on average.
fn large_enough(split: &Split) -> bool {
    let program = &split.program;
    let small: u64 = program
        .nodes
        .iter()
        .zip(&split.axes)
        .filter(|(node, axis)| {
            let dims = node.shape.dims();
            axis.is_some()
                && match node.op {
                    crate::ir::Op::MatMul => {
                        dims[..dims.len() - 1].iter().product::<usize>() < MIN_PRODUCT_ROWS
                    }
                    crate::ir::Op::Conv2d(_)
                    | crate::ir::Op::Conv2dInputGrad(_)
                    | crate::ir::Op::Conv2dWeightGrad(_) => dims[0] < MIN_PART_SAMPLES,
                    _ => false,
                }
        })
        .map(|(node, _)| crate::ir::node_flops(program, node))
        .sum();
    // A part's elementwise kernels, too, each over many elements: an unrolled loop's
    // per-iteration kernels over a few samples' rows cost more in loop overhead than the
    // cache gains (the LSTM unrolled over 50 steps ran 1.2x slower in 16 parts than in 4).
    let restricted: Vec<usize> = program
        .nodes
        .iter()
        .zip(&split.axes)
        .filter(|(node, axis)| axis.is_some() && !matches!(node.op, crate::ir::Op::Leaf(_)))
        .map(|(node, _)| node.shape.numel())
        .collect();
    let elements = restricted.iter().sum::<usize>() / restricted.len().max(1);
    small * 8 <= crate::ir::flops(program) && elements >= MIN_PART_ELEMENTS
}

/// Where a named state entry of a loop lives.
#[derive(Clone, Copy, Debug)]
pub(super) enum StateHome {
    /// Written by the prologue or the body but not both read and written by the body.
    Single(BufferId),
    /// Carried: the body reads it and writes it. Even steps leave it in `even`, odd steps in
    /// `odd`; the two copies of the body alternate between them.
    Carried { even: BufferId, odd: BufferId },
}

impl StateHome {
    /// The buffer holding the entry after `steps` steps.
    pub fn after(self, steps: usize) -> BufferId {
        match self {
            StateHome::Single(b) => b,
            StateHome::Carried { even, odd } => {
                if steps % 2 == 1 {
                    odd
                } else {
                    even
                }
            }
        }
    }
}

/// One named state entry of a compiled loop.
#[derive(Clone, Debug)]
pub(super) struct StateEntry {
    pub name: String,
    pub shape: Shape,
    pub home: StateHome,
    pub prologue_writes: bool,
    pub body_writes: bool,
}

/// A loop's kernels, appended to a function under construction.
pub(super) struct LoweredLoop {
    /// The prologue's kernels, then the loop.
    pub segments: Vec<Segment>,
    /// Every state entry, in the order the programs name it.
    pub state: Vec<StateEntry>,
    /// Carried state the prologue does not set: initialised from the leaves of the same name.
    pub initial: Vec<LeafSlot>,
    /// State entries stored with their samples first (see `opt::split::sample_major`), each
    /// with its permutation: their `shape` is the stored one.
    pub permuted: Vec<(String, Vec<usize>)>,
}

/// Appends `program`'s prologue and body (twice: even and odd steps) to `lowered`; `leaf`
/// gives the buffer of each leaf the programs read that is not loop state.
pub(super) fn lower_loop(
    lowered: &mut Lowered,
    program: &LoopProgram,
    options: &JitOptions,
    leaf: &mut dyn FnMut(&mut Lowered, &Program, ValueId, LeafKind) -> BufferId,
) -> Result<LoweredLoop, JitError> {
    verify_program(&program.prologue)?;
    verify_program(&program.body)?;
    // A loop with a stopping test runs whole: the test reads the whole batch's energy.
    let mut split = match program.until {
        Some(_) => None,
        None => split_body(&program.body, options.threads),
    };
    // A body whose samples are not its state's first axis (a loop's stacked units) splits
    // once its state is stored with the samples first.
    let rewritten = match (&split, &program.until) {
        (None, None) => sample_major(program, options.threads).and_then(|(p, permuted)| {
            let split = split_body(&p.body, options.threads)?;
            Some((p, permuted, split))
        }),
        _ => None,
    };
    let mut permuted = Vec::new();
    let program = match rewritten {
        Some((p, moved, s)) => {
            split = Some(s);
            permuted = moved;
            std::borrow::Cow::Owned(p)
        }
        None => std::borrow::Cow::Borrowed(program),
    };
    // One function runs all its split regions (this body, scans) in one number of parts.
    if split
        .as_ref()
        .is_some_and(|s| lowered.parts > 1 && lowered.parts != s.parts)
    {
        split = None;
    }
    if let Some(s) = &split {
        lowered.scan_parts = s.parts;
    }
    let prologue = &program.prologue;
    let body = &program.body;

    // State entries, by name, in the order run_loop reports them.
    let body_reads: BTreeSet<&str> = lower::needed_leaves(body)
        .into_iter()
        .filter_map(|(id, _)| body.node(id).name.as_deref())
        .collect();
    let body_writes: BTreeSet<&str> = body.outputs.iter().map(|o| o.name.as_str()).collect();
    let mut homes: HashMap<String, StateHome> = HashMap::new();
    let mut state = Vec::new();
    let mut shapes: Vec<(&str, Shape)> = Vec::new();
    for o in &prologue.outputs {
        shapes.push((&o.name, prologue.shape(o.value).clone()));
    }
    for o in &body.outputs {
        shapes.push((&o.name, body.shape(o.value).clone()));
    }
    for (name, shape) in shapes {
        if homes.contains_key(name) {
            continue;
        }
        let len = shape.numel();
        let home = if body_reads.contains(name) && body_writes.contains(name) {
            StateHome::Carried {
                even: lowered.buffer(format!("state {name}"), len, true),
                odd: lowered.buffer(format!("state {name} (odd steps)"), len, true),
            }
        } else {
            StateHome::Single(lowered.buffer(format!("state {name}"), len, true))
        };
        homes.insert(name.to_string(), home);
        state.push(StateEntry {
            name: name.to_string(),
            shape,
            home,
            prologue_writes: prologue.output(name).is_some(),
            body_writes: body_writes.contains(name),
        });
    }

    let mut prologue_leaves = HashMap::new();
    for (id, kind) in lower::needed_leaves(prologue) {
        prologue_leaves.insert(id, leaf(lowered, prologue, id, kind));
    }
    let written_by_prologue: BTreeSet<&str> =
        prologue.outputs.iter().map(|o| o.name.as_str()).collect();
    let mut initial = Vec::new();
    // The body's leaves for the even copy (reading `even`) and the odd copy.
    let mut body_leaves = [HashMap::new(), HashMap::new()];
    for (id, kind) in lower::needed_leaves(body) {
        let node = body.node(id);
        let name = node.name.as_deref().unwrap_or("");
        let (even, odd) = match homes.get(name) {
            Some(&StateHome::Carried { even, odd }) => {
                if !written_by_prologue.contains(name) {
                    initial.push(LeafSlot {
                        name: name.to_string(),
                        kind,
                        shape: node.shape.clone(),
                        buffer: even,
                    });
                }
                (even, odd)
            }
            // Read but not written by the body: set once by the prologue.
            Some(&StateHome::Single(b)) => (b, b),
            None => {
                let b = leaf(lowered, body, id, kind);
                (b, b)
            }
        };
        body_leaves[0].insert(id, even);
        body_leaves[1].insert(id, odd);
    }

    // A split body reads and writes the per-sample state, data and results in blocks.
    if let Some(split) = &split {
        for (id, _) in lower::needed_leaves(body) {
            if split.restricted(id) {
                for reads in &body_leaves {
                    lowered.buffers[reads[&id]].share = Share::Blocks;
                }
            }
        }
        for o in &body.outputs {
            for odd in [false, true] {
                let b = homes[&o.name].after(usize::from(odd));
                lowered.buffers[b].share = Share::Blocks;
            }
        }
    }

    let prologue_targets: Vec<Option<BufferId>> = prologue
        .outputs
        .iter()
        .map(|o| Some(homes[&o.name].after(0)))
        .collect();
    let start = lowered.kernels.len();
    lowered.lower(prologue, &prologue_leaves, &prologue_targets);
    let prologue_end = lowered.kernels.len();
    // The first copy runs on even step counts: reads `even`, writes `odd`. A split body is
    // lowered on one block, with one thread and temporaries of its own per part.
    let part_body = split.as_ref().map(|s| &s.program);
    let conv_ways = lowered.conv_ways;
    if let Some(split) = &split {
        lowered.parts = split.parts;
        lowered.private = true;
        lowered.conv_ways = 1;
    }
    let lowered_body = part_body.unwrap_or(body);
    let mut ends = [prologue_end; 2];
    for (copy, reads) in body_leaves.iter().enumerate() {
        let targets: Vec<Option<BufferId>> = body
            .outputs
            .iter()
            .map(|o| Some(homes[&o.name].after(1 - copy)))
            .collect();
        lowered.lower(lowered_body, reads, &targets);
        ends[copy] = lowered.kernels.len();
        if copy == 0 && update_in_place(lowered, prologue_end..ends[0], lowered_body, &mut homes) {
            for entry in &mut state {
                entry.home = homes[&entry.name];
            }
            ends[1] = ends[0];
            break;
        }
    }
    lowered.private = false;
    lowered.conv_ways = conv_ways;
    let first = prologue_end..ends[0];
    // A body that updates its state in place is the same for even and odd steps.
    let second = if ends[1] == ends[0] {
        first.clone()
    } else {
        ends[0]..ends[1]
    };
    let until = match &program.until {
        Some(test) => Some(stopping_test(lowered, test, &homes, &mut state)?),
        None => None,
    };
    let looped = match &split {
        Some(split) => {
            lowered.part_kernels.push(prologue_end..ends[1]);
            Segment::Parts {
                first,
                second,
                parts: split.parts,
            }
        }
        None => Segment::Loop {
            first,
            second,
            until,
        },
    };
    if initial
        .iter()
        .any(|i| permuted.iter().any(|(n, _)| *n == i.name))
    {
        return Err(JitError::Codegen(
            "a loop's state set from outside is stored transposed".to_string(),
        ));
    }
    Ok(LoweredLoop {
        segments: vec![Segment::Kernels(start..prologue_end), looped],
        state,
        initial,
        permuted,
    })
}

/// The buffers and kernels of a loop's stopping test (the body output `test`): its flag, the
/// steps-run entry (added to `state`), and the copies that move the carried state between the
/// even and odd buffers.
fn stopping_test(
    lowered: &mut Lowered,
    test: &str,
    homes: &HashMap<String, StateHome>,
    state: &mut Vec<StateEntry>,
) -> Result<Until, JitError> {
    let Some(&StateHome::Single(flag)) = homes.get(test) else {
        return Err(JitError::Codegen(format!(
            "the stopping test `{test}` is not a scalar the body writes"
        )));
    };
    let steps_run = lowered.buffer(format!("state {STEPS_RUN}"), 1, true);
    state.push(StateEntry {
        name: STEPS_RUN.to_string(),
        shape: Shape::scalar(),
        home: StateHome::Single(steps_run),
        prologue_writes: false,
        body_writes: true,
    });
    let mut copies = |from_odd: bool| {
        let start = lowered.kernels.len();
        for entry in state.iter() {
            if let StateHome::Carried { even, odd } = entry.home {
                let (from, to) = if from_odd { (odd, even) } else { (even, odd) };
                let dims = entry.shape.dims().to_vec();
                let whole = Affine::contiguous(&dims);
                lowered.kernels.push(Kernel::Map {
                    dims,
                    out: Place {
                        buffer: to,
                        map: whole.clone(),
                    },
                    expr: Expr::Load {
                        buffer: from,
                        map: whole,
                    },
                });
            }
        }
        start..lowered.kernels.len()
    };
    let to_even = copies(true);
    let to_odd = copies(false);
    Ok(Until {
        flag,
        steps_run,
        to_even,
        to_odd,
    })
}

/// Makes the body's first copy (`kernels`), which reads the carried state from the `even`
/// buffers and writes it to the `odd` ones, update every entry in place in `even` instead,
/// where that changes no result: every entry's one writer reads its old value only at the
/// element it writes, and nothing after it reads the old value. Fixed-mode relaxation, whose
/// updates read only a node's own error and its children's, written in topological order,
/// is such a body. Returns whether it did (for every entry, or else for none); the `odd`
/// buffers are then unused.
fn update_in_place(
    lowered: &mut Lowered,
    kernels: std::ops::Range<usize>,
    body: &Program,
    homes: &mut HashMap<String, StateHome>,
) -> bool {
    let mut writers = Vec::new();
    for o in &body.outputs {
        let Some(&StateHome::Carried { even, odd }) = homes.get(&o.name) else {
            return false;
        };
        let dims = body.shape(o.value).dims();
        match lower::in_place_writers(&lowered.kernels, kernels.clone(), odd, even, dims) {
            Some(ws) => writers.push((o.name.clone(), ws, even, odd)),
            None => return false,
        }
    }
    for (name, ws, even, odd) in writers {
        for w in ws {
            if let lower::Kernel::Map { out, .. } = &mut lowered.kernels[w] {
                out.buffer = even;
            }
        }
        lowered.buffers[odd].len = 0;
        lowered.buffers[odd].pinned = false;
        homes.insert(name, StateHome::Single(even));
    }
    true
}

/// One compiled [`LoopProgram`]: the prologue and the whole loop in one native function.
pub struct JitLoop {
    function: Function,
    leaves: Vec<LeafSlot>,
    /// Carried state the prologue does not set: initialised from the leaves of the same name.
    initial: Vec<LeafSlot>,
    /// The final state, in the order the programs name it.
    state: Vec<StateEntry>,
    /// State stored transposed, read back through the inverse.
    permuted: Vec<(String, Vec<usize>)>,
}

impl JitLoop {
    pub fn compile(program: &LoopProgram, options: &JitOptions) -> Result<JitLoop, JitError> {
        let mut lowered = Lowered {
            conv_ways: options.threads,
            scan_parts: options.threads,
            split_scan_flops: options.split_scan_flops,
            ..Lowered::default()
        };
        // Leaves by name, shared by the prologue and the body.
        let mut leaves: Vec<LeafSlot> = Vec::new();
        let mut leaf_buffer = |lowered: &mut Lowered, p: &Program, id: ValueId, kind| {
            let node = p.node(id);
            let name = node.name.clone().unwrap_or_default();
            if let Some(slot) = leaves.iter().find(|s| s.name == name) {
                return slot.buffer;
            }
            let buffer = lowered.buffer(format!("leaf {name}"), node.shape.numel(), true);
            leaves.push(LeafSlot {
                name,
                kind,
                shape: node.shape.clone(),
                buffer,
            });
            buffer
        };
        let looped = lower_loop(&mut lowered, program, options, &mut leaf_buffer)?;
        let layout = super::codegen::Layout(looped.segments);
        let function = Function::compile(&lowered, &layout, options)?;
        Ok(JitLoop {
            function,
            leaves,
            initial: looped.initial,
            state: looped.state,
            permuted: looped.permuted,
        })
    }

    /// Runs the prologue and `steps` body steps: the same contract as `interp::run_loop::<T>`
    /// (`T` the dtype compiled for) without the observer. Returns the final state.
    pub fn run<T: Float>(
        &mut self,
        leaves: &Bindings<T>,
        steps: usize,
    ) -> Result<Bindings<T>, JitError> {
        bind_leaves(&mut self.function, &self.leaves, &[leaves])?;
        bind_leaves(&mut self.function, &self.initial, &[leaves])?;
        self.function.call(steps)?;
        let mut out = Bindings::new();
        for entry in &self.state {
            if entry.prologue_writes || (entry.body_writes && steps > 0) {
                let mut value = self.function.tensor(entry.home.after(steps), &entry.shape);
                if let Some((_, perm)) = self.permuted.iter().find(|(n, _)| *n == entry.name) {
                    value = restored(value, perm);
                }
                out.insert(entry.name.clone(), value);
            } else if let Some(v) = leaves.get(&entry.name) {
                // run_loop reports a body output that no step has written from the leaves.
                out.insert(entry.name.clone(), v.clone());
            }
        }
        Ok(out)
    }

    /// The Cranelift IR of the compiled function, before optimisation.
    pub fn clif(&self) -> &str {
        &self.function.clif
    }

    pub fn plan(&self) -> &super::BufferPlan {
        &self.function.plan
    }
}

/// A state entry stored transposed by `perm` (stored axis i = original axis `perm[i]`), in
/// its original layout.
fn restored<T: Float>(
    stored: crate::interp::Tensor<T>,
    perm: &[usize],
) -> crate::interp::Tensor<T> {
    let mut inverse = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inverse[p] = i;
    }
    stored
        .permuted_axes(inverse)
        .as_standard_layout()
        .into_owned()
}

/// A program reading a state entry stored transposed by `perm` and returning it in its
/// original layout: what a later stage of a compiled step reads.
pub(super) fn restoring(name: &str, stored: &Shape, perm: &[usize]) -> Program {
    let mut p = Program::new(format!("restore {name}"));
    let leaf = p.leaf(LeafKind::State, name, stored.clone());
    let mut inverse = vec![0; perm.len()];
    for (i, &q) in perm.iter().enumerate() {
        inverse[q] = i;
    }
    let value = p.transpose(leaf, inverse);
    p.set_output(name, value);
    p
}

#[cfg(test)]
mod tests {
    use super::split_body;

    /// A relaxation body over `x` (samples first) whose one product multiplies `x`'s rows,
    /// reshaped to `rows`, by a parameter of `width` columns.
    fn body(x: &[usize], rows: [usize; 2], width: usize) -> crate::ir::Program {
        let dims = |d: &[usize]| {
            d.iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let [m, k] = rows;
        let mut y = x.to_vec();
        *y.last_mut().expect("a last axis") = width;
        crate::ir::from_text(&format!(
            "program body {{
  %0 = state x : [{x}]
  %1 = param w : [{k}, {width}]
  %2 = reshape %0 : [{m}, {k}]
  %3 = matmul %2, %1 : [{m}, {width}]
  %4 = reshape %3 : [{y}]
  %5 = tanh %4 : [{y}]
  return x = %5
}}
",
            x = dims(x),
            y = dims(&y),
        ))
        .expect("parses")
    }

    /// A body whose product runs over every time step's rows splits down to parts that stay
    /// in a core's cache; one whose product runs over its samples keeps enough rows per part
    /// for the product; one that fits in cache splits once per thread.
    #[test]
    fn parts_stay_in_cache_while_products_keep_their_rows() {
        let recurrent = split_body(&body(&[64, 200, 32], [12800, 32], 32), 2).expect("splits");
        // 64 samples of 200 steps: 2.4 MB a part on two parts, 0.6 MB on eight.
        assert_eq!(recurrent.parts, 8);
        let wide = split_body(&body(&[512, 4096], [512, 4096], 4096), 2).expect("splits");
        // 128 rows a part on four parts; eight would leave 64.
        assert_eq!(wide.parts, 4);
        let small = split_body(&body(&[64, 256], [64, 256], 256), 2).expect("splits");
        assert_eq!(small.parts, 2);
    }
}
