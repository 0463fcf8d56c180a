//! Loops under predictive coding: every iteration's PC nodes as one stacked unit.
//!
//! A relaxation step is synchronous: every node updates from the previous step's state. So the
//! T copies of a loop body's node are one unit `[T, ...]` whose predictions are computed for
//! all iterations at once, from the values of the same iteration and — for a carried value —
//! of the iteration before. [`stack`] turns a forward program with scans into such a flat
//! program: each scan's body stacked over its iterations (`ir::vmap`), with every read of a
//! carried value a *feedback* leaf. A feedback leaf stands for the carried value's node
//! shifted by one iteration along its loop's axis, the loop's initial value at the front:
//!
//! ```text
//! carried_in = concat(init, carried_out[0 .. T−1])      (a reverse loop: the other end)
//! ```
//!
//! The carried node is a relaxed PC node, so in the cut graph the feedback leaf reads its value
//! unit, shifted ([`Feedback::shifted`]): a product of the relaxation then carries every
//! message between neighbouring iterations as a shift of the stacked units, and each step
//! runs one kernel per node over `[T·B, ...]` instead of T small ones.
//!
//! The feedforward values are the one part that is sequential: the forward program's scans
//! run as they are, made to output their carried values at every iteration ([`expose`]); the
//! stacked program then computes everything else from those, for all iterations at once.

use crate::ir::vmap::{stack_node, Mapped, StackError};
use crate::ir::{LeafKind, Node, Op, Output, Program, Region, Scan, Shape, ValueId};

/// A forward program as the PC transform reads it.
#[derive(Clone, Debug)]
pub struct Stacked {
    /// The model's forward program, its loops scans.
    pub sequential: Program,
    /// The same computation with each loop's iterations stacked, carried values read through
    /// feedback leaves. Without loops, the forward program itself.
    pub program: Program,
    pub feedback: Vec<Feedback>,
    /// The stacked program's named nodes that are a loop body's node at every iteration
    /// (outermost loops without loops of their own).
    pub origins: Vec<Origin>,
}

/// A named node of the stacked program that is a loop body's node stacked over the
/// iterations: the sequential scan computes the same values, one iteration at a time.
#[derive(Clone, Debug, PartialEq)]
pub struct Origin {
    /// The node of the stacked program, `[rows, ...]`.
    pub stacked: ValueId,
    /// The scan in `sequential` and the node of its body.
    pub scan: ValueId,
    pub node: ValueId,
}

/// A read of a carried value in the stacked program.
#[derive(Clone, Debug, PartialEq)]
pub struct Feedback {
    /// The `State` leaf standing for the stacked value the body reads.
    pub leaf: ValueId,
    /// The node whose stacked value, one iteration later, the leaf is.
    pub carried: ValueId,
    /// The value the first iteration reads: shaped as `carried` without `axis`.
    pub init: ValueId,
    /// The loop's axis in the stacked values (0 for an outermost loop).
    pub axis: usize,
    pub reverse: bool,
    /// Where the carried value is in `sequential`: the scans enclosing it, outermost first
    /// (each a node id in its enclosing program), and its index among the innermost scan's
    /// carried values.
    pub path: Vec<ValueId>,
    pub index: usize,
    /// The iterations (by index) the stacked values hold along `axis`: all of the loop's, or
    /// all but the last run where that one is peeled off (see [`stack`]).
    pub rows: std::ops::Range<usize>,
}

impl Feedback {
    /// The PC node the carried value is: `carried` itself, or, where `carried` is an unnamed
    /// view (a slice or reshape the stacking made: an inner loop's final value, a row of its
    /// stacked node) of a node, that node, so that the view is not a node of its own (as
    /// unrolled, where the inner loop's last iteration is the node the outer one carries).
    pub fn carried_node(&self, p: &Program) -> ValueId {
        let mut id = self.carried;
        while let Some(arg) = selected_from(p, id) {
            id = arg;
        }
        id
    }

