//! Dead-part elimination: a matrix product whose result is only partly used is computed only
//! for the parts that are.
//!
//! The reverse pass through `concat(x, h) @ w` computes `g @ wᵀ` for the whole concatenation
//! and then slices out each operand's part; when x is clamped data (an LSTM's input), its part
//! is never read — inside a relaxation loop that is more than half of every step's product.
//! A slice of a product along its row axis is the product of the sliced left operand, along
//! its column axis the product with the sliced right operand:
//!
//! ```text
//! (A B)[.., i0..i1, :] = A[.., i0..i1, :] B        (A B)[.., :, j0..j1] = A B[.., :, j0..j1]
//! ```
//!
//! so when every user of a product is such a slice, along one axis, and the slices together
//! cover less than the axis, each slice becomes a product of its own and the full product
//! dies. Each new product costs its slice's share of the old one, so the rewrite never adds
//! work. The slices of the operands are views (no copy) in both backends. Exact: every element
//! is the same dot product.

use crate::ir::{Node, Op, Program, Region, Shape, ValueId};
use std::collections::{BTreeSet, HashMap};

/// Rewrites every partly used product of `program` (the dead full products are left for
/// `cse`'s pruning).
pub fn narrow_products(program: &mut Program) {
    slices_before_reshapes(program);
    let users = program.users();
    // Product → the axis its slices cut, for products worth narrowing.
    let mut narrowed: HashMap<ValueId, usize> = HashMap::new();
    for id in program.ids() {
        let node = program.node(id);
        if node.op != Op::MatMul || program.outputs.iter().any(|o| o.value == id) {
            continue;
        }
        let rank = node.shape.rank();
        let mut axis = None;
        let mut ranges = BTreeSet::new();
        let all_slices = !users[id.index()].is_empty()
            && users[id.index()].iter().all(|&u| match program.node(u).op {
                Op::Slice {
                    axis: a,
                    start,
                    end,
                } if a + 2 >= rank && *axis.get_or_insert(a) == a => {
                    ranges.insert((start, end));
                    true
                }
                _ => false,
            });
        let Some(axis) = axis.filter(|_| all_slices) else {
            continue;
        };
        let used: usize = ranges.iter().map(|(s, e)| e - s).sum();
        if used < node.shape.dims()[axis] {
            narrowed.insert(id, axis);
        }
    }
    if narrowed.is_empty() {
        return;
    }
    let old = std::mem::take(&mut program.nodes);
    let mut map: Vec<ValueId> = Vec::with_capacity(old.len());
    for mut node in old {
        let narrowing = match node.op {
            Op::Slice { axis, start, end } => {
                narrowed.get(&node.args[0]).map(|_| (axis, start, end))
            }
            _ => None,
        };
        let product = node.args.first().copied();
        for a in &mut node.args {
            *a = map[a.index()];
        }
        let Some((axis, start, end)) = narrowing else {
            map.push(program.push(node));
            continue;
        };
        // The product's operands, already renumbered.
        let full = &program.nodes[map[product.expect("a slice has an operand").index()].index()];
        let (a, b) = (full.args[0], full.args[1]);
        let rank = full.shape.rank();
        let (operand, which) = if axis == rank - 1 { (b, 1) } else { (a, 0) };
        let operand_axis = program.shape(operand).rank() - (rank - axis);
        let part = slice_of(program, operand, operand_axis, start..end, Region::Model);
        let args = if which == 1 {
            vec![a, part]
        } else {
            vec![part, b]
        };
        map.push(program.push(Node {
            op: Op::MatMul,
            args,
            ..node
        }));
    }
    for o in &mut program.outputs {
        o.value = map[o.value.index()];
    }
}

/// Moves a slice of the last axis before a reshape or a transpose that keeps that axis last:
/// `reshape(x)[.., j0..j1]` becomes `reshape(x[.., j0..j1])` where the reshape only merges or
/// splits the axes before the last, and likewise for a transpose of the axes before it. A
/// loop's stacked product is computed on its rows merged (`[B·T, k] · [k, n]`), reshaped and
/// transposed back; its slices then reach the product itself.
fn slices_before_reshapes(program: &mut Program) {
    let movable = |program: &Program, node: &Node| -> bool {
        let Op::Slice { axis, .. } = node.op else {
            return false;
        };
        if axis + 1 != node.shape.rank() {
            return false;
        }
        let inner = program.node(node.args[0]);
        let from = program
            .shape(inner.args.first().copied().unwrap_or(node.args[0]))
            .dims();
        match &inner.op {
            Op::Reshape => !from.is_empty() && from.last() == inner.shape.dims().last(),
            Op::Transpose(perm) => perm.last() == Some(&(perm.len() - 1)),
            _ => false,
        }
    };
    // Each pass moves a slice one op down; a chain of them takes as many passes.
    while program.nodes.iter().any(|n| movable(program, n)) {
        let old = std::mem::take(&mut program.nodes);
        let mut map: Vec<ValueId> = Vec::with_capacity(old.len());
        let before = Program {
            nodes: old.clone(),
            ..Program::default()
        };
        for node in old {
            let mut moved = node.clone();
            for a in &mut moved.args {
                *a = map[a.index()];
            }
            if !movable(&before, &node) {
                map.push(program.push(moved));
                continue;
            }
            let Op::Slice { start, end, .. } = node.op else {
                unreachable!("checked by `movable`")
            };
            let inner = program.node(moved.args[0]).clone();
            let source = inner.args[0];
            let last = program.shape(source).rank() - 1;
            let part = slice_of(program, source, last, start..end, node.region);
            map.push(program.push(Node {
                op: inner.op,
                args: vec![part],
                ..node
            }));
        }
        for o in &mut program.outputs {
            o.value = map[o.value.index()];
        }
    }
}

/// Appends `x[.., range, ..]` (along `axis`) to `program`.
fn slice_of(
    program: &mut Program,
    x: ValueId,
    axis: usize,
    range: std::ops::Range<usize>,
    region: Region,
) -> ValueId {
    let mut dims = program.shape(x).dims().to_vec();
    dims[axis] = range.len();
    program.push(Node {
        op: Op::Slice {
            axis,
            start: range.start,
            end: range.end,
        },
        args: vec![x],
        shape: Shape::new(dims),
        name: None,
        region,
    })
}
