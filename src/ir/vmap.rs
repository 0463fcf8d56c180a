//! Stacking: the nodes of one iteration of a loop, computed for all its iterations at once.
//!
//! A value that differs between iterations is *stacked*: one tensor `[T, ...]` holding every
//! iteration's value, iteration t at index t of the new leading axis (as `jax.vmap` maps over
//! axis 0). A value the same at every iteration stays as it is and is computed once. Each op
//! has a stacked form over the same primitive ops:
//!
//! ```text
//! elementwise, where       unstacked operands broadcast to [T, ...]
//! reduce, slice, pad,      the axes shifted by one
//!   concat, transpose
//! reshape, broadcast       [T] prepended to the target (a broadcast's operand gets unit axes
//!                          after T, so that T stays aligned with T)
//! matmul [m, k]·[k, n]     a stacked left operand with an unstacked matrix: one product over
//!                          [m·T, k] rows; otherwise a batched product over [T, ...]
//! conv2d, its input        the iterations folded into the samples: [N·T, C, H, W]
//!   gradient
//! ```
//!
//! Rows are merged sample-major (`[m, T, ...]`, a transpose away): a block of samples is then
//! one block of a product's rows, so a relaxation over stacked units still splits into
//! blocks of samples (`opt::split`).
//!
//! ```text
//! ```
//!
//! A convolution's weight gradient, a stacked convolution weight and a scan have no stacked
//! form here ([`StackError`]); callers keep such nodes in their loop.

use super::{Node, Op, Program, Region, Shape, ValueId};

/// A value of the stacking program: stacked (`[T, ...]`) or the same for every iteration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapped {
    pub value: ValueId,
    pub stacked: bool,
}

impl Mapped {
    pub fn same(value: ValueId) -> Mapped {
        Mapped {
            value,
            stacked: false,
        }
    }

    pub fn stacked(value: ValueId) -> Mapped {
        Mapped {
            value,
            stacked: true,
        }
    }
}

/// An op without a stacked form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackError {
    pub op: String,
}

impl std::fmt::Display for StackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} has no stacked form", self.op)
    }
}