    /// Builds into `p` the carried value from `node`, the value in `p` of the carried node
    /// ([`Feedback::carried_node`]) of `source`: the views between them applied to it.
    pub fn carried_from(&self, source: &Program, p: &mut Program, node: ValueId) -> ValueId {
        let root = self.carried_node(source);
        let mut views = Vec::new();
        let mut id = self.carried;
        while id != root {
            views.push(id);
            id = source.node(id).args[0];
        }
        views.iter().rev().fold(node, |value, &v| {
            p.push(Node {
                args: vec![value],
                ..source.node(v).clone()
            })
        })
    }

    /// The rows of an exposed carried value (every iteration's, from [`expose`]) that the
    /// stacked carried node holds.
    pub fn stacked_rows(&self, p: &mut Program, exposed: ValueId) -> ValueId {
        let trips = p.shape(exposed).dims()[self.axis];
        if self.rows == (0..trips) {
            return exposed;
        }
        p.build(
            Op::Slice {
                axis: self.axis,
                start: self.rows.start,
                end: self.rows.end,
            },
            &[exposed],
            None,
        )
    }

    /// Builds into `p` the value the leaf stands for, from the carried node's stacked value
    /// `carried` and the initial value `init`, both values of `p`: `carried` shifted by one
    /// iteration along the loop's axis, `init` in the place that frees.
    pub fn shifted(&self, p: &mut Program, carried: ValueId, init: ValueId) -> ValueId {
        let dims = p.shape(carried).dims().to_vec();
        let trips = dims[self.axis];
        let mut first = dims.clone();
        first[self.axis] = 1;
        let init = p.reshape(init, Shape::new(first));
        if trips == 1 {
            // One iteration stacked: it reads the initial value alone.
            return init;
        }
        let kept = if self.reverse { 1..trips } else { 0..trips - 1 };
        let kept = p.build(
            Op::Slice {
                axis: self.axis,
                start: kept.start,
                end: kept.end,
            },
            &[carried],
            None,
        );
        let parts = if self.reverse {
            [kept, init]
        } else {
            [init, kept]
        };
        p.build(Op::Concat { axis: self.axis }, &parts, None)
    }
}

/// Whether a program has loops.
pub fn has_loops(program: &Program) -> bool {
    program.nodes.iter().any(|n| matches!(n.op, Op::Scan(_)))
}

/// The stacked form of a forward program. A loop with an op that has no stacked form (a
/// convolution whose weight changes between iterations) is unrolled instead, as are all the
/// program's loops then.
pub fn stack(forward: &Program) -> Stacked {
    let (flat, sequential) = match flatten(forward) {
        Ok(flat) => (flat, forward.clone()),
        Err(_) => {
            let mut unrolled = forward.clone();
            crate::opt::unroll::unroll(&mut unrolled, &|_| true);
            let flat = flatten(&unrolled).expect("a program without loops flattens");
            (flat, unrolled)
        }
    };
    let mut program = flat.program;
    program.inits = forward.inits.clone();
    Stacked {
        sequential,
        program,
        feedback: flat.feedback,
        origins: flat.origins,
    }
}

/// Makes the scan at `path` in `program` (a scan in a scan: the path's scans, outermost
/// first) output its carried value `index` at every iteration, through every enclosing scan;
/// returns the `result` node of `program` holding it, stacked `[T_outer, ..., T, ...]`.
pub fn expose(program: &mut Program, path: &[ValueId], index: usize) -> ValueId {
    let id = path[0];
    let Op::Scan(scan) = &mut program.nodes[id.index()].op else {
        unreachable!("feedback paths lead through scans")
    };
    let value = if path.len() == 1 {
        scan.body.outputs[index].value
    } else {
        expose(&mut scan.body, &path[1..], index)
    };
    expose_node(program, id, value)
}

/// Makes the scan `scan` of `program` output its body's node `node` at every iteration;
/// returns the `result` node of `program` holding it, stacked `[T, ...]`.
pub fn expose_node(program: &mut Program, scan: ValueId, node: ValueId) -> ValueId {
    let Op::Scan(s) = &mut program.nodes[scan.index()].op else {
        unreachable!("exposes a node of a scan")
    };
    s.body.outputs.push(Output {
        name: format!("exposed.{}", s.body.outputs.len()),
        value: node,
    });
    let result = s.body.outputs.len() - 1;
    let shape = s.result_shape(result).expect("the output just added");
    let region = program.node(scan).region;
    program.push(Node {
        op: Op::Result(result),
        args: vec![scan],
        shape,
        name: None,
        region,
    })
}

