//! `for` loops lowered as scans: the body lowered once, into a program of its own.
//!
//! A loop stays one structured loop ([`Op::Scan`]) whenever its body means the same thing at
//! every iteration up to the slices it reads: the loop index appears only in indices (`x[..,
//! t]`, `w[l]`, `y[.., t + 1]`), and the names the body rebinds keep their shapes. Compile
//! time and code size are then independent of the trip count. Anything else — the index
//! sizing a shape or used as a number, a declaration in the body, a value carried with
//! changing shape, or an error — makes the loop unroll instead (`Lowerer::unroll`), which
//! gives the same meaning for every body, and reports errors at the iteration that makes them.
//!
//! While a body is lowered, `Lowerer::program` is the body's program and the loop's enclosing
//! program waits in its [`LoopFrame`]. Values from outside enter the body through leaves,
//! made when the body first reads a binding from outside (`capture`), per binding:
//!
//! - a binding the body rebinds (`h = ...`) is **carried**: its leaf is its value at the start
//!   of an iteration, its value at the end of the body the next iteration's;
//! - an outer tensor indexed by the loop index is **stacked**: the scan slices it, moved so
//!   that the indexed axis comes first, one slice per iteration;
//! - everything else is **invariant**.
//!
//! After the loop, each rebound name holds the scan's final value; `loss` statements in the
//! body become a per-iteration output whose sum is one term of the model's loss.

use super::lower::{Lowerer, Scope};
use super::value::Val;
use super::{LoopNote, LoopPolicy, AUTO_UNROLL_NODES};
use crate::ir::{BinaryOp, LeafKind, Node, Op, Program, Region, Scan, Shape, ValueId};
use crate::source::Span;
use crate::syntax::ast;
use std::collections::HashMap;

/// A binding of the enclosing scopes: its scope's index and its name.
type BindingKey = (usize, String);

/// What the scan passes for one of the body's leaves.
#[derive(Clone, Debug)]
enum Input {
    /// The whole value of the enclosing program.
    Invariant(ValueId),
    /// A value of the enclosing program whose first axis the scan slices; `source` is the
    /// body's invariant leaf it was indexed through.
    Stacked { arg: ValueId, source: ValueId },
}

/// A loop being lowered as a scan.
pub(super) struct LoopFrame {
    /// Index in `scopes` of the loop's own first scope: bindings below it are outside.
    scope_base: usize,
    /// The program enclosing the loop, set aside while its body is lowered.
    parent: Program,
    /// The first value of the loop index, and the number of iterations.
    lo: i64,
    trips: usize,
    /// The body's leaves made so far, with what the scan passes for each.
    inputs: Vec<(ValueId, Input)>,
    /// Outer bindings the body has read: their values in the body.
    captured: HashMap<BindingKey, Val>,
    /// Stacked inputs made so far, by what they slice: (enclosing value, axis, offset, whether
    /// in the loss region).
    stacked: HashMap<(ValueId, usize, i64, bool), ValueId>,
    /// Outer bindings the body rebinds, in the order first rebound, with the value and
    /// level each had before.
    assigned: Vec<(BindingKey, Val, usize)>,
    /// Why the loop cannot be a scan, once that is known.
    refused: Option<&'static str>,
}

/// What a scan attempt changes, to restore if the loop has to unroll instead.
struct Checkpoint {
    /// Loop notes: those of loops inside are dropped with the attempt.
    notes: usize,
    diagnostics: usize,
    loss_terms: usize,
    saw_loss: bool,
    unrolled: usize,
    /// For each enclosing loop, how many rebound bindings it had noted.
    assigned: Vec<usize>,
}

