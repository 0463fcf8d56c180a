//! Common-subexpression elimination with algebraic folds.
//!
//! A computed node identical to an earlier one — the same op, the same (already rewritten)
//! operands and the same shape — is replaced by the earlier one; a reshape to its operand's
//! own shape is the operand; a broadcast or reshape of a constant is the constant of its shape;
//! `x + 0`, `x − 0`, `x · 1`, `x / 1` are `x` and `x · 0` is the zero; two stacked outputs of a
//! scan returning one body value are one, and a join or elementwise op of a scan's stacked
//! rows that its body computes row by row is that body value, stacked (a result of the scan);
//! then nodes no output needs are pruned. Sound because
//! every op is a pure function of its operands and shape. The autodiff and PC passes build freely (a fresh replay of the
//! feedforward pass for every program that needs it, zero cotangents, unit scales) and rely on
//! this pass to share and drop the copies. Run on derived programs only: the forward program
//! keeps its nodes distinct because names and regions matter there.

use crate::ir::{BinaryOp, Op, Program, Shape, ValueId};
use std::collections::HashMap;

/// Replaces every computed node identical to an earlier one by it, folds identities, and
/// prunes what no output needs any more.
pub fn cse(program: &mut Program) {
    stacked_body_values(program);
    let mut seen: HashMap<(String, Vec<ValueId>, Shape), ValueId> = HashMap::new();
    let mut replace: Vec<ValueId> = (0..program.nodes.len() as u32).map(ValueId).collect();
    for i in 0..program.nodes.len() {
        let args = super::read_replaced(program, i, &replace);
        if matches!(program.nodes[i].op, Op::Leaf(_)) {
            continue;
        }
        // A reshape to the operand's own shape is the operand.
        if program.nodes[i].op == Op::Reshape && *program.shape(args[0]) == program.nodes[i].shape {
            replace[i] = args[0];
            continue;
        }
        // x + 0, x - 0, 0 + x, x * 1, 1 * x, x / 1 are x; x * 0 and 0 * x are 0 (operands of
        // binary ops share the node's shape). Non-finite x is not special-cased: the
        // programs these come from multiply by structural zeros of the graph.
        if let Op::Binary(b) = program.nodes[i].op {
            let constant = |v: ValueId| match program.nodes[v.index()].op {
                Op::Const(c) => Some(c),
                _ => None,
            };
            let is = |v: ValueId, k: f64| constant(v) == Some(k);
            let (x, y) = (args[0], args[1]);
            let same = match b {
                BinaryOp::Add if is(y, 0.0) => Some(x),
                BinaryOp::Add if is(x, 0.0) => Some(y),
                BinaryOp::Sub if is(y, 0.0) => Some(x),
                BinaryOp::Mul if is(y, 1.0) => Some(x),
                BinaryOp::Mul if is(x, 1.0) => Some(y),
                BinaryOp::Mul if is(y, 0.0) => Some(y),
                BinaryOp::Mul if is(x, 0.0) => Some(x),
                BinaryOp::Div if is(y, 1.0) => Some(x),
                _ => None,
            };
            if let Some(v) = same {
                replace[i] = v;
                continue;
            }
        }
        // A broadcast or reshape of a constant is the constant of its shape.
        if matches!(program.nodes[i].op, Op::Broadcast | Op::Reshape) {
            if let Op::Const(c) = program.nodes[args[0].index()].op {
                program.nodes[i].op = Op::Const(c);
                program.nodes[i].args.clear();
            }
        }
        // Two per-iteration outputs of a scan that return the same body value stack the
        // same values: the later result is the earlier one.
        if let Op::Result(k) = program.nodes[i].op {
            if let Some(first) = first_equal_output(program, args[0], k) {
                program.nodes[i].op = Op::Result(first);
            }
        }
        let key = (
            program.nodes[i].op.to_string(),
            program.nodes[i].args.clone(),
            program.nodes[i].shape.clone(),
        );
        match seen.get(&key) {
            Some(&first) => {
                replace[i] = first;
                if program.nodes[first.index()].name.is_none() {
                    program.nodes[first.index()].name = program.nodes[i].name.clone();
                }
            }
            None => {
                seen.insert(key, ValueId(i as u32));
            }
        }
    }
    for o in &mut program.outputs {
        o.value = replace[o.value.index()];
    }
    program.prune();
}