/// A program with its scans stacked (same outputs), and the feedback leaves it reads.
struct Flat {
    program: Program,
    feedback: Vec<Feedback>,
    /// At the outermost level only (see [`Stacked::origins`]).
    origins: Vec<Origin>,
}

fn flatten(source: &Program) -> Result<Flat, StackError> {
    let mut out = Program::new(source.name.clone());
    let mut feedback: Vec<Feedback> = Vec::new();
    let mut origins: Vec<Origin> = Vec::new();
    let mut map: Vec<ValueId> = Vec::with_capacity(source.nodes.len());
    // Each scan's results in `out`, by the scan's id.
    let mut results: std::collections::HashMap<ValueId, Vec<ValueId>> = Default::default();
    // A carried value's final value as the loss reads it: the same slice of its stacked node,
    // in the loss region, so that the loss reading it makes the carried node one the loss
    // reads (as unrolled, where the loss reads the last iteration's node) rather than making
    // the slice a node of its own.
    let mut for_loss: std::collections::HashMap<ValueId, ValueId> = Default::default();
    let users = source.users();
    for (i, node) in source.nodes.iter().enumerate() {
        let id = ValueId(i as u32);
        let value = match &node.op {
            Op::Leaf(kind) => {
                let name = node.name.clone().unwrap_or_default();
                match out.leaf_named(*kind, &name) {
                    Some(existing) => existing,
                    None => out.leaf(*kind, name, node.shape.clone()),
                }
            }
            Op::Scan(scan) => {
                let args: Vec<ValueId> = node.args.iter().map(|a| map[a.index()]).collect();
                // Where the model does not read a final carried value (the loss alone, or
                // nothing, does), the last iteration is peeled off the stack.
                let model_reads = |k: usize| {
                    users[i].iter().any(|&r| {
                        source.node(r).op == Op::Result(k)
                            && users[r.index()]
                                .iter()
                                .any(|&u| source.node(u).region == Region::Model)
                    })
                };
                let peel = !(0..scan.carries).all(model_reads);
                let stacked = stack_scan(
                    &mut out,
                    scan,
                    &args,
                    (id, node.region, peel),
                    &mut feedback,
                    &mut origins,
                )?;
                for &value in stacked.iter().take(scan.carries).filter(|_| !peel) {
                    let loss_value = loss_view(&mut out, value);
                    for_loss.insert(value, loss_value);
                }
                results.insert(id, stacked);
                // The scan node itself is never read but through its results.
                args.first().copied().unwrap_or(ValueId(0))
            }
            Op::Result(k) => results[&node.args[0]][*k],
            _ => {
                let args = node
                    .args
                    .iter()
                    .map(|a| map[a.index()])
                    .map(|a| match (node.region, for_loss.get(&a)) {
                        (Region::Loss, Some(&l)) => l,
                        _ => a,
                    })
                    .collect();
                out.push(Node {
                    args,
                    ..node.clone()
                })
            }
        };
        map.push(value);
    }
    out.outputs = Program::outputs_mapped(source, &map);
    Ok(Flat {
        program: out,
        feedback,
        origins,
    })
}

/// A copy in the loss region of a loop's final value: the slices and reshapes that select it
/// from the stacked node (through every level of nested loops) down to that node.
fn loss_view(out: &mut Program, id: ValueId) -> ValueId {
    let Some(arg) = selected_from(out, id) else {
        return id;
    };
    let arg = loss_view(out, arg);
    out.push(Node {
        args: vec![arg],
        region: Region::Loss,
        ..out.node(id).clone()
    })
}

