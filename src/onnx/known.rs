//! Values known at import, and the shape-only subgraphs folded into them.
//!
//! Exporters compute shapes inside the graph: `Shape` of a tensor, `Gather` of one of its
//! entries, `Unsqueeze` and `Concat` into a new shape, a `Reshape` reading it. Such a
//! subgraph depends on nothing but the tensors' static shapes and on constants, so the
//! importer evaluates it here and the `.pcg` never sees it. Its values are numbers, and the
//! batch size stays a symbol (`Elem::Batch`): `Shape(x)` of an input `[B, 784]` is `[B, 784]`,
//! and a `Reshape` to it is written `reshape(h, [B, 784])`, valid for every batch size.

use super::proto::{tensor_values, Attributes, TensorProto, Values};
use std::fmt;

/// A dimension of a tensor of the imported model: a size, or a multiple of the batch size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dim {
    Size(usize),
    /// `k·B`.
    Batch(usize),
}

impl Dim {
    /// The product of two dimensions, unless it holds the batch size twice.
    pub fn times(self, other: Dim) -> Option<Dim> {
        match (self, other) {
            (Dim::Size(a), Dim::Size(b)) => Some(Dim::Size(a * b)),
            (Dim::Batch(a), Dim::Size(b)) | (Dim::Size(b), Dim::Batch(a)) => {
                Some(Dim::Batch(a * b))
            }
            (Dim::Batch(_), Dim::Batch(_)) => None,
        }
    }

    /// `self / other`, when it divides exactly and leaves at most one batch factor.
    pub fn divide(self, other: Dim) -> Option<Dim> {
        let exact = |a: usize, b: usize| (b != 0 && a.is_multiple_of(b)).then(|| a / b);
        match (self, other) {
            (Dim::Size(a), Dim::Size(b)) => exact(a, b).map(Dim::Size),
            (Dim::Batch(a), Dim::Size(b)) => exact(a, b).map(Dim::Batch),
            (Dim::Batch(a), Dim::Batch(b)) => exact(a, b).map(Dim::Size),
            (Dim::Size(_), Dim::Batch(_)) => None,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Size(n) => write!(f, "{n}"),
            Dim::Batch(1) => f.write_str("B"),
            Dim::Batch(k) => write!(f, "B * {k}"),
        }
    }
}

/// The product of dimensions (`None` if it would hold the batch size twice).
pub fn product(dims: &[Dim]) -> Option<Dim> {
    dims.iter().try_fold(Dim::Size(1), |acc, &d| acc.times(d))
}

/// A shape written as the language writes it: `[B, 16, 4, 4]`.
pub fn shape_text(dims: &[Dim]) -> String {
    let parts: Vec<String> = dims.iter().map(Dim::to_string).collect();
    format!("[{}]", parts.join(", "))
}

/// One element of a known value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Elem {
    Int(i64),
    Float(f64),
    /// `k·B`, a size computed from the batch size.
    Batch(i64),
}

impl Elem {
    fn float(self) -> Result<f64, String> {
        match self {
            Elem::Int(i) => Ok(i as f64),
            Elem::Float(x) => Ok(x),
            Elem::Batch(_) => Err(batch_arithmetic()),
        }
    }
}

fn batch_arithmetic() -> String {
    "this computation of a shape does arithmetic on the batch size beyond multiplying and dividing it by a number".to_string()
}

/// A tensor whose values are known at import.
#[derive(Clone, Debug, PartialEq)]
pub struct Known {
    pub shape: Vec<usize>,
    pub data: Vec<Elem>,
}

impl Known {
    /// A tensor of the given dimensions: sizes as integers, the batch size as a symbol.
    pub fn of_dims(dims: &[Dim]) -> Known {
        let data = dims
            .iter()
            .map(|d| match *d {
                Dim::Size(n) => Elem::Int(n as i64),
                Dim::Batch(k) => Elem::Batch(k as i64),
            })
            .collect::<Vec<_>>();
        Known {
            shape: vec![data.len()],
            data,
        }
    }

