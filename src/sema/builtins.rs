//! The builtin functions and how each lowers to primitive IR ops.
//!
//! Builtins are the functions that need the compiler's help: elementwise math, reductions over
//! axes given as compile-time integers, movement ops whose shapes are computed here, and
//! convolution and pooling. Pooling lowers to reshapes and reductions (non-overlapping windows),
//! `relu` to `max(x, 0)`, `one_hot` to a comparison with `iota`. Everything higher-level
//! (softmax, losses, layers, recurrent cells) is written in `.pcg` in the stdlib.

mod spatial;

use super::lower::{ArgVal, Lowerer};
use super::value::Val;
use crate::diag::{Diagnostic, ErrorKind};
use crate::ir::{BinaryOp, Init, LeafKind, Op, ReduceOp, Shape, UnaryOp, ValueId};
use crate::source::Span;
use crate::syntax::ast::Ident;

/// Every builtin with its parameters; `?` marks an optional one, `*` a variadic list.
const SIGNATURES: &[(&str, &[&str])] = &[
    ("exp", &["x"]),
    ("log", &["x"]),
    ("sqrt", &["x"]),
    ("square", &["x"]),
    ("pow", &["x", "p"]),
    ("abs", &["x"]),
    ("sin", &["x"]),
    ("cos", &["x"]),
    ("tan", &["x"]),
    ("tanh", &["x"]),
    ("erf", &["x"]),
    ("sigmoid", &["x"]),
    ("relu", &["x"]),
    ("leaky_relu", &["x", "alpha?"]),
    ("maximum", &["a", "b"]),
    ("minimum", &["a", "b"]),
    ("clip", &["x", "low", "high"]),
    ("sign", &["x"]),
    ("stop_gradient", &["x"]),
    ("dropout", &["x", "p"]),
    ("where", &["cond", "a", "b"]),
    ("sum", &["x", "axis?", "keepdims?"]),
    ("mean", &["x", "axis?", "keepdims?"]),
    ("max", &["x", "axis?", "keepdims?"]),
    ("min", &["x", "axis?", "keepdims?"]),
    ("var", &["x", "axis?", "keepdims?"]),
    ("argmax", &["x", "axis?", "keepdims?"]),
    ("reshape", &["x", "shape"]),
    ("flatten", &["x"]),
    ("transpose", &["x", "perm?"]),
    ("broadcast", &["x", "shape"]),
    ("concat", &["*xs", "axis?"]),
    ("slice", &["x", "axis", "start", "end"]),
    ("one_hot", &["labels", "n"]),
    ("causal_mask", &["n"]),
    (
        "conv2d",
        &["x", "w", "stride?", "padding?", "dilation?", "groups?"],
    ),
    (
        "conv_transpose2d",
        &[
            "x",
            "w",
            "stride?",
            "padding?",
            "output_padding?",
            "dilation?",
            "groups?",
        ],
    ),
    (
        "conv1d",
        &["x", "w", "stride?", "padding?", "dilation?", "groups?"],
    ),
    (
        "max_pool2d",
        &[
            "x",
            "size",
            "stride?",
            "padding?",
            "dilation?",
            "ceil_mode?",
        ],
    ),
    (
        "avg_pool2d",
        &[
            "x",
            "size",
            "stride?",
            "padding?",
            "ceil_mode?",
            "count_include_pad?",
        ],
    ),
    ("dim", &["x", "axis"]),
    ("zeros", &["shape"]),
    ("ones", &["shape"]),
    ("full", &["shape", "value"]),
];

/// The names of all builtins (for "did you mean" hints).
pub const NAMES: &[&str] = &[
    "exp",
    "log",
    "sqrt",
    "square",
    "pow",
    "abs",
    "sin",
    "cos",
    "tan",
    "tanh",
    "erf",
    "sigmoid",
    "relu",
    "leaky_relu",
    "maximum",
    "minimum",
    "clip",
    "sign",
    "stop_gradient",
    "dropout",
    "where",
    "sum",
    "mean",
    "max",
    "min",
    "var",
    "argmax",
    "reshape",
    "flatten",
    "transpose",
    "broadcast",
    "concat",
    "slice",
    "one_hot",
    "causal_mask",
    "conv2d",
    "conv_transpose2d",
    "conv1d",
    "max_pool2d",
    "avg_pool2d",
    "dim",
    "zeros",
    "ones",
    "full",
];

