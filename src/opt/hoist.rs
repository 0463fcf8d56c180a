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

use crate::ir::{LeafKind, LoopProgram, Node, Op, Output, Program, Region, ValueId};
use std::collections::{BTreeSet, HashMap};

/// Moves every body node that does not depend on carried state into the prologue, where
/// it is computed once; the body reads its value through a new `State` leaf. Values that
/// are the same every step (the frozen predictions and Jacobians of fixed mode, say) are
/// then never recomputed inside the loop.
pub fn hoist_invariants(lp: &mut LoopProgram) {
    let carried = lp.carried();
    let body = &lp.body;
    let mut variant = vec![false; body.nodes.len()];
    for id in body.ids() {
        let node = body.node(id);
        variant[id.index()] = match node.op {
            Op::Leaf(LeafKind::State) => carried.contains(node.name.as_deref().unwrap_or("")),
            Op::Leaf(_) | Op::Const(_) | Op::Iota { .. } => false,
            _ => node.args.iter().any(|a| variant[a.index()]),
        };
    }
    // Invariant computed nodes that a variant node or an output reads cross the boundary.
    let mut crossing = BTreeSet::new();
    for id in body.ids() {
        let node = body.node(id);
        if variant[id.index()] {
            for &a in &node.args {
                if !variant[a.index()] && is_computed(body.node(a)) {
                    crossing.insert(a);
                }
            }
        }
    }
    for o in &body.outputs {
        if !variant[o.value.index()] && is_computed(body.node(o.value)) {
            crossing.insert(o.value);
        }
    }
    if crossing.is_empty() {
        return;
    }
    // Replay the invariant part into the prologue, reading its state from the prologue's
    // own outputs.
    let prologue_out: HashMap<String, ValueId> = lp
        .prologue
        .outputs
        .iter()
        .map(|o| (o.name.clone(), o.value))
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
                match lp.prologue.leaf_named(*kind, &name) {
                    Some(v) => v,
                    None => lp.prologue.leaf(*kind, name, node.shape.clone()),
                }
            }
            _ => {
                let args: Option<Vec<ValueId>> = node
                    .args
                    .iter()
                    .map(|a| into_prologue.get(a).copied())
                    .collect();
                let Some(args) = args else { continue };
                lp.prologue.push(Node {
                    args,
                    ..node.clone()
                })
            }
        };
        into_prologue.insert(id, new);
    }
    let mut body_map: HashMap<ValueId, ValueId> = HashMap::new();
    let mut new_body = Program::new(body.name.clone());
    new_body.inits = body.inits.clone();
    for id in body.ids() {
        let node = body.node(id);
        if crossing.contains(&id) {
            if let Some(&p) = into_prologue.get(&id) {
                // Reuse an existing state entry holding the same value.
                let name = match lp.prologue.outputs.iter().find(|o| o.value == p) {
                    Some(o) => o.name.clone(),
                    None => {
                        let name = format!("hoisted.{}", id.0);
                        lp.prologue.set_output(name.clone(), p);
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
        if !variant[id.index()] && is_computed(node) && !crossing.contains(&id) {
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
    super::simplify(&mut lp.prologue);
    super::simplify(&mut new_body);
    lp.body = new_body;
}

/// Whether a node does work worth hoisting (leaves and constants stay where they are used).
fn is_computed(node: &Node) -> bool {
    !matches!(node.op, Op::Leaf(_) | Op::Const(_) | Op::Iota { .. })
}