    /// The value of a tensor stored in the model.
    pub fn of_tensor(t: &TensorProto) -> Result<Known, String> {
        let (shape, values) = tensor_values(t)?;
        let data = match values {
            Values::Float(v) => v.into_iter().map(Elem::Float).collect(),
            Values::Int(v) => v.into_iter().map(Elem::Int).collect(),
        };
        Ok(Known { shape, data })
    }

    fn scalar(e: Elem) -> Known {
        Known {
            shape: vec![],
            data: vec![e],
        }
    }

    /// The single element of a tensor of one element.
    pub fn single(&self) -> Option<Elem> {
        (self.data.len() == 1).then(|| self.data[0])
    }

    /// The elements as integers (indices, axes, sizes).
    pub fn ints(&self) -> Result<Vec<i64>, String> {
        self.data
            .iter()
            .map(|e| match *e {
                Elem::Int(i) => Ok(i),
                Elem::Float(x) if x.fract() == 0.0 => Ok(x as i64),
                Elem::Float(x) => Err(format!("{x} is not a whole number")),
                Elem::Batch(_) => Err("the batch size is not known at import".to_string()),
            })
            .collect()
    }

    /// The elements as dimensions of a shape (a `Reshape` target may hold `0` and `-1` too,
    /// which come back as `None` with the number).
    pub fn dims(&self) -> Result<Vec<Result<Dim, i64>>, String> {
        self.data
            .iter()
            .map(|e| match *e {
                Elem::Int(i) if i > 0 => Ok(Ok(Dim::Size(i as usize))),
                Elem::Int(i) => Ok(Err(i)),
                Elem::Batch(k) if k > 0 => Ok(Ok(Dim::Batch(k as usize))),
                Elem::Float(_) | Elem::Batch(_) => Err("a shape must hold sizes".to_string()),
            })
            .collect()
    }

    /// The elements as numbers; the batch size is refused.
    pub fn floats(&self) -> Result<Vec<f64>, String> {
        self.data.iter().map(|e| e.float()).collect()
    }
}

/// An axis attribute or input in `-rank..rank`, made non-negative.
pub fn axis(axis: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    if axis < -r || axis >= r.max(1) {
        return Err(format!("axis {axis} is outside a tensor of rank {rank}"));
    }
    Ok(if axis < 0 { axis + r } else { axis } as usize)
}

/// The axes a node names, by its attribute `axes` (older opsets) or its input `index`.
pub fn axes_of(
    attrs: &Attributes,
    input: Option<&Known>,
    rank: usize,
) -> Result<Option<Vec<usize>>, String> {
    let raw = match (input, attrs.ints("axes")) {
        (Some(k), _) => k.ints()?,
        (None, Some(a)) => a.to_vec(),
        (None, None) => return Ok(None),
    };
    raw.iter()
        .map(|&a| axis(a, rank))
        .collect::<Result<_, _>>()
        .map(Some)
}

/// The shape of a tensor after `Unsqueeze` at `axes` (axes of the output).
pub fn unsqueezed<T: Clone>(shape: &[T], axes: &[i64], one: T) -> Result<Vec<T>, String> {
    let rank = shape.len() + axes.len();
    let mut positions = axes
        .iter()
        .map(|&a| axis(a, rank))
        .collect::<Result<Vec<_>, _>>()?;
    positions.sort_unstable();
    positions.dedup();
    if positions.len() != axes.len() {
        return Err("Unsqueeze names an axis twice".to_string());
    }
    let mut rest = shape.iter();
    Ok((0..rank)
        .map(|i| {
            if positions.contains(&i) {
                one.clone()
            } else {
                rest.next().cloned().unwrap_or_else(|| one.clone())
            }
        })
        .collect())
}

/// The strides of a row-major shape.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// The numpy broadcast of shapes.
fn broadcast_shape(shapes: &[&[usize]]) -> Result<Vec<usize>, String> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1; rank];
    for s in shapes {
        for (i, &d) in s.iter().enumerate() {
            let o = &mut out[rank - s.len() + i];
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                return Err(format!("shapes {shapes:?} do not broadcast"));
            }
        }
    }
    Ok(out)
}

