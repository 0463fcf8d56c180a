//! Static shapes and the shape rule of every primitive op.
//!
//! `infer` is the single statement of what each op accepts and produces; the builder, the
//! verifier and (through the builder) the front end's shape checking all ask it.

use super::op::{Op, OpKind};
use std::fmt;

/// A static tensor shape; the empty shape is a scalar.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Shape(pub Vec<usize>);

impl Shape {
    pub fn scalar() -> Self {
        Shape(Vec::new())
    }

    pub fn new(dims: impl Into<Vec<usize>>) -> Self {
        Shape(dims.into())
    }

    pub fn dims(&self) -> &[usize] {
        &self.0
    }

    pub fn rank(&self) -> usize {
        self.0.len()
    }

    pub fn numel(&self) -> usize {
        self.0.iter().product()
    }

    /// The numpy broadcast of two shapes, if they are compatible.
    pub fn broadcast_with(&self, other: &Shape) -> Option<Shape> {
        let rank = self.rank().max(other.rank());
        let mut dims = vec![0; rank];
        for (i, d) in dims.iter_mut().enumerate() {
            let a = dim_from_right(self, rank - 1 - i);
            let b = dim_from_right(other, rank - 1 - i);
            *d = match (a, b) {
                (x, y) if x == y => x,
                (1, y) => y,
                (x, 1) => x,
                _ => return None,
            };
        }
        Some(Shape(dims))
    }

    /// Whether this shape broadcasts to `target` under numpy rules.
    pub fn broadcasts_to(&self, target: &Shape) -> bool {
        self.rank() <= target.rank()
            && self
                .0
                .iter()
                .rev()
                .zip(target.0.iter().rev())
                .all(|(&a, &b)| a == b || a == 1)
    }
}

fn dim_from_right(s: &Shape, k: usize) -> usize {
    if k < s.rank() {
        s.0[s.rank() - 1 - k]
    } else {
        1
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> = self.0.iter().map(|d| d.to_string()).collect();
        write!(f, "[{}]", items.join(", "))
    }
}

/// Why an op does not accept its operands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShapeError {
    pub message: String,
}

impl fmt::Display for ShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ShapeError {}

fn err<T>(message: impl Into<String>) -> Result<T, ShapeError> {
    Err(ShapeError {
        message: message.into(),
    })
}

/// The output size of a convolution or pooling window along one axis.
pub fn conv_out(size: usize, kernel: usize, stride: usize, padding: usize) -> Option<usize> {
    let padded = size + 2 * padding;
    if stride == 0 || kernel == 0 || padded < kernel {
        None
    } else {
        Some((padded - kernel) / stride + 1)
    }
}

/// The sizes of a 2-D convolution: input `[n, c, h, w]`, weight `[o, c, kh, kw]`, output
/// `[n, o, oh, ow]`. Both backends derive their loops from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConvGeometry {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub kh: usize,
    pub kw: usize,
    pub oh: usize,
    pub ow: usize,
    pub stride: usize,
    pub padding: usize,
}

impl ConvGeometry {
    /// The geometry of a convolution whose shapes `infer` accepted (a kernel that does not
    /// fit gives an empty output).
    pub fn new(input: &[usize], weight: &[usize], stride: usize, padding: usize) -> ConvGeometry {
        let out = |size, kernel| conv_out(size, kernel, stride, padding).unwrap_or(0);
        ConvGeometry {
            n: input[0],
            c: input[1],
            h: input[2],
            w: input[3],
            o: weight[0],
            kh: weight[2],
            kw: weight[3],
            oh: out(input[2], weight[2]),
            ow: out(input[3], weight[3]),
            stride,
            padding,
        }
    }
}

