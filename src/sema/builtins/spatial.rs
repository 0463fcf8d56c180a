//! The spatial builtins: convolutions (`conv2d`, `conv_transpose2d`, `conv1d`) and pooling
//! (`max_pool2d`, `avg_pool2d`).
//!
//! Convolutions are IR ops with the options of [`ConvParams`]; a transposed convolution is
//! the convolution's input adjoint (`conv2d_input_grad`), which is what PyTorch and ONNX
//! define it to be. Pooling lowers to movement ops and elementwise maxima or sums: windows
//! that tile the input (stride = size, no padding) reshape it and reduce, any other window
//! (overlapping, padded, dilated, the ceiling mode's partial windows) is the maximum or sum of
//! KH·KW strided slices of the padded input.

use super::{bad_arg, boolean, int, positive, tensor, Bound};
use crate::diag::{Diagnostic, ErrorKind};
use crate::ir::{BinaryOp, ConvParams, Op, ReduceOp, Shape, ValueId};
use crate::sema::lower::{ArgVal, Lowerer, MAX_ELEMENTS};
use crate::sema::value::Val;
use crate::source::Span;

/// An option given per spatial axis: one whole number for both, or `[height, width]`; each
/// at least `min`.
fn per_axis(
    l: &mut Lowerer,
    a: Option<&ArgVal>,
    default: usize,
    min: i64,
    what: &str,
) -> Option<[usize; 2]> {
    let Some(a) = a else {
        return Some([default; 2]);
    };
    let values = numbers(l, a, what)?;
    let checked = |l: &mut Lowerer, v: i64| {
        if v < min || v as usize > MAX_ELEMENTS {
            bad_arg(l, a.span, format!("{what} must be at least {min}, got {v}"));
            None
        } else {
            Some(v as usize)
        }
    };
    match values[..] {
        [v] => {
            let v = checked(l, v)?;
            Some([v, v])
        }
        [h, w] => Some([checked(l, h)?, checked(l, w)?]),
        _ => {
            bad_arg(
                l,
                a.span,
                format!(
                    "{what} is one number or [height, width], got {} numbers",
                    values.len()
                ),
            );
            None
        }
    }
}

/// A padding: one whole number for every side, `[height, width]` (each on both sides), or
/// `[top, left, bottom, right]` (ONNX's order: the starts, then the ends).
fn pads(l: &mut Lowerer, a: Option<&ArgVal>) -> Option<[usize; 4]> {
    let Some(a) = a else {
        return Some([0; 4]);
    };
    let values = numbers(l, a, "padding")?;
    if let Some(&v) = values.iter().find(|&&v| v < 0 || v as usize > MAX_ELEMENTS) {
        bad_arg(
            l,
            a.span,
            format!("padding must be a whole number from 0 up, got {v}"),
        );
        return None;
    }
    let v: Vec<usize> = values.iter().map(|&v| v as usize).collect();
    match v[..] {
        [p] => Some([p; 4]),
        [h, w] => Some([h, w, h, w]),
        [t, left, b, r] => Some([t, left, b, r]),
        _ => {
            bad_arg(
                l,
                a.span,
                format!(
                    "padding is one number, [height, width] or [top, left, bottom, right], got {} numbers",
                    v.len()
                ),
            );
            None
        }
    }
}

/// The compile-time integers of a number or a list of numbers.
fn numbers(l: &mut Lowerer, a: &ArgVal, what: &str) -> Option<Vec<i64>> {
    match &a.val {
        Val::Int(i) => Some(vec![*i]),
        Val::List(items) => {
            let mut out = Vec::new();
            for item in items.clone() {
                let item = ArgVal {
                    name: None,
                    val: item,
                    span: a.span,
                };
                out.push(int(l, &item)?);
            }
            Some(out)
        }
        other => {
            let other = other.clone();
            l.type_error(
                &other,
                &format!("a compile-time integer or a list of them ({what})"),
                a.span,
            );
            None
        }
    }
}

/// The number of channel groups (at least 1).
fn groups(l: &mut Lowerer, a: Option<&ArgVal>) -> Option<usize> {
    positive(l, a, 1, "groups")
}

