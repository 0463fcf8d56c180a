//! A whole training step as one native function: the gradient (backprop's program, the
//! closed-form PC step, or the relaxation loop and the learning program), a check that the
//! loss and energy are finite, and the optimiser's update — with the parameters and the
//! optimiser's state *resident*: they stay in the function's arena between steps and are
//! updated there, in place. A step copies in only the batch and reads out only scalars.
//!
//! The function is built from [`Stage`]s, lowered one after another into one kernel list.
//! A stage's `State` leaves read, by name, what an earlier stage produced (the final state of
//! a loop, the gradients of the learning program); resident leaves are the parameters and
//! the names the caller marks resident; everything else is an input bound at every run.
//! An output named like a resident leaf is that leaf's new value. It is written in place when
//! that is safe — the one kernel computing it reads the old value only at the element it
//! writes, and no later kernel reads the old value — and otherwise computed aside and copied
//! over at the end of its stage. The kernel that writes a parameter's new value also raises
//! a flag when one of them is not finite, at the cost of one subtraction per element.

use super::codegen::{Layout, Segment};
use super::looped::lower_loop;
pub use super::lower::Cost;
use super::lower::{self, Affine, BufferId, Expr, Kernel, Lowered, Place};
use super::pace::Pace;
use super::team;
use super::{bind_leaves, verify_program, Float, Function, JitError, JitOptions, LeafSlot};
use crate::interp::{Bindings, Tensor};
use crate::ir::{LeafKind, LoopProgram, Program, Shape, ValueId};
use crate::sema::Dtype;
use std::collections::{BTreeSet, HashMap};

/// One part of a compiled step, in the order they run.
pub enum Stage<'a> {
    /// A straight-line program.
    Run(&'a Program),
    /// A loop program, run for the step's number of steps; later stages read its final state.
    Loop(&'a LoopProgram),
    /// Ends the step with [`JitError::Diverged`] — before anything later has run — unless
    /// these scalars, produced by earlier stages, are all finite.
    Guard(Vec<String>),
    /// Copies these values, produced by earlier stages (a loop that also learns leaves the
    /// new parameters and moments in its final state), over the resident arrays of the same
    /// names. A parameter's copy raises its flag when a new value is not finite.
    Store(Vec<String>),
    /// Hands these values, produced by earlier stages, to `Exchange` in one buffer (a
    /// data-parallel job sums them over its processes) before later stages read them.
    Exchange(Vec<String>, super::Exchange),
}

/// Finds the buffer of every leaf the stages read.
struct Leaves<'a> {
    resident_names: &'a BTreeSet<String>,
    /// What earlier stages produced, by name.
    produced: HashMap<String, (Shape, BufferId)>,
    resident: Vec<LeafSlot>,
    inputs: Vec<LeafSlot>,
}

impl Leaves<'_> {
    fn is_resident(&self, name: &str, kind: LeafKind) -> bool {
        kind == LeafKind::Param || self.resident_names.contains(name)
    }

    fn slot(
        lowered: &mut Lowered,
        slots: &mut Vec<LeafSlot>,
        name: &str,
        kind: LeafKind,
        shape: &Shape,
    ) -> BufferId {
        if let Some(slot) = slots.iter().find(|s| s.name == name) {
            return slot.buffer;
        }
        let buffer = lowered.buffer(format!("leaf {name}"), shape.numel(), true);
        slots.push(LeafSlot {
            name: name.to_string(),
            kind,
            shape: shape.clone(),
            buffer,
        });
        buffer
    }

    fn buffer(
        &mut self,
        lowered: &mut Lowered,
        p: &Program,
        id: ValueId,
        kind: LeafKind,
    ) -> BufferId {
        let node = p.node(id);
        let name = node.name.as_deref().unwrap_or("");
        if kind == LeafKind::State {
            if let Some((_, b)) = self.produced.get(name) {
                return *b;
            }
        }
        if self.is_resident(name, kind) {
            Self::slot(lowered, &mut self.resident, name, kind, &node.shape)
        } else {
            Self::slot(lowered, &mut self.inputs, name, kind, &node.shape)
        }
    }
}