/// An elementwise function of known values, broadcasting as numpy.
fn elementwise(
    operands: &[&Known],
    f: impl Fn(&[Elem]) -> Result<Elem, String>,
) -> Result<Known, String> {
    let shapes: Vec<&[usize]> = operands.iter().map(|k| k.shape.as_slice()).collect();
    let shape = broadcast_shape(&shapes)?;
    let out_strides = strides(&shape);
    let count: usize = shape.iter().product();
    let mut data = Vec::with_capacity(count);
    let mut args = vec![Elem::Int(0); operands.len()];
    for flat in 0..count {
        for (arg, k) in args.iter_mut().zip(operands) {
            let offset = shape.len() - k.shape.len();
            let own = strides(&k.shape);
            let mut index = 0;
            for (i, &d) in k.shape.iter().enumerate() {
                let position = flat / out_strides[offset + i] % shape[offset + i];
                index += if d == 1 { 0 } else { position * own[i] };
            }
            *arg = k.data[index];
        }
        data.push(f(&args)?);
    }
    Ok(Known { shape, data })
}

/// `x` with `axis` replaced by the entries `indices` of it.
fn select(x: &Known, axis: usize, indices: &[usize]) -> Known {
    let outer: usize = x.shape[..axis].iter().product();
    let inner: usize = x.shape[axis + 1..].iter().product();
    let len = x.shape[axis];
    let mut data = Vec::with_capacity(outer * indices.len() * inner);
    for o in 0..outer {
        for &i in indices {
            let start = (o * len + i) * inner;
            data.extend_from_slice(&x.data[start..start + inner]);
        }
    }
    let mut shape = x.shape.clone();
    shape[axis] = indices.len();
    Known { shape, data }
}

/// The positions `start..end` by `step` of an axis of length `len`, clamped as ONNX's `Slice`.
pub fn slice_positions(start: i64, end: i64, step: i64, len: usize) -> Result<Vec<usize>, String> {
    if step == 0 {
        return Err("a slice step of 0".to_string());
    }
    let n = len as i64;
    let clamp = |v: i64, low: i64, high: i64| {
        let v = if v < 0 { v + n } else { v };
        v.clamp(low, high)
    };
    let mut out = Vec::new();
    if step > 0 {
        let (s, e) = (clamp(start, 0, n), clamp(end, 0, n));
        let mut i = s;
        while i < e {
            out.push(i as usize);
            i += step;
        }
    } else {
        let (s, e) = (clamp(start, 0, n - 1), clamp(end, -1, n - 1));
        let mut i = s;
        while i > e {
            out.push(i as usize);
            i += step;
        }
    }
    Ok(out)
}

/// `Reshape`'s target with `0` (copy the input's dimension) and `-1` (the rest) resolved.
pub fn reshape_target(
    input: &[Dim],
    target: &[Result<Dim, i64>],
    allow_zero: bool,
) -> Result<Vec<Dim>, String> {
    let mut out = Vec::with_capacity(target.len());
    let mut infer = None;
    for (i, t) in target.iter().enumerate() {
        match *t {
            Ok(d) => out.push(d),
            Err(0) if !allow_zero => match input.get(i) {
                Some(&d) => out.push(d),
                None => {
                    return Err(format!(
                        "entry {i} is 0 but the input has rank {}",
                        input.len()
                    ))
                }
            },
            Err(-1) if infer.is_none() => {
                infer = Some(i);
                out.push(Dim::Size(1));
            }
            Err(v) => return Err(format!("cannot reshape to a dimension {v}")),
        }
    }
    let total = product(input).ok_or_else(batch_arithmetic)?;
    let known = product(&out).ok_or_else(batch_arithmetic)?;
    match infer {
        Some(i) => {
            out[i] = total.divide(known).ok_or_else(|| {
                format!(
                    "cannot reshape {} to {}",
                    shape_text(input),
                    target_text(target)
                )
            })?
        }
        None if known != total => {
            return Err(format!(
                "cannot reshape {} to {}",
                shape_text(input),
                shape_text(&out)
            ))
        }
        None => {}
    }
    Ok(out)
}

