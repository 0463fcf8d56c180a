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

/// The output size of a convolution or pooling window along one axis: `size` padded by
/// `padding` elements in all (both sides together), a window of `kernel` taps `dilation`
/// apart, moved by `stride`.
pub fn conv_out(
    size: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
) -> Option<usize> {
    let padded = size + padding;
    let span = dilation.checked_mul(kernel.checked_sub(1)?)? + 1;
    if stride == 0 || dilation == 0 || padded < span {
        None
    } else {
        Some((padded - span) / stride + 1)
    }
}

/// The options of a 2-D convolution (ONNX's `Conv` attributes): a stride and a dilation per
/// spatial axis (height, width), zero padding on each side (top, left, bottom, right), and
/// the number of channel groups (the input's and output's channels split into `groups`
/// parts, part g of the output seeing part g of the input only; `groups` = C is depthwise).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvParams {
    pub stride: [usize; 2],
    pub pads: [usize; 4],
    pub dilation: [usize; 2],
    pub groups: usize,
}

impl ConvParams {
    /// One stride and the same padding on every side; no dilation, one group.
    pub fn new(stride: usize, padding: usize) -> ConvParams {
        ConvParams {
            stride: [stride; 2],
            pads: [padding; 4],
            dilation: [1; 2],
            groups: 1,
        }
    }

    /// The padding before and after along spatial axis `axis` (0 = height, 1 = width).
    pub fn padding(&self, axis: usize) -> (usize, usize) {
        (self.pads[axis], self.pads[axis + 2])
    }

    /// Whether these are the options [`ConvParams::new`] makes (printed in short form).
    pub fn is_simple(&self) -> bool {
        *self == ConvParams::new(self.stride[0], self.pads[0])
    }

    /// The output size along spatial axis `axis` for an input of `size` and a kernel of
    /// `kernel` taps.
    pub fn out(&self, axis: usize, size: usize, kernel: usize) -> Option<usize> {
        let (before, after) = self.padding(axis);
        conv_out(
            size,
            kernel,
            self.stride[axis],
            before + after,
            self.dilation[axis],
        )
    }
}

impl fmt::Display for ConvParams {
    /// `stride=1, padding=0` for the simple case; every option spelled out otherwise
    /// (`stride=[2, 1], padding=[1, 1, 0, 0], dilation=[1, 1], groups=4`).
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.is_simple() {
            return write!(f, "stride={}, padding={}", self.stride[0], self.pads[0]);
        }
        let list = |v: &[usize]| {
            v.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        write!(
            f,
            "stride=[{}], padding=[{}], dilation=[{}], groups={}",
            list(&self.stride),
            list(&self.pads),
            list(&self.dilation),
            self.groups
        )
    }
}

/// The sizes of a 2-D convolution: input `[n, c, h, w]`, weight `[o, c / groups, kh, kw]`,
/// output `[n, o, oh, ow]`, and its options. Both backends derive their loops from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(C)]
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
    /// Strides along height and width.
    pub sh: usize,
    pub sw: usize,
    /// Padding before the first row and column (the padding after only sets `oh`, `ow`).
    pub top: usize,
    pub left: usize,
    /// Dilations along height and width.
    pub dh: usize,
    pub dw: usize,
    pub groups: usize,
}

impl ConvGeometry {
    /// The geometry of a convolution whose shapes `infer` accepted (a kernel that does not
    /// fit gives an empty output).
    pub fn new(input: &[usize], weight: &[usize], params: ConvParams) -> ConvGeometry {
        ConvGeometry {
            n: input[0],
            c: input[1],
            h: input[2],
            w: input[3],
            o: weight[0],
            kh: weight[2],
            kw: weight[3],
            oh: params.out(0, input[2], weight[2]).unwrap_or(0),
            ow: params.out(1, input[3], weight[3]).unwrap_or(0),
            sh: params.stride[0],
            sw: params.stride[1],
            top: params.pads[0],
            left: params.pads[1],
            dh: params.dilation[0],
            dw: params.dilation[1],
            groups: params.groups.max(1),
        }
    }

    /// The input channels each group reads (the weight's second axis).
    pub fn group_channels(&self) -> usize {
        self.c / self.groups
    }

    /// The output channels each group writes.
    pub fn group_outputs(&self) -> usize {
        self.o / self.groups
    }

    /// The length of one group's patch (a row of the weight matrix): `C/g · KH · KW`.
    pub fn group_patch(&self) -> usize {
        self.group_channels() * self.kh * self.kw
    }

    /// Calls `visit(entry, pixel, len)` for every run of entries of one sample's im2col
    /// matrix `[C·KH·KW, OH·OW]` that read input elements: entries `entry..entry + len` read
    /// the `[C, H, W]` input at `pixel`, `pixel + sw`, …. Entries outside every run read the
    /// zero padding.
    pub fn for_each_run(&self, mut visit: impl FnMut(usize, usize, usize)) {
        let pixels = self.oh * self.ow;
        for c in 0..self.c {
            for ki in 0..self.kh {
                for kj in 0..self.kw {
                    let row = ((c * self.kh + ki) * self.kw + kj) * pixels;
                    // The output columns whose input column ow·sw + kj·dw − left is inside.
                    let tap = kj * self.dw;
                    let first = self.left.saturating_sub(tap).div_ceil(self.sw);
                    let end = (self.w + self.left)
                        .checked_sub(tap)
                        .map_or(0, |e| e.div_ceil(self.sw))
                        .min(self.ow);
                    if first >= end {
                        continue;
                    }
                    let iw = first * self.sw + tap - self.left;
                    for oh in 0..self.oh {
                        let Some(ih) = (oh * self.sh + ki * self.dh)
                            .checked_sub(self.top)
                            .filter(|&i| i < self.h)
                        else {
                            continue;
                        };
                        visit(
                            row + oh * self.ow + first,
                            (c * self.h + ih) * self.w + iw,
                            end - first,
                        );
                    }
                }
            }
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
        Op::Conv2d(params) => {
            let (x, w) = (args[0], args[1]);
            let g = params.groups;
            let fits =
                x.rank() == 4 && w.rank() == 4 && g >= 1 && x.0[1] == w.0[1] * g && w.0[0] % g == 0;
            if !fits {
                return err(format!(
                    "conv2d with {g} group(s) needs input [N, C, H, W] and weight [O, C / {g}, KH, KW] with O a multiple of {g}, got {x} and {w}"
                ));
            }
            if params.stride.contains(&0) || params.dilation.contains(&0) {
                return err("conv2d's strides and dilations must be at least 1");
            }
            let (Some(h), Some(wd)) =
                (params.out(0, x.0[2], w.0[2]), params.out(1, x.0[3], w.0[3]))
            else {
                return err(format!("kernel {w} does not fit input {x}"));
            };
            Shape(vec![x.0[0], w.0[0], h, wd])
        }
        Op::Conv2dInputGrad(params) => {
            let Some(t) = target else {
                return err("conv2d_input_grad needs the input shape");
            };
            let expected = infer(&Op::Conv2d(*params), &[t, args[1]], None)?;
            if expected != *args[0] {
                return err(format!(
                    "cotangent {} does not match conv2d output {expected}",
                    args[0]
                ));
            }
            t.clone()
        }
        Op::Conv2dWeightGrad(params) => {
            let Some(t) = target else {
                return err("conv2d_weight_grad needs the weight shape");
            };
            let expected = infer(&Op::Conv2d(*params), &[args[0], t], None)?;
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