/// One compiled training step.
pub struct JitStep {
    function: Function,
    /// Bound at every run: the batch and per-step scalars.
    inputs: Vec<LeafSlot>,
    /// Kept between runs: the parameters and the optimiser's state.
    resident: Vec<LeafSlot>,
    /// Every value a stage produced, by name (loss, energy, ...).
    values: HashMap<String, (Shape, BufferId)>,
    /// For each parameter, the flag its update raises (NaN) when a new value is not finite.
    flags: Vec<(String, BufferId)>,
    steps: usize,
    cost: StepCost,
    kernels: Vec<KernelInfo>,
    /// Whether each run shares its work with the team, where the thread count was the
    /// default rather than asked for (see `pace`).
    pace: Option<Pace>,
}

/// One kernel of a compiled step, for profiles.
#[derive(Clone, Debug)]
pub struct KernelInfo {
    /// What it computes, in words.
    pub what: String,
    pub cost: Cost,
    /// How many times a step runs it (all parts together).
    pub runs: usize,
}

/// What one run of a compiled step does, counted from its kernels.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepCost {
    /// Floating-point operations, and those of matrix products and convolutions.
    pub flops: u64,
    pub product_flops: u64,
    /// Bytes the kernels read and write, each kernel's buffers counted once per run of it:
    /// the memory a step streams when its working set does not stay in cache.
    pub bytes: u64,
    /// The arena: every buffer of the step (the batch, the resident parameters, the
    /// relaxation's state, temporaries), in bytes.
    pub arena_bytes: u64,
}