/// The error for a convolution's input and weight shapes that do not fit: what it `needs`,
/// both operands labelled with their shapes.
fn conv_mismatch<T>(
    l: &mut Lowerer,
    b: &Bound,
    span: Span,
    needs: &str,
    (sx, sw): (&Shape, &Shape),
) -> Option<T> {
    l.error(
        Diagnostic::new(
            ErrorKind::ShapeMismatch,
            format!("{needs}, got {sx} and {sw}"),
            span,
            "in this call",
        )
        .with_label(b.get(0)?.span, format!("has shape {sx}"))
        .with_label(b.get(1)?.span, format!("has shape {sw}")),
    );
    None
}

/// conv2d(x: [N, C, H, W], w: [O, C / groups, KH, KW], stride, padding, dilation, groups).
pub(super) fn conv2d(l: &mut Lowerer, b: &Bound, span: Span) -> Option<Val> {
    let x = tensor(l, b.get(0)?)?;
    let w = tensor(l, b.get(1)?)?;
    let params = ConvParams {
        stride: per_axis(l, b.get(2), 1, 1, "stride")?,
        pads: pads(l, b.get(3))?,
        dilation: per_axis(l, b.get(4), 1, 1, "dilation")?,
        groups: groups(l, b.get(5))?,
    };
    let (sx, sw) = (l.shape(x).clone(), l.shape(w).clone());
    let g = params.groups;
    let fits = sx.rank() == 4
        && sw.rank() == 4
        && sx.dims()[1] == sw.dims()[1] * g
        && sw.dims()[0] % g == 0;
    if !fits {
        let needs = if g == 1 {
            "conv2d needs an input [N, C, H, W] and a weight [O, C, KH, KW]".to_string()
        } else {
            format!("conv2d with groups = {g} needs an input [N, C, H, W] and a weight [O, C / {g}, KH, KW], O a multiple of {g}")
        };
        return conv_mismatch(l, b, span, &needs, (&sx, &sw));
    }
    Some(l.node(Op::Conv2d(params), vec![x, w], None, span))
}

/// conv_transpose2d(x: [N, C, H, W], w: [C, O / groups, KH, KW], stride, padding,
/// output_padding, dilation, groups) -> [N, O, (H − 1)·s − pads + d·(KH − 1) + 1 + output
/// padding, …]: the input adjoint of `conv2d(·, w)` on an input of that size (PyTorch's
/// `ConvTranspose2d`, ONNX's `ConvTranspose`).
pub(super) fn conv_transpose2d(l: &mut Lowerer, b: &Bound, span: Span) -> Option<Val> {
    let x = tensor(l, b.get(0)?)?;
    let w = tensor(l, b.get(1)?)?;
    let params = ConvParams {
        stride: per_axis(l, b.get(2), 1, 1, "stride")?,
        pads: pads(l, b.get(3))?,
        dilation: per_axis(l, b.get(5), 1, 1, "dilation")?,
        groups: groups(l, b.get(6))?,
    };
    let extra = per_axis(l, b.get(4), 0, 0, "output_padding")?;
    let (sx, sw) = (l.shape(x).clone(), l.shape(w).clone());
    let g = params.groups;
    let needs = format!(
        "conv_transpose2d needs an input [N, C, H, W] and a weight [C, O / {g}, KH, KW] with C a multiple of groups = {g}, and output_padding smaller than the stride or the dilation"
    );
    let fits = sx.rank() == 4
        && sw.rank() == 4
        && sx.dims()[1] == sw.dims()[0]
        && sw.dims()[0] % g == 0
        && (0..2).all(|i| extra[i] < params.stride[i].max(params.dilation[i]));
    if !fits {
        return conv_mismatch(l, b, span, &needs, (&sx, &sw));
    }
    let (d, k) = (sx.dims(), sw.dims());
    let mut out = vec![d[0], k[1] * g];
    for i in 0..2 {
        let (before, after) = params.padding(i);
        let full = (d[2 + i] - 1) * params.stride[i] + params.dilation[i] * (k[2 + i] - 1) + 1;
        match (full + extra[i]).checked_sub(before + after) {
            Some(size) if size > 0 => out.push(size),
            _ => return conv_mismatch(l, b, span, &needs, (&sx, &sw)),
        }
    }
    if !l.check_size(&out, span) {
        return None;
    }
    Some(l.node(
        Op::Conv2dInputGrad(params),
        vec![x, w],
        Some(Shape(out)),
        span,
    ))
}

