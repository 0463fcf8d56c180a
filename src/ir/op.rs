//! The primitive operations of the IR, grouped by kind as tinygrad groups them.
//!
//! Everything a `.pcg` program can say lowers to this small set: the stdlib writes softmax,
//! layers and recurrent cells over it, and max/avg pooling lower to reshapes and reductions.
//! Later passes (autodiff, the PC transform) produce programs over the same set, so one
//! interpreter and one JIT serve them all.

use std::fmt;

/// Where a leaf's value comes from when the program runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LeafKind {
    /// A data input (`input x: [B, 64]`), clamped to the batch.
    Input,
    /// A training target (`target y: [B, 10]`), clamped to the batch's labels.
    Target,
    /// A trainable parameter (`param w: [64, 10] = xavier`).
    Param,
    /// A named buffer of a derived program: a value unit, an error unit, a cotangent seed or a
    /// quantity frozen by the relaxation prologue.
    State,
}

impl LeafKind {
    pub fn keyword(self) -> &'static str {
        match self {
            LeafKind::Input => "input",
            LeafKind::Target => "target",
            LeafKind::Param => "param",
            LeafKind::State => "state",
        }
    }
}

/// Elementwise functions of one tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    Sin,
    Cos,
    Tan,
    Tanh,
    Sigmoid,
    Abs,
    /// 1.0 where x > 0, -1.0 where x < 0, 0.0 at 0.
    Sign,
    /// x raised to a constant power.
    Powf(f64),
}

/// Elementwise functions of two tensors of the same shape (broadcasting is explicit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    /// 1.0 where a > b, else 0.0.
    Greater,
    /// 1.0 where a == b, else 0.0.
    Equal,
}

/// Reductions over a set of axes; the reduced axes are removed from the shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Max,
}

/// One primitive operation. The result shape is stored on the node, so movement ops whose
/// target shape is implied (reshape, broadcast) carry no shape of their own.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A value supplied from outside the program; its name is the node's name.
    Leaf(LeafKind),
    /// A tensor of the node's shape filled with one value.
    Const(f64),
    Unary(UnaryOp),
    Binary(BinaryOp),
    /// `where(cond, a, b)`: a where cond != 0, else b; all three the same shape.
    Where,
    /// Reduce the listed axes (sorted, distinct) away.
    Reduce(ReduceOp, Vec<usize>),
    /// Same elements, the node's shape (same element count).
    Reshape,
    /// Permute axes: output axis i is input axis `perm[i]`.
    Transpose(Vec<usize>),
    /// Numpy broadcasting to the node's shape: the operand is right-aligned and each of its
    /// axes is either 1 or equal to the target's.
    Broadcast,
    /// Elements `start..end` along `axis`.
    Slice { axis: usize, start: usize, end: usize },
    /// Zeros added before and after along `axis` (the adjoint of `Slice`).
    Pad { axis: usize, before: usize, after: usize },
    /// Operands joined along `axis`.
    Concat { axis: usize },
    /// `[..., m, k] @ [..., k, n] -> [..., m, n]`, batch axes equal.
    MatMul,
    /// 2-D convolution (cross-correlation), input `[N, C, H, W]`, weight `[O, C, KH, KW]`.
    Conv2d { stride: usize, padding: usize },
    /// The adjoint of `Conv2d` with respect to its input: args (cotangent, weight).
    Conv2dInputGrad { stride: usize, padding: usize },
    /// The adjoint of `Conv2d` with respect to its weight: args (input, cotangent).
    Conv2dWeightGrad { stride: usize, padding: usize },
}

/// The broad kind of an op, for printing, DOT colouring and backend dispatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Leaf,
    Const,
    Unary,
    Binary,
    Ternary,
    Reduce,
    Movement,
    Contraction,
}

