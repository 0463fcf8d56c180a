//! The primitive operations of the IR, grouped by kind as tinygrad groups them.
//!
//! Everything a `.pcg` program can say lowers to this small set: the stdlib writes softmax,
//! layers and recurrent cells over it, and max/avg pooling lower to reshapes and reductions.
//! Later passes (autodiff, the PC transform) produce programs over the same set, so one
//! interpreter and one JIT serve them all.

pub use super::shape::ConvParams;
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
    /// A random tensor drawn afresh for every training step from its initialiser (dropout's
    /// mask), the same for all of the step's programs; all ones when evaluating.
    Noise,
}

impl LeafKind {
    pub fn keyword(self) -> &'static str {
        match self {
            LeafKind::Input => "input",
            LeafKind::Target => "target",
            LeafKind::Param => "param",
            LeafKind::State => "state",
            LeafKind::Noise => "noise",
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
    /// The error function, erf(x) = 2/√π ∫₀ˣ e^(−t²) dt.
    Erf,
    Abs,
    /// 1.0 where x > 0, -1.0 where x < 0, 0.0 at 0.
    Sign,
    /// x itself, with a derivative of zero: what the gradient (and a predictive-coding
    /// message) does not flow back through.
    StopGradient,
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
    /// A tensor of the node's shape whose every element is its index along `axis`.
    Iota {
        axis: usize,
    },
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
    Slice {
        axis: usize,
        start: usize,
        end: usize,
    },
    /// Zeros added before and after along `axis` (the adjoint of `Slice`).
    Pad {
        axis: usize,
        before: usize,
        after: usize,
    },
    /// Operands joined along `axis`.
    Concat {
        axis: usize,
    },
    /// `[..., m, k] @ [..., k, n] -> [..., m, n]`, batch axes equal.
    MatMul,
    /// 2-D convolution (cross-correlation), input `[N, C, H, W]`, weight
    /// `[O, C / groups, KH, KW]`, with the options of [`ConvParams`].
    Conv2d(ConvParams),
    /// The adjoint of `Conv2d` with respect to its input: args (cotangent, weight). It is
    /// also the transposed convolution.
    Conv2dInputGrad(ConvParams),
    /// The adjoint of `Conv2d` with respect to its weight: args (input, cotangent).
    Conv2dWeightGrad(ConvParams),
    /// A structured loop: `trips` runs of a body program over carried state, per-iteration
    /// slices of stacked inputs and invariant inputs (see [`Scan`]). Its results are read
    /// through [`Op::Result`] nodes; the node's own shape is the scalar `[]`.
    Scan(Box<Scan>),
    /// Result `i` of the [`Op::Scan`] that is its one operand: a carried value's final value,
    /// or a per-iteration output stacked along a new leading axis.
    Result(usize),
}

/// A structured loop, as XLA's `scan`: a body program run `trips` times.
///
/// The body's first `args.len()` nodes are its `State` leaves, one per operand of the scan
/// node, in operand order, and it has no other leaves:
///
/// - operands `0..carries` are the initial **carried** values; the body's first `carries`
///   outputs are their values for the next iteration (same shapes);
/// - the next `stacked` operands are **stacked** inputs `[trips, ...]`; the body's leaf is the
///   iteration's slice `[...]`;
/// - the remaining operands are **invariant**: the body reads them whole every iteration.
///
/// Body outputs after the carried ones are **per-iteration** outputs; the scan stacks them
/// into `[trips, ...]`, the iteration's value at its index. Results `0..carries` of the scan
/// are the final carried values, the rest the stacked outputs, in output order.
/// A `reverse` scan runs its iterations from `trips − 1` down to 0 (a reverse sweep: the
/// gradient of a scan is one), reading and writing index t at iteration t as the forward
/// order does.
#[derive(Clone, Debug, PartialEq)]
pub struct Scan {
    pub trips: usize,
    pub carries: usize,
    pub stacked: usize,
    pub reverse: bool,
    pub body: super::Program,
}

impl Scan {
    /// The number of operands the scan node takes: its body's leaves.
    pub fn operands(&self) -> usize {
        self.body
            .nodes
            .iter()
            .take_while(|n| matches!(n.op, Op::Leaf(_)))
            .count()
    }

    /// What operand `k` is to the body.
    pub fn role(&self, k: usize) -> ScanInput {
        if k < self.carries {
            ScanInput::Carried
        } else if k < self.carries + self.stacked {
            ScanInput::Stacked
        } else {
            ScanInput::Invariant
        }
    }

    /// The number of results: the carried values, then the per-iteration outputs.
    pub fn results(&self) -> usize {
        self.body.outputs.len()
    }

    /// The shape of result `i`, from the body's output shapes.
    pub fn result_shape(&self, i: usize) -> Option<super::Shape> {
        let output = self.body.outputs.get(i)?;
        let dims = self.body.shape(output.value).dims();
        Some(if i < self.carries {
            super::Shape::new(dims)
        } else {
            let mut stacked = vec![self.trips];
            stacked.extend_from_slice(dims);
            super::Shape::new(stacked)
        })
    }