/// conv1d(x: [N, C, L], w: [O, C / groups, K], stride, padding, dilation, groups) -> [N, O,
/// L']: a 2-D convolution of one row.
pub(super) fn conv1d(l: &mut Lowerer, b: &Bound, span: Span) -> Option<Val> {
    let x = tensor(l, b.get(0)?)?;
    let w = tensor(l, b.get(1)?)?;
    let one = |l: &mut Lowerer, a: Option<&ArgVal>, min: i64, what: &str| {
        let [v, w] = per_axis(l, a, usize::from(min > 0), min, what)?;
        if v != w {
            bad_arg(
                l,
                a.map_or(span, |a| a.span),
                format!("conv1d's {what} is one number per side"),
            );
            return None;
        }
        Some(v)
    };
    let stride = one(l, b.get(2), 1, "stride")?;
    let [before, after] = match b.get(3) {
        None => [0, 0],
        Some(a) => match numbers(l, a, "padding")?[..] {
            [p] if p >= 0 => [p as usize; 2],
            [p, q] if p >= 0 && q >= 0 => [p as usize, q as usize],
            _ => {
                let message = "conv1d's padding is a whole number from 0 up, or [left, right]";
                bad_arg(l, a.span, message.to_string());
                return None;
            }
        },
    };
    let dilation = one(l, b.get(4), 1, "dilation")?;
    let g = groups(l, b.get(5))?;
    let (sx, sw) = (l.shape(x).clone(), l.shape(w).clone());
    let fits = sx.rank() == 3
        && sw.rank() == 3
        && sx.dims()[1] == sw.dims()[1] * g
        && sw.dims()[0] % g == 0
        && dilation * (sw.dims()[2] - 1) < sx.dims()[2] + before + after;
    if !fits {
        let needs = "conv1d needs an input [N, C, L] and a weight [O, C / groups, K] with (K - 1) * dilation + 1 at most L + padding";
        return conv_mismatch(l, b, span, needs, (&sx, &sw));
    }
    let (n, c, len) = (sx.dims()[0], sx.dims()[1], sx.dims()[2]);
    let (o, cg, k) = (sw.dims()[0], sw.dims()[1], sw.dims()[2]);
    let row = l.push_node(Op::Reshape, vec![x], Some(Shape(vec![n, c, 1, len])), span)?;
    let kernel = l.push_node(Op::Reshape, vec![w], Some(Shape(vec![o, cg, 1, k])), span)?;
    let params = ConvParams {
        stride: [1, stride],
        pads: [0, before, 0, after],
        dilation: [1, dilation],
        groups: g,
    };
    let out = l.push_node(Op::Conv2d(params), vec![row, kernel], None, span)?;
    let steps = l.shape(out).dims()[3];
    Some(l.node(Op::Reshape, vec![out], Some(Shape(vec![n, o, steps])), span))
}

/// The windows of a 2-D pooling along both spatial axes.
struct Windows {
    size: [usize; 2],
    stride: [usize; 2],
    pads: [usize; 4],
    dilation: [usize; 2],
    /// The output size along each axis.
    out: [usize; 2],
}

impl Windows {
    /// Windows that tile the input: stride = size, no padding, no dilation (the
    /// reshape-and-reduce form).
    fn tiles(&self) -> bool {
        self.stride == self.size && self.pads == [0; 4] && self.dilation == [1, 1]
    }
}