/// The computed node that `id` selects from, where `id` is an unnamed slice or reshape of the
/// model (a view the stacking made, selecting a loop's value from its stacked node).
fn selected_from(p: &Program, id: ValueId) -> Option<ValueId> {
    let node = p.node(id);
    let view = matches!(node.op, Op::Reshape | Op::Slice { .. });
    let arg = *node.args.first()?;
    (view
        && node.name.is_none()
        && node.region == Region::Model
        && !matches!(p.node(arg).op, Op::Leaf(_)))
    .then_some(arg)
}

/// Appends the stacked form of a scan (operands `args`, values of `out`) to `out`; returns
/// the values of its results: a carried value's final value is its stacked node's last
/// iteration, a per-iteration output its stacked node.
///
/// With `peel`, the last iteration the scan runs is left out of the stack and appended as one
/// copy of the body: the loop's final carried values are then nodes of their own, as they
/// are unrolled — where nothing of the model reads a final value, its node has the role of an
/// output (its error clamped to the loss's), unlike the stacked iterations, whose carried
/// values the next iteration reads. Only a body without loops of its own is peeled.
fn stack_scan(
    out: &mut Program,
    scan: &Scan,
    args: &[ValueId],
    (id, region, peel): (ValueId, Region, bool),
    feedback: &mut Vec<Feedback>,
    origins: &mut Vec<Origin>,
) -> Result<Vec<ValueId>, StackError> {
    // The body with its own loops stacked first: a flat body, whose feedback leaves follow
    // the scan's operands among its leaves.
    let inner = flatten(&scan.body)?;
    if peel && !inner.feedback.is_empty() {
        return Err(StackError {
            op: "a loop whose final values only the loss reads, around another loop".into(),
        });
    }
    let body = &inner.program;
    let operands = scan.operands();
    // The iterations stacked (by index): all, or all but the one peeled.
    let rows = match (peel, scan.reverse) {
        (false, _) => 0..scan.trips,
        (true, false) => 0..scan.trips - 1,
        (true, true) => 1..scan.trips,
    };
    let trips = rows.len();
    let mut mapped: Vec<Mapped> = Vec::with_capacity(body.nodes.len());
    // This scan's own feedback: its index in `feedback`, for each carried value.
    let mut own: Vec<usize> = Vec::new();
    for (j, node) in body.nodes.iter().enumerate() {
        let value = if let Op::Leaf(_) = node.op {
            let inner_feedback = inner.feedback.iter().find(|f| f.leaf.index() == j);
            if let Some(f) = inner_feedback {
                // A feedback leaf of a loop inside the body: stacked once more, one axis in.
                let init = to_stacked(out, mapped[f.init.index()], trips, region);
                let shape = stacked_shape(trips, &node.shape);
                let leaf = out.leaf(LeafKind::State, feedback_name(out, node), shape);
                let mut path = vec![id];
                path.extend(&f.path);
                feedback.push(Feedback {
                    leaf,
                    carried: f.carried, // mapped below, once the body is stacked
                    init,
                    axis: f.axis + 1,
                    reverse: f.reverse,
                    path,
                    index: f.index,
                    rows: f.rows.clone(),
                });
                Mapped::stacked(leaf)
            } else if j < scan.carries {
                let shape = stacked_shape(trips, &node.shape);
                let leaf = out.leaf(LeafKind::State, feedback_name(out, node), shape);
                own.push(feedback.len());
                feedback.push(Feedback {
                    leaf,
                    carried: ValueId(0), // set below
                    init: args[j],
                    axis: 0,
                    reverse: scan.reverse,
                    path: vec![id],
                    index: j,
                    rows: rows.clone(),
                });
                Mapped::stacked(leaf)
            } else if j < scan.carries + scan.stacked {
                Mapped::stacked(rows_of(out, args[j], &rows, scan.trips, region))
            } else if j < operands {
                Mapped::same(args[j])
            } else {
                unreachable!("a body's only leaves are its operands and its loops' feedback")
            }
        } else {
            let node_args: Vec<Mapped> = node.args.iter().map(|a| mapped[a.index()]).collect();
            let value = stack_node(out, node, &node_args, trips)?;
            if value.stacked || node.name.is_none() {
                value
            } else {
                // A named value the same at every iteration (it reads invariants only) is
                // still one PC node per iteration, as unrolled: its value broadcast along
                // the loop's axis, the broadcast the named node.
                let each = to_stacked(out, value, trips, node.region.in_loop(region));
                out.nodes[each.index()].name = out.nodes[value.value.index()].name.take();
                Mapped::stacked(each)
            }
        };
        // A body without loops of its own flattens node for node: `j` is the scan body's.
        let same_body = inner.feedback.is_empty() && body.nodes.len() == scan.body.nodes.len();
        if same_body && value.stacked && node.name.is_some() && !matches!(node.op, Op::Leaf(_)) {
            origins.push(Origin {
                stacked: value.value,
                scan: id,
                node: ValueId(j as u32),
            });
        }
        mapped.push(value);
    }
    // The inner loops' feedback (pushed in the order of their leaves, which is the order of
    // `inner.feedback`) now reads stacked nodes of `out`.
    let nested: Vec<usize> = (0..feedback.len())
        .filter(|&i| feedback[i].path.len() > 1 && feedback[i].path[0] == id)
        .collect();
    for (slot, f) in nested.into_iter().zip(&inner.feedback) {
        feedback[slot].carried = to_stacked(out, mapped[f.carried.index()], trips, region);
    }
    let outputs: Vec<ValueId> = body.outputs.iter().map(|o| o.value).collect();
    let mut stacked_outputs = Vec::with_capacity(outputs.len());
    // A per-iteration loss term stays in the loss region, stacked or joined with the peeled
    // iteration's, so that it is not taken for a node of the model.
    let region_of = |output: &ValueId| body.nodes[output.index()].region.in_loop(region);
    for (k, output) in outputs.iter().enumerate() {
        let stacked = to_stacked(out, mapped[output.index()], trips, region_of(output));
        if k < scan.carries {
            feedback[own[k]].carried = stacked;
        }
        stacked_outputs.push(stacked);
    }
    let last = |stacked: ValueId, out: &mut Program| {
        // The last iteration run: the stack's last row, or its first in a reverse scan.
        let at = if scan.reverse { 0 } else { trips - 1 };
        row(out, stacked, at, region)
    };
    if !peel {
        // Results: the final carried values, then the stacked per-iteration outputs.
        return Ok(stacked_outputs
            .iter()
            .enumerate()
            .map(|(k, &stacked)| {
                if k < scan.carries {
                    last(stacked, out)
                } else {
                    stacked
                }
            })
            .collect());
    }
    // The peeled iteration: the body once, reading the last stacked iteration's carried
    // values and its own row of each stacked operand.
    let index = if scan.reverse { 0 } else { scan.trips - 1 };
    let mut copy: Vec<ValueId> = Vec::with_capacity(body.nodes.len());
    for (j, node) in body.nodes.iter().enumerate() {
        let value = if j < scan.carries {
            last(stacked_outputs[j], out)
        } else if j < scan.carries + scan.stacked {
            row(out, args[j], index, region)
        } else if j < operands {
            args[j]
        } else {
            let node_args = node.args.iter().map(|a| copy[a.index()]).collect();
            out.push(Node {
                args: node_args,
                ..node.clone()
            })
        };
        copy.push(value);
    }
    Ok(outputs
        .iter()
        .zip(&stacked_outputs)
        .enumerate()
        .map(|(k, (&output, &stacked))| {
            let final_value = copy[output.index()];
            if k < scan.carries {
                return final_value;
            }
            // The peeled iteration's row joins the stacked ones, in index order.
            let mut dims = vec![1];
            dims.extend_from_slice(out.shape(final_value).dims());
            let one = out.reshape(final_value, Shape::new(dims));
            let parts = if scan.reverse {
                [one, stacked]
            } else {
                [stacked, one]
            };
            let joined = out.build(Op::Concat { axis: 0 }, &parts, None);
            for n in [one, joined] {
                out.nodes[n.index()].region = region_of(&output);
            }
            joined
        })
        .collect())
}

