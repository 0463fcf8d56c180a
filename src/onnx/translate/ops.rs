//! One translation per ONNX op: the expression of its `let`, and its shape, or the error that
//! says what the language lacks. Each op first checks that it sets no attribute it does not
//! understand, so an attribute is never silently dropped.

use super::{number, Out, Translator, Value};
use crate::onnx::known::{self, axis, product, shape_text, Dim};
use crate::onnx::proto::{self, Attributes, NodeProto};

impl<'m> Translator<'m> {
    /// The translation of a node that does not fold.
    pub(super) fn translate(&mut self, node: &'m NodeProto) -> Result<Out<'m>, String> {
        let op = node.op_type.as_str();
        if let Some(function) = unary_function(op) {
            self.attributes(node, &[])?;
            let (x, shape) = self.tensor(self.operand_name(node, 0)?)?;
            return Ok(Out::Let {
                expr: function.replace("{x}", &x),
                shape,
            });
        }
        match op {
            "Identity" => {
                self.attributes(node, &[])?;
                Ok(Out::Alias(self.value(self.operand_name(node, 0)?)?.clone()))
            }
            "Dropout" => {
                self.attributes(node, &["seed", "ratio", "is_test"])?;
                if let Some(mode) = self.optional(node, 2) {
                    if self.scalar(mode)? != 0.0 {
                        return Err("training-mode dropout is not supported by import".to_string());
                    }
                }
                // In inference, dropout is the identity.
                Ok(Out::Alias(self.value(self.operand_name(node, 0)?)?.clone()))
            }
            "Cast" => {
                let attrs = self.attributes(node, &["to", "saturate", "round_mode"])?;
                let to = attrs.int("to").unwrap_or(0) as i32;
                if !proto::is_float_type(to) {
                    return Err(format!(
                        "a cast of a tensor to {}: the model's tensors are floating-point",
                        proto::type_name(to)
                    ));
                }
                Ok(Out::Alias(self.value(self.operand_name(node, 0)?)?.clone()))
            }
            "Add" | "Sub" | "Mul" | "Div" => {
                self.attributes(node, &[])?;
                let (a, sa) = self.tensor(self.operand_name(node, 0)?)?;
                let (b, sb) = self.tensor(self.operand_name(node, 1)?)?;
                let symbol = match op {
                    "Add" => "+",
                    "Sub" => "-",
                    "Mul" => "*",
                    _ => "/",
                };
                Ok(Out::Let {
                    expr: format!("{a} {symbol} {b}"),
                    shape: broadcast(&sa, &sb)?,
                })
            }
            "Max" | "Min" | "Sum" | "Mean" => self.variadic(node),
            "Pow" => {
                self.attributes(node, &[])?;
                let (x, shape) = self.tensor(self.operand_name(node, 0)?)?;
                let p = self.scalar(self.operand_name(node, 1)?).map_err(|e| {
                    format!("{e} (the language's `pow` takes a number as its exponent)")
                })?;
                Ok(Out::Let {
                    expr: format!("pow({x}, {})", number(p)?),
                    shape,
                })
            }
            "LeakyRelu" => {
                let attrs = self.attributes(node, &["alpha"])?;
                let alpha = attrs.float("alpha").unwrap_or(0.01);
                if !(0.0..=1.0).contains(&alpha) {
                    return Err(format!(
                        "alpha = {alpha}: the language's `leaky_relu` takes 0 <= alpha <= 1"
                    ));
                }
                let (x, shape) = self.tensor(self.operand_name(node, 0)?)?;
                Ok(Out::Let {
                    expr: format!("leaky_relu({x}, alpha = {})", number(alpha as f64)?),
                    shape,
                })
            }
            "HardSigmoid" | "HardSwish" => {
                let attrs = self.attributes(node, &["alpha", "beta"])?;
                let (x, shape) = self.tensor(self.operand_name(node, 0)?)?;
                // HardSigmoid(x) = max(0, min(1, alpha x + beta)); HardSwish(x) = x HardSigmoid(x)
                // with alpha = 1/6, beta = 1/2.
                let expr = if op == "HardSigmoid" {
                    let alpha = number(attrs.float("alpha").unwrap_or(0.2) as f64)?;
                    let beta = number(attrs.float("beta").unwrap_or(0.5) as f64)?;
                    format!("clip({alpha} * {x} + {beta}, 0, 1)")
                } else {
                    format!("{x} * clip({x} / 6 + 0.5, 0, 1)")
                };
                Ok(Out::Let { expr, shape })
            }
            "Gelu" => {
                let attrs = self.attributes(node, &["approximate"])?;
                let (x, shape) = self.tensor(self.operand_name(node, 0)?)?;
                // The tanh approximation is the stdlib's `gelu`; the exact one x Φ(x).
                let expr = match attrs.string("approximate").as_deref() {
                    Some("tanh") => format!("gelu({x})"),
                    None | Some("none") => {
                        format!("0.5 * {x} * (1 + erf({x} / 1.4142135623730951))")
                    }
                    Some(other) => return Err(format!("approximate = \"{other}\"")),
                };
                Ok(Out::Let { expr, shape })
            }
            "Clip" => self.clip(node),
            "Softmax" | "LogSoftmax" => {
                let attrs = self.attributes(node, &["axis"])?;
                let (x, shape) = self.tensor(self.operand_name(node, 0)?)?;
                let rank = shape.len();
                // Before opset 13 the op worked on the input flattened to 2-D at `axis`
                // (default 1): the same as the last axis only when `axis` is the last.
                let default = if self.opset >= 13 { -1 } else { 1 };
                let ax = axis(attrs.int("axis").unwrap_or(default), rank)?;
                if ax + 1 != rank {
                    return Err(format!(
                        "over axis {ax} of a tensor of rank {rank}: the stdlib's softmax is over the last axis (transpose first)"
                    ));
                }
                let function = if op == "Softmax" {
                    "softmax"
                } else {
                    "log_softmax"
                };
                Ok(Out::Let {
                    expr: format!("{function}({x})"),
                    shape,
                })
            }
            "Gemm" => self.gemm(node),
            "MatMul" => {
                self.attributes(node, &[])?;
                let (a, sa) = self.tensor(self.operand_name(node, 0)?)?;
                let (b, sb) = self.tensor(self.operand_name(node, 1)?)?;
                Ok(Out::Let {
                    expr: format!("{a} @ {b}"),
                    shape: matmul(&sa, &sb)?,
                })
            }
            "Flatten" => {
                let attrs = self.attributes(node, &["axis"])?;
                let (x, shape) = self.tensor(self.operand_name(node, 0)?)?;
                let rank = shape.len();
                let a = attrs.int("axis").unwrap_or(1);
                let a = if a < 0 { a + rank as i64 } else { a };
                if !(0..=rank as i64).contains(&a) {
                    return Err(format!("axis {a} is outside a tensor of rank {rank}"));
                }
                let (outer, inner) = shape.split_at(a as usize);
                let out = vec![
                    product(outer).ok_or_else(twice_batch)?,
                    product(inner).ok_or_else(twice_batch)?,
                ];
                let expr = if a == 1 && rank >= 2 {
                    format!("flatten({x})")
                } else {
                    format!("reshape({x}, {})", shape_text(&out))
                };
                Ok(Out::Let { expr, shape: out })
            }
            "Reshape" => {
                let attrs = self.attributes(node, &["allowzero"])?;
                let (x, shape) = self.tensor(self.operand_name(node, 0)?)?;
                let mut target = self.known(self.operand_name(node, 1)?)?.dims()?;
                // An export with a fixed batch size writes it as a number: on the batch
                // axis it stays `B`.
                if let (Some(n), Some(Dim::Batch(1)), Some(first)) =
                    (self.declared_batch, shape.first(), target.first_mut())
                {
                    if *first == Ok(Dim::Size(n)) {
                        *first = Ok(Dim::Batch(1));
                    }
                }
                // A target of numbers only, for an input that holds the batch: the batch is
                // the multiple of its size that keeps the reshape valid for every batch size
                // (attention folds the heads into it: [S, B, E] to [S, B·heads, E / heads],
                // and a linear layer the sequence: [S, B, E] to [S·B, E]).
                let numbers_only = target.iter().all(|t| matches!(t, Ok(Dim::Size(_))));
                if let (Some(n), true) = (self.declared_batch, numbers_only) {
                    if let Some((i, k)) = batch_entry(&shape, &target, n) {
                        target[i] = Ok(Dim::Batch(k));
                    }
                }
                let out =
                    known::reshape_target(&shape, &target, attrs.int("allowzero") == Some(1))?;
                Ok(reshaped(x, &shape, out))
            }
            "Squeeze" | "Unsqueeze" => {
                let attrs = self.attributes(node, &["axes"])?;
                let (x, shape) = self.tensor(self.operand_name(node, 0)?)?;
                let axes_input = match self.optional(node, 1) {
                    Some(n) => Some(self.known(n)?),
                    None => None,
                };
                let out = if op == "Unsqueeze" {
                    let axes = match &axes_input {
                        Some(k) => k.ints()?,
                        None => attrs.ints("axes").unwrap_or_default().to_vec(),
                    };
                    known::unsqueezed(&shape, &axes, Dim::Size(1))?
                } else {
                    let axes = known::axes_of(&attrs, axes_input.as_ref(), shape.len())?;
                    let mut out = Vec::new();
                    for (i, &d) in shape.iter().enumerate() {
                        let named = axes.as_ref().is_none_or(|a| a.contains(&i));
                        if named && d != Dim::Size(1) {
                            if axes.is_some() {
                                return Err(format!("axis {i} has size {d}, not 1"));
                            }
                            out.push(d);
                        } else if !named {
                            out.push(d);
                        }
                    }
                    out
                };
                Ok(reshaped(x, &shape, out))
            }
            "Transpose" => {
                let attrs = self.attributes(node, &["perm"])?;
                let (x, shape) = self.tensor(self.operand_name(node, 0)?)?;
                let rank = shape.len();
                let perm: Vec<usize> = match attrs.ints("perm") {
                    Some(p) => p.iter().map(|&a| axis(a, rank)).collect::<Result<_, _>>()?,
                    None => (0..rank).rev().collect(),
                };
                let mut sorted = perm.clone();
                sorted.sort_unstable();
                if sorted != (0..rank).collect::<Vec<_>>() {
                    return Err(format!("perm {perm:?} is not a permutation of the axes"));
                }
                let out = perm.iter().map(|&p| shape[p]).collect();
                let expr = if perm == [1, 0] {
                    format!("transpose({x})")
                } else {
                    format!("transpose({x}, {perm:?})")
                };
                Ok(Out::Let { expr, shape: out })
            }
            "Concat" => {
                let attrs = self.attributes(node, &["axis"])?;
                let mut parts = Vec::new();
                let mut out: Option<Vec<Dim>> = None;
                let mut ax = 0;
                for name in node.input.iter().filter(|n| !n.is_empty()) {
                    let (expr, shape) = self.tensor(name)?;
                    ax = axis(attrs.int("axis").unwrap_or(0), shape.len())?;
                    out = Some(match out {
                        None => shape,
                        Some(mut acc) => {
                            let joined = match (acc.get(ax), shape.get(ax)) {
                                (Some(Dim::Size(a)), Some(Dim::Size(b))) => Dim::Size(a + b),
                                _ => return Err("a concatenation along the batch axis".to_string()),
                            };
                            acc[ax] = joined;
                            acc
                        }
                    });
                    parts.push(expr);
                }
                let shape = out.ok_or("a Concat of nothing")?;
                Ok(Out::Let {
                    expr: format!("concat({}, axis = {ax})", parts.join(", ")),
                    shape,
                })
            }
            "Expand" => {
                self.attributes(node, &[])?;
                let source = self.operand_name(node, 0)?;
                let (x, shape) = self.tensor(source)?;
                let target: Vec<Dim> = self
                    .known(self.operand_name(node, 1)?)?
                    .dims()?
                    .into_iter()
                    .map(|d| d.map_err(|v| format!("cannot expand to a dimension {v}")))
                    .collect::<Result<_, _>>()?;
                // A known constant of one value (an initial state of zeros, made at the
                // export's batch size) is a `full` of the target's shape.
                let uniform = match self.value(source)? {
                    Value::Known(k) => k.floats().ok().filter(|v| {
                        v.first()
                            .is_some_and(|&first| v.iter().all(|&x| x == first))
                    }),
                    _ => None,
                };
                if let Some(v) = uniform {
                    let out = if target.len() >= shape.len() {
                        target
                    } else {
                        broadcast(&shape, &target)?
                    };
                    return Ok(Out::Let {
                        expr: format!("full({}, {})", shape_text(&out), number(v[0])?),
                        shape: out,
                    });
                }
                let out = broadcast(&shape, &target)?;
                Ok(Out::Let {
                    expr: format!("broadcast({x}, {})", shape_text(&out)),
                    shape: out,
                })
            }
            "ConstantOfShape" => {
                let attrs = self.attributes(node, &["value"])?;
                let shape: Vec<Dim> = self
                    .known(self.operand_name(node, 0)?)?
                    .dims()?
                    .into_iter()
                    .map(|d| d.map_err(|v| format!("a shape with the entry {v}")))
                    .collect::<Result<_, _>>()?;
                let value = match attrs.tensor("value") {
                    Some(t) => known::Known::of_tensor(t)?.floats()?,
                    None => vec![0.0],
                };
                let [value] = value[..] else {
                    return Err("its value must be one number".to_string());
                };
                Ok(Out::Let {
                    expr: format!("full({}, {})", shape_text(&shape), number(value)?),
                    shape,
                })
            }
            "LSTM" | "GRU" => self.recurrent(node),
            "Gather" => self.gather(node),
            "Slice" => self.slice(node),
            "Conv" => self.conv(node),
            "MaxPool" | "AveragePool" => self.pool(node),
            "GlobalAveragePool" | "GlobalMaxPool" => {
                self.attributes(node, &[])?;
                let (x, shape) = self.tensor(self.operand_name(node, 0)?)?;
                if shape.len() < 3 {
                    return Err(format!(
                        "an input of rank {} (it needs [N, C, ...])",
                        shape.len()
                    ));
                }
                let axes: Vec<usize> = (2..shape.len()).collect();
                let mut out = shape.clone();
                out[2..].fill(Dim::Size(1));
                let function = if op == "GlobalAveragePool" {
                    "mean"
                } else {
                    "max"
                };
                Ok(Out::Let {
                    expr: format!("{function}({x}, axis = {axes:?}, keepdims = true)"),
                    shape: out,
                })
            }
            "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" => self.reduce(node),
            "LayerNormalization" => self.layer_norm(node),
            "BatchNormalization" => self.batch_norm(node),
            "ConvTranspose" => self.conv_transpose(node),
            _ => Err(format!("the op {op} is not supported by import")),
        }
    }

    /// `Max`, `Min`, `Sum`, `Mean` of any number of tensors, broadcasting.
    fn variadic(&mut self, node: &'m NodeProto) -> Result<Out<'m>, String> {
        self.attributes(node, &[])?;
        let mut operands = Vec::new();
        let mut shape: Vec<Dim> = Vec::new();
        for name in node.input.iter().filter(|n| !n.is_empty()) {
            let (expr, s) = self.tensor(name)?;
            shape = broadcast(&shape, &s)?;
            operands.push(expr);
        }
        let Some(first) = operands.first().cloned() else {
            return Err("it has no inputs".to_string());
        };
        let expr = match node.op_type.as_str() {
            "Sum" => operands.join(" + "),
            "Mean" => format!("({}) / {}", operands.join(" + "), operands.len()),
            op => {
                let function = if op == "Max" { "maximum" } else { "minimum" };
                operands[1..]
                    .iter()
                    .fold(first, |acc, x| format!("{function}({acc}, {x})"))
            }
        };
        Ok(Out::Let { expr, shape })
    }

    fn clip(&mut self, node: &'m NodeProto) -> Result<Out<'m>, String> {
        let attrs = self.attributes(node, &["min", "max"])?;
        let (x, shape) = self.tensor(self.operand_name(node, 0)?)?;
        // Before opset 11 the bounds were attributes; since, optional inputs.
        let (low, high) = if self.opset < 11 {
            (
                attrs.float("min").map(f64::from),
                attrs.float("max").map(f64::from),
            )
        } else {
            let bound = |i| self.optional(node, i).map(|n| self.scalar(n)).transpose();
            (bound(1)?, bound(2)?)
        };
        let expr = match (low, high) {
            (Some(l), Some(h)) => format!("clip({x}, {}, {})", number(l)?, number(h)?),
            (Some(l), None) => format!("maximum({x}, {})", number(l)?),
            (None, Some(h)) => format!("minimum({x}, {})", number(h)?),
            (None, None) => {
                return Ok(Out::Alias(self.value(self.operand_name(node, 0)?)?.clone()))
            }
        };
        Ok(Out::Let { expr, shape })
    }

    /// `Gemm`: alpha · A' B' + beta · C, with A' and B' transposed as asked.
    fn gemm(&mut self, node: &'m NodeProto) -> Result<Out<'m>, String> {
        let attrs = self.attributes(node, &["alpha", "beta", "transA", "transB"])?;
        let (mut a, mut sa) = self.tensor(self.operand_name(node, 0)?)?;
        let (mut b, mut sb) = self.tensor(self.operand_name(node, 1)?)?;
        if sa.len() != 2 || sb.len() != 2 {
            return Err(format!(
                "Gemm multiplies matrices, got {} and {}",
                shape_text(&sa),
                shape_text(&sb)
            ));
        }
        if attrs.int("transA") == Some(1) {
            a = format!("transpose({a})");
            sa.reverse();
        }
        if attrs.int("transB") == Some(1) {
            b = format!("transpose({b})");
            sb.reverse();
        }
        let shape = matmul(&sa, &sb)?;
        let alpha = attrs.float("alpha").unwrap_or(1.0);
        let mut expr = if alpha == 1.0 {
            format!("{a} @ {b}")
        } else {
            format!("{} * ({a} @ {b})", number(alpha as f64)?)
        };
        if let Some(c) = self.optional(node, 2) {
            let (c, sc) = self.tensor(c)?;
            if broadcast(&shape, &sc)? != shape {
                return Err(format!(
                    "C of shape {} does not broadcast to {}",
                    shape_text(&sc),
                    shape_text(&shape)
                ));
            }
            let beta = attrs.float("beta").unwrap_or(1.0);
            if beta == 1.0 {
                expr = format!("{expr} + {c}");
            } else if beta != 0.0 {
                expr = format!("{expr} + {} * {c}", number(beta as f64)?);
            }
        }
        Ok(Out::Let { expr, shape })
    }

    /// `Gather` of a tensor by indices known at import: one index, or a run of them.
    fn gather(&mut self, node: &'m NodeProto) -> Result<Out<'m>, String> {
        let attrs = self.attributes(node, &["axis"])?;
        let (x, shape) = self.tensor(self.operand_name(node, 0)?)?;
        let indices_name = self.operand_name(node, 1)?;
        let ax = axis(attrs.int("axis").unwrap_or(0), shape.len())?;
        if let Value::Tensor {
            name: ids,
            shape: ids_shape,
        } = self.value(indices_name)?
        {
            // Rows of a matrix picked by ids: the stdlib's `embedding`.
            if !(self.ids.contains(ids) && ax == 0 && shape.len() == 2) {
                return Err("a gather by computed indices: import supports the rows of a matrix picked by an integer input (an embedding)".to_string());
            }
            let mut out = ids_shape.clone();
            out.push(shape[1]);
            return Ok(Out::Let {
                expr: format!("embedding({ids}, {x})"),
                shape: out,
            });
        }
        let indices = self.known(indices_name)?;
        let Dim::Size(len) = shape[ax] else {
            return Err("a gather along the batch axis".to_string());
        };
        let positions: Vec<i64> = indices
            .ints()?
            .iter()
            .map(|&i| if i < 0 { i + len as i64 } else { i })
            .collect();
        if positions.iter().any(|&p| p < 0 || p >= len as i64) {
            return Err(format!("an index outside an axis of {len}"));
        }
        match (indices.shape.len(), positions.as_slice()) {
            (0, [p]) => {
                let mut out = shape.clone();
                out.remove(ax);
                let mut index = vec!["..".to_string(); ax];
                index.push(p.to_string());
                Ok(Out::Let {
                    expr: format!("{x}[{}]", index.join(", ")),
                    shape: out,
                })
            }
            (1, [first, ..]) if positions.windows(2).all(|w| w[1] == w[0] + 1) => {
                let end = first + positions.len() as i64;
                let mut out = shape.clone();
                out[ax] = Dim::Size(positions.len());
                Ok(Out::Let {
                    expr: format!("slice({x}, {ax}, {first}, {end})"),
                    shape: out,
                })
            }
            _ => Err("a gather of indices other than one or a run of consecutive ones".to_string()),
        }
    }

    /// `Slice` of a tensor with bounds known at import and steps of 1.
    /// `Split`: one `slice` per output (of the sizes given, or equal parts), each its own
    /// `let`.
    pub(super) fn split(&mut self, node: &'m NodeProto) -> Result<(), String> {
        let attrs = self.attributes(node, &["axis", "num_outputs", "split"])?;
        let (x, shape) = self.tensor(self.operand_name(node, 0)?)?;
        let ax = axis(attrs.int("axis").unwrap_or(0), shape.len())?;
        let Dim::Size(len) = shape[ax] else {
            return Err("a split of the batch axis".to_string());
        };
        let parts = node.output.len();
        let sizes: Vec<usize> = match (self.optional(node, 1), attrs.ints("split")) {
            (Some(sizes), _) => self
                .known(sizes)?
                .ints()?
                .iter()
                .map(|&s| s as usize)
                .collect(),
            (None, Some(sizes)) => sizes.iter().map(|&s| s as usize).collect(),
            // Equal parts, the last one smaller when they do not divide (opset 18).
            (None, None) => {
                let each = len.div_ceil(parts.max(1));
                (0..parts)
                    .map(|i| each.min(len.saturating_sub(i * each)))
                    .collect()
            }
        };
        if sizes.len() != parts || sizes.iter().sum::<usize>() != len {
            return Err(format!(
                "split sizes {sizes:?} for {parts} outputs of an axis of {len}"
            ));
        }
        let mut start = 0;
        for (output, size) in node.output.iter().zip(sizes) {
            let end = start + size;
            if !output.is_empty() {
                let name = self.names.value(output, "split");
                self.lets
                    .push(format!("let {name} = slice({x}, {ax}, {start}, {end})"));
                let mut part = shape.clone();
                part[ax] = Dim::Size(size);
                self.values
                    .insert(output.as_str(), Value::Tensor { name, shape: part });
            }
            start = end;
        }
        Ok(())
    }

    fn slice(&mut self, node: &'m NodeProto) -> Result<Out<'m>, String> {
        self.attributes(node, &[])?;
        let (x, shape) = self.tensor(self.operand_name(node, 0)?)?;
        let starts = self.known(self.operand_name(node, 1)?)?.ints()?;
        let ends = self.known(self.operand_name(node, 2)?)?.ints()?;
        let axes = match self.optional(node, 3) {
            Some(n) => self.known(n)?.ints()?,
            None => (0..starts.len() as i64).collect(),
        };
        let steps = match self.optional(node, 4) {
            Some(n) => self.known(n)?.ints()?,
            None => vec![1; starts.len()],
        };
        if starts.len() != ends.len() || axes.len() != starts.len() || steps.len() != starts.len() {
            return Err("starts, ends, axes and steps of different lengths".to_string());
        }
        let mut expr = x;
        let mut out = shape.clone();
        for (i, &a) in axes.iter().enumerate() {
            let ax = axis(a, shape.len())?;
            if steps[i] != 1 {
                return Err(format!(
                    "a step of {}: the language slices with step 1",
                    steps[i]
                ));
            }
            let len = match shape[ax] {
                Dim::Size(n) => n,
                Dim::Batch(_) if starts[i] == 0 && ends[i] >= i64::MAX / 2 => continue,
                Dim::Batch(_) => return Err("a slice of the batch axis".to_string()),
            };
            let positions = known::slice_positions(starts[i], ends[i], 1, len)?;
            let (Some(&first), Some(&last)) = (positions.first(), positions.last()) else {
                return Err("an empty slice".to_string());
            };
            if positions.len() == len {
                continue;
            }
            expr = format!("slice({expr}, {ax}, {first}, {})", last + 1);
            out[ax] = Dim::Size(positions.len());
        }
        Ok(Out::Let { expr, shape: out })
    }

    /// `Conv` over 1 or 2 spatial axes, with every option (`conv1d`, `conv2d`, the stdlib's
    /// `conv_bias` when the options are plain).
    fn conv(&mut self, node: &'m NodeProto) -> Result<Out<'m>, String> {
        let attrs = self.attributes(
            node,
            &[
                "auto_pad",
                "dilations",
                "group",
                "kernel_shape",
                "pads",
                "strides",
            ],
        )?;
        let (x, sx) = self.tensor(self.operand_name(node, 0)?)?;
        let (w, sw) = self.tensor(self.operand_name(node, 1)?)?;
        let spatial = sx.len().saturating_sub(2);
        if !(1..=2).contains(&spatial) || sw.len() != sx.len() {
            return Err(format!(
                "a convolution of {} by {}: the language has 1-D and 2-D convolutions",
                shape_text(&sx),
                shape_text(&sw)
            ));
        }
        let input = sizes(&sx[2..]).ok_or("a convolution over the batch axis")?;
        let kernel = sizes(&sw[2..]).ok_or("a kernel sized by the batch")?;
        let window = Window::of(&attrs, &input, kernel, 1)?;
        let groups = positive_attr(&attrs, "group")?;
        let (Dim::Size(c), Dim::Size(wc), Dim::Size(o)) = (sx[1], sw[1], sw[0]) else {
            return Err("channels sized by the batch".to_string());
        };
        if c != wc * groups || o % groups != 0 {
            return Err(format!(
                "an input of {c} channels, a weight of {wc} per group and {o} outputs in {groups} groups"
            ));
        }
        let mut out = vec![sx[0], sw[0]];
        for (i, &n) in input.iter().enumerate() {
            out.push(Dim::Size(window.out(i, n, false).ok_or_else(|| {
                format!("a kernel of {} over {n} (padded)", window.kernel[i])
            })?));
        }
        let options = window.options(groups);
        let bias = match self.optional(node, 2) {
            Some(b) => Some(self.tensor(b)?.0),
            None => None,
        };
        let function = if spatial == 1 { "conv1d" } else { "conv2d" };
        let plain = spatial == 2 && groups == 1 && window.is_plain();
        let expr = match bias {
            Some(b) if plain => {
                self.modules.insert("conv");
                let (stride, padding) = (window.strides[0], window.pads[0]);
                format!("conv_bias({x}, {w}, {b}, stride = {stride}, padding = {padding})")
            }
            Some(b) => {
                let ones = vec!["1"; spatial].join(", ");
                format!("{function}({x}, {w}{options}) + reshape({b}, [{o}, {ones}])")
            }
            None => format!("{function}({x}, {w}{options})"),
        };
        Ok(Out::Let { expr, shape: out })
    }

    /// `ConvTranspose` over 2 spatial axes: `conv_transpose2d`, plus a bias.
    fn conv_transpose(&mut self, node: &'m NodeProto) -> Result<Out<'m>, String> {
        let attrs = self.attributes(
            node,
            &[
                "auto_pad",
                "dilations",
                "group",
                "kernel_shape",
                "output_padding",
                "output_shape",
                "pads",
                "strides",
            ],
        )?;
        let (x, sx) = self.tensor(self.operand_name(node, 0)?)?;
        let (w, sw) = self.tensor(self.operand_name(node, 1)?)?;
        if sx.len() != 4 || sw.len() != 4 {
            return Err(format!(
                "a transposed convolution of {} by {}: the language's is 2-D",
                shape_text(&sx),
                shape_text(&sw)
            ));
        }
        if !matches!(attrs.string("auto_pad").as_deref(), None | Some("NOTSET")) {
            return Err("auto_pad on a transposed convolution (give pads)".to_string());
        }
        let input = sizes(&sx[2..]).ok_or("a convolution over the batch axis")?;
        let kernel = sizes(&sw[2..]).ok_or("a kernel sized by the batch")?;
        let window = Window::of(&attrs, &input, kernel, 1)?;
        let groups = positive_attr(&attrs, "group")?;
        let extra = match attrs.ints("output_padding") {
            None => vec![0, 0],
            Some(v) if v.len() == 2 && v.iter().all(|&p| p >= 0) => {
                v.iter().map(|&p| p as usize).collect()
            }
            Some(v) => return Err(format!("output_padding = {v:?}")),
        };
        let (Dim::Size(c), Dim::Size(og)) = (sx[1], sw[1]) else {
            return Err("channels sized by the batch".to_string());
        };
        if sw[0] != Dim::Size(c) || c % groups != 0 {
            return Err(format!(
                "an input of {c} channels and a weight {} in {groups} groups",
                shape_text(&sw)
            ));
        }
        let mut out = vec![sx[0], Dim::Size(og * groups)];
        for i in 0..2 {
            let full = (input[i] - 1) * window.strides[i]
                + window.dilations[i] * (window.kernel[i] - 1)
                + 1
                + extra[i];
            let size = full
                .checked_sub(window.pads[i] + window.pads[i + 2])
                .filter(|&s| s > 0)
                .ok_or("pads larger than the output")?;
            out.push(Dim::Size(size));
        }
        if let Some(shape) = attrs.ints("output_shape") {
            let wanted: Vec<Dim> = shape.iter().map(|&d| Dim::Size(d as usize)).collect();
            if wanted[..] != out[2..] {
                return Err(format!(
                    "output_shape = {shape:?} differs from the shape its pads give, {}: give pads and output_padding instead",
                    shape_text(&out[2..])
                ));
            }
        }
        let mut options = window.options(groups);
        if extra != [0, 0] {
            options.push_str(&format!(", output_padding = {}", one_or_list(&extra)));
        }
        let mut expr = format!("conv_transpose2d({x}, {w}{options})");
        if let Some(b) = self.optional(node, 2) {
            let (b, _) = self.tensor(b)?;
            expr = format!("{expr} + reshape({b}, [{}, 1, 1])", og * groups);
        }
        Ok(Out::Let { expr, shape: out })
    }

    /// `MaxPool` and `AveragePool` over `[N, C, H, W]`, with every option.
    fn pool(&mut self, node: &'m NodeProto) -> Result<Out<'m>, String> {
        let max = node.op_type == "MaxPool";
        let mut understood = vec![
            "auto_pad",
            "ceil_mode",
            "dilations",
            "kernel_shape",
            "pads",
            "strides",
        ];
        understood.push(if max {
            "storage_order"
        } else {
            "count_include_pad"
        });
        let attrs = self.attributes(node, &understood)?;
        let (x, shape) = self.tensor(self.operand_name(node, 0)?)?;
        if shape.len() != 4 {
            return Err(format!(
                "pooling over {}: the language pools [N, C, H, W]",
                shape_text(&shape)
            ));
        }
        let input = sizes(&shape[2..]).ok_or("pooling over the batch axis")?;
        let kernel: Vec<usize> = match attrs.ints("kernel_shape") {
            Some(k) if k.len() == 2 && k.iter().all(|&k| k >= 1) => {
                k.iter().map(|&k| k as usize).collect()
            }
            other => return Err(format!("kernel_shape = {other:?}: two sizes from 1 up")),
        };
        let window = Window::of(&attrs, &input, kernel, 1)?;
        if (0..4).any(|i| window.pads[i] >= window.kernel[i % 2]) {
            return Err(format!(
                "pads = {:?} as large as the window: the language pads less than a window",
                window.pads
            ));
        }
        let ceil = attrs.int("ceil_mode") == Some(1);
        let mut out = vec![shape[0], shape[1]];
        for (i, &n) in input.iter().enumerate() {
            let size = window
                .out(i, n, ceil)
                .ok_or_else(|| format!("a window of {} over {n}", window.kernel[i]))?;
            out.push(Dim::Size(size));
        }
        let mut args = format!("{x}, {}", one_or_list(&window.kernel));
        if window.strides != window.kernel {
            args.push_str(&format!(", stride = {}", one_or_list(&window.strides)));
        }
        if window.pads != [0; 4] {
            args.push_str(&format!(", padding = {}", pads_text(&window.pads)));
        }
        let function = if max {
            if window.dilations != [1, 1] {
                args.push_str(&format!(", dilation = {}", one_or_list(&window.dilations)));
            }
            "max_pool2d"
        } else {
            if window.dilations != [1, 1] {
                return Err("a dilated average pool".to_string());
            }
            "avg_pool2d"
        };
        if ceil {
            args.push_str(", ceil_mode = true");
        }
        // ONNX counts only the input's positions unless told otherwise; the language's
        // default is PyTorch's (the padded positions too).
        if !max && window.pads != [0; 4] && attrs.int("count_include_pad").unwrap_or(0) == 0 {
            args.push_str(", count_include_pad = false");
        }
        Ok(Out::Let {
            expr: format!("{function}({args})"),
            shape: out,
        })
    }

    /// `BatchNormalization` in inference: (x − mean) / sqrt(var + epsilon) · scale + bias per
    /// channel (axis 1), the running mean and variance `frozen` tensors.
    fn batch_norm(&mut self, node: &'m NodeProto) -> Result<Out<'m>, String> {
        let attrs = self.attributes(node, &["epsilon", "momentum", "training_mode"])?;
        if attrs.int("training_mode") == Some(1) {
            return Err("training-mode batch normalisation (batch statistics) is not supported by import: export in eval mode".to_string());
        }
        let (x, shape) = self.tensor(self.operand_name(node, 0)?)?;
        let Some(&Dim::Size(c)) = shape.get(1) else {
            return Err(format!(
                "batch normalisation of {}: channels on axis 1",
                shape_text(&shape)
            ));
        };
        let (scale, _) = self.tensor(self.operand_name(node, 1)?)?;
        let (bias, _) = self.tensor(self.operand_name(node, 2)?)?;
        let (mean, _) = self.frozen_tensor(self.operand_name(node, 3)?)?;
        let (var, _) = self.frozen_tensor(self.operand_name(node, 4)?)?;
        let epsilon = number(attrs.float("epsilon").unwrap_or(1e-5) as f64)?;
        let ones = vec!["1"; shape.len() - 2].join(", ");
        let per_channel = |v: &str| format!("reshape({v}, [{c}, {ones}])");
        let expr = format!(
            "({x} - {}) / sqrt({} + {epsilon}) * {} + {}",
            per_channel(&mean),
            per_channel(&var),
            per_channel(&scale),
            per_channel(&bias)
        );
        Ok(Out::Let { expr, shape })
    }

    fn reduce(&mut self, node: &'m NodeProto) -> Result<Out<'m>, String> {
        let attrs = self.attributes(node, &["axes", "keepdims", "noop_with_empty_axes"])?;
        let (x, shape) = self.tensor(self.operand_name(node, 0)?)?;
        let axes_input = match self.optional(node, 1) {
            Some(n) => Some(self.known(n)?),
            None => None,
        };
        let axes = known::axes_of(&attrs, axes_input.as_ref(), shape.len())?;
        let axes = match axes {
            Some(a) if !a.is_empty() => a,
            _ if attrs.int("noop_with_empty_axes") == Some(1) => {
                return Ok(Out::Alias(self.value(self.operand_name(node, 0)?)?.clone()))
            }
            _ => (0..shape.len()).collect(),
        };
        let keep = attrs.int("keepdims").unwrap_or(1) == 1;
        let function = match node.op_type.as_str() {
            "ReduceMean" => "mean",
            "ReduceSum" => "sum",
            "ReduceMax" => "max",
            _ => "min",
        };
        let mut out = Vec::new();
        for (i, &d) in shape.iter().enumerate() {
            if !axes.contains(&i) {
                out.push(d);
            } else if keep {
                out.push(Dim::Size(1));
            }
        }
        let expr = if keep {
            format!("{function}({x}, axis = {axes:?}, keepdims = true)")
        } else {
            format!("{function}({x}, axis = {axes:?})")
        };
        Ok(Out::Let { expr, shape: out })
    }

    /// `LayerNormalization` over the axes from `axis` on:
    /// (x − mean) / sqrt(var + epsilon) · scale + bias, the variance the population's. Over
    /// the last axis with epsilon 1e-5 and a bias, the stdlib's `layer_norm`.
    fn layer_norm(&mut self, node: &'m NodeProto) -> Result<Out<'m>, String> {
        let attrs = self.attributes(node, &["axis", "epsilon", "stash_type"])?;
        let (x, shape) = self.tensor(self.operand_name(node, 0)?)?;
        let (scale, _) = self.tensor(self.operand_name(node, 1)?)?;
        let bias = match self.optional(node, 2) {
            Some(b) => Some(self.tensor(b)?.0),
            None => None,
        };
        let first = axis(attrs.int("axis").unwrap_or(-1), shape.len())?;
        let epsilon = attrs.float("epsilon").unwrap_or(1e-5);
        if let (true, true, Some(bias)) = (first + 1 == shape.len(), epsilon == 1e-5, &bias) {
            self.modules.insert("transformer");
            return Ok(Out::Let {
                expr: format!("layer_norm({x}, {scale}, {bias})"),
                shape,
            });
        }
        let axes: Vec<usize> = (first..shape.len()).collect();
        let moments = format!("axis = {axes:?}, keepdims = true");
        let epsilon = number(epsilon as f64)?;
        let mut expr = format!(
            "({x} - mean({x}, {moments})) / sqrt(var({x}, {moments}) + {epsilon}) * {scale}"
        );
        if let Some(bias) = bias {
            expr = format!("{expr} + {bias}");
        }
        Ok(Out::Let { expr, shape })
    }
}

/// The elementwise ops that are one function of their input, as a template over `{x}`.
fn unary_function(op: &str) -> Option<&'static str> {
    Some(match op {
        "Relu" => "relu({x})",
        "Sigmoid" => "sigmoid({x})",
        "Tanh" => "tanh({x})",
        "Exp" => "exp({x})",
        "Log" => "log({x})",
        "Sqrt" => "sqrt({x})",
        "Abs" => "abs({x})",
        "Sin" => "sin({x})",
        "Cos" => "cos({x})",
        "Tan" => "tan({x})",
        "Sign" => "sign({x})",
        "Neg" => "-{x}",
        "Reciprocal" => "1 / {x}",
        "Softplus" => "softplus({x})",
        "Erf" => "erf({x})",
        _ => return None,
    })
}

/// Where a reshape of `input` (holding the batch once, as `k·B`) to the numbers `target` puts
/// the batch, given that the export fixed it to `n`: the first entry i such that the entries
/// before it are made of the input's axes before the batch, and entry i is the leftover of
/// those, times B, times a part of the axes after it. The k of `k·B` was merged from axes on
/// either side of the batch, so each split of it is tried. Returns i and the new multiple.
fn batch_entry(input: &[Dim], target: &[Result<Dim, i64>], n: usize) -> Option<(usize, usize)> {
    let axis = input.iter().position(|d| matches!(d, Dim::Batch(_)))?;
    let Dim::Batch(merged) = input[axis] else {
        return None;
    };
    let sizes = |dims: &[Dim]| -> Option<usize> {
        dims.iter()
            .map(|d| match d {
                Dim::Size(s) => Some(*s),
                Dim::Batch(_) => None,
            })
            .product()
    };
    let (before, after) = (sizes(&input[..axis])?, sizes(&input[axis + 1..])?);
    let numbers: Vec<usize> = target
        .iter()
        .map(|t| match t {
            Ok(Dim::Size(s)) => Some(*s),
            _ => None,
        })
        .collect::<Option<_>>()?;
    let splits = (1..=merged).filter(|outer| merged % outer == 0);
    splits
        .map(|outer| (before * outer, after * (merged / outer)))
        .find_map(|(before, after)| {
            (0..numbers.len()).find_map(|i| {
                let head: usize = numbers[..i].iter().product();
                let rest: usize = numbers[i + 1..].iter().product();
                let k = (before % head == 0 && after % rest == 0)
                    .then(|| before / head * (after / rest))?;
                (numbers[i] == k * n).then_some((i, k))
            })
        })
}

fn twice_batch() -> String {
    "a dimension that would hold the batch size twice".to_string()
}

/// The sizes of dimensions, unless one is the batch's.
fn sizes(dims: &[Dim]) -> Option<Vec<usize>> {
    dims.iter()
        .map(|d| match d {
            Dim::Size(n) => Some(*n),
            Dim::Batch(_) => None,
        })
        .collect()
}

/// The windows of a convolution or pooling node: per spatial axis the kernel's size, its
/// stride and dilation, and the padding (`pads`: the starts of every axis, then the ends, as
/// ONNX orders them).
struct Window {
    kernel: Vec<usize>,
    strides: Vec<usize>,
    pads: Vec<usize>,
    dilations: Vec<usize>,
}

impl Window {
    /// The window of a node's attributes over an input of spatial sizes `input`.
    fn of(
        attrs: &Attributes,
        input: &[usize],
        kernel: Vec<usize>,
        default_stride: usize,
    ) -> Result<Window, String> {
        let axes = input.len();
        if attrs
            .ints("kernel_shape")
            .is_some_and(|k| k.iter().map(|&k| k as usize).ne(kernel.iter().copied()))
        {
            return Err("kernel_shape differs from the weight's shape".to_string());
        }
        let strides = per_axis(attrs.ints("strides"), axes, default_stride, "strides")?;
        let dilations = per_axis(attrs.ints("dilations"), axes, 1, "dilations")?;
        let pads: Vec<usize> = match attrs.string("auto_pad").as_deref() {
            None | Some("NOTSET") => match attrs.ints("pads") {
                None => vec![0; 2 * axes],
                Some(p) if p.len() == 2 * axes && p.iter().all(|&p| p >= 0) => {
                    p.iter().map(|&p| p as usize).collect()
                }
                Some(p) => return Err(format!("pads = {p:?}")),
            },
            Some("VALID") => vec![0; 2 * axes],
            Some(mode @ ("SAME_UPPER" | "SAME_LOWER")) => {
                // Total padding so that the output has ceil(n / stride) entries; the odd one
                // at the end (SAME_UPPER) or the start (SAME_LOWER).
                let mut starts = Vec::new();
                let mut ends = Vec::new();
                for i in 0..axes {
                    let out = input[i].div_ceil(strides[i]);
                    let span = dilations[i] * (kernel[i] - 1) + 1;
                    let total = ((out - 1) * strides[i] + span).saturating_sub(input[i]);
                    let small = total / 2;
                    let (start, end) = if mode == "SAME_UPPER" {
                        (small, total - small)
                    } else {
                        (total - small, small)
                    };
                    starts.push(start);
                    ends.push(end);
                }
                starts.extend(ends);
                starts
            }
            Some(other) => return Err(format!("auto_pad = {other}")),
        };
        Ok(Window {
            kernel,
            strides,
            pads,
            dilations,
        })
    }

    /// The output size along axis `i` over `n` inputs (rounded up in ceiling mode, where a
    /// last window starting in the end padding is dropped).
    fn out(&self, i: usize, n: usize, ceil: bool) -> Option<usize> {
        let axes = self.kernel.len();
        let padded = n + self.pads[i] + self.pads[i + axes];
        let span = self.dilations[i] * (self.kernel[i] - 1) + 1;
        let room = padded.checked_sub(span)?;
        let s = self.strides[i];
        if !ceil {
            return Some(room / s + 1);
        }
        let out = room.div_ceil(s) + 1;
        Some(if (out - 1) * s >= n + self.pads[i] {
            out - 1
        } else {
            out
        })
    }

    /// One stride on every axis, the same padding on every side, no dilation.
    fn is_plain(&self) -> bool {
        let same = |v: &[usize]| v.iter().all(|&x| x == v[0]);
        same(&self.strides) && same(&self.pads) && self.dilations.iter().all(|&d| d == 1)
    }

    /// The convolution's options as the language writes them (`, stride = 2, padding = [1,
    /// 0]`), the defaults left out.
    fn options(&self, groups: usize) -> String {
        let mut text = String::new();
        if self.strides.iter().any(|&s| s != 1) {
            text.push_str(&format!(", stride = {}", one_or_list(&self.strides)));
        }
        if self.pads.iter().any(|&p| p != 0) {
            text.push_str(&format!(", padding = {}", pads_text(&self.pads)));
        }
        if self.dilations.iter().any(|&d| d != 1) {
            text.push_str(&format!(", dilation = {}", one_or_list(&self.dilations)));
        }
        if groups != 1 {
            text.push_str(&format!(", groups = {groups}"));
        }
        text
    }
}

/// A per-axis attribute (every value at least 1), or `default` on every axis.
fn per_axis(
    values: Option<&[i64]>,
    axes: usize,
    default: usize,
    name: &str,
) -> Result<Vec<usize>, String> {
    match values.filter(|v| !v.is_empty()) {
        None => Ok(vec![default; axes]),
        Some(v) if v.len() == axes && v.iter().all(|&x| x >= 1) => {
            Ok(v.iter().map(|&x| x as usize).collect())
        }
        Some(v) => Err(format!("{name} = {v:?}: {axes} values from 1 up")),
    }
}

/// An integer attribute from 1 up (1 when absent).
fn positive_attr(attrs: &Attributes, name: &str) -> Result<usize, String> {
    match attrs.int(name).unwrap_or(1) {
        n if n >= 1 => Ok(n as usize),
        n => Err(format!("{name} = {n}")),
    }
}

/// Values per axis as the language writes them: one number when they are all the same.
fn one_or_list(values: &[usize]) -> String {
    if values.iter().all(|&v| v == values[0]) {
        values[0].to_string()
    } else {
        format!("{values:?}")
    }
}

/// ONNX pads (starts, then ends) as the language's `padding`: one number, one per axis on
/// both sides (`[h, w]` in 2-D), or every side (`[top, left, bottom, right]`; `[left,
/// right]` in 1-D).
fn pads_text(pads: &[usize]) -> String {
    let axes = pads.len() / 2;
    let (starts, ends) = pads.split_at(axes);
    if pads.iter().all(|&p| p == pads[0]) {
        pads[0].to_string()
    } else if starts == ends && axes == 2 {
        format!("{starts:?}")
    } else {
        format!("{pads:?}")
    }
}

/// A tensor reshaped to `out`: `flatten` when that is what it is, else `reshape`.
fn reshaped<'m>(x: String, shape: &[Dim], out: Vec<Dim>) -> Out<'m> {
    if out == shape {
        return Out::Let {
            expr: x,
            shape: out,
        };
    }
    Out::Let {
        expr: format!("reshape({x}, {})", shape_text(&out)),
        shape: out,
    }
}

/// The numpy broadcast of two shapes.
fn broadcast(a: &[Dim], b: &[Dim]) -> Result<Vec<Dim>, String> {
    let rank = a.len().max(b.len());
    let at = |s: &[Dim], i: usize| {
        (i + s.len())
            .checked_sub(rank)
            .map_or(Dim::Size(1), |j| s[j])
    };
    (0..rank)
        .map(|i| match (at(a, i), at(b, i)) {
            (x, y) if x == y => Ok(x),
            (Dim::Size(1), y) => Ok(y),
            (x, Dim::Size(1)) => Ok(x),
            _ => Err(format!(
                "shapes {} and {} do not broadcast",
                shape_text(a),
                shape_text(b)
            )),
        })
        .collect()
}

/// The shape of `a @ b` by numpy's `matmul` rules.
fn matmul(a: &[Dim], b: &[Dim]) -> Result<Vec<Dim>, String> {
    let mismatch = || format!("a product of {} by {}", shape_text(a), shape_text(b));
    if a.is_empty() || b.is_empty() {
        return Err(mismatch());
    }
    let a2: Vec<Dim> = if a.len() == 1 {
        vec![Dim::Size(1), a[0]]
    } else {
        a.to_vec()
    };
    let b2: Vec<Dim> = if b.len() == 1 {
        vec![b[0], Dim::Size(1)]
    } else {
        b.to_vec()
    };
    let (ab, am) = a2.split_at(a2.len() - 2);
    let (bb, bm) = b2.split_at(b2.len() - 2);
    if am[1] != bm[0] {
        return Err(mismatch());
    }
    let mut out = broadcast(ab, bb)?;
    if a.len() > 1 {
        out.push(am[0]);
    }
    if b.len() > 1 {
        out.push(bm[1]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_shapes_follow_numpy() {
        let d = |v: &[usize]| v.iter().map(|&n| Dim::Size(n)).collect::<Vec<_>>();
        let mut a = d(&[4, 3]);
        a[0] = Dim::Batch(1);
        assert_eq!(shape_text(&matmul(&a, &d(&[3, 2])).unwrap()), "[B, 2]");
        assert_eq!(shape_text(&matmul(&d(&[3]), &d(&[3, 2])).unwrap()), "[2]");
        assert!(matmul(&d(&[4, 3]), &d(&[2, 2])).is_err());
    }
}