impl Op {
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Leaf(_) => OpKind::Leaf,
            Op::Const(_) => OpKind::Const,
            Op::Unary(_) => OpKind::Unary,
            Op::Binary(_) => OpKind::Binary,
            Op::Where => OpKind::Ternary,
            Op::Reduce(..) => OpKind::Reduce,
            Op::Reshape
            | Op::Transpose(_)
            | Op::Broadcast
            | Op::Slice { .. }
            | Op::Pad { .. }
            | Op::Concat { .. } => OpKind::Movement,
            Op::MatMul
            | Op::Conv2d { .. }
            | Op::Conv2dInputGrad { .. }
            | Op::Conv2dWeightGrad { .. } => OpKind::Contraction,
        }
    }

    /// The number of operands the op takes, or `None` for variadic ops.
    pub fn arity(&self) -> Option<usize> {
        match self.kind() {
            OpKind::Leaf | OpKind::Const => Some(0),
            OpKind::Unary | OpKind::Reduce => Some(1),
            OpKind::Binary => Some(2),
            OpKind::Ternary => Some(3),
            OpKind::Movement => match self {
                Op::Concat { .. } => None,
                _ => Some(1),
            },
            OpKind::Contraction => Some(2),
        }
    }
}

impl fmt::Display for UnaryOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnaryOp::Neg => f.write_str("neg"),
            UnaryOp::Exp => f.write_str("exp"),
            UnaryOp::Log => f.write_str("log"),
            UnaryOp::Sqrt => f.write_str("sqrt"),
            UnaryOp::Sin => f.write_str("sin"),
            UnaryOp::Cos => f.write_str("cos"),
            UnaryOp::Tan => f.write_str("tan"),
            UnaryOp::Tanh => f.write_str("tanh"),
            UnaryOp::Sigmoid => f.write_str("sigmoid"),
            UnaryOp::Abs => f.write_str("abs"),
            UnaryOp::Sign => f.write_str("sign"),
            UnaryOp::Powf(p) => write!(f, "powf[{}]", fmt_f64(*p)),
        }
    }
}

impl fmt::Display for BinaryOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Max => "max",
            BinaryOp::Greater => "greater",
            BinaryOp::Equal => "equal",
        })
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Leaf(kind) => f.write_str(kind.keyword()),
            Op::Const(c) => write!(f, "const[{}]", fmt_f64(*c)),
            Op::Unary(u) => write!(f, "{u}"),
            Op::Binary(b) => write!(f, "{b}"),
            Op::Where => f.write_str("where"),
            Op::Reduce(r, axes) => {
                let name = match r {
                    ReduceOp::Sum => "sum",
                    ReduceOp::Max => "max",
                };
                write!(f, "reduce_{name}[axes={}]", fmt_list(axes))
            }
            Op::Reshape => f.write_str("reshape"),
            Op::Transpose(perm) => write!(f, "transpose[perm={}]", fmt_list(perm)),
            Op::Broadcast => f.write_str("broadcast"),
            Op::Slice { axis, start, end } => write!(f, "slice[axis={axis}, {start}..{end}]"),
            Op::Pad {
                axis,
                before,
                after,
            } => write!(f, "pad[axis={axis}, before={before}, after={after}]"),
            Op::Concat { axis } => write!(f, "concat[axis={axis}]"),
            Op::MatMul => f.write_str("matmul"),
            Op::Conv2d { stride, padding } => {
                write!(f, "conv2d[stride={stride}, padding={padding}]")
            }
            Op::Conv2dInputGrad { stride, padding } => {
                write!(f, "conv2d_input_grad[stride={stride}, padding={padding}]")
            }
            Op::Conv2dWeightGrad { stride, padding } => {
                write!(f, "conv2d_weight_grad[stride={stride}, padding={padding}]")
            }
        }
    }
}

/// Prints a constant so that it reads back exactly and integers stay short (`2`, `0.5`).
pub fn fmt_f64(x: f64) -> String {
    if x.is_finite() && x == x.trunc() && x.abs() < 1e15 {
        format!("{x:.0}")
    } else {
        format!("{x:?}")
    }
}

fn fmt_list(xs: &[usize]) -> String {
    let items: Vec<String> = xs.iter().map(|x| x.to_string()).collect();
    format!("[{}]", items.join(", "))
}