/// Row `at` of a stacked value, without its first axis.
fn row(out: &mut Program, stacked: ValueId, at: usize, region: Region) -> ValueId {
    let slice = out.build(
        Op::Slice {
            axis: 0,
            start: at,
            end: at + 1,
        },
        &[stacked],
        None,
    );
    let shape = Shape::new(&out.shape(stacked).dims()[1..]);
    let value = out.reshape(slice, shape);
    for n in [slice, value] {
        out.nodes[n.index()].region = region;
    }
    value
}

/// The rows `rows` of a stacked operand of `trips` rows.
fn rows_of(
    out: &mut Program,
    stacked: ValueId,
    rows: &std::ops::Range<usize>,
    trips: usize,
    region: Region,
) -> ValueId {
    if *rows == (0..trips) {
        return stacked;
    }
    let slice = out.build(
        Op::Slice {
            axis: 0,
            start: rows.start,
            end: rows.end,
        },
        &[stacked],
        None,
    );
    out.nodes[slice.index()].region = region;
    slice
}

/// `[trips] + shape`.
fn stacked_shape(trips: usize, shape: &Shape) -> Shape {
    let mut dims = vec![trips];
    dims.extend_from_slice(shape.dims());
    Shape::new(dims)
}

/// `value` as a stacked value: broadcast along a new first axis if it is the same at every
/// iteration.
fn to_stacked(out: &mut Program, value: Mapped, trips: usize, region: Region) -> ValueId {
    if value.stacked {
        return value.value;
    }
    let shape = stacked_shape(trips, out.shape(value.value));
    let id = out.build(Op::Broadcast, &[value.value], Some(shape));
    out.nodes[id.index()].region = region;
    id
}