impl JitStep {
    /// Compiles `stages` into one function; loops run `steps` steps. Parameters and the leaves
    /// named in `resident` are resident.
    pub fn compile(
        stages: &[Stage],
        resident: &BTreeSet<String>,
        steps: usize,
        options: &JitOptions,
    ) -> Result<JitStep, JitError> {
        let mut lowered = Lowered {
            conv_ways: options.threads,
            scan_parts: options.threads,
            split_scan_flops: options.split_scan_flops,
            ..Lowered::default()
        };
        let mut leaves = Leaves {
            resident_names: resident,
            produced: HashMap::new(),
            resident: Vec::new(),
            inputs: Vec::new(),
        };
        let mut segments = Vec::new();
        let mut flags = Vec::new();
        for stage in stages {
            match stage {
                Stage::Run(program) => {
                    verify_program(program)?;
                    let start = lowered.kernels.len();
                    let mut reads = HashMap::new();
                    for (id, kind) in lower::needed_leaves(program) {
                        reads.insert(id, leaves.buffer(&mut lowered, program, id, kind));
                    }
                    // Resident outputs are computed aside first; `commit` then moves them home.
                    let targets: Vec<Option<BufferId>> = program
                        .outputs
                        .iter()
                        .map(|o| {
                            let len = program.shape(o.value).numel();
                            let pinned = !resident.contains(&o.name) && !is_param(program, &o.name);
                            Some(lowered.buffer(format!("value {}", o.name), len, pinned))
                        })
                        .collect();
                    let buffers = lowered.lower(program, &reads, &targets);
                    for (o, buffer) in program.outputs.iter().zip(buffers) {
                        let shape = program.shape(o.value).clone();
                        let kind = if is_param(program, &o.name) {
                            LeafKind::Param
                        } else {
                            LeafKind::State
                        };
                        if leaves.is_resident(&o.name, kind) {
                            let home = Leaves::slot(
                                &mut lowered,
                                &mut leaves.resident,
                                &o.name,
                                kind,
                                &shape,
                            );
                            let writer = commit(&mut lowered, start, buffer, home, &shape);
                            if kind == LeafKind::Param {
                                let flag = lowered.buffer(format!("finite {}", o.name), 1, true);
                                lowered.checks.insert(writer, flag);
                                flags.push((o.name.clone(), flag));
                            }
                        } else {
                            leaves.produced.insert(o.name.clone(), (shape, buffer));
                        }
                    }
                    segments.push(Segment::Kernels(start..lowered.kernels.len()));
                }
                Stage::Loop(program) => {
                    let looped =
                        lower_loop(&mut lowered, program, options, &mut |l, p, id, kind| {
                            leaves.buffer(l, p, id, kind)
                        })?;
                    segments.extend(looped.segments);
                    leaves.inputs.extend(looped.initial);
                    let start = lowered.kernels.len();
                    for entry in looped.state {
                        let home = entry.home.after(steps);
                        let Some((_, perm)) =
                            looped.permuted.iter().find(|(n, _)| *n == entry.name)
                        else {
                            leaves.produced.insert(entry.name, (entry.shape, home));
                            continue;
                        };
                        // Stored transposed: later stages read it in its own layout.
                        let restore = super::looped::restoring(&entry.name, &entry.shape, perm);
                        let leaf = restore.leaf_named(LeafKind::State, &entry.name);
                        let reads: HashMap<ValueId, BufferId> =
                            leaf.into_iter().map(|l| (l, home)).collect();
                        let shape = restore.shape(restore.outputs[0].value).clone();
                        let buffer =
                            lowered.buffer(format!("value {}", entry.name), shape.numel(), false);
                        lowered.lower(&restore, &reads, &[Some(buffer)]);
                        leaves.produced.insert(entry.name, (shape, buffer));
                    }
                    segments.push(Segment::Kernels(start..lowered.kernels.len()));
                }
                Stage::Store(names) => {
                    let start = lowered.kernels.len();
                    for name in names {
                        let Some((shape, value)) = leaves.produced.get(name).cloned() else {
                            return Err(JitError::Codegen(format!(
                                "nothing earlier produces `{name}` to store"
                            )));
                        };
                        let kind = match leaves.resident.iter().find(|s| s.name == *name) {
                            Some(slot) => slot.kind,
                            None => LeafKind::State,
                        };
                        let home =
                            Leaves::slot(&mut lowered, &mut leaves.resident, name, kind, &shape);
                        let writer = commit(&mut lowered, start, value, home, &shape);
                        if kind == LeafKind::Param {
                            let flag = lowered.buffer(format!("finite {name}"), 1, true);
                            lowered.checks.insert(writer, flag);
                            flags.push((name.clone(), flag));
                        }
                    }
                    segments.push(Segment::Kernels(start..lowered.kernels.len()));
                }
                Stage::Exchange(names, exchange) => {
                    // As for a guard, a name no stage produces (the steps run, where no
                    // stopping test counts them) is not exchanged.
                    let buffers = names
                        .iter()
                        .filter_map(|n| leaves.produced.get(n).map(|(_, b)| *b))
                        .collect();
                    segments.push(Segment::Exchange(lowered.exchanges.len()));
                    lowered.exchanges.push((buffers, exchange.clone()));
                }
                Stage::Guard(names) => {
                    let buffers = names
                        .iter()
                        .filter_map(|n| leaves.produced.get(n).map(|(_, b)| *b))
                        .collect();
                    segments.push(Segment::Guard(buffers));
                }
            }
        }
        let layout = Layout(segments);
        let mut cost = StepCost::default();
        let mut kernels = Vec::new();
        for (kernel, runs) in lowered
            .kernels
            .iter()
            .zip(layout.kernel_runs(&lowered, steps))
        {
            kernels.push(KernelInfo {
                what: kernel.describe(&lowered.buffers),
                cost: kernel.cost(),
                runs,
            });
            let Cost {
                flops,
                bytes,
                product,
            } = kernel.cost();
            cost.flops += flops * runs as u64;
            cost.bytes += bytes * runs as u64;
            if product {
                cost.product_flops += flops * runs as u64;
            }
        }
        let function = Function::compile(&lowered, &layout, options)?;
        cost.arena_bytes = (super::element_bytes(options.dtype) * function.plan.arena_len) as u64;
        Ok(JitStep {
            function,
            inputs: leaves.inputs,
            resident: leaves.resident,
            values: leaves.produced,
            flags,
            steps,
            cost,
            kernels,
            pace: (options.auto_threads && options.threads > 1).then(Pace::default),
        })
    }

    /// Sets every resident array (parameters, optimiser state) from `arrays`.
    pub fn load<T: Float>(&mut self, arrays: &Bindings<T>) -> Result<(), JitError> {
        bind_leaves(&mut self.function, &self.resident, &[arrays])
    }

