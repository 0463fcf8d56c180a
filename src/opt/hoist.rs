//! Loop-invariant hoisting: work that is the same at every relaxation step moves to the
//! prologue.
//!
//! A body node is *variant* when it depends on carried state (state the body both reads and
//! writes); everything else — the frozen predictions and Jacobians of fixed mode, products of
//! clamped inputs with parameters in strict mode — has the same value at every step. Those
//! nodes are replayed into the prologue, computed once, and the body reads each value that
//! crosses the boundary through a new `State` leaf (`hoisted.<id>`, or an existing state entry
//! holding the same value). Sound because a node's value depends only on its operands, which
//! for invariant nodes do not change between steps.

use crate::ir::{
    BinaryOp, LeafKind, LoopProgram, Node, Op, Output, Program, Region, UnaryOp, ValueId,
};
use std::collections::{BTreeSet, HashMap};

/// Moves every body node that does not depend on carried state into the prologue, where
/// it is computed once; the body reads its value through a new `State` leaf. Values that
/// are the same every step (the frozen predictions and Jacobians of fixed mode, say) are
/// then never recomputed inside the loop.
pub fn hoist_invariants(lp: &mut LoopProgram) {
    let carried = lp.carried();
    let written = lp.body.outputs.iter().map(|o| o.name.clone()).collect();
    if let Some(body) = hoist_from(&mut lp.prologue, &lp.body, &carried, &written, "hoisted") {
        lp.body = body;
    }
}

/// Shares with the loop's prologue what a program run after the loop (the learning program,
/// reading the final state) computes again: every node that does not depend on state the body
/// writes is the prologue's, and the program reads it as state (`hoisted.after.<id>`). In
/// strict mode, say, the learning program's prediction of the first layer from the clamped
/// input is then not a second product.
pub fn hoist_epilogue(lp: &mut LoopProgram, epilogue: &mut Program) {
    let written = lp.body.outputs.iter().map(|o| o.name.clone()).collect();
    if let Some(after) = hoist_from(
        &mut lp.prologue,
        epilogue,
        &written,
        &written,
        "hoisted.after",
    ) {
        *epilogue = after;
    }
}