/// A loop over a sequence — it slices data by its index, and no parameter — of at least this
/// many iterations stays a scan however small it is. Such a scan's iterations treat each
/// sample alone and run as one part per thread (`opt::split`), and its relaxation's stacked
/// units update in place: on a 2-vCPU Xeon (AVX-512) the LSTM at 50 steps took, as a scan
/// against unrolled, 4.0 against 6.0 ms by BP, 4.6–5.0 against 6.7–6.9 exact and 162–173
/// against 173–181 ms fixed (T = 200), strict alike. Loops over depth (slicing stacked
/// parameters: resnet_deep's 64 blocks, 2.0 against 1.4 ms by PC) and short ones (rnn_digits'
/// 8 steps, 0.23 against 0.16 ms) stay unrolled.
const SEQUENCE_SCAN_TRIPS: usize = 32;

impl<'g, 'd> Lowerer<'g, 'd> {
    /// Whether the loop whose frame this was (its parent program now the current one) slices
    /// a stacked operand by its index, and only values that are not parameters.
    fn slices_only_data(&self, frame: &LoopFrame) -> bool {
        !frame.stacked.is_empty()
            && frame.stacked.keys().all(|&(outer, ..)| {
                !matches!(self.program.node(outer).op, Op::Leaf(LeafKind::Param))
            })
    }

    /// The program at nesting level `level` (0: the model's).
    fn program_at(&mut self, level: usize) -> &mut Program {
        if level == self.loops.len() {
            &mut self.program
        } else {
            &mut self.loops[level].parent
        }
    }

    /// Lowers a loop as one scan, if its body allows; false when it must unroll instead (then
    /// nothing of the attempt remains, not even its diagnostics).
    pub(super) fn lower_scan(
        &mut self,
        var: &ast::Ident,
        (lo, hi): (i64, i64),
        body: &[ast::Stmt],
        in_model: bool,
    ) -> bool {
        let trips = hi.saturating_sub(lo);
        let note = |scan: bool, why: &str| LoopNote {
            span: var.span,
            line: 0,
            var: var.name.clone(),
            trips: trips.max(0) as usize,
            scan,
            why: why.to_string(),
        };
        match self.loop_policy {
            LoopPolicy::Unroll => {
                self.loop_notes
                    .push(note(false, "as `--loops unroll` asks"));
                return false;
            }
            // A loop of one iteration (or none) gains nothing from being a loop.
            _ if trips < 2 => {
                self.loop_notes
                    .push(note(false, "a loop of one iteration or none is its body"));
                return false;
            }
            _ => {}
        }
        let checkpoint = Checkpoint {
            notes: self.loop_notes.len(),
            diagnostics: self.diagnostics.len(),
            loss_terms: self.loss_terms.len(),
            saw_loss: self.saw_loss,
            unrolled: self.unrolled,
            assigned: self.loops.iter().map(|f| f.assigned.len()).collect(),
        };
        if !self.enter(var.span) {
            return true;
        }
        let name = format!("{}.for_{}", self.program.name, var.name);
        let parent = std::mem::replace(&mut self.program, Program::new(name));
        self.loops.push(LoopFrame {
            scope_base: self.scopes.len(),
            parent,
            lo,
            trips: trips as usize,
            inputs: Vec::new(),
            captured: HashMap::new(),
            stacked: HashMap::new(),
            assigned: Vec::new(),
            refused: None,
        });
        let level = self.loops.len();
        self.scopes.push(Scope::default());
        self.bind(var, Val::Iteration { level, offset: 0 });
        for s in body {
            self.stmt(s, in_model);
        }
        self.scopes.pop();
        self.nesting -= 1;
        let frame = self.loops.pop().expect("the loop's frame");
        let body = std::mem::replace(&mut self.program, frame.parent);
        let frame = LoopFrame {
            parent: Program::default(),
            ..frame
        };
        let errors = self.diagnostics.len() > checkpoint.diagnostics;
        let clean = frame.refused.is_none() && !errors;
        // Notes of the loops inside go after this loop's own.
        let inner_notes = self.loop_notes.split_off(checkpoint.notes);
        let size = body.nodes.len() * frame.trips;
        let sequence = frame.trips >= SEQUENCE_SCAN_TRIPS && self.slices_only_data(&frame);
        let small = self.loop_policy == LoopPolicy::Auto && size <= AUTO_UNROLL_NODES && !sequence;
        if clean && !small && self.finish_scan(&frame, body, checkpoint.loss_terms) {
            let why = if sequence && size <= AUTO_UNROLL_NODES {
                format!(", as it runs over a sequence of at least {SEQUENCE_SCAN_TRIPS} steps")
            } else {
                String::new()
            };
            self.loop_notes.push(note(
                true,
                &format!(
                    "one body of {} nodes{why} (`--loops unroll` unrolls it)",
                    size / frame.trips
                ),
            ));
            self.loop_notes.extend(inner_notes);
            return true;
        }
        let why = match frame.refused {
            None if clean && small => format!(
                "as it is small: {} iterations × {} nodes ≤ {AUTO_UNROLL_NODES} (`--loops scan` keeps it)",
                frame.trips,
                size / frame.trips
            ),
            Some(why) => format!("as it cannot be a scan: {why}"),
            None if errors => {
                "as its index is used as a number (a shape, a slice bound, a count), or its body has an error"
                    .to_string()
            }
            None => "as a carried value changes shape or kind from one iteration to the next"
                .to_string(),
        };
        self.loop_notes.push(note(false, &why));
        // Undo the attempt: the bindings it rebound, its loss terms and diagnostics, and what
        // the enclosing loops noted of it.
        for ((s, name), val, level) in frame.assigned {
            let binding = self.scopes[s]
                .names
                .get_mut(&name)
                .expect("rebound bindings outlive the loop");
            binding.val = val;
            binding.level = level;
        }
        self.diagnostics.truncate(checkpoint.diagnostics);
        self.loss_terms.truncate(checkpoint.loss_terms);
        self.saw_loss = checkpoint.saw_loss;
        self.unrolled = checkpoint.unrolled;
        for (f, &n) in self.loops.iter_mut().zip(&checkpoint.assigned) {
            f.assigned.truncate(n);
        }
        false
    }

