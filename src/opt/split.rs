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
//! reshape                   the axis that starts at the same element (merged or split)
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
        // A loop's iterations are sequential; its body is not split.
        Op::Conv2dWeightGrad { .. } | Op::Scan(_) | Op::Result(_) => return Err(()),
        Op::Reshape => {
            // The axis of the operand that starts where the restricted axis does (the same
            // number of elements before it), and that merges into it or splits into it.
            let to = node.shape.dims();
            let from = arg_dims(0);
            let before: usize = to[..axis].iter().product();
            let mut prefix = 1;
            let mut found = None;
            for (j, &d) in from.iter().enumerate() {
                if prefix == before && (d != 1 || to[axis] == 1) {
                    found = Some(j);
                    break;
                }
                prefix *= d;
            }
            let Some(in_axis) = found else {
                return Err(());
            };
            let (a, b) = (to[axis], from[in_axis]);
            let fits = if a >= b {
                a.is_multiple_of(b) && b.is_multiple_of(parts)
            } else {
                b.is_multiple_of(a)
            };
            if !fits {
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
    let first = vec![0; program.outputs.len()];
    split_along(program, parts, &first, |leaf, axis| {
        axis == 0 && may_restrict(leaf)
    })
}

/// [`split_rows`] with output i restricted along `axes[i]`, and leaf restrictions accepted
/// where `may_restrict(leaf, axis)` says so.
pub fn split_along(
    program: &Program,
    parts: usize,
    axes: &[usize],
    may_restrict: impl Fn(&Node, usize) -> bool,
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
    for (o, &axis) in program.outputs.iter().zip(axes) {
        if !require(&mut need, o.value, Some(axis)) {
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
                if matches!(node.op, Op::Leaf(_)) && !may_restrict(node, a) {
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

/// State entries stored transposed, each with its permutation (stored axis i = original
/// axis `perm[i]`).
pub type Permuted = Vec<(String, Vec<usize>)>;

/// A loop's state stored with its samples first, so that its body splits into blocks of
/// samples.
///
/// A predictive-coding relaxation over a loop stacks every iteration's units, `[T, B, ...]`:
/// the samples are not the first axis, and a block of them is not one block of memory. This
/// rewrite stores each state entry the split must restrict along a later axis with that axis
/// moved first (`[B, T, ...]`): the prologue writes it transposed, the body reads it through
/// the inverse transpose (a view, no copy) and writes its next value transposed again. The
/// loop computes the same values; its state entries listed (with their permutation, stored
/// axis i = original axis `perm[i]`) are read back by applying the inverse. The samples are
/// recognised as the first axis of the loop's inputs; `None` where the body has none, or
/// does not split along them.
pub fn sample_major(
    program: &crate::ir::LoopProgram,
    parts: usize,
) -> Option<(crate::ir::LoopProgram, Permuted)> {
    use crate::ir::LeafKind;
    let (prologue, body) = (&program.prologue, &program.body);
    let batch = [prologue, body]
        .into_iter()
        .flat_map(|p| {
            p.leaves(LeafKind::Input)
                .into_iter()
                .filter_map(move |(id, _)| p.shape(id).dims().first().copied())
        })
        .next()?;
    let axes: Vec<usize> = body
        .outputs
        .iter()
        .map(|o| body.shape(o.value).dims().iter().position(|&d| d == batch))
        .collect::<Option<_>>()?;
    if axes.iter().all(|&a| a == 0) {
        return None;
    }
    let split = split_along(body, parts, &axes, |leaf, axis| {
        leaf.op == Op::Leaf(LeafKind::State) || (axis == 0 && leaf.op != Op::Leaf(LeafKind::Param))
    })?;
    // The state entries to store transposed: those the split restricts along a later axis.
    let mut moved: std::collections::BTreeMap<String, usize> = Default::default();
    for (o, &axis) in body.outputs.iter().zip(&axes) {
        if axis > 0 {
            moved.insert(o.name.clone(), axis);
        }
    }
    for (id, name) in body.leaves(LeafKind::State) {
        match (split.axes[id.index()], moved.get(name)) {
            (Some(a), Some(&b)) if a != b => return None,
            (Some(a), None) if a > 0 => {
                if body.output(name).is_some() {
                    return None;
                }
                moved.insert(name.to_string(), a);
            }
            _ => {}
        }
    }
    let first = |axis: usize, rank: usize| -> Vec<usize> {
        let mut perm: Vec<usize> = (0..rank).filter(|&k| k != axis).collect();
        perm.insert(0, axis);
        perm
    };
    let inverse = |perm: &[usize]| -> Vec<usize> {
        let mut inv = vec![0; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            inv[p] = i;
        }
        inv
    };
    let mut looped = program.clone();
    let mut permuted = Vec::new();
    for (name, &axis) in &moved {
        let rank = match (prologue.output(name), body.output(name)) {
            (Some(v), _) => prologue.shape(v).rank(),
            (None, Some(v)) => body.shape(v).rank(),
            (None, None) => match body.leaf_named(LeafKind::State, name) {
                Some(v) => body.shape(v).rank(),
                None => continue,
            },
        };
        let perm = first(axis, rank);
        // Written transposed, by the prologue and the body.
        for p in [&mut looped.prologue, &mut looped.body] {
            if let Some(v) = p.output(name) {
                let t = p.transpose(v, perm.clone());
                p.set_output(name.clone(), t);
            }
        }
        // Read through the inverse transpose.
        let b = &mut looped.body;
        if let Some(leaf) = b.leaf_named(LeafKind::State, name) {
            let shape = b.shape(leaf).clone();
            let stored = Shape::new(perm.iter().map(|&p| shape.dims()[p]).collect::<Vec<_>>());
            b.nodes[leaf.index()].shape = stored;
            let logical = b.transpose(leaf, inverse(&perm));
            for (i, node) in b.nodes.iter_mut().enumerate() {
                if i != logical.index() {
                    for a in &mut node.args {
                        if *a == leaf {
                            *a = logical;
                        }
                    }
                }
            }
            for o in &mut b.outputs {
                if o.value == leaf {
                    o.value = logical;
                }
            }
        }
        permuted.push((name.clone(), perm));
    }
    looped.body.sort_topologically();
    Some((looped, permuted))
}