/// `body` with every node that does not depend on the state named in `carried` taken from
/// `prologue` (added to it where it is not there yet) through state named `prefix.<id>`, or
/// through an existing state entry holding the value that the loop does not overwrite
/// (`written`); `None` when nothing moves.
fn hoist_from(
    prologue: &mut Program,
    body: &Program,
    carried: &BTreeSet<String>,
    written: &BTreeSet<String>,
    prefix: &str,
) -> Option<Program> {
    let mut variant = vec![false; body.nodes.len()];
    for id in body.ids() {
        let node = body.node(id);
        variant[id.index()] = match node.op {
            // State, or the parameters of a loop that also learns.
            Op::Leaf(_) => carried.contains(node.name.as_deref().unwrap_or("")),
            Op::Const(_) | Op::Iota { .. } => false,
            _ => node.args.iter().any(|a| variant[a.index()]),
        };
    }
    let strided = strided_product_operands(body, &variant);
    let computed = |id: ValueId| is_computed(body, id) || strided.contains(&id);
    let crossing = crossing_nodes(body, &variant, &computed);
    if crossing.is_empty() {
        return None;
    }
    // Replay the invariant part into the prologue, reading its state from the prologue's
    // own outputs.
    let prologue_out: HashMap<String, ValueId> = prologue
        .outputs
        .iter()
        .map(|o| (o.name.clone(), o.value))
        .collect();
    // The prologue's nodes by what they compute, so that a replayed node already there is
    // the same node (and an existing state entry holds it).
    let key = |n: &Node| (n.op.to_string(), n.args.clone(), n.shape.clone());
    let mut existing: HashMap<(String, Vec<ValueId>, crate::ir::Shape), ValueId> = prologue
        .ids()
        .filter(|&id| is_computed(prologue, id))
        .map(|id| (key(prologue.node(id)), id))
        .collect();
    let mut into_prologue: HashMap<ValueId, ValueId> = HashMap::new();
    for id in body.ids() {
        if variant[id.index()] {
            continue;
        }
        let node = body.node(id);
        let new = match &node.op {
            Op::Leaf(LeafKind::State) => {
                let name = node.name.clone().unwrap_or_default();
                match prologue_out.get(&name) {
                    Some(&v) => v,
                    None => continue,
                }
            }
            Op::Leaf(kind) => {
                let name = node.name.clone().unwrap_or_default();
                match prologue.leaf_named(*kind, &name) {
                    Some(v) => v,
                    None => prologue.leaf(*kind, name, node.shape.clone()),
                }
            }
            _ => {
                let args: Option<Vec<ValueId>> = node
                    .args
                    .iter()
                    .map(|a| into_prologue.get(a).copied())
                    .collect();
                let Some(args) = args else { continue };
                let copy = Node {
                    args,
                    ..node.clone()
                };
                match existing.get(&key(&copy)) {
                    Some(&same) => same,
                    None => {
                        let id = prologue.push(copy);
                        existing.insert(key(prologue.node(id)), id);
                        id
                    }
                }
            }
        };
        into_prologue.insert(id, new);
    }
    // What the body's variant work reads; a value the prologue already hands the body as
    // state (the frozen gate `sigmoid(z)` as `ff.i`, say) is read in the body as that state.
    let mut read_by_variant = vec![false; body.nodes.len()];
    for id in body.ids().filter(|id| variant[id.index()]) {
        for a in &body.node(id).args {
            read_by_variant[a.index()] = true;
        }
    }
    let read_states: BTreeSet<&str> = body
        .ids()
        .filter(|a| read_by_variant[a.index()])
        .filter(|a| matches!(body.node(*a).op, Op::Leaf(LeafKind::State)))
        .filter_map(|a| body.node(a).name.as_deref())
        .collect();
    let as_state = |id: ValueId| {
        into_prologue.get(&id).is_some_and(|&p| {
            prologue.outputs.iter().any(|o| {
                o.value == p && read_states.contains(o.name.as_str()) && !written.contains(&o.name)
            })
        })
    };
    recompute_cheap_invariants(body, &mut variant, &read_by_variant, as_state);
    let crossing = crossing_nodes(body, &variant, &computed);
    let mut body_map: HashMap<ValueId, ValueId> = HashMap::new();
    let mut new_body = Program::new(body.name.clone());
    new_body.inits = body.inits.clone();
    for id in body.ids() {
        let node = body.node(id);
        if crossing.contains(&id) {
            if let Some(&p) = into_prologue.get(&id) {
                // Reuse an existing state entry holding the same value.
                let kept = prologue
                    .outputs
                    .iter()
                    .find(|o| o.value == p && !written.contains(&o.name));
                let name = match kept {
                    Some(o) => o.name.clone(),
                    None => {
                        let name = format!("{prefix}.{}", id.0);
                        prologue.set_output(name.clone(), p);
                        name
                    }
                };
                if let Some(&existing) = new_body.leaf_named(LeafKind::State, &name).as_ref() {
                    body_map.insert(id, existing);
                    continue;
                }
                let leaf = new_body.push(Node {
                    op: Op::Leaf(LeafKind::State),
                    args: vec![],
                    shape: node.shape.clone(),
                    name: Some(name),
                    region: Region::Model,
                });
                body_map.insert(id, leaf);
                continue;
            }
        }
        if !variant[id.index()] && computed(id) && !crossing.contains(&id) {
            continue;
        }
        let args = node.args.iter().map(|a| body_map[a]).collect();
        body_map.insert(
            id,
            new_body.push(Node {
                args,
                ..node.clone()
            }),
        );
    }
    new_body.outputs = body
        .outputs
        .iter()
        .map(|o| Output {
            name: o.name.clone(),
            value: body_map[&o.value],
        })
        .collect();
    super::simplify(prologue);
    super::simplify(&mut new_body);
    Some(new_body)
}

/// The invariant computed nodes that a variant node or an output reads: they cross the
/// boundary.
fn crossing_nodes(
    body: &Program,
    variant: &[bool],
    computed: &impl Fn(ValueId) -> bool,
) -> BTreeSet<ValueId> {
    let mut crossing = BTreeSet::new();
    for id in body.ids() {
        let node = body.node(id);
        if variant[id.index()] {
            for &a in &node.args {
                if !variant[a.index()] && computed(a) {
                    crossing.insert(a);
                }
            }
        }
    }
    for o in &body.outputs {
        if !variant[o.value.index()] && computed(o.value) {
            crossing.insert(o.value);
        }
    }
    crossing
}