    /// Marks loop `frame` (an index into `loops`) as one that must unroll.
    pub(super) fn refuse(&mut self, frame: usize, why: &'static str) {
        self.loops[frame].refused.get_or_insert(why);
    }

    /// Notes that the binding at scope `s` is rebound: every loop being lowered that the
    /// binding is outside of carries it.
    pub(super) fn note_assignment(&mut self, s: usize, name: &str) {
        let binding = &self.scopes[s].names[name];
        let (val, level) = (binding.val.clone(), binding.level);
        for frame in &mut self.loops {
            if frame.scope_base > s && !frame.assigned.iter().any(|(k, ..)| k.0 == s && k.1 == name)
            {
                frame
                    .assigned
                    .push(((s, name.to_string()), val.clone(), level));
            }
        }
    }

    /// The value of the binding at scope `s` in the program being built, when the binding's
    /// value belongs to an enclosing program: it enters each loop between through a leaf.
    pub(super) fn capture(&mut self, s: usize, name: &str) -> Val {
        let binding = &self.scopes[s].names[name];
        let (val, level) = (binding.val.clone(), binding.level);
        self.capture_value((s, name.to_string()), val, level, self.loops.len())
    }

    /// `val`, a value of the program at `level`, as a value of the program at `to`.
    fn capture_value(&mut self, key: BindingKey, mut val: Val, level: usize, to: usize) -> Val {
        for frame in level..to {
            if let Some(known) = self.loops[frame].captured.get(&key) {
                val = known.clone();
                continue;
            }
            val = self.enter_loop(frame, &key.1, &val);
            self.loops[frame].captured.insert(key.clone(), val.clone());
        }
        val
    }

