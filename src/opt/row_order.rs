//! Products over stacked rows taken in their own order.
//!
//! A product of a stacked operand `x: [T, B, K]` (a loop's iterations in front) with a matrix
//! is taken sample-major where loops are stacked (`ir::vmap`): `transpose[1, 0, 2](x)`,
//! flattened to `[B·T, K]` rows, so that a block of samples is a block of the product's rows
//! and a relaxation step splits between threads by samples. Where nothing splits the program
//! by samples (the fused exact step, whose loops run as scans), each swap is a copy of a whole
//! stacked array, and the product over the rows in their own order computes the same values:
//!
//! ```text
//! transpose[1,0,2](reshape[B,T,N](rows(x) @ w))  =  reshape[T,B,N](flat(x) @ w)
//! transpose(rows(x)) @ rows(y)                   =  transpose(flat(x)) @ flat(y)
//! ```
//!
//! with `rows(x) = reshape[B·T, K](transpose[1,0,2](x))` and `flat(x) = reshape[T·B, K](x)`:
//! a product is row by row, and a sum over all rows (the weight gradient) does not depend on
//! their order (its rounding does, as any reordering of a sum's terms).

use crate::ir::{Node, Op, Program, Shape, ValueId};

/// Rewrites the sample-major products of `program` over their operands' rows in their own
/// order (see the module's documentation), then drops the swaps no longer read.
pub fn products_in_row_order(program: &mut Program) {
    let n = program.nodes.len();
    let mut replace: Vec<ValueId> = (0..n as u32).map(ValueId).collect();
    let mut changed = false;
    for (i, by) in replace.iter_mut().enumerate() {
        let node = program.nodes[i].clone();
        let rewritten = match &node.op {
            Op::Transpose(perm) if perm == &[1, 0, 2] => row_product(program, &node),
            Op::MatMul => summed_product(program, &node),
            _ => None,
        };
        if let Some(v) = rewritten {
            *by = v;
            changed = true;
        }
    }
    if !changed {
        return;
    }
    super::settle_replacements(program, &replace);
}

/// `x` where `v` is `reshape[B·T, K](transpose[1, 0, 2](x))` of a stacked `x: [T, B, K]`.
fn swapped_rows(program: &Program, v: ValueId) -> Option<ValueId> {
    let flat = &program.nodes[v.index()];
    if flat.op != Op::Reshape {
        return None;
    }
    let swap = &program.nodes[flat.args[0].index()];
    if swap.op != Op::Transpose(vec![1, 0, 2]) {
        return None;
    }
    let x = swap.args[0];
    let dims = program.shape(x).dims();
    (flat.shape.dims() == [dims[0] * dims[1], dims[2]]).then_some(x)
}

/// `reshape[T·B, K](x)`.
fn flat_rows(program: &mut Program, x: ValueId, region: crate::ir::Region) -> ValueId {
    let dims = program.shape(x).dims().to_vec();
    program.push(Node {
        op: Op::Reshape,
        args: vec![x],
        shape: Shape::new([dims[0] * dims[1], dims[2]]),
        name: None,
        region,
    })
}

/// The first form, at the node `transpose[1, 0, 2](reshape[B, T, N](rows(x) @ w))`.
fn row_product(program: &mut Program, node: &Node) -> Option<ValueId> {
    let unflat = &program.nodes[node.args[0].index()];
    if unflat.op != Op::Reshape || unflat.shape.rank() != 3 {
        return None;
    }
    let product = &program.nodes[unflat.args[0].index()];
    if product.op != Op::MatMul || program.shape(product.args[1]).rank() != 2 {
        return None;
    }
    let (rows, w) = (product.args[0], product.args[1]);
    let x = swapped_rows(program, rows)?;
    let (t, b) = (program.shape(x).dims()[0], program.shape(x).dims()[1]);
    if unflat.shape.dims()[..2] != [b, t] {
        return None;
    }
    let n = unflat.shape.dims()[2];
    let region = node.region;
    let flat = flat_rows(program, x, region);
    let product = program.push(Node {
        op: Op::MatMul,
        args: vec![flat, w],
        shape: Shape::new([t * b, n]),
        name: None,
        region,
    });
    Some(program.push(Node {
        op: Op::Reshape,
        args: vec![product],
        shape: node.shape.clone(),
        name: node.name.clone(),
        region,
    }))
}

/// The second form, at the node `transpose(rows(x)) @ rows(y)`.
fn summed_product(program: &mut Program, node: &Node) -> Option<ValueId> {
    let left = &program.nodes[node.args[0].index()];
    if left.op != Op::Transpose(vec![1, 0]) {
        return None;
    }
    let x = swapped_rows(program, left.args[0])?;
    let y = swapped_rows(program, node.args[1])?;
    if program.shape(x).dims()[..2] != program.shape(y).dims()[..2] {
        return None;
    }
    let region = node.region;
    let (fx, fy) = (flat_rows(program, x, region), flat_rows(program, y, region));
    let dims = program.shape(fx).dims().to_vec();
    let left = program.push(Node {
        op: Op::Transpose(vec![1, 0]),
        args: vec![fx],
        shape: Shape::new([dims[1], dims[0]]),
        name: None,
        region,
    });
    Some(program.push(Node {
        op: Op::MatMul,
        args: vec![left, fy],
        shape: node.shape.clone(),
        name: node.name.clone(),
        region,
    }))
}
