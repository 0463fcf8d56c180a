//! Row splitting: a program restricted to one of `parts` equal blocks of rows of its outputs,
//! so that the blocks can be computed on different cores without ever waiting for each other.
//!
//! Predictive coding relaxes every sample of a batch independently: a relaxation step reads
//! and writes rows of per-sample tensors and shares only parameters. The backend runs such a
//! loop as `parts` copies of one function, each on its own block of samples, for all T steps
//! — one hand-over per training step instead of one per kernel.
//!
//! The analysis walks the program backwards from its outputs, each restricted to a block of
//! its first axis, and asks of every op which axis of each operand must be restricted so that
//! the op on the restricted operands gives the restricted result:
//!
//! ```text
//! elementwise, where        the same axis of every operand
//! broadcast                 the operand's matching axis; none when the axis is new or stretched
//! transpose                 the permuted axis
//! reduce                    the kept axis it came from (a reduced axis cannot be restricted)
//! slice, pad, concat        the same axis, unless it is the one sliced, padded or joined
//! matmul [.., m, k][.., k, n]  batch axes of both; m of the left; n of the right
//! convolution               samples (axis 0) of the input or cotangent
//! reshape                   outermost non-unit axis to outermost non-unit axis
//! iota                      any axis but the one it counts along
//! ```
//!
//! A node that two users need restricted differently, a reduction or contraction over a
//! restricted axis, or a leaf restricted along an axis other than its first makes the program
//! not splittable (`None`). Otherwise every restricted axis is divided by `parts`, and the
//! program that results computes, from block p of each restricted leaf, block p of every
//! output — exactly: each element is computed by the same ops from the same operands.
//! Unrestricted nodes are computed whole by every part; they are reported so that the caller
//! can decline a split whose repeated work would cost more than it saves.

use crate::ir::{Node, Op, Program, Shape, ValueId};

/// A program restricted to one block of rows.
#[derive(Clone, Debug)]
pub struct Split {
    /// The program on one block: the same nodes, restricted axes divided by `parts`.
    pub program: Program,
    pub parts: usize,
    /// For each node, the axis restricted (`None`: computed whole by every part).
    pub axes: Vec<Option<usize>>,
    /// Floating-point operations every part repeats (unrestricted computed nodes).
    pub repeated_flops: u64,
}

impl Split {
    /// Whether a leaf of the program is read in blocks (along its first axis).
    pub fn restricted(&self, leaf: ValueId) -> bool {
        self.axes[leaf.index()].is_some()
    }
}

/// The axis of each operand of `node` to restrict so that its result is restricted along
/// `axis`; `Err` where that cannot be done.
fn operand_axes(
    program: &Program,
    node: &Node,
    axis: usize,
    parts: usize,
) -> Result<Vec<Option<usize>>, ()> {
    let rank = node.shape.rank();
    if axis >= rank {
        return Err(());
    }
    let arg_dims = |i: usize| program.shape(node.args[i]).dims();
    Ok(match &node.op {
        Op::Leaf(_) | Op::Const(_) => vec![],
        Op::Iota { axis: counted } => {
            if *counted == axis {
                return Err(());
            }
            vec![]
        }
        Op::Unary(_) | Op::Binary(_) | Op::Where => vec![Some(axis); node.args.len()],
        Op::Broadcast => {
            let from = arg_dims(0);
            let lead = rank - from.len();
            if axis < lead || from[axis - lead] != node.shape.dims()[axis] {
                vec![None]
            } else {
                vec![Some(axis - lead)]
            }
        }
        Op::Transpose(perm) => vec![Some(perm[axis])],
        Op::Reduce(_, axes) => {
            let kept: Vec<usize> = (0..arg_dims(0).len())
                .filter(|a| !axes.contains(a))
                .collect();
            vec![Some(kept[axis])]
        }
        Op::Slice { axis: cut, .. } | Op::Pad { axis: cut, .. } => {
            if *cut == axis {
                return Err(());
            }
            vec![Some(axis)]
        }
        Op::Concat { axis: joined } => {
            if *joined == axis {
                return Err(());
            }
            vec![Some(axis); node.args.len()]
        }
        Op::MatMul => {
            if axis + 2 < rank {
                vec![Some(axis), Some(axis)]
            } else if axis + 2 == rank {
                vec![Some(axis), None]
            } else {
                vec![None, Some(axis)]
            }
        }
        Op::Conv2d { .. } | Op::Conv2dInputGrad { .. } => {
            if axis != 0 {
                return Err(());
            }
            vec![Some(0), None]
        }
        Op::Conv2dWeightGrad { .. } => return Err(()),
        Op::Reshape => {
            let outermost = |dims: &[usize]| dims.iter().position(|&d| d != 1);
            let from = arg_dims(0);
            let (Some(out_axis), Some(in_axis)) = (outermost(node.shape.dims()), outermost(from))
            else {
                return Err(());
            };
            if out_axis != axis || !from[in_axis].is_multiple_of(parts) {
                return Err(());
            }
            vec![Some(in_axis)]
        }
    })
}

/// `program` restricted to one of `parts` blocks of the first axis of every output, or `None`
/// where some op does not allow it (see the module's documentation). Leaves may only be
/// restricted along their first axis, and only those `may_restrict` accepts (a parameter,
/// shared by all parts, is not).
pub fn split_rows(
    program: &Program,
    parts: usize,
    may_restrict: impl Fn(&Node) -> bool,
) -> Option<Split> {
    if parts < 2 || program.outputs.is_empty() {
        return None;
    }
    let n = program.nodes.len();
    // None: not needed; Some(None): needed whole; Some(Some(a)): needed restricted along a.
    let mut need: Vec<Option<Option<usize>>> = vec![None; n];
    let require =
        |need: &mut Vec<Option<Option<usize>>>, id: ValueId, axis: Option<usize>| match need
            [id.index()]
        {
            None => {
                need[id.index()] = Some(axis);
                true
            }
            Some(existing) => existing == axis,
        };
    for o in &program.outputs {
        if !require(&mut need, o.value, Some(0)) {
            return None;
        }
    }
    for id in program.ids().rev() {
        let Some(axis) = need[id.index()] else {
            continue;
        };
        let node = program.node(id);
        let operands = match axis {
            Some(a) => operand_axes(program, node, a, parts).ok()?,
            None => vec![None; node.args.len()],
        };
        for (&arg, operand_axis) in node.args.iter().zip(operands) {
            if !require(&mut need, arg, operand_axis) {
                return None;
            }
        }
    }
    // Restricted axes must divide evenly; leaves are read in blocks of their first axis only.
    let mut repeated_flops = 0;
    for id in program.ids() {
        let node = program.node(id);
        match need[id.index()] {
            Some(Some(a)) => {
                if !node.shape.dims()[a].is_multiple_of(parts) {
                    return None;
                }
                if matches!(node.op, Op::Leaf(_)) && (a != 0 || !may_restrict(node)) {
                    return None;
                }
            }
            Some(None) if !matches!(node.op, Op::Leaf(_) | Op::Const(_)) => {
                repeated_flops += crate::ir::node_flops(program, node);
            }
            _ => {}
        }
    }
    let axes: Vec<Option<usize>> = need.iter().map(|n| n.flatten()).collect();
    let mut restricted = program.clone();
    for (node, axis) in restricted.nodes.iter_mut().zip(&axes) {
        if let Some(a) = *axis {
            let mut dims = node.shape.dims().to_vec();
            dims[a] /= parts;
            node.shape = Shape::new(dims);
        }
    }
    Some(Split {
        program: restricted,
        parts,
        axes,
        repeated_flops,
    })
}