    /// Makes a leaf of loop `frame`'s body for every tensor of `val` (a value of the program
    /// enclosing it): invariant inputs of the scan until the body rebinds them.
    fn enter_loop(&mut self, frame: usize, name: &str, val: &Val) -> Val {
        match val {
            Val::Tensor(outer) => {
                let shape = self.program_at(frame).shape(*outer).clone();
                let body = self.program_at(frame + 1);
                let leaf_name = unique_leaf_name(body, name);
                let leaf = body.leaf(LeafKind::State, leaf_name, shape);
                self.loops[frame]
                    .inputs
                    .push((leaf, Input::Invariant(*outer)));
                Val::Tensor(leaf)
            }
            Val::Tuple(items) => Val::Tuple(
                items
                    .iter()
                    .map(|v| self.enter_loop(frame, name, v))
                    .collect(),
            ),
            Val::List(items) => Val::List(
                items
                    .iter()
                    .map(|v| self.enter_loop(frame, name, v))
                    .collect(),
            ),
            Val::Iteration { .. } => {
                // An outer loop's index inside an inner loop: the inner loop unrolls, so that
                // the index is the outer loop's again.
                self.refuse(frame, "the index of an enclosing loop is read");
                Val::Poison
            }
            other => other.clone(),
        }
    }

    /// `base` indexed by the loop index plus `offset` along `axis`, if the innermost loop
    /// being lowered can read it as a stacked input: `base` is a value from outside the loop
    /// and every iteration's index lies inside the axis. Returns the body's leaf holding the
    /// iteration's slice; `None` makes the loop unroll.
    pub(super) fn stacked_slice(
        &mut self,
        base: ValueId,
        axis: usize,
        (level, offset): (usize, i64),
    ) -> Option<ValueId> {
        let innermost = self.loops.len() - 1;
        if level != self.loops.len() {
            self.refuse(innermost, "an enclosing loop's index is used");
            return None;
        }
        let region = self.region;
        let frame = self.loops.last().expect("inside a loop");
        let outer = frame.inputs.iter().find_map(|(leaf, input)| match input {
            Input::Invariant(outer) if *leaf == base => Some(*outer),
            _ => None,
        });
        let Some(outer) = outer else {
            self.refuse(
                innermost,
                "a value computed in the loop is indexed by the loop index",
            );
            return None;
        };
        let key = (outer, axis, offset, region == Region::Loss);
        if let Some(&leaf) = frame.stacked.get(&key) {
            return Some(leaf);
        }
        let (lo, trips) = (frame.lo, frame.trips);
        let dims = frame.parent.shape(outer).dims().to_vec();
        let first = lo.checked_add(offset)?;
        let size = dims[axis] as i64;
        if first < 0 || first + trips as i64 > size {
            // Out of range at some iteration (or wrapping around from the end): unrolled, the
            // iteration that is out of range reports it.
            self.refuse(innermost, "the loop index runs outside the indexed axis");
            return None;
        }
        let parent = &mut self.loops.last_mut().expect("inside a loop").parent;
        let made = parent.nodes.len();
        let mut perm: Vec<usize> = (0..dims.len()).collect();
        perm.remove(axis);
        perm.insert(0, axis);
        let mut arg = parent.transpose(outer, perm);
        if first != 0 || trips as i64 != size {
            arg = parent.build(
                Op::Slice {
                    axis: 0,
                    start: first as usize,
                    end: first as usize + trips,
                },
                &[arg],
                None,
            );
        }
        for node in &mut parent.nodes[made..] {
            node.region = region;
        }
        let mut slice = dims;
        slice.remove(axis);
        let source_name = self.program.node(base).name.clone().unwrap_or_default();
        let leaf_name = unique_leaf_name(&self.program, &format!("{source_name}[t]"));
        let leaf = self
            .program
            .leaf(LeafKind::State, leaf_name, Shape::new(slice));
        let frame = self.loops.last_mut().expect("inside a loop");
        frame
            .inputs
            .push((leaf, Input::Stacked { arg, source: base }));
        frame.stacked.insert(key, leaf);
        Some(leaf)
    }

