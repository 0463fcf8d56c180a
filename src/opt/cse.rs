//! Common-subexpression elimination with algebraic folds.
//!
//! A computed node identical to an earlier one — the same op, the same (already rewritten)
//! operands and the same shape — is replaced by the earlier one; a reshape to its operand's
//! own shape is the operand; a broadcast or reshape of a constant is the constant of its shape;
//! `x + 0`, `x − 0`, `x · 1`, `x / 1` are `x` and `x · 0` is the zero; two stacked outputs of a
//! scan returning one body value are one; then nodes no output needs are pruned. Sound because
//! every op is a pure function of its operands and shape. The autodiff and PC passes build freely (a fresh replay of the
//! feedforward pass for every program that needs it, zero cotangents, unit scales) and rely on
//! this pass to share and drop the copies. Run on derived programs only: the forward program
//! keeps its nodes distinct because names and regions matter there.

use crate::ir::{BinaryOp, Op, Program, Shape, ValueId};
use std::collections::HashMap;

/// Replaces every computed node identical to an earlier one by it, folds identities, and
/// prunes what no output needs any more.
pub fn cse(program: &mut Program) {
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