fn target_text(target: &[Result<Dim, i64>]) -> String {
    let parts: Vec<String> = target
        .iter()
        .map(|t| match t {
            Ok(d) => d.to_string(),
            Err(v) => v.to_string(),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

/// The value of a `Constant` node.
pub fn constant(attrs: &Attributes) -> Result<Known, String> {
    if let Some(t) = attrs.tensor("value") {
        return Known::of_tensor(t);
    }
    if let Some(x) = attrs.float("value_float") {
        return Ok(Known::scalar(Elem::Float(x as f64)));
    }
    if let Some(i) = attrs.int("value_int") {
        return Ok(Known::scalar(Elem::Int(i)));
    }
    if let Some(v) = attrs.floats("value_floats") {
        return Ok(Known {
            shape: vec![v.len()],
            data: v.iter().map(|&x| Elem::Float(x as f64)).collect(),
        });
    }
    if let Some(v) = attrs.ints("value_ints") {
        return Ok(Known {
            shape: vec![v.len()],
            data: v.iter().map(|&i| Elem::Int(i)).collect(),
        });
    }
    Err(
        "a Constant without a numeric value (`value`, `value_float(s)`, `value_int(s)`)"
            .to_string(),
    )
}

/// The ops folded when all their inputs are known.
pub const FOLDED: &[&str] = &[
    "Identity",
    "Cast",
    "Unsqueeze",
    "Squeeze",
    "Reshape",
    "Concat",
    "Gather",
    "Slice",
    "Range",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Mod",
    "Equal",
    "Where",
    "Expand",
    "ConstantOfShape",
    "Size",
    "Neg",
];

/// Evaluates a node of a shape computation (an op of [`FOLDED`]) on known inputs (`None` for
/// an optional input left out).
pub fn fold(op: &str, attrs: &Attributes, inputs: &[Option<&Known>]) -> Result<Known, String> {
    let input = |i: usize| -> Result<&Known, String> {
        inputs
            .get(i)
            .copied()
            .flatten()
            .ok_or_else(|| format!("{op} needs its input {i}"))
    };
    let x = input(0)?;
    let rank = x.shape.len();
    match op {
        "Identity" => Ok(x.clone()),
        "Cast" => {
            let to = attrs.int("to").unwrap_or(1) as i32;
            let to_float = super::proto::is_float_type(to);
            let data = x
                .data
                .iter()
                .map(|&e| match e {
                    Elem::Int(i) if to_float => Elem::Float(i as f64),
                    Elem::Float(f) if !to_float => Elem::Int(f as i64),
                    other => other,
                })
                .collect();
            Ok(Known {
                shape: x.shape.clone(),
                data,
            })
        }
        "Unsqueeze" => {
            let axes = match inputs.get(1).copied().flatten() {
                Some(k) => k.ints()?,
                None => attrs.ints("axes").unwrap_or_default().to_vec(),
            };
            Ok(Known {
                shape: unsqueezed(&x.shape, &axes, 1)?,
                data: x.data.clone(),
            })
        }
        "Squeeze" => {
            let axes = axes_of(attrs, inputs.get(1).copied().flatten(), rank)?;
            let shape = x
                .shape
                .iter()
                .enumerate()
                .filter(|&(i, &d)| !(d == 1 && axes.as_ref().is_none_or(|a| a.contains(&i))))
                .map(|(_, &d)| d)
                .collect();
            Ok(Known {
                shape,
                data: x.data.clone(),
            })
        }
        "Reshape" => {
            let dims: Vec<Dim> = x.shape.iter().map(|&d| Dim::Size(d)).collect();
            let target =
                reshape_target(&dims, &input(1)?.dims()?, attrs.int("allowzero") == Some(1))?;
            let shape = target
                .iter()
                .map(|d| match d {
                    Dim::Size(n) => Ok(*n),
                    Dim::Batch(_) => Err(batch_arithmetic()),
                })
                .collect::<Result<_, _>>()?;
            Ok(Known {
                shape,
                data: x.data.clone(),
            })
        }
        "Concat" => {
            let parts: Vec<&Known> = inputs.iter().flatten().copied().collect();
            let ax = axis(attrs.int("axis").unwrap_or(0), rank)?;
            let outer: usize = x.shape[..ax].iter().product();
            let mut data = Vec::new();
            let mut shape = x.shape.clone();
            shape[ax] = parts
                .iter()
                .map(|p| p.shape.get(ax).copied().unwrap_or(0))
                .sum();
            for o in 0..outer {
                for p in &parts {
                    let chunk = p.data.len() / outer.max(1);
                    data.extend_from_slice(&p.data[o * chunk..(o + 1) * chunk]);
                }
            }
            Ok(Known { shape, data })
        }
        "Gather" => {
            let ax = axis(attrs.int("axis").unwrap_or(0), rank)?;
            let indices = input(1)?;
            let len = x.shape[ax] as i64;
            let positions = indices
                .ints()?
                .iter()
                .map(|&i| {
                    let p = if i < 0 { i + len } else { i };
                    (0..len)
                        .contains(&p)
                        .then_some(p as usize)
                        .ok_or_else(|| format!("index {i} is outside an axis of {len}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let picked = select(x, ax, &positions);
            let mut shape = x.shape[..ax].to_vec();
            shape.extend_from_slice(&indices.shape);
            shape.extend_from_slice(&x.shape[ax + 1..]);
            Ok(Known {
                shape,
                data: picked.data,
            })
        }
        "Slice" => {
            let starts = input(1)?.ints()?;
            let ends = input(2)?.ints()?;
            let axes = match inputs.get(3).copied().flatten() {
                Some(k) => k.ints()?,
                None => (0..starts.len() as i64).collect(),
            };
            let steps = match inputs.get(4).copied().flatten() {
                Some(k) => k.ints()?,
                None => vec![1; starts.len()],
            };
            let mut out = x.clone();
            for (i, &a) in axes.iter().enumerate() {
                let ax = axis(a, rank)?;
                let positions = slice_positions(starts[i], ends[i], steps[i], out.shape[ax])?;
                out = select(&out, ax, &positions);
            }
            Ok(out)
        }
        "Range" => {
            let (start, limit, delta) = (x.single(), input(1)?.single(), input(2)?.single());
            let (Some(start), Some(limit), Some(delta)) = (start, limit, delta) else {
                return Err("Range needs scalar start, limit and delta".to_string());
            };
            let (s, l, d) = (start.float()?, limit.float()?, delta.float()?);
            if d == 0.0 {
                return Err("Range with a delta of 0".to_string());
            }
            let count = ((l - s) / d).ceil().max(0.0) as usize;
            let ints = matches!(
                (start, limit, delta),
                (Elem::Int(_), Elem::Int(_), Elem::Int(_))
            );
            let data = (0..count)
                .map(|i| {
                    let v = s + i as f64 * d;
                    if ints {
                        Elem::Int(v as i64)
                    } else {
                        Elem::Float(v)
                    }
                })
                .collect();
            Ok(Known {
                shape: vec![count],
                data,
            })
        }
        "Add" | "Sub" | "Mul" | "Div" | "Mod" | "Equal" => {
            let fmod = attrs.int("fmod") == Some(1);
            elementwise(&[x, input(1)?], |e| arithmetic(op, e[0], e[1], fmod))
        }
        "Neg" => elementwise(&[x], |e| arithmetic("Sub", Elem::Int(0), e[0], false)),
        "Where" => elementwise(&[x, input(1)?, input(2)?], |e| {
            Ok(if e[0].float()? != 0.0 { e[1] } else { e[2] })
        }),
        "Expand" => {
            let target = input(1)?.ints()?;
            let ones = Known {
                shape: target.iter().map(|&d| d.max(0) as usize).collect(),
                data: vec![Elem::Int(0); target.iter().map(|&d| d.max(0) as usize).product()],
            };
            elementwise(&[x, &ones], |e| Ok(e[0]))
        }
        "ConstantOfShape" => {
            let shape: Vec<usize> = x.ints()?.iter().map(|&d| d.max(0) as usize).collect();
            let value = match attrs.tensor("value") {
                Some(t) => Known::of_tensor(t)?
                    .single()
                    .ok_or("ConstantOfShape's value must be one number")?,
                None => Elem::Float(0.0),
            };
            Ok(Known {
                data: vec![value; shape.iter().product()],
                shape,
            })
        }
        "Size" => Ok(Known::scalar(Elem::Int(x.data.len() as i64))),
        _ => Err(format!("{op} is not a shape computation")),
    }
}

/// One binary operation of a shape computation. The batch size may be multiplied or divided
/// by a number; any other arithmetic on it is refused.
fn arithmetic(op: &str, a: Elem, b: Elem, fmod: bool) -> Result<Elem, String> {
    use Elem::*;
    Ok(match (op, a, b) {
        ("Mul", Batch(k), Int(m)) | ("Mul", Int(m), Batch(k)) => Batch(k * m),
        ("Div", Batch(k), Int(m)) if m != 0 && k % m == 0 => Batch(k / m),
        ("Div", Batch(k), Batch(m)) if m != 0 && k % m == 0 => Int(k / m),
        (_, Batch(_), _) | (_, _, Batch(_)) => return Err(batch_arithmetic()),
        ("Add", Int(x), Int(y)) => Int(x + y),
        ("Sub", Int(x), Int(y)) => Int(x - y),
        ("Mul", Int(x), Int(y)) => Int(x * y),
        ("Div", Int(_), Int(0)) | ("Mod", Int(_), Int(0)) => {
            return Err("a division by zero".to_string())
        }
        ("Div", Int(x), Int(y)) => Int(x / y),
        ("Mod", Int(x), Int(y)) if fmod => Int(x % y),
        // The result takes the divisor's sign, as Python's `%`.
        ("Mod", Int(x), Int(y)) => {
            let r = x % y;
            Int(if r != 0 && (r < 0) != (y < 0) {
                r + y
            } else {
                r
            })
        }
        ("Equal", x, y) => Int((x.float()? == y.float()?) as i64),
        (_, x, y) => {
            let (x, y) = (x.float()?, y.float()?);
            Float(match op {
                "Add" => x + y,
                "Sub" => x - y,
                "Mul" => x * y,
                "Div" => x / y,
                _ if fmod => x % y,
                _ => x - y * (x / y).floor(),
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(shape: &[usize], v: &[i64]) -> Known {
        Known {
            shape: shape.to_vec(),
            data: v.iter().map(|&i| Elem::Int(i)).collect(),
        }
    }

    #[test]
    fn a_flatten_by_shape_keeps_the_batch_symbolic() {
        let attrs = Attributes(&[]);
        let shape = Known::of_dims(&[Dim::Batch(1), Dim::Size(16), Dim::Size(4)]);
        let first = fold("Gather", &attrs, &[Some(&shape), Some(&ints(&[], &[0]))]).unwrap();
        assert_eq!(first.data, vec![Elem::Batch(1)]);
        let batch = fold(
            "Unsqueeze",
            &attrs,
            &[Some(&first), Some(&ints(&[1], &[0]))],
        )
        .unwrap();
        let target = fold("Concat", &attrs, &[Some(&batch), Some(&ints(&[1], &[-1]))]).unwrap();
        let input = [Dim::Batch(1), Dim::Size(16), Dim::Size(4)];
        let dims = reshape_target(&input, &target.dims().unwrap(), false).unwrap();
        assert_eq!(shape_text(&dims), "[B, 64]");
    }

    #[test]
    fn slices_count_from_either_end() {
        assert_eq!(slice_positions(1, i64::MAX, 1, 4).unwrap(), vec![1, 2, 3]);
        assert_eq!(slice_positions(-1, i64::MIN, -1, 3).unwrap(), vec![2, 1, 0]);
        assert_eq!(slice_positions(0, -1, 2, 5).unwrap(), vec![0, 2]);
    }

    #[test]
    fn arithmetic_on_the_batch_size_is_limited() {
        assert_eq!(
            arithmetic("Mul", Elem::Batch(1), Elem::Int(3), false),
            Ok(Elem::Batch(3))
        );
        assert!(arithmetic("Add", Elem::Batch(1), Elem::Int(3), false).is_err());
        assert_eq!(
            arithmetic("Mod", Elem::Int(-7), Elem::Int(3), false),
            Ok(Elem::Int(2))
        );
    }
}
