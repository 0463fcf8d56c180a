//! Work over the leading rows of a stacked value, computed once over all of them.
//!
//! A program that computes `f` over all `R` rows of a stacked value `u` (`f(u)`, the
//! iterations in front) and again over its first `r` rows (`f(u[0..r])`) computes the second
//! as the first `r` rows of the first, where `f` works row by row: maps, broadcasts of values
//! without the row axis, reductions over other axes, products whose left operand holds the
//! rows, reshapes that keep the rows in front. The fused exact step over a loop is such a
//! program: the sweep predicts the outputs (the logits, their softmax) at every iteration, and
//! the learning program again at all but the last, which it handles apart.
//!
//! Each node is given its *full* counterpart where one exists: a leading slice's is the
//! sliced value; a row-wise node's is the earlier node with the same op over its operands'
//! full counterparts (or the same operand where it holds no rows) and its shape with the
//! leading dimension scaled by `R / r`. A node with a full counterpart becomes a slice of it.
//! Sound because row `i < r` of a row-wise function of values depends only on their row `i`.

use crate::ir::{Node, Op, Program, Shape, ValueId};
use std::collections::HashMap;

/// Replaces each row-wise node over leading rows whose counterpart over all rows the program
/// already computes by a slice of that counterpart, then prunes.
pub fn share_leading_rows(program: &mut Program) {
    let n = program.nodes.len();
    let key = |p: &Program, i: usize| {
        let node = &p.nodes[i];
        (node.op.to_string(), node.args.clone(), node.shape.clone())
    };
    let mut seen: HashMap<(String, Vec<ValueId>, Shape), ValueId> = HashMap::new();
    // Each node's full counterpart and the fraction of its rows it holds (r, R).
    let mut full: HashMap<ValueId, (ValueId, usize, usize)> = HashMap::new();
    let mut replace: Vec<ValueId> = (0..n as u32).map(ValueId).collect();
    let mut changed = false;
    for i in 0..n {
        let args = super::read_replaced(program, i, &replace);
        let id = ValueId(i as u32);
        if !matches!(program.nodes[i].op, Op::Leaf(_)) {
            seen.entry(key(program, i)).or_insert(id);
        }
        let node = &program.nodes[i];
        if let Op::Slice {
            axis: 0,
            start: 0,
            end,
        } = node.op
        {
            let rows = program.shape(args[0]).dims()[0];
            if end < rows {
                full.insert(id, (args[0], end, rows));
            }
            continue;
        }
        let Some((r, total)) = args
            .iter()
            .find_map(|a| full.get(a).map(|&(_, r, total)| (r, total)))
        else {
            continue;
        };
        let Some(counterpart) = counterpart(program, &seen, &full, i, r, total) else {
            continue;
        };
        let slice = program.push(Node {
            op: Op::Slice {
                axis: 0,
                start: 0,
                end: program.nodes[i].shape.dims()[0],
            },
            args: vec![counterpart],
            shape: program.nodes[i].shape.clone(),
            name: program.nodes[i].name.clone(),
            region: program.nodes[i].region,
        });
        full.insert(slice, (counterpart, r, total));
        replace[i] = slice;
        changed = true;
    }
    if !changed {
        return;
    }
    super::settle_replacements(program, &replace);
}

/// The node over all rows that node `i` (over the first `r` of `total` rows) is the leading
/// rows of, where the program computes it before `i`.
fn counterpart(
    program: &Program,
    seen: &HashMap<(String, Vec<ValueId>, Shape), ValueId>,
    full: &HashMap<ValueId, (ValueId, usize, usize)>,
    i: usize,
    r: usize,
    total: usize,
) -> Option<ValueId> {
    let node = &program.nodes[i];
    let dims = node.shape.dims();
    let extended = over_all_rows(dims, r, total)?;
    let row_wise = match &node.op {
        Op::Unary(_) | Op::Binary(_) | Op::Where | Op::Reshape | Op::Broadcast => true,
        Op::Reduce(_, axes) => !axes.contains(&0),
        // Rows times a weight (a batched product's right operand has the rows too).
        Op::MatMul => program.shape(node.args[1]).rank() == 2 && !full.contains_key(&node.args[1]),
        Op::Transpose(perm) => perm.first() == Some(&0),
        Op::Slice { axis, .. } | Op::Concat { axis } | Op::Pad { axis, .. } => *axis != 0,
        _ => false,
    };
    if !row_wise {
        return None;
    }
    let mut args = Vec::with_capacity(node.args.len());
    for (k, &a) in node.args.iter().enumerate() {
        if node.op == Op::MatMul && k == 1 {
            // A product's right operand is its weight: the same for every row.
            args.push(a);
            continue;
        }
        match full.get(&a) {
            Some(&(f, ar, at)) if (ar, at) == (r, total) => args.push(f),
            Some(_) => return None,
            // An operand with the rows but no counterpart: the same at every row, or the
            // rewrite stops. One without them (a broadcast's source) is read as it is.
            None if holds_rows(program, a, dims[0]) => {
                args.push(repeated(program, seen, a, r, total)?)
            }
            None => args.push(a),
        }
    }
    seen.get(&(node.op.to_string(), args, extended)).copied()
}

/// The counterpart over all rows of `v`, the same at every row: a constant, or a broadcast
/// of a value without the row axis (a bias along the iterations), where the program computes
/// it.
fn repeated(
    program: &Program,
    seen: &HashMap<(String, Vec<ValueId>, Shape), ValueId>,
    v: ValueId,
    r: usize,
    total: usize,
) -> Option<ValueId> {
    let node = &program.nodes[v.index()];
    let dims = node.shape.dims();
    let same_rows = match node.op {
        Op::Const(_) => true,
        Op::Broadcast => program.shape(node.args[0]).rank() < dims.len(),
        _ => false,
    };
    if !same_rows {
        return None;
    }
    let extended = over_all_rows(dims, r, total)?;
    seen.get(&(node.op.to_string(), node.args.clone(), extended))
        .copied()
}

/// The shape `dims` over `r` of `total` rows has over all of them: its leading dimension
/// scaled by `total / r`.
fn over_all_rows(dims: &[usize], r: usize, total: usize) -> Option<Shape> {
    let lead = dims.first()? * total;
    if !lead.is_multiple_of(r) {
        return None;
    }
    let mut extended = dims.to_vec();
    extended[0] = lead / r;
    Some(Shape::new(extended))
}

/// Whether `v` (of the node's operands) has the node's leading rows: the same leading
/// dimension at the same rank position.
fn holds_rows(program: &Program, v: ValueId, rows: usize) -> bool {
    program.shape(v).dims().first() == Some(&rows)
}