/// The result shape of `op` applied to operands of `args` shapes. `target` is the declared
/// result for ops that need one (leaves, constants, reshape, broadcast) and is checked against
/// the inferred shape for the others when given.
pub fn infer(op: &Op, args: &[&Shape], target: Option<&Shape>) -> Result<Shape, ShapeError> {
    if let Some(n) = op.arity() {
        if args.len() != n {
            return err(format!("{op} takes {n} operand(s), got {}", args.len()));
        }
    }
    let shape = match op {
        Op::Leaf(_) | Op::Const(_) => match target {
            Some(t) => t.clone(),
            None => return err(format!("{op} needs a declared shape")),
        },
        Op::Iota { axis } => match target {
            Some(t) if *axis < t.rank() => t.clone(),
            Some(t) => return err(format!("axis {axis} out of range for shape {t}")),
            None => return err(format!("{op} needs a declared shape")),
        },
        Op::Unary(_) => args[0].clone(),
        Op::Binary(b) => {
            if args[0] != args[1] {
                return err(format!(
                    "{b} needs operands of one shape, got {} and {}",
                    args[0], args[1]
                ));
            }
            args[0].clone()
        }
        Op::Where => {
            if args[0] != args[1] || args[1] != args[2] {
                return err(format!(
                    "where needs operands of one shape, got {}, {} and {}",
                    args[0], args[1], args[2]
                ));
            }
            args[0].clone()
        }
        Op::Reduce(_, axes) => {
            let x = args[0];
            if axes.windows(2).any(|w| w[0] >= w[1]) {
                return err("reduction axes must be sorted and distinct");
            }
            if let Some(&a) = axes.iter().find(|&&a| a >= x.rank()) {
                return err(format!("axis {a} out of range for shape {x}"));
            }
            Shape(
                x.0.iter()
                    .enumerate()
                    .filter(|(i, _)| !axes.contains(i))
                    .map(|(_, &d)| d)
                    .collect(),
            )
        }
        Op::Reshape => {
            let Some(t) = target else {
                return err("reshape needs a target shape");
            };
            if t.numel() != args[0].numel() {
                return err(format!(
                    "cannot reshape {} ({} elements) to {} ({} elements)",
                    args[0],
                    args[0].numel(),
                    t,
                    t.numel()
                ));
            }
            t.clone()
        }
        Op::Broadcast => {
            let Some(t) = target else {
                return err("broadcast needs a target shape");
            };
            if !args[0].broadcasts_to(t) {
                return err(format!("cannot broadcast {} to {}", args[0], t));
            }
            t.clone()
        }
        Op::Transpose(perm) => {
            let x = args[0];
            let mut seen = vec![false; x.rank()];
            if perm.len() != x.rank() {
                return err(format!("permutation {perm:?} does not fit shape {x}"));
            }
            for &p in perm {
                if p >= x.rank() || seen[p] {
                    return err(format!("{perm:?} is not a permutation of the axes of {x}"));
                }
                seen[p] = true;
            }
            Shape(perm.iter().map(|&p| x.0[p]).collect())
        }
        Op::Slice { axis, start, end } => {
            let x = args[0];
            if *axis >= x.rank() {
                return err(format!("axis {axis} out of range for shape {x}"));
            }
            if start >= end || *end > x.0[*axis] {
                return err(format!(
                    "slice {start}..{end} out of range for axis {axis} of size {}",
                    x.0[*axis]
                ));
            }
            let mut dims = x.0.clone();
            dims[*axis] = end - start;
            Shape(dims)
        }
        Op::Pad {
            axis,
            before,
            after,
        } => {
            let x = args[0];
            if *axis >= x.rank() {
                return err(format!("axis {axis} out of range for shape {x}"));
            }
            let mut dims = x.0.clone();
            dims[*axis] += before + after;
            Shape(dims)
        }
        Op::Concat { axis } => {
            let Some(first) = args.first() else {
                return err("concat needs at least one operand");
            };
            if *axis >= first.rank() {
                return err(format!("axis {axis} out of range for shape {first}"));
            }
            let mut dims = first.0.clone();
            for other in &args[1..] {
                let same_elsewhere = other.rank() == first.rank()
                    && (0..first.rank()).all(|i| i == *axis || other.0[i] == first.0[i]);
                if !same_elsewhere {
                    return err(format!(
                        "cannot concatenate {first} and {other} along axis {axis}"
                    ));
                }
                dims[*axis] += other.0[*axis];
            }
            Shape(dims)
        }
        Op::MatMul => {
            let (a, b) = (args[0], args[1]);
            if a.rank() < 2 || a.rank() != b.rank() {
                return err(format!(
                    "matmul needs operands of one rank >= 2, got {a} and {b}"
                ));
            }
            let r = a.rank();
            if a.0[..r - 2] != b.0[..r - 2] || a.0[r - 1] != b.0[r - 2] {
                return err(format!("cannot multiply {a} by {b}"));
            }
            let mut dims = a.0[..r - 1].to_vec();
            dims.push(b.0[r - 1]);
            Shape(dims)
        }
        Op::Conv2d { stride, padding } => {
            let (x, w) = (args[0], args[1]);
            if x.rank() != 4 || w.rank() != 4 || x.0[1] != w.0[1] {
                return err(format!(
                    "conv2d needs input [N, C, H, W] and weight [O, C, KH, KW], got {x} and {w}"
                ));
            }
            let (Some(h), Some(wd)) = (
                conv_out(x.0[2], w.0[2], *stride, *padding),
                conv_out(x.0[3], w.0[3], *stride, *padding),
            ) else {
                return err(format!("kernel {w} does not fit input {x}"));
            };
            Shape(vec![x.0[0], w.0[0], h, wd])
        }
        Op::Conv2dInputGrad { stride, padding } => {
            let Some(t) = target else {
                return err("conv2d_input_grad needs the input shape");
            };
            let expected = infer(
                &Op::Conv2d {
                    stride: *stride,
                    padding: *padding,
                },
                &[t, args[1]],
                None,
            )?;
            if expected != *args[0] {
                return err(format!(
                    "cotangent {} does not match conv2d output {expected}",
                    args[0]
                ));
            }
            t.clone()
        }
        Op::Conv2dWeightGrad { stride, padding } => {
            let Some(t) = target else {
                return err("conv2d_weight_grad needs the weight shape");
            };
            let expected = infer(
                &Op::Conv2d {
                    stride: *stride,
                    padding: *padding,
                },
                &[args[0], t],
                None,
            )?;
            if expected != *args[1] {
                return err(format!(
                    "cotangent {} does not match conv2d output {expected}",
                    args[1]
                ));
            }
            t.clone()
        }
        // The operands' shapes against the body's leaves are checked by the verifier, which
        // sees the body; the scan node itself holds no value.
        Op::Scan(scan) => {
            for (k, arg) in args.iter().enumerate() {
                let leaf = scan.body.nodes[k].shape.dims();
                let expected = match scan.role(k) {
                    super::ScanInput::Stacked => {
                        let mut d = vec![scan.trips];
                        d.extend_from_slice(leaf);
                        d
                    }
                    _ => leaf.to_vec(),
                };
                if arg.dims() != expected.as_slice() {
                    return err(format!(
                        "scan operand {k} has shape {arg}, its body reads {}",
                        Shape::new(expected)
                    ));
                }
            }
            Shape::scalar()
        }
        Op::Result(_) => match target {
            Some(t) => t.clone(),
            None => return err("result needs the shape of the scan's result"),
        },
    };
    if let Some(t) = target {
        if *t != shape && !matches!(op.kind(), OpKind::Leaf | OpKind::Const) {
            return err(format!("{op} produces {shape}, declared {t}"));
        }
    }
    Ok(shape)
}