    /// The resident arrays as they are now.
    pub fn resident<T: Float>(&self) -> Bindings<T> {
        self.resident
            .iter()
            .map(|s| (s.name.clone(), self.function.tensor(s.buffer, &s.shape)))
            .collect()
    }

    /// One step on `inputs` (layers, the first holding a name wins: the batch, per-step
    /// scalars). A failed guard is
    /// [`JitError::Diverged`], with the resident arrays as they were before the step.
    pub fn run<T: Float>(&mut self, inputs: &[&Bindings<T>]) -> Result<(), JitError> {
        for &(_, flag) in &self.flags {
            self.function.slice_mut::<T>(flag)[0] = T::zero();
        }
        let Some(pace) = &mut self.pace else {
            bind_leaves(&mut self.function, &self.inputs, inputs)?;
            return self.function.call(self.steps);
        };
        // The batch's copy into the arena is shared like the step's kernels, and timed with
        // them.
        team::set_sharing(pace.sharing());
        let start = std::time::Instant::now();
        let result = bind_leaves(&mut self.function, &self.inputs, inputs)
            .and_then(|()| self.function.call(self.steps));
        pace.record(start.elapsed().as_secs_f64());
        team::set_sharing(true);
        result
    }

    /// Runs so far that shared their work with the team's helpers, and runs on the calling
    /// thread alone because that measured faster (a busy machine), trials of the other mode
    /// left out; `None` for a step compiled for one thread or for a thread count asked for.
    pub fn sharing_counts(&self) -> Option<(usize, usize)> {
        self.pace.as_ref().map(Pace::counts)
    }

    /// A scalar the last run produced (summed, if not a scalar), by name.
    pub fn scalar(&self, name: &str) -> Option<f64> {
        match self.function.dtype {
            Dtype::F32 => self
                .value::<f32>(name)
                .map(|t| t.iter().map(|&x| f64::from(x)).sum()),
            Dtype::F64 => self.value::<f64>(name).map(|t| t.sum()),
        }
    }

    /// A value the last run produced, by name.
    pub fn value<T: Float>(&self, name: &str) -> Option<Tensor<T>> {
        let (shape, buffer) = self.values.get(name)?;
        Some(self.function.tensor(*buffer, shape))
    }

    /// The parameters whose new value (after the last run) is not finite everywhere.
    pub fn non_finite(&self) -> Vec<&str> {
        self.flags
            .iter()
            .filter(|(_, flag)| {
                self.function
                    .is_nan(self.function.plan.buffers[*flag].offset)
            })
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// What one run does.
    pub fn cost(&self) -> StepCost {
        self.cost
    }

    /// The kernels, by index (the index [`take_kernel_times`](super::take_kernel_times)
    /// reports their times under).
    pub fn kernels(&self) -> &[KernelInfo] {
        &self.kernels
    }

    /// The Cranelift IR of the compiled function, before optimisation.
    pub fn clif(&self) -> &str {
        &self.function.clif
    }

    pub fn plan(&self) -> &super::BufferPlan {
        &self.function.plan
    }
}

/// Whether `program` has a parameter of this name.
fn is_param(program: &Program, name: &str) -> bool {
    program.leaf_named(LeafKind::Param, name).is_some()
}

/// Moves the value a stage computed into `aside` (its kernels from `start` on) to its
/// resident `home`: by retargeting the one kernel that writes it, where that is safe, else
/// by a copy at the end of the stage. Returns the kernel that now writes `home`.
fn commit(
    lowered: &mut Lowered,
    start: usize,
    aside: BufferId,
    home: BufferId,
    shape: &Shape,
) -> usize {
    let end = lowered.kernels.len();
    let dims = shape.dims().to_vec();
    let whole = Affine::contiguous(&dims);
    if let Some(writers) = lower::in_place_writers(&lowered.kernels, start..end, aside, home, &dims)
    {
        if let [w] = writers[..] {
            if let Kernel::Map { out, .. } = &mut lowered.kernels[w] {
                out.buffer = home;
            }
            return w;
        }
    }
    lowered.kernels.push(Kernel::Map {
        dims: dims.clone(),
        out: Place {
            buffer: home,
            map: whole.clone(),
        },
        expr: Expr::Load {
            buffer: aside,
            map: whole,
        },
    });
    lowered.kernels.len() - 1
}