/// A builtin's parameters (`?` marks an optional one, `*` a variadic list), or `None` if
/// `name` is not a builtin.
pub fn signature(name: &str) -> Option<&'static [&'static str]> {
    SIGNATURES.iter().find(|(n, _)| *n == name).map(|(_, p)| *p)
}

pub fn is_builtin(name: &str) -> bool {
    SIGNATURES.iter().any(|(n, _)| *n == name)
}

/// Arguments bound to a builtin's parameters.
struct Bound {
    slots: Vec<Option<ArgVal>>,
    rest: Vec<ArgVal>,
}

impl Bound {
    fn get(&self, i: usize) -> Option<&ArgVal> {
        self.slots.get(i).and_then(|s| s.as_ref())
    }
}

fn bind(
    l: &mut Lowerer,
    callee: &Ident,
    params: &[&str],
    args: Vec<ArgVal>,
    span: Span,
) -> Option<Bound> {
    let names: Vec<&str> = params
        .iter()
        .map(|p| p.trim_start_matches('*').trim_end_matches('?'))
        .collect();
    let variadic = params.first().is_some_and(|p| p.starts_with('*'));
    let mut slots: Vec<Option<ArgVal>> = vec![None; params.len()];
    let mut rest = Vec::new();
    let mut next = usize::from(variadic);
    let usage = format!(
        "`{}({})`",
        callee.name,
        params
            .iter()
            .map(|p| p.replace('*', "..."))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for arg in args {
        match &arg.name {
            Some(n) => match names.iter().position(|p| *p == n.name) {
                Some(i) if !(variadic && i == 0) => slots[i] = Some(arg),
                _ => {
                    l.error(
                        Diagnostic::new(
                            ErrorKind::WrongArity,
                            format!("`{}` has no parameter named `{}`", callee.name, n.name),
                            n.span,
                            "unknown parameter",
                        )
                        .with_help(format!("usage: {usage}")),
                    );
                    return None;
                }
            },
            None if variadic => rest.push(arg),
            None => {
                if next >= params.len() {
                    l.error(
                        Diagnostic::new(
                            ErrorKind::WrongArity,
                            format!(
                                "`{}` takes at most {} argument(s)",
                                callee.name,
                                params.len()
                            ),
                            arg.span,
                            "unexpected argument",
                        )
                        .with_help(format!("usage: {usage}")),
                    );
                    return None;
                }
                slots[next] = Some(arg);
                next += 1;
            }
        }
    }
    for (i, p) in params.iter().enumerate() {
        if !p.ends_with('?') && !p.starts_with('*') && slots[i].is_none() {
            l.error(
                Diagnostic::new(
                    ErrorKind::WrongArity,
                    format!("`{}` is missing its `{}` argument", callee.name, names[i]),
                    span,
                    "in this call",
                )
                .with_help(format!("usage: {usage}")),
            );
            return None;
        }
    }
    Some(Bound { slots, rest })
}

fn bad_arg(l: &mut Lowerer, span: Span, message: String) -> Option<ValueId> {
    l.error(Diagnostic::new(
        ErrorKind::BadArgument,
        message,
        span,
        "here",
    ));
    None
}

fn tensor(l: &mut Lowerer, a: &ArgVal) -> Option<ValueId> {
    l.tensor(&a.val, a.span)
}

fn int(l: &mut Lowerer, a: &ArgVal) -> Option<i64> {
    match &a.val {
        Val::Int(i) => Some(*i),
        other => {
            let other = other.clone();
            l.type_error(&other, "a compile-time integer", a.span);
            None
        }
    }
}

fn number(l: &mut Lowerer, a: &ArgVal) -> Option<f64> {
    match a.val.as_number() {
        Some(x) => Some(x),
        None => {
            let other = a.val.clone();
            l.type_error(&other, "a compile-time number", a.span);
            None
        }
    }
}

fn boolean(l: &mut Lowerer, a: Option<&ArgVal>) -> Option<bool> {
    match a.map(|a| (&a.val, a.span)) {
        None => Some(false),
        Some((Val::Bool(b), _)) => Some(*b),
        Some((other, span)) => {
            let other = other.clone();
            l.type_error(&other, "`true` or `false`", span);
            None
        }
    }
}

/// Normalises an axis (negative counts from the end) against a rank.
fn axis(l: &mut Lowerer, a: &ArgVal, rank: usize) -> Option<usize> {
    let i = int(l, a)?;
    let k = if i < 0 { i + rank as i64 } else { i };
    if k < 0 || k >= rank as i64 {
        l.error(Diagnostic::new(
            ErrorKind::BadArgument,
            format!("axis {i} is out of range for a tensor of rank {rank}"),
            a.span,
            "no such axis",
        ));
        return None;
    }
    Some(k as usize)
}

/// An `axis` argument: absent (all axes), one integer, or a list of integers.
fn axes(l: &mut Lowerer, a: Option<&ArgVal>, rank: usize) -> Option<Vec<usize>> {
    let Some(a) = a else {
        return Some((0..rank).collect());
    };
    let mut out = match &a.val {
        Val::List(items) | Val::Tuple(items) => {
            let mut v = Vec::new();
            for item in items.clone() {
                v.push(axis(
                    l,
                    &ArgVal {
                        name: None,
                        val: item,
                        span: a.span,
                    },
                    rank,
                )?);
            }
            v
        }
        _ => vec![axis(l, a, rank)?],
    };
    out.sort_unstable();
    out.dedup();
    Some(out)
}

/// A shape argument: a list of compile-time integers (one of them may be -1 in a reshape).
fn dims(l: &mut Lowerer, a: &ArgVal) -> Option<Vec<i64>> {
    let Val::List(items) = &a.val else {
        let other = a.val.clone();
        l.type_error(&other, "a shape like `[B, 16]`", a.span);
        return None;
    };
    let mut out = Vec::new();
    for item in items.clone() {
        out.push(int(
            l,
            &ArgVal {
                name: None,
                val: item,
                span: a.span,
            },
        )?);
    }
    Some(out)
}

fn positive(l: &mut Lowerer, a: Option<&ArgVal>, default: usize, what: &str) -> Option<usize> {
    let Some(a) = a else {
        return Some(default);
    };
    let v = int(l, a)?;
    if v < 1 {
        bad_arg(l, a.span, format!("{what} must be at least 1, got {v}"));
        return None;
    }
    Some(v as usize)
}

/// Lowers a call of a builtin.
pub fn call(l: &mut Lowerer, callee: &Ident, args: Vec<ArgVal>, span: Span) -> Val {
    let params = SIGNATURES
        .iter()
        .find(|(n, _)| *n == callee.name)
        .map_or(&[][..], |(_, p)| *p);
    if args.iter().any(|a| a.val == Val::Poison) {
        return Val::Poison;
    }
    let Some(b) = bind(l, callee, params, args, span) else {
        return Val::Poison;
    };
    lower(l, &callee.name, &b, span).map_or(Val::Poison, |v| v)
}

fn unary(l: &mut Lowerer, b: &Bound, op: UnaryOp, span: Span) -> Option<Val> {
    let x = tensor(l, b.get(0)?)?;
    Some(l.unary(op, x, span))
}

fn lower(l: &mut Lowerer, name: &str, b: &Bound, span: Span) -> Option<Val> {
    let simple = |n: &str| match n {
        "exp" => Some(UnaryOp::Exp),
        "log" => Some(UnaryOp::Log),
        "sqrt" => Some(UnaryOp::Sqrt),
        "abs" => Some(UnaryOp::Abs),
        "sin" => Some(UnaryOp::Sin),
        "cos" => Some(UnaryOp::Cos),
        "tan" => Some(UnaryOp::Tan),
        "tanh" => Some(UnaryOp::Tanh),
        "erf" => Some(UnaryOp::Erf),
        "sigmoid" => Some(UnaryOp::Sigmoid),
        "sign" => Some(UnaryOp::Sign),
        "stop_gradient" => Some(UnaryOp::StopGradient),
        _ => None,
    };
    if let Some(op) = simple(name) {
        return unary(l, b, op, span);
    }
    match name {
        // square(x) = x * x
        "square" => {
            let x = tensor(l, b.get(0)?)?;
            Some(l.node(Op::Binary(BinaryOp::Mul), vec![x, x], None, span))
        }
        "pow" => {
            let x = tensor(l, b.get(0)?)?;
            let p = number(l, b.get(1)?)?;
            Some(l.unary(UnaryOp::Powf(p), x, span))
        }
        // relu(x) = max(x, 0)
        "relu" => {
            let x = b.get(0)?.clone();
            let zero = ArgVal {
                name: None,
                val: Val::Float(0.0),
                span,
            };
            Some(l.elementwise(BinaryOp::Max, (&x.val, x.span), (&zero.val, span), span))
        }
        // leaky_relu(x) = max(x, alpha * x) for 0 <= alpha <= 1
        "leaky_relu" => {
            let x = tensor(l, b.get(0)?)?;
            let alpha = match b.get(1) {
                Some(a) => number(l, a)?,
                None => 0.01,
            };
            if !(0.0..=1.0).contains(&alpha) {
                bad_arg(
                    l,
                    b.get(1).map_or(span, |a| a.span),
                    format!("alpha must be in [0, 1], got {alpha}"),
                );
                return None;
            }
            let shape = l.shape(x).clone();
            let k = l.constant(alpha, shape);
            let scaled = l.push_node(Op::Binary(BinaryOp::Mul), vec![x, k], None, span)?;
            Some(l.node(Op::Binary(BinaryOp::Max), vec![x, scaled], None, span))
        }
        "maximum" => {
            let (x, y) = (b.get(0)?.clone(), b.get(1)?.clone());
            Some(l.elementwise(BinaryOp::Max, (&x.val, x.span), (&y.val, y.span), span))
        }
        // minimum(a, b) = -max(-a, -b)
        "minimum" => {
            let (x, y) = (b.get(0)?.clone(), b.get(1)?.clone());
            Some(minimum(l, (&x.val, x.span), (&y.val, y.span), span))
        }
        // clip(x, low, high) = minimum(maximum(x, low), high), for low <= high
        "clip" => {
            let (x, low, high) = (b.get(0)?.clone(), b.get(1)?.clone(), b.get(2)?.clone());
            if let (Some(lo), Some(hi)) = (low.val.as_number(), high.val.as_number()) {
                if lo > hi {
                    bad_arg(l, span, format!("clip's low {lo} is above its high {hi}"));
                    return None;
                }
            }
            let above = l.elementwise(BinaryOp::Max, (&x.val, x.span), (&low.val, low.span), span);
            Some(minimum(l, (&above, span), (&high.val, high.span), span))
        }
        "where" => {
            let c = tensor(l, b.get(0)?)?;
            let x = tensor(l, b.get(1)?)?;
            let y = tensor(l, b.get(2)?)?;
            let shapes = [l.shape(c).clone(), l.shape(x).clone(), l.shape(y).clone()];
            let common = shapes[0]
                .broadcast_with(&shapes[1])
                .and_then(|s| s.broadcast_with(&shapes[2]));
            let Some(common) = common else {
                l.error(Diagnostic::new(
                    ErrorKind::BroadcastMismatch,
                    format!(
                        "shapes {}, {} and {} do not broadcast",
                        shapes[0], shapes[1], shapes[2]
                    ),
                    span,
                    "in this call",
                ));
                return None;
            };
            let c = l.broadcast_to(c, &common, span)?;
            let x = l.broadcast_to(x, &common, span)?;
            let y = l.broadcast_to(y, &common, span)?;
            Some(l.node(Op::Where, vec![c, x, y], None, span))
        }
        "sum" | "mean" | "max" | "min" | "var" => reduce(l, name, b, span),
        "argmax" => argmax(l, b, span),
        "dropout" => dropout(l, b, span),
        "conv1d" => spatial::conv1d(l, b, span),
        "reshape" => {
            let x = tensor(l, b.get(0)?)?;
            let a = b.get(1)?;
            let want = dims(l, a)?;
            let numel = l.shape(x).numel();
            let holes = want.iter().filter(|&&d| d == -1).count();
            if holes > 1 || want.iter().any(|&d| d == 0 || d < -1) {
                bad_arg(
                    l,
                    a.span,
                    "a reshape target has positive dimensions and at most one -1".to_string(),
                );
                return None;
            }
            let fixed: Vec<usize> = want
                .iter()
                .filter(|&&d| d != -1)
                .map(|&d| d as usize)
                .collect();
            if !l.check_size(&fixed, a.span) {
                return None;
            }
            let known: usize = fixed.iter().product();
            let resolved: Vec<usize> = want
                .iter()
                .map(|&d| if d == -1 { numel / known } else { d as usize })
                .collect();
            let target = Shape(resolved);
            if target.numel() != numel {
                let from = l.shape(x).clone();
                l.error(
                    Diagnostic::new(
                        ErrorKind::ShapeMismatch,
                        format!(
                            "cannot reshape {from} ({numel} elements) to {target} ({} elements)",
                            target.numel()
                        ),
                        a.span,
                        format!("{} elements", target.numel()),
                    )
                    .with_label(b.get(0)?.span, format!("has shape {from}")),
                );
                return None;
            }
            Some(l.node(Op::Reshape, vec![x], Some(target), span))
        }
        "flatten" => {
            let x = tensor(l, b.get(0)?)?;
            let s = l.shape(x).clone();
            if s.rank() <= 2 {
                return Some(Val::Tensor(x));
            }
            let rest: usize = s.dims()[1..].iter().product();
            Some(l.node(
                Op::Reshape,
                vec![x],
                Some(Shape(vec![s.dims()[0], rest])),
                span,
            ))
        }
        "transpose" => {
            let x = tensor(l, b.get(0)?)?;
            let rank = l.shape(x).rank();
            let perm: Vec<usize> = match b.get(1) {
                Some(a) => {
                    let mut perm = Vec::new();
                    for i in dims(l, a)? {
                        let k = if i < 0 { i + rank as i64 } else { i };
                        if k < 0 || k >= rank as i64 {
                            bad_arg(
                                l,
                                a.span,
                                format!("axis {i} is out of range for a tensor of rank {rank}"),
                            );
                            return None;
                        }
                        perm.push(k as usize);
                    }
                    perm
                }
                None if rank >= 2 => {
                    let mut p: Vec<usize> = (0..rank).collect();
                    p.swap(rank - 2, rank - 1);
                    p
                }
                None => return Some(Val::Tensor(x)),
            };
            Some(l.node(Op::Transpose(perm), vec![x], None, span))
        }
        "broadcast" => {
            let x = tensor(l, b.get(0)?)?;
            let a = b.get(1)?;
            let want = dims(l, a)?;
            if want.iter().any(|&d| d < 1) {
                bad_arg(
                    l,
                    a.span,
                    "a broadcast target has positive dimensions".to_string(),
                );
                return None;
            }
            let target = Shape(want.iter().map(|&d| d as usize).collect());
            if !l.check_size(target.dims(), a.span) {
                return None;
            }
            let from = l.shape(x).clone();
            if !from.broadcasts_to(&target) {
                l.error(
                    Diagnostic::new(
                        ErrorKind::BroadcastMismatch,
                        format!("cannot broadcast {from} to {target}"),
                        span,
                        "in this call",
                    )
                    .with_label(b.get(0)?.span, format!("has shape {from}"))
                    .with_help("dimensions are matched from the right and must be equal or 1"),
                );
                return None;
            }
            Some(Val::Tensor(l.broadcast_to(x, &target, span)?))
        }
        "concat" => {
            let items: Vec<ArgVal> = match b.rest.as_slice() {
                [one] => match &one.val {
                    Val::List(vs) | Val::Tuple(vs) => vs
                        .iter()
                        .map(|v| ArgVal {
                            name: None,
                            val: v.clone(),
                            span: one.span,
                        })
                        .collect(),
                    _ => b.rest.clone(),
                },
                _ => b.rest.clone(),
            };
            if items.is_empty() {
                bad_arg(l, span, "concat needs at least one tensor".to_string());
                return None;
            }
            let mut ids = Vec::new();
            for it in &items {
                ids.push(tensor(l, it)?);
            }
            let rank = l.shape(ids[0]).rank();
            let ax = match b.get(1) {
                Some(a) => axis(l, a, rank)?,
                None => 0,
            };
            if ids.len() == 1 {
                return Some(Val::Tensor(ids[0]));
            }
            let first = l.shape(ids[0]).clone();
            for (id, it) in ids.iter().zip(&items).skip(1) {
                let s = l.shape(*id).clone();
                let fits = s.rank() == rank
                    && (0..rank).all(|i| i == ax || s.dims()[i] == first.dims()[i]);
                if !fits {
                    l.error(
                        Diagnostic::new(
                            ErrorKind::ShapeMismatch,
                            format!("cannot concatenate {first} and {s} along axis {ax}"),
                            it.span,
                            format!("has shape {s}"),
                        )
                        .with_label(items[0].span, format!("has shape {first}"))
                        .with_help("all other dimensions must be equal"),
                    );
                    return None;
                }
            }
            Some(l.node(Op::Concat { axis: ax }, ids, None, span))
        }
        "slice" => {
            let x = tensor(l, b.get(0)?)?;
            let shape = l.shape(x).clone();
            let ax = axis(l, b.get(1)?, shape.rank())?;
            let start = int(l, b.get(2)?)?;
            let end = int(l, b.get(3)?)?;
            let size = shape.dims()[ax] as i64;
            if start < 0 || end > size || start >= end {
                l.error(
                    Diagnostic::new(
                        ErrorKind::IndexOutOfRange,
                        format!(
                            "slice {start}..{end} is out of range for axis {ax} of size {size}"
                        ),
                        span,
                        "out of range",
                    )
                    .with_label(b.get(0)?.span, format!("has shape {shape}")),
                );
                return None;
            }
            Some(l.node(
                Op::Slice {
                    axis: ax,
                    start: start as usize,
                    end: end as usize,
                },
                vec![x],
                None,
                span,
            ))
        }
        // one_hot(labels, n)[..., k] = (labels[...] == k)
        "one_hot" => {
            let labels = tensor(l, b.get(0)?)?;
            let n = int(l, b.get(1)?)?;
            if n < 1 {
                bad_arg(
                    l,
                    b.get(1)?.span,
                    format!("the number of classes must be at least 1, got {n}"),
                );
                return None;
            }
            let mut with_one = l.shape(labels).dims().to_vec();
            with_one.push(1);
            let mut out = l.shape(labels).dims().to_vec();
            out.push(n as usize);
            if !l.check_size(&out, span) {
                return None;
            }
            let rank = out.len();
            let column = l.push_node(Op::Reshape, vec![labels], Some(Shape(with_one)), span)?;
            let spread = l.broadcast_to(column, &Shape(out.clone()), span)?;
            let iota = l.push_node(Op::Iota { axis: rank - 1 }, vec![], Some(Shape(out)), span)?;
            Some(l.node(Op::Binary(BinaryOp::Equal), vec![spread, iota], None, span))
        }
        // causal_mask(n)[i, j] = 1 - (j > i): 1 on and below the diagonal, where position i may
        // attend to position j.
        "causal_mask" => {
            let a = b.get(0)?;
            let n = int(l, a)?;
            if n < 1 {
                bad_arg(
                    l,
                    a.span,
                    format!("the mask's size must be at least 1, got {n}"),
                );
                return None;
            }
            let shape = Shape(vec![n as usize, n as usize]);
            if !l.check_size(shape.dims(), a.span) {
                return None;
            }
            let row = l.push_node(Op::Iota { axis: 0 }, vec![], Some(shape.clone()), span)?;
            let column = l.push_node(Op::Iota { axis: 1 }, vec![], Some(shape.clone()), span)?;
            let above =
                l.push_node(Op::Binary(BinaryOp::Greater), vec![column, row], None, span)?;
            let one = l.constant(1.0, shape);
            Some(l.node(Op::Binary(BinaryOp::Sub), vec![one, above], None, span))
        }
        "conv2d" => spatial::conv2d(l, b, span),
        "conv_transpose2d" => spatial::conv_transpose2d(l, b, span),
        "max_pool2d" | "avg_pool2d" => spatial::pool(l, name, b, span),
        "zeros" | "ones" | "full" => {
            let a = b.get(0)?;
            let want = dims(l, a)?;
            if want.iter().any(|&d| d < 1) {
                bad_arg(l, a.span, "dimensions must be positive".to_string());
                return None;
            }
            let value = match name {
                "zeros" => 0.0,
                "ones" => 1.0,
                _ => number(l, b.get(1)?)?,
            };
            let shape = Shape(want.iter().map(|&d| d as usize).collect());
            if !l.check_size(shape.dims(), a.span) {
                return None;
            }
            Some(Val::Tensor(l.constant(value, shape)))
        }
        "dim" => {
            let x = tensor(l, b.get(0)?)?;
            let rank = l.shape(x).rank();
            let ax = axis(l, b.get(1)?, rank)?;
            Some(Val::Int(l.shape(x).dims()[ax] as i64))
        }
        _ => None,
    }
}

/// sum / mean / max / min / var over axes, optionally keeping the reduced axes as size 1.
fn reduce(l: &mut Lowerer, name: &str, b: &Bound, span: Span) -> Option<Val> {
    let x = tensor(l, b.get(0)?)?;
    let shape = l.shape(x).clone();
    let axes = axes(l, b.get(1), shape.rank())?;
    let keep = boolean(l, b.get(2))?;
    if axes.is_empty() {
        return Some(match name {
            // var of single values (no axis reduced) is 0
            "var" => Val::Tensor(l.constant(0.0, shape)),
            _ => Val::Tensor(x),
        });
    }
    let kept = Shape(
        shape
            .dims()
            .iter()
            .enumerate()
            .map(|(i, &d)| if axes.contains(&i) { 1 } else { d })
            .collect(),
    );
    let count: usize = axes.iter().map(|&a| shape.dims()[a]).product();
    let r = match name {
        // min(x) = -max(-x)
        "min" => {
            let negated = l.push_node(Op::Unary(UnaryOp::Neg), vec![x], None, span)?;
            let most = l.push_node(
                Op::Reduce(ReduceOp::Max, axes.clone()),
                vec![negated],
                None,
                span,
            )?;
            l.push_node(Op::Unary(UnaryOp::Neg), vec![most], None, span)?
        }
        // var(x) = mean((x - mean(x))^2), the population variance
        "var" => {
            let mean = mean_over(l, x, &axes, count, span)?;
            let mean = l.push_node(Op::Reshape, vec![mean], Some(kept.clone()), span)?;
            let mean = l.broadcast_to(mean, &shape, span)?;
            let centred = l.push_node(Op::Binary(BinaryOp::Sub), vec![x, mean], None, span)?;
            let squared = l.push_node(
                Op::Binary(BinaryOp::Mul),
                vec![centred, centred],
                None,
                span,
            )?;
            mean_over(l, squared, &axes, count, span)?
        }
        "mean" => mean_over(l, x, &axes, count, span)?,
        "max" => l.push_node(Op::Reduce(ReduceOp::Max, axes.clone()), vec![x], None, span)?,
        _ => l.push_node(Op::Reduce(ReduceOp::Sum, axes.clone()), vec![x], None, span)?,
    };
    if keep {
        return l
            .push_node(Op::Reshape, vec![r], Some(kept), span)
            .map(Val::Tensor);
    }
    Some(Val::Tensor(r))
}

/// The mean of `x` over `axes` (`count` elements each), the axes removed.
fn mean_over(
    l: &mut Lowerer,
    x: ValueId,
    axes: &[usize],
    count: usize,
    span: Span,
) -> Option<ValueId> {
    let total = l.push_node(
        Op::Reduce(ReduceOp::Sum, axes.to_vec()),
        vec![x],
        None,
        span,
    )?;
    let s = l.shape(total).clone();
    let k = l.constant(1.0 / count as f64, s);
    l.push_node(Op::Binary(BinaryOp::Mul), vec![total, k], None, span)
}

/// minimum(a, b) = -max(-a, -b), broadcasting; numbers stay numbers.
fn minimum(l: &mut Lowerer, a: (&Val, Span), b: (&Val, Span), span: Span) -> Val {
    let negate = |l: &mut Lowerer, v: &Val, at: Span| match v {
        Val::Int(i) => Val::Float(-(*i as f64)),
        Val::Float(x) => Val::Float(-x),
        Val::Tensor(id) => l.unary(UnaryOp::Neg, *id, at),
        other => {
            let other = other.clone();
            l.type_error(&other, "a number or a tensor", at)
        }
    };
    let (na, nb) = (negate(l, a.0, a.1), negate(l, b.0, b.1));
    if na == Val::Poison || nb == Val::Poison {
        return Val::Poison;
    }
    match l.elementwise(BinaryOp::Max, (&na, a.1), (&nb, b.1), span) {
        Val::Float(x) => Val::Float(-x),
        Val::Tensor(id) => l.unary(UnaryOp::Neg, id, span),
        other => other,
    }
}

/// argmax(x, axis = -1): the index of the largest element along `axis` (the first of equal
/// ones), as a number; its derivative is zero. Built from max, equal and iota:
/// first index = -max(where(x == max(x), -iota, -n)).
fn argmax(l: &mut Lowerer, b: &Bound, span: Span) -> Option<Val> {
    let x = tensor(l, b.get(0)?)?;
    let shape = l.shape(x).clone();
    if shape.rank() == 0 {
        bad_arg(
            l,
            b.get(0)?.span,
            "argmax needs a tensor with an axis, not a scalar".to_string(),
        );
        return None;
    }
    let ax = match b.get(1) {
        Some(a) => axis(l, a, shape.rank())?,
        None => shape.rank() - 1,
    };
    let keep = boolean(l, b.get(2))?;
    let mut kept = shape.dims().to_vec();
    kept[ax] = 1;
    let largest = l.push_node(Op::Reduce(ReduceOp::Max, vec![ax]), vec![x], None, span)?;
    let largest = l.push_node(Op::Reshape, vec![largest], Some(Shape(kept.clone())), span)?;
    let largest = l.broadcast_to(largest, &shape, span)?;
    let at_max = l.push_node(Op::Binary(BinaryOp::Equal), vec![x, largest], None, span)?;
    let index = l.push_node(Op::Iota { axis: ax }, vec![], Some(shape.clone()), span)?;
    let negated = l.push_node(Op::Unary(UnaryOp::Neg), vec![index], None, span)?;
    let beyond = l.constant(-(shape.dims()[ax] as f64), shape.clone());
    let candidates = l.push_node(Op::Where, vec![at_max, negated, beyond], None, span)?;
    let first = l.push_node(
        Op::Reduce(ReduceOp::Max, vec![ax]),
        vec![candidates],
        None,
        span,
    )?;
    let mut r = l.push_node(Op::Unary(UnaryOp::Neg), vec![first], None, span)?;
    if keep {
        r = l.push_node(Op::Reshape, vec![r], Some(Shape(kept)), span)?;
    }
    Some(Val::Tensor(r))
}

/// dropout(x, p) = x · mask, the mask a `Noise` leaf drawn for every training step: 1 / (1 − p)
/// with probability 1 − p, else 0 (inverted dropout, so its mean is 1); all ones when
/// evaluating. Each call has a mask of its own, `dropout.<k>`.
fn dropout(l: &mut Lowerer, b: &Bound, span: Span) -> Option<Val> {
    let x = tensor(l, b.get(0)?)?;
    let p = number(l, b.get(1)?)?;
    if !(0.0..1.0).contains(&p) {
        bad_arg(
            l,
            b.get(1)?.span,
            format!("the dropout probability must be in [0, 1), got {p}"),
        );
        return None;
    }
    if p == 0.0 {
        return Some(Val::Tensor(x));
    }
    if let Some(frame) = l.loops.len().checked_sub(1) {
        // A mask is a leaf of the model's program, drawn once per step: a loop's body that
        // draws one unrolls, so that each iteration draws its own.
        l.refuse(frame, "dropout in the loop body");
        return None;
    }
    let shape = l.shape(x).clone();
    let name = format!("dropout.{}", l.program.leaves(LeafKind::Noise).len());
    let mask = l.program.leaf(LeafKind::Noise, name.clone(), shape);
    l.program.inits.insert(name, Init::Dropout { p });
    Some(l.node(Op::Binary(BinaryOp::Mul), vec![x, mask], None, span))
}