/// A unique name for a feedback leaf: `carried.<name>`.
fn feedback_name(out: &Program, leaf: &Node) -> String {
    let base = format!("carried.{}", leaf.name.as_deref().unwrap_or("value"));
    crate::ir::fresh_name(&base, |n| out.leaf_named(LeafKind::State, n).is_some())
}

/// The sequential program with a *tap* on each carried value (loops not nested): a stacked
/// zero operand added to the value on its way to the next iteration only, so that the tap's
/// cotangent is what reaches the value from the iterations after each one.
pub struct Tapped {
    pub program: Program,
    /// Each feedback's exposed stacked carried value (as [`expose`]).
    pub exposed: Vec<ValueId>,
    /// Each feedback's tap.
    pub taps: Vec<ValueId>,
    /// For origins asked for (by their stacked node), the scan's own value of the node at
    /// every iteration the stacked node holds.
    pub origins: Vec<(ValueId, ValueId)>,
}

/// The [`Tapped`] program of `forward`, exposing the nodes `wanted` of the stacked program
/// that are loop bodies' nodes ([`Stacked::origins`]).
pub fn tapped(forward: &Stacked, wanted: &[ValueId]) -> Tapped {
    let source = &forward.sequential;
    let mut out = Program::new(source.name.clone());
    out.inits = source.inits.clone();
    let mut map: Vec<ValueId> = Vec::with_capacity(source.nodes.len());
    let mut exposed = vec![ValueId(0); forward.feedback.len()];
    let mut taps = vec![ValueId(0); forward.feedback.len()];
    let mut origins = Vec::new();
    for (i, node) in source.nodes.iter().enumerate() {
        let id = ValueId(i as u32);
        let mut args: Vec<ValueId> = node.args.iter().map(|a| map[a.index()]).collect();
        let on_this: Vec<usize> = (0..forward.feedback.len())
            .filter(|&k| forward.feedback[k].path == [id])
            .collect();
        let Op::Scan(scan) = &node.op else {
            map.push(out.push(Node {
                args,
                ..node.clone()
            }));
            continue;
        };
        if on_this.is_empty() {
            map.push(out.push(Node {
                args,
                ..node.clone()
            }));
            continue;
        }
        let mut scan = scan.as_ref().clone();
        let at = scan.carries + scan.stacked;
        let carried_shapes: Vec<Shape> = on_this
            .iter()
            .map(|&k| scan.body.nodes[forward.feedback[k].index].shape.clone())
            .collect();
        let zeros: Vec<ValueId> = carried_shapes
            .iter()
            .map(|shape| out.constant(0.0, stacked_shape(scan.trips, shape)))
            .collect();
        let leaves = insert_operands(&mut scan, at, &carried_shapes);
        let mut exposed_outputs = Vec::with_capacity(on_this.len());
        for (j, &k) in on_this.iter().enumerate() {
            let f = &forward.feedback[k];
            let next = scan.body.outputs[f.index].value;
            // The exposed value is the carried value itself; the next iteration reads it
            // plus the tap.
            scan.body.outputs.push(Output {
                name: format!("exposed.{k}"),
                value: next,
            });
            exposed_outputs.push(scan.body.outputs.len() - 1);
            let tapped = scan.body.add_values(next, leaves[j]);
            scan.body.outputs[f.index].value = tapped;
        }
        for (j, &zero) in zeros.iter().enumerate() {
            args.insert(at + j, zero);
        }
        // The origins' body nodes, moved up past the taps' leaves.
        let here: Vec<&Origin> = forward
            .origins
            .iter()
            .filter(|o| o.scan == id && wanted.contains(&o.stacked))
            .collect();
        let origin_outputs: Vec<usize> = here
            .iter()
            .map(|o| {
                let n = o.node.index();
                let node = if n >= at { n + on_this.len() } else { n };
                scan.body.outputs.push(Output {
                    name: format!("origin.{n}"),
                    value: ValueId(node as u32),
                });
                scan.body.outputs.len() - 1
            })
            .collect();
        let results = scan.results();
        let shapes: Vec<Shape> = (0..results)
            .map(|r| scan.result_shape(r).expect("a result"))
            .collect();
        let region = node.region;
        let scan_node = out.push(Node {
            op: Op::Scan(Box::new(scan)),
            args,
            ..node.clone()
        });
        map.push(scan_node);
        for (j, &k) in on_this.iter().enumerate() {
            let r = exposed_outputs[j];
            exposed[k] = out.push(Node {
                op: Op::Result(r),
                args: vec![scan_node],
                shape: shapes[r].clone(),
                name: None,
                region,
            });
            taps[k] = zeros[j];
        }
        // The stacked nodes hold the iterations their loop's feedback does.
        let f = &forward.feedback[on_this[0]];
        for (o, r) in here.iter().zip(origin_outputs) {
            let every = out.push(Node {
                op: Op::Result(r),
                args: vec![scan_node],
                shape: shapes[r].clone(),
                name: None,
                region,
            });
            origins.push((o.stacked, f.stacked_rows(&mut out, every)));
        }
    }
    out.outputs = Program::outputs_mapped(source, &map);
    Tapped {
        program: out,
        exposed,
        taps,
        origins,
    }
}