/// The first per-iteration output of the scan `scan` that returns the same body value as
/// its output `k`, when that is an earlier one.
fn first_equal_output(program: &Program, scan: ValueId, k: usize) -> Option<usize> {
    let Op::Scan(scan) = &program.nodes[scan.index()].op else {
        return None;
    };
    let outputs = &scan.body.outputs;
    if k < scan.carries {
        return None;
    }
    let value = outputs.get(k)?.value;
    (scan.carries..k).find(|&j| outputs[j].value == value)
}

/// Replaces each join or elementwise op after a scan whose operands are all stacked rows of
/// that scan — its stacked operands and its per-iteration outputs, at least one of these —
/// and that the body computes too, row by row, by that body value stacked: one more
/// per-iteration output. The weight gradient of an LSTM reads `concat(x, h)` over every time
/// step, which the forward loop computes at each step for its gate product: it is then
/// written once, where the loop computes it, instead of tracing `h` and joining both after
/// the loop. Sound because row t of either is the same op on the same rows t.
fn stacked_body_values(program: &mut Program) {
    let mut changed = false;
    for i in 0..program.nodes.len() {
        let Some((scan, body_value)) = stacked_body_value(program, i) else {
            continue;
        };
        let Op::Scan(s) = &mut program.nodes[scan.index()].op else {
            unreachable!("found a scan")
        };
        let k = match (s.carries..s.results()).find(|&k| s.body.outputs[k].value == body_value) {
            Some(k) => k,
            None => {
                let name = s.body.nodes[body_value.index()].name.clone().map_or_else(
                    || format!("stacked.{}", body_value.index()),
                    |n| format!("stacked.{n}"),
                );
                s.body.outputs.push(crate::ir::Output {
                    name,
                    value: body_value,
                });
                s.results() - 1
            }
        };
        program.nodes[i].op = Op::Result(k);
        program.nodes[i].args = vec![scan];
        changed = true;
    }
    if changed {
        program.sort_topologically();
        program.prune();
    }
}

/// The scan and the body value whose stacking node `i` is (see [`stacked_body_values`]).
fn stacked_body_value(program: &Program, i: usize) -> Option<(ValueId, ValueId)> {
    let node = &program.nodes[i];
    let body_op = match &node.op {
        Op::Concat { axis } if *axis > 0 => Op::Concat { axis: axis - 1 },
        Op::Unary(_) | Op::Binary(_) | Op::Where => node.op.clone(),
        _ => return None,
    };
    // The scan: the one whose per-iteration output an operand is.
    let scan = node.args.iter().find_map(|&a| match program.node(a).op {
        Op::Result(_) => Some(program.node(a).args[0]),
        _ => None,
    })?;
    let Op::Scan(s) = &program.node(scan).op else {
        return None;
    };
    let scan_args = &program.node(scan).args;
    let mut body_args = Vec::with_capacity(node.args.len());
    for &a in &node.args {
        let row = match program.node(a).op {
            Op::Result(k) if program.node(a).args[0] == scan && k >= s.carries => {
                s.body.outputs[k].value
            }
            _ => {
                let k = (s.carries..s.carries + s.stacked).find(|&k| scan_args[k] == a)?;
                ValueId(k as u32)
            }
        };
        body_args.push(row);
    }
    let found = s.body.ids().find(|&id| {
        let b = s.body.node(id);
        b.op == body_op && b.args == body_args
    })?;
    let mut stacked = vec![s.trips];
    stacked.extend_from_slice(s.body.shape(found).dims());
    (stacked.as_slice() == node.shape.dims()).then_some((scan, found))
}