/// Marks variant (kept in the body, computed at every step) the invariant nodes that are
/// cheaper to recompute than to read: a few additions, subtractions, multiplications or
/// negations of constants and of values the body reads anyway, used only by the body's variant
/// work. A relaxation step over many small tensors is bound by the memory it streams, and a
/// factor such as σ'(o) = o · (1 − o) of a frozen gate `o` the step already reads then costs
/// two operations in registers instead of one more tensor read at every step. Exact: the same
/// operations on the same values, only at another time.
fn recompute_cheap_invariants(
    body: &Program,
    variant: &mut [bool],
    read_by_variant: &[bool],
    as_state: impl Fn(ValueId) -> bool,
) {
    let cheap = |node: &Node| match node.op {
        Op::Binary(op) => matches!(op, BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul),
        Op::Unary(op) => op == UnaryOp::Neg,
        _ => false,
    };
    // Candidates, in order: cheap, over constants, values the body reads anyway, and other
    // candidates.
    let mut keep = vec![false; body.nodes.len()];
    for id in body.ids() {
        let node = body.node(id);
        if variant[id.index()] || !cheap(node) {
            continue;
        }
        keep[id.index()] = node.args.iter().all(|a| {
            matches!(body.node(*a).op, Op::Const(_))
                || read_by_variant[a.index()]
                || keep[a.index()]
                || as_state(*a)
        });
    }
    // A candidate that an output or invariant work left in the prologue still needs is
    // hoisted after all, and so are the candidates only it used: one pass from the last node,
    // which settles every node before its operands.
    for o in &body.outputs {
        keep[o.value.index()] = false;
    }
    for id in body.ids().rev() {
        if !variant[id.index()] && !keep[id.index()] {
            for a in &body.node(id).args {
                keep[a.index()] = false;
            }
        }
    }
    for (v, k) in variant.iter_mut().zip(keep) {
        *v |= k;
    }
}

/// The invariant transposed views that a variant product reads as its right operand with its
/// rows strided in memory (a message `e @ transpose(w)` back through a weight, or through a
/// slice of it): worth copying once, in the prologue, into the contiguous layout the product
/// reads fastest. A GEMM packs
/// a strided right operand into its panels at every call, and on a `[32, 256] × [256, 256]`
/// product that packing halves its rate (measured with AVX-512 kernels: 78 against 140
/// GFLOP/s); the copy costs one read of the weight per training step. Exact: the same values
/// in another layout.
fn strided_product_operands(body: &Program, variant: &[bool]) -> BTreeSet<ValueId> {
    let mut strided = BTreeSet::new();
    for id in body.ids().filter(|id| variant[id.index()]) {
        let node = body.node(id);
        if node.op != Op::MatMul {
            continue;
        }
        let rhs = node.args[1];
        if !variant[rhs.index()] && strided_view(body, rhs) {
            strided.insert(rhs);
        }
    }
    strided
}

/// Whether a value is a view whose rows are strided in memory: a transpose that moves the
/// last axis, or a slice of one (the message to `h` through `concat(x, h) @ w` reads rows of
/// `transpose(w)`).
pub(crate) fn strided_view(body: &Program, id: ValueId) -> bool {
    let node = body.node(id);
    match &node.op {
        Op::Transpose(perm) => perm.last().is_some_and(|&l| l != perm.len() - 1),
        Op::Slice { .. } => strided_view(body, node.args[0]),
        _ => false,
    }
}

/// Whether a node does work worth hoisting: leaves, constants and views of leaves (a
/// transposed or sliced weight, read in place) stay where they are used.
fn is_computed(program: &Program, id: ValueId) -> bool {
    let node = program.node(id);
    match node.op {
        Op::Leaf(_) | Op::Const(_) | Op::Iota { .. } => false,
        Op::Transpose(_) | Op::Broadcast | Op::Reshape | Op::Slice { .. } => {
            is_computed(program, node.args[0])
        }
        _ => true,
    }
}