/// Adds stacked operands of the given (per-iteration) shapes to a scan, before its operand
/// `at` (its body's leaves move up to make room); returns their leaves in the body.
fn insert_operands(scan: &mut Scan, at: usize, shapes: &[Shape]) -> Vec<ValueId> {
    let n = shapes.len();
    let old = std::mem::take(&mut scan.body);
    let mut body = Program::new(old.name.clone());
    let shift = |v: ValueId| {
        if v.index() >= at {
            ValueId(v.0 + n as u32)
        } else {
            v
        }
    };
    let mut leaves = Vec::with_capacity(n);
    for (i, node) in old.nodes.iter().enumerate() {
        if i == at {
            for (j, shape) in shapes.iter().enumerate() {
                leaves.push(body.leaf(LeafKind::State, format!("tap.{j}"), shape.clone()));
            }
        }
        let args = node.args.iter().map(|&a| shift(a)).collect();
        body.push(Node {
            args,
            ..node.clone()
        });
    }
    if old.nodes.len() == at {
        for (j, shape) in shapes.iter().enumerate() {
            leaves.push(body.leaf(LeafKind::State, format!("tap.{j}"), shape.clone()));
        }
    }
    body.outputs = old
        .outputs
        .iter()
        .map(|o| Output {
            name: o.name.clone(),
            value: shift(o.value),
        })
        .collect();
    scan.body = body;
    scan.stacked += n;
    leaves
}