/// Appends to `out` the stacked form over `trips` iterations of `node` (a computed node of
/// some body program), whose operands are `args`. The result keeps the node's name and
/// region; the helper nodes around it (reshapes, broadcasts) have its region.
pub fn stack_node(
    out: &mut Program,
    node: &Node,
    args: &[Mapped],
    trips: usize,
) -> Result<Mapped, StackError> {
    let unsupported = || {
        Err(StackError {
            op: node.op.to_string(),
        })
    };
    if matches!(node.op, Op::Leaf(_) | Op::Scan(_) | Op::Result(_)) {
        return unsupported();
    }
    if !args.iter().any(|a| a.stacked) {
        let args = args.iter().map(|a| a.value).collect();
        return Ok(Mapped::same(out.push(Node {
            args,
            ..node.clone()
        })));
    }
    let mut b = Builder {
        out,
        region: node.region,
        trips,
    };
    let stacked_shape = |shape: &Shape| b_stack(trips, shape);
    let values: Vec<ValueId> = args.iter().map(|a| a.value).collect();
    let result = match &node.op {
        Op::Unary(_) => b.emit(node, values, None),
        Op::Binary(_) | Op::Where => {
            let target = stacked_shape(&node.shape);
            let args = args
                .iter()
                .map(|&a| b.stacked_value(a, &node.shape))
                .collect();
            b.emit(node, args, Some(target))
        }
        Op::Reduce(r, axes) => {
            let op = Op::Reduce(*r, axes.iter().map(|a| a + 1).collect());
            b.emit(&with_op(node, op), values, None)
        }
        Op::Reshape => b.emit(node, values, Some(stacked_shape(&node.shape))),
        Op::Transpose(perm) => {
            let mut stacked = vec![0];
            stacked.extend(perm.iter().map(|p| p + 1));
            b.emit(&with_op(node, Op::Transpose(stacked)), values, None)
        }
        Op::Broadcast => {
            // [T] + from, with unit axes after T up to the target's rank, then broadcast.
            let from = b.out.shape(values[0]).dims()[1..].to_vec();
            let mut dims = vec![trips];
            dims.extend(std::iter::repeat_n(1, node.shape.rank() - from.len()));
            dims.extend_from_slice(&from);
            let aligned = b.helper(Op::Reshape, vec![values[0]], Some(Shape::new(dims)));
            b.emit(node, vec![aligned], Some(stacked_shape(&node.shape)))
        }
        Op::Slice { axis, start, end } => {
            let op = Op::Slice {
                axis: axis + 1,
                start: *start,
                end: *end,
            };
            b.emit(&with_op(node, op), values, None)
        }
        Op::Pad {
            axis,
            before,
            after,
        } => {
            let op = Op::Pad {
                axis: axis + 1,
                before: *before,
                after: *after,
            };
            b.emit(&with_op(node, op), values, None)
        }
        Op::Concat { axis } => {
            let parts: Vec<ValueId> = args
                .iter()
                .map(|&a| {
                    let shape = b.out.shape(a.value).clone();
                    b.stacked_value(a, &shape)
                })
                .collect();
            b.emit(&with_op(node, Op::Concat { axis: axis + 1 }), parts, None)
        }
        Op::MatMul => {
            let (a, w) = (args[0], args[1]);
            let a_dims = b.out.shape(a.value).dims().to_vec();
            let w_rank = b.out.shape(w.value).rank();
            if a.stacked && !w.stacked && w_rank == 2 {
                // One product over every iteration's rows, taken sample-major ([m, T, k]):
                // a block of samples is then a block of the product's rows.
                let (trips, m, k) = (a_dims[0], a_dims[1], a_dims[2]);
                let n = node.shape.dims()[1];
                let by_row = b.helper(Op::Transpose(vec![1, 0, 2]), vec![a.value], None);
                let flat = b.helper(Op::Reshape, vec![by_row], Some(Shape::new([m * trips, k])));
                let product = b.helper(Op::MatMul, vec![flat, w.value], None);
                let rows = b.helper(Op::Reshape, vec![product], Some(Shape::new([m, trips, n])));
                b.emit(
                    &with_op(node, Op::Transpose(vec![1, 0, 2])),
                    vec![rows],
                    None,
                )
            } else {
                let shapes: Vec<Shape> = node_arg_shapes(b.out, args);
                let a = b.stacked_value(a, &shapes[0]);
                let w = b.stacked_value(w, &shapes[1]);
                b.emit(node, vec![a, w], None)
            }
        }
        Op::Conv2d { .. } | Op::Conv2dInputGrad { .. } => {
            if args[1].stacked {
                return unsupported();
            }
            // The iterations become samples, sample-major: [T, N, ...] as [N·T, ...].
            let dims = b.out.shape(values[0]).dims().to_vec();
            let rank = dims.len();
            let mut swap: Vec<usize> = (0..rank).collect();
            swap.swap(0, 1);
            let by_sample = b.helper(Op::Transpose(swap.clone()), vec![values[0]], None);
            let mut folded = vec![dims[0] * dims[1]];
            folded.extend_from_slice(&dims[2..]);
            let x = b.helper(Op::Reshape, vec![by_sample], Some(Shape::new(folded)));
            let mut out_dims = node.shape.dims().to_vec();
            out_dims[0] *= trips;
            let target =
                matches!(node.op, Op::Conv2dInputGrad { .. }).then(|| Shape::new(out_dims.clone()));
            let product = b.helper(node.op.clone(), vec![x, values[1]], target);
            let mut unfolded = vec![node.shape.dims()[0], trips];
            unfolded.extend_from_slice(&node.shape.dims()[1..]);
            let rows = b.helper(Op::Reshape, vec![product], Some(Shape::new(unfolded)));
            b.emit(&with_op(node, Op::Transpose(swap)), vec![rows], None)
        }
        _ => return unsupported(),
    };
    Ok(Mapped::stacked(result))
}

/// `[trips] + shape`.
fn b_stack(trips: usize, shape: &Shape) -> Shape {
    let mut dims = vec![trips];
    dims.extend_from_slice(shape.dims());
    Shape::new(dims)
}

fn with_op(node: &Node, op: Op) -> Node {
    Node { op, ..node.clone() }
}

/// The body shapes of a node's operands: a stacked operand's without its first axis.
fn node_arg_shapes(out: &Program, args: &[Mapped]) -> Vec<Shape> {
    args.iter()
        .map(|a| {
            let dims = out.shape(a.value).dims();
            Shape::new(if a.stacked { &dims[1..] } else { dims })
        })
        .collect()
}

struct Builder<'a> {
    out: &'a mut Program,
    region: Region,
    trips: usize,
}

impl Builder<'_> {
    /// An unnamed node in the node's region.
    fn helper(&mut self, op: Op, args: Vec<ValueId>, target: Option<Shape>) -> ValueId {
        let id = self.out.build(op, &args, target);
        self.out.nodes[id.index()].region = self.region;
        id
    }

    /// The stacked node itself: named as the body's node.
    fn emit(&mut self, node: &Node, args: Vec<ValueId>, target: Option<Shape>) -> ValueId {
        let id = self.helper(node.op.clone(), args, target);
        self.out.nodes[id.index()].name = node.name.clone();
        id
    }

    /// `a` as a stacked value: itself, or (the same for every iteration, of body shape
    /// `shape`) broadcast along a new first axis.
    fn stacked_value(&mut self, a: Mapped, shape: &Shape) -> ValueId {
        if a.stacked {
            return a.value;
        }
        if let Op::Const(c) = self.out.node(a.value).op {
            let id = self.out.constant(c, b_stack(self.trips, shape));
            self.out.nodes[id.index()].region = self.region;
            return id;
        }
        self.helper(
            Op::Broadcast,
            vec![a.value],
            Some(b_stack(self.trips, shape)),
        )
    }
}