/// max_pool2d(x, size, stride = size, padding = 0, dilation = 1, ceil_mode = false) and
/// avg_pool2d(x, size, stride = size, padding = 0, ceil_mode = false, count_include_pad =
/// true) over `[N, C, H, W]`, PyTorch's and ONNX's pooling: the output size along an axis is
/// ⌊(H + pads − d·(K − 1) − 1) / s⌋ + 1 (⌈·⌉ in ceiling mode, dropping a last window that
/// would start in the bottom padding); padded positions never win a maximum, and an average
/// divides by the window's positions inside the padded input (`count_include_pad`) or inside
/// the input.
pub(super) fn pool(l: &mut Lowerer, name: &str, b: &Bound, span: Span) -> Option<Val> {
    let x = tensor(l, b.get(0)?)?;
    let max = name == "max_pool2d";
    let size = per_axis(l, b.get(1), 1, 1, "the window size")?;
    let stride = match b.get(2) {
        None => size,
        a => per_axis(l, a, 1, 1, "stride")?,
    };
    let pads = pads(l, b.get(3))?;
    let (dilation, ceil, include_pad) = if max {
        (
            per_axis(l, b.get(4), 1, 1, "dilation")?,
            boolean(l, b.get(5))?,
            true,
        )
    } else {
        let include = match b.get(5) {
            None => true,
            a => boolean(l, a)?,
        };
        ([1, 1], boolean(l, b.get(4))?, include)
    };
    if let Some(i) = (0..4).find(|&i| pads[i] >= size[i % 2]) {
        let at = b.get(3).map_or(span, |a| a.span);
        let message = format!(
            "{name}'s padding ({}) must be smaller than its window ({}) on every side",
            pads[i],
            size[i % 2]
        );
        bad_arg(l, at, message);
        return None;
    }
    let s = l.shape(x).clone();
    let mut out = [0; 2];
    let mut fits = s.rank() == 4;
    for i in 0..2 {
        let (before, after) = (pads[i], pads[i + 2]);
        let Some(&len) = s.dims().get(2 + i) else {
            break;
        };
        let span_len = dilation[i] * (size[i] - 1) + 1;
        let Some(room) = (len + before + after).checked_sub(span_len) else {
            fits = false;
            break;
        };
        let mut o = if ceil {
            room.div_ceil(stride[i]) + 1
        } else {
            room / stride[i] + 1
        };
        if ceil && (o - 1) * stride[i] >= len + before {
            o -= 1;
        }
        out[i] = o;
    }
    if !fits {
        l.error(
            Diagnostic::new(
                ErrorKind::ShapeMismatch,
                format!(
                    "{name} needs an input [N, C, H, W] that the window {size:?} (dilation {dilation:?}) fits once padded, got {s}"
                ),
                span,
                "in this call",
            )
            .with_label(b.get(0)?.span, format!("has shape {s}")),
        );
        return None;
    }
    let windows = Windows {
        size,
        stride,
        pads,
        dilation,
        out,
    };
    let r = if windows.tiles() {
        tiled_pool(l, x, &windows, max, span)?
    } else {
        window_pool(l, x, &windows, max, include_pad, span)?
    };
    Some(Val::Tensor(r))
}

/// Pooling over windows that tile the input: `[N, C, OH·KH, OW·KW]` (the rows and columns
/// past the last whole window dropped) reshaped to `[N, C, OH, KH, OW, KW]` and reduced over
/// the window axes.
fn tiled_pool(l: &mut Lowerer, x: ValueId, w: &Windows, max: bool, span: Span) -> Option<ValueId> {
    let d = l.shape(x).dims().to_vec();
    let mut cur = x;
    for i in 0..2 {
        let end = w.out[i] * w.size[i];
        if end != d[2 + i] {
            let slice = Op::Slice {
                axis: 2 + i,
                start: 0,
                end,
            };
            cur = l.push_node(slice, vec![cur], None, span)?;
        }
    }
    let shape = Shape(vec![d[0], d[1], w.out[0], w.size[0], w.out[1], w.size[1]]);
    let windows = l.push_node(Op::Reshape, vec![cur], Some(shape), span)?;
    let op = if max { ReduceOp::Max } else { ReduceOp::Sum };
    let r = l.push_node(Op::Reduce(op, vec![3, 5]), vec![windows], None, span)?;
    if max {
        return Some(r);
    }
    let out = l.shape(r).clone();
    let c = l.constant(1.0 / (w.size[0] * w.size[1]) as f64, out);
    l.push_node(Op::Binary(BinaryOp::Mul), vec![r, c], None, span)
}