    /// Completes a scan whose body lowered cleanly: the scan node in the enclosing program
    /// (now `self.program` again), the rebound names bound to its final values, the body's
    /// loss terms summed into one term. False where the body turns out not to be one scan.
    fn finish_scan(&mut self, frame: &LoopFrame, mut body: Program, loss_from: usize) -> bool {
        let depth = self.loops.len();
        // Carried values: every outer binding the body rebinds.
        let mut carried: Vec<(ValueId, ValueId, ValueId)> = Vec::new(); // (leaf, init, next)
        let mut carried_keys = Vec::new();
        for ((s, name), before, level) in &frame.assigned {
            let now = &self.scopes[*s].names[name];
            let (Val::Tensor(next), Val::Tensor(_)) = (&now.val, before) else {
                return false;
            };
            let next = *next;
            // The value before the loop, as a value of the enclosing program.
            let init = match self.capture_value((*s, name.clone()), before.clone(), *level, depth) {
                Val::Tensor(init) => init,
                _ => return false,
            };
            if self.program.shape(init) != body.shape(next) {
                return false;
            }
            let leaf = match frame.captured.get(&(*s, name.clone())) {
                Some(Val::Tensor(leaf)) => *leaf,
                _ => {
                    let leaf_name = unique_leaf_name(&body, name);
                    body.leaf(LeafKind::State, leaf_name, body.shape(next).clone())
                }
            };
            // The next value is computed in the body, so that it is a node of its own.
            let next = if matches!(body.node(next).op, Op::Leaf(_)) {
                let shape = body.shape(next).clone();
                body.push(Node {
                    op: Op::Reshape,
                    args: vec![next],
                    shape,
                    name: Some(name.clone()),
                    region: Region::Model,
                })
            } else {
                next
            };
            carried.push((leaf, init, next));
            carried_keys.push((*s, name.clone()));
        }
        let is_carried = |leaf: ValueId| carried.iter().any(|c| c.0 == leaf);
        let mut stacked = Vec::new();
        let mut invariant = Vec::new();
        for (leaf, input) in &frame.inputs {
            match input {
                Input::Stacked { source, .. } if is_carried(*source) => return false,
                Input::Stacked { arg, .. } => stacked.push((*leaf, *arg)),
                Input::Invariant(outer) if !is_carried(*leaf) => invariant.push((*leaf, *outer)),
                Input::Invariant(_) => {}
            }
        }
        // Outputs: the carried values' next values, then the iteration's loss.
        for ((_, name), (_, _, next)) in carried_keys.iter().zip(&carried) {
            let output = unique_output_name(&body, name);
            body.outputs.push(crate::ir::Output {
                name: output,
                value: *next,
            });
        }
        let terms: Vec<(ValueId, Span)> = self.loss_terms.drain(loss_from..).collect();
        let loss_span = terms.first().map(|&(_, span)| span);
        if let Some((&(first, _), rest)) = terms.split_first() {
            let mut total = first;
            for &(term, _) in rest {
                total = body.binary(BinaryOp::Add, total, term);
                body.nodes[total.index()].region = Region::Loss;
            }
            body.set_output("loss", total);
        }
        // The body's leaves first, in operand order; leaves nothing reads are dropped.
        let users = body.users();
        let read = |leaf: &ValueId| !users[leaf.index()].is_empty();
        let mut order: Vec<ValueId> = carried.iter().map(|c| c.0).collect();
        let mut args: Vec<ValueId> = carried.iter().map(|c| c.1).collect();
        for (leaf, arg) in stacked.iter().filter(|(l, _)| read(l)) {
            order.push(*leaf);
            args.push(*arg);
        }
        let n_stacked = order.len() - carried.len();
        for (leaf, arg) in invariant.iter().filter(|(l, _)| read(l)) {
            order.push(*leaf);
            args.push(*arg);
        }
        let Some(mut body) = leaves_first(body, &order) else {
            return false;
        };
        body.prune();
        settle_body_regions(&mut body, &args, &self.program);
        let scan = Scan {
            trips: frame.trips,
            carries: carried.len(),
            stacked: n_stacked,
            reverse: false,
            body,
        };
        let shapes: Vec<Shape> = (0..scan.results())
            .map(|i| scan.result_shape(i).expect("one shape per result"))
            .collect();
        let scan_node = self.program.push(Node {
            op: Op::Scan(Box::new(scan)),
            args,
            shape: Shape::scalar(),
            name: None,
            region: Region::Model,
        });
        let mut results = Vec::new();
        for (i, shape) in shapes.into_iter().enumerate() {
            results.push(self.program.push(Node {
                op: Op::Result(i),
                args: vec![scan_node],
                shape,
                name: None,
                region: Region::Model,
            }));
        }
        for (k, (s, name)) in carried_keys.iter().enumerate() {
            let binding = self.scopes[*s]
                .names
                .get_mut(name)
                .expect("rebound bindings outlive the loop");
            binding.val = Val::Tensor(results[k]);
            binding.level = depth;
        }
        if let Some(span) = loss_span {
            let per_iteration = results[carried.len()];
            self.program.nodes[per_iteration.index()].region = Region::Loss;
            let total = self.program.reduce_sum(per_iteration, vec![0]);
            self.program.nodes[total.index()].region = Region::Loss;
            self.loss_terms.push((total, span));
        }
        true
    }
}