    /// Keeps the per-iteration outputs `read` marks and the carried values that are read
    /// (by `read`, or by the body through their leaves), then prunes the body. Returns each
    /// old result's new index (`None`: dropped, so no `result` node may read it).
    pub fn trim(&mut self, read: &[bool]) -> Vec<Option<usize>> {
        let users = self.body.users();
        let carried_needed: Vec<bool> = (0..self.carries)
            .map(|k| read[k] || !users[k].is_empty())
            .collect();
        let mut keep: Vec<bool> = (0..self.body.outputs.len())
            .map(|k| {
                if k < self.carries {
                    carried_needed[k]
                } else {
                    read[k]
                }
            })
            .collect();
        // A dropped carried value takes its leaf and operand along; its leaf has no users.
        let dropped_carries: Vec<usize> = (0..self.carries).filter(|&k| !keep[k]).collect();
        let mut index = Vec::with_capacity(keep.len());
        let mut next = 0;
        for &k in &keep {
            index.push(k.then(|| {
                next += 1;
                next - 1
            }));
        }
        let mut k = 0;
        self.body.outputs.retain(|_| {
            k += 1;
            keep[k - 1]
        });
        keep.truncate(0);
        if !dropped_carries.is_empty() {
            self.remove_leaves(&dropped_carries);
            self.carries -= dropped_carries.len();
        }
        self.body.prune();
        index
    }

    /// Removes the operands (and body leaves) that are neither carried nor read by the body;
    /// returns, for each old operand, whether it was kept.
    pub fn drop_unread_operands(&mut self) -> Vec<bool> {
        let operands = self.operands();
        let users = self.body.users();
        // A leaf that is itself an output (a stacked operand passed through) is read too.
        let output = |k: usize| self.body.outputs.iter().any(|o| o.value.index() == k);
        let unread: Vec<usize> = (self.carries..operands)
            .filter(|&k| users[k].is_empty() && !output(k))
            .collect();
        let stacked_dropped = unread
            .iter()
            .filter(|&&k| k < self.carries + self.stacked)
            .count();
        let kept = (0..operands).map(|k| !unread.contains(&k)).collect();
        self.remove_leaves(&unread);
        self.stacked -= stacked_dropped;
        kept
    }

    /// Removes body leaves (which nothing reads) and renumbers the body.
    fn remove_leaves(&mut self, leaves: &[usize]) {
        let old = std::mem::take(&mut self.body);
        let mut renumber = vec![super::ValueId(0); old.nodes.len()];
        let mut body = super::Program::new(old.name.clone());
        body.inits = old.inits;
        for (i, node) in old.nodes.into_iter().enumerate() {
            if leaves.contains(&i) {
                continue;
            }
            renumber[i] = super::ValueId(body.nodes.len() as u32);
            let mut node = node;
            for a in &mut node.args {
                *a = renumber[a.index()];
            }
            body.nodes.push(node);
        }
        body.outputs = old
            .outputs
            .into_iter()
            .map(|mut o| {
                o.value = renumber[o.value.index()];
                o
            })
            .collect();
        self.body = body;
    }

    /// The iteration index at run `k` of the body (0-based).
    pub fn iteration(&self, k: usize) -> usize {
        if self.reverse {
            self.trips - 1 - k
        } else {
            k
        }
    }
}

/// How a scan's body sees one of its operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanInput {
    Carried,
    Stacked,
    Invariant,
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
    /// Structured control flow: a scan and the reads of its results.
    Loop,
}

impl Op {
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Leaf(_) => OpKind::Leaf,
            Op::Const(_) | Op::Iota { .. } => OpKind::Const,
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
            Op::MatMul | Op::Conv2d(_) | Op::Conv2dInputGrad(_) | Op::Conv2dWeightGrad(_) => {
                OpKind::Contraction
            }
            Op::Scan(_) | Op::Result(_) => OpKind::Loop,
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
            OpKind::Loop => match self {
                Op::Scan(scan) => Some(scan.operands()),
                _ => Some(1),
            },
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
            UnaryOp::Erf => f.write_str("erf"),
            UnaryOp::Sigmoid => f.write_str("sigmoid"),
            UnaryOp::Abs => f.write_str("abs"),
            UnaryOp::Sign => f.write_str("sign"),
            UnaryOp::StopGradient => f.write_str("stop_gradient"),
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
            Op::Iota { axis } => write!(f, "iota[axis={axis}]"),
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
            Op::Conv2d(params) => write!(f, "conv2d[{params}]"),
            Op::Conv2dInputGrad(params) => write!(f, "conv2d_input_grad[{params}]"),
            Op::Conv2dWeightGrad(params) => write!(f, "conv2d_weight_grad[{params}]"),
            Op::Scan(scan) => {
                write!(
                    f,
                    "scan[trips={}, carries={}, stacked={}{}]",
                    scan.trips,
                    scan.carries,
                    scan.stacked,
                    if scan.reverse { ", reverse" } else { "" }
                )
            }
            Op::Result(i) => write!(f, "result[{i}]"),
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