/// Pooling over any windows: the input padded (with the lowest finite value for a maximum,
/// zeros for a sum) to hold every window whole, then the maximum or sum over the window's
/// KH·KW offsets of the strided slice each offset sees; an average divides by the count of
/// positions each window covers, computed the same way from a tensor of ones.
fn window_pool(
    l: &mut Lowerer,
    x: ValueId,
    w: &Windows,
    max: bool,
    include_pad: bool,
    span: Span,
) -> Option<ValueId> {
    let d = l.shape(x).dims().to_vec();
    // The padding after each axis that holds every window's last tap, and one stride more
    // (a strided slice reshapes whole strides).
    let mut extra = [0; 2];
    for i in 0..2 {
        let needed = (w.out[i] - 1) * w.stride[i] + w.dilation[i] * (w.size[i] - 1) + w.stride[i];
        extra[i] = needed.saturating_sub(d[2 + i] + w.pads[i] + w.pads[i + 2]);
    }
    let starts = [w.pads[0], w.pads[1]];
    let ends = [w.pads[2] + extra[0], w.pads[3] + extra[1]];
    let mut padded = pad_spatial(l, x, starts, ends, span)?;
    let ones = l.constant(1.0, Shape(d.clone()));
    let inside = pad_spatial(l, ones, starts, ends, span)?;
    if max {
        let shape = l.shape(padded).clone();
        let lowest = l.constant(-f64::from(f32::MAX), shape);
        padded = l.push_node(Op::Where, vec![inside, padded, lowest], None, span)?;
    }
    let combine = if max { BinaryOp::Max } else { BinaryOp::Add };
    let total = window_combine(l, padded, w, combine, span)?;
    if max {
        return Some(total);
    }
    // What each window divides by: its positions in the input, or in the padded input (the
    // explicit padding, not the ceiling mode's extension).
    let counted = if include_pad {
        let mut within = d.clone();
        within[2] += w.pads[0] + w.pads[2];
        within[3] += w.pads[1] + w.pads[3];
        let padded_ones = l.constant(1.0, Shape(within));
        pad_spatial(l, padded_ones, [0, 0], extra, span)?
    } else {
        inside
    };
    let count = window_combine(l, counted, w, BinaryOp::Add, span)?;
    l.push_node(Op::Binary(BinaryOp::Div), vec![total, count], None, span)
}

/// `x` with zeros added before (`starts`) and after (`ends`) its two spatial axes.
fn pad_spatial(
    l: &mut Lowerer,
    x: ValueId,
    starts: [usize; 2],
    ends: [usize; 2],
    span: Span,
) -> Option<ValueId> {
    let mut cur = x;
    for i in 0..2 {
        if starts[i] + ends[i] > 0 {
            let op = Op::Pad {
                axis: 2 + i,
                before: starts[i],
                after: ends[i],
            };
            cur = l.push_node(op, vec![cur], None, span)?;
        }
    }
    Some(cur)
}

/// `op` over the KH·KW strided slices of `padded` that the windows' taps read.
fn window_combine(
    l: &mut Lowerer,
    padded: ValueId,
    w: &Windows,
    op: BinaryOp,
    span: Span,
) -> Option<ValueId> {
    let mut acc = None;
    for ki in 0..w.size[0] {
        for kj in 0..w.size[1] {
            let rows = strided(
                l,
                padded,
                2,
                ki * w.dilation[0],
                w.stride[0],
                w.out[0],
                span,
            )?;
            let tap = strided(l, rows, 3, kj * w.dilation[1], w.stride[1], w.out[1], span)?;
            acc = Some(match acc {
                None => tap,
                Some(a) => l.push_node(Op::Binary(op), vec![a, tap], None, span)?,
            });
        }
    }
    acc
}

/// Elements `start, start + stride, …` (`count` of them) along `axis` of `x`: a slice of
/// `count · stride` elements reshaped to `[…, count, stride, …]`, its first column.
fn strided(
    l: &mut Lowerer,
    x: ValueId,
    axis: usize,
    start: usize,
    stride: usize,
    count: usize,
    span: Span,
) -> Option<ValueId> {
    let end = start + count * stride;
    let slice = Op::Slice { axis, start, end };
    let mut cur = l.push_node(slice, vec![x], None, span)?;
    if stride == 1 {
        return Some(cur);
    }
    let dims = l.shape(cur).dims().to_vec();
    let mut split = dims[..axis].to_vec();
    split.extend([count, stride]);
    split.extend_from_slice(&dims[axis + 1..]);
    cur = l.push_node(Op::Reshape, vec![cur], Some(Shape(split)), span)?;
    let first = Op::Slice {
        axis: axis + 1,
        start: 0,
        end: 1,
    };
    cur = l.push_node(first, vec![cur], None, span)?;
    let mut joined = dims;
    joined[axis] = count;
    l.push_node(Op::Reshape, vec![cur], Some(Shape(joined)), span)
}