/// A name for a new state leaf of `program`, `name` unless a leaf has it already.
fn unique_leaf_name(program: &Program, name: &str) -> String {
    crate::ir::fresh_name(name, |n| program.leaf_named(LeafKind::State, n).is_some())
}

/// A name for a new output of `program` (`loss` is kept for the loss).
fn unique_output_name(program: &Program, name: &str) -> String {
    crate::ir::fresh_name(name, |n| program.output(n).is_some() || n == "loss")
}

/// The program with the leaves `order` first, in that order, and every other node after them
/// in its order; `None` if it has other leaves.
fn leaves_first(program: Program, order: &[ValueId]) -> Option<Program> {
    let mut renumber = vec![None; program.nodes.len()];
    let mut sequence: Vec<usize> = order.iter().map(|l| l.index()).collect();
    for (i, node) in program.nodes.iter().enumerate() {
        if matches!(node.op, Op::Leaf(_)) {
            if !order.iter().any(|l| l.index() == i) {
                // An unread leaf is dropped; a read one must be an operand.
                continue;
            }
        } else {
            sequence.push(i);
        }
    }
    for (new, &old) in sequence.iter().enumerate() {
        renumber[old] = Some(ValueId(new as u32));
    }
    let mut out = Program::new(program.name.clone());
    for &old in &sequence {
        let mut node = program.nodes[old].clone();
        for a in &mut node.args {
            *a = renumber[a.index()]?;
        }
        out.nodes.push(node);
    }
    for o in &program.outputs {
        out.outputs.push(crate::ir::Output {
            name: o.name.clone(),
            value: renumber[o.value.index()]?,
        });
    }
    Some(out)
}

/// The model-region rule of the model's program (`lower::settle_regions`) inside a body: a
/// loss-region node that reads a parameter — a leaf whose operand is a parameter of the
/// enclosing program — moves to the model region, with its loss-region operands.
fn settle_body_regions(body: &mut Program, args: &[ValueId], parent: &Program) {
    super::lower::settle_regions(body, |body, a| {
        matches!(body.node(a).op, Op::Leaf(_))
            && args
                .get(a.index())
                .is_some_and(|&arg| parent.node(arg).op == Op::Leaf(LeafKind::Param))
    });
}
