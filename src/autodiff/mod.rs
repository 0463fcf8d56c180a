//! Reverse-mode automatic differentiation, as a pass from IR to IR.
//!
//! `vjp` appends the reverse sweep of a program to the program itself: for every node on a
//! path from a value we differentiate with respect to (`wrt`) to a seeded value, in reverse
//! program order, it turns the node's cotangent into cotangents of its operands, and sums the
//! cotangents a value receives from its several users. The result is ordinary IR, so the
//! gradient program is printed, verified, interpreted and compiled like any other.
//!
//! All the calculus lives in one table, `vjp_rule`: one arm per primitive op, each building the
//! vector-Jacobian product out of primitive ops with the `Program` builder, with its derivative
//! written beside it. An op without a rule is a clear `NoRule` error, raised only when that op
//! actually lies on a differentiated path.
//!
//! Two users: `grad_program` makes the backprop reference (the gradient of a scalar loss with
//! respect to every parameter), and the PC transform asks for the local products
//! (∂μ_j/∂v_i)ᵀ ε_j of single nodes.
//!
//! A scan's rule is a reverse scan (backpropagation through time), built in [`scan`]: its
//! results' cotangents are gathered from their `result` nodes, and the scan node itself, which
//! precedes them all, turns them into its operands' cotangents.

mod scan;

use crate::ir::{
    verify, BinaryOp, LeafKind, Op, Output, Program, ReduceOp, Shape, UnaryOp, ValueId, VerifyError,
};
use std::fmt;

/// Why a reverse pass could not be built.
#[derive(Clone, Debug, PartialEq)]
pub enum AutodiffError {
    /// An op without a vector-Jacobian rule lies on a path being differentiated.
    NoRule { op: String, node: ValueId },
    /// A seed's cotangent does not have the shape of the value it seeds.
    SeedShape {
        value: ValueId,
        expected: Shape,
        found: Shape,
    },
    /// The forward program has no output named `loss`.
    NoLoss,
    /// The forward program's `loss` output is not a scalar.
    LossNotScalar { shape: Shape },
    /// The gradient program breaks an IR invariant; a compiler bug.
    Invalid(VerifyError),
}

impl fmt::Display for AutodiffError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AutodiffError::NoRule { op, node } => {
                write!(
                    f,
                    "cannot differentiate {node} = {op}: the op has no derivative rule"
                )
            }
            AutodiffError::SeedShape {
                value,
                expected,
                found,
            } => write!(
                f,
                "the cotangent seeding {value} has shape {found}, expected {expected}"
            ),
            AutodiffError::NoLoss => f.write_str("the program has no output named `loss`"),
            AutodiffError::LossNotScalar { shape } => {
                write!(f, "the loss must be a scalar, but has shape {shape}")
            }
            AutodiffError::Invalid(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for AutodiffError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AutodiffError::Invalid(e) => Some(e),
            _ => None,
        }
    }
}

/// Appends the reverse pass to `program`: given seeds (value, cotangent-of-that-value) pairs,
/// returns for each `wrt` value the id of its accumulated cotangent Σ over all paths (a zero
/// constant when no path leads from it to a seed). Only nodes on a path from some `wrt` to some
/// seed are differentiated; gradients accumulate (add) where a value has several uses.
pub fn vjp(
    program: &mut Program,
    seeds: &[(ValueId, ValueId)],
    wrt: &[ValueId],
) -> Result<Vec<ValueId>, AutodiffError> {
    for &(value, cotangent) in seeds {
        let (expected, found) = (program.shape(value), program.shape(cotangent));
        if expected != found {
            return Err(AutodiffError::SeedShape {
                value,
                expected: expected.clone(),
                found: found.clone(),
            });
        }
    }
    let on_path = on_path(program, seeds, wrt);
    let mut cotangents: Vec<Option<ValueId>> = vec![None; program.nodes.len()];
    for &(value, cotangent) in seeds {
        if on_path[value.index()] {
            accumulate(program, &mut cotangents[value.index()], cotangent);
        }
    }
    // Every user of a node follows it, so a reverse sweep sees a node's cotangent complete.
    // The sweep covers the nodes that were there before it; it only appends after them.
    let swept = program.nodes.len() as u32;
    // The cotangents of each scan's results, by the scan's id.
    let mut results: std::collections::HashMap<ValueId, Vec<Option<ValueId>>> = Default::default();
    for id in (0..swept).rev().map(ValueId) {
        let args = program.node(id).args.clone();
        let wanted: Vec<bool> = args.iter().map(|a| on_path[a.index()]).collect();
        let operand_cotangents = match &program.node(id).op {
            Op::Result(i) => {
                if let Some(c) = cotangents[id.index()] {
                    let Op::Scan(scan) = &program.node(args[0]).op else {
                        unreachable!("the verifier checks that results read scans")
                    };
                    let slots = results
                        .entry(args[0])
                        .or_insert_with(|| vec![None; scan.results()]);
                    accumulate(program, &mut slots[*i], c);
                }
                continue;
            }
            Op::Scan(_) => {
                let Some(result_cotangents) = results.remove(&id) else {
                    continue;
                };
                if !wanted.contains(&true) {
                    continue;
                }
                scan::vjp_scan(program, id, &result_cotangents, &wanted)?
            }
            _ => {
                let Some(cotangent) = cotangents[id.index()] else {
                    continue;
                };
                if !wanted.contains(&true) {
                    continue;
                }
                vjp_rule(program, id, cotangent, &wanted)?
            }
        };
        for ((arg, want), arg_cotangent) in args.iter().zip(wanted).zip(operand_cotangents) {
            if let (true, Some(c)) = (want, arg_cotangent) {
                accumulate(program, &mut cotangents[arg.index()], c);
            }
        }
    }
    Ok(wrt
        .iter()
        .map(|&w| match cotangents[w.index()] {
            Some(c) => c,
            None => program.constant_like(0.0, w),
        })
        .collect())
}

/// The BP gradient program of a forward program (which has a scalar output named "loss"): a
/// copy of the forward program plus the reverse pass, with outputs "loss" and "grad.<p>" for
/// every `Param` leaf p (in program order). Runs `ir::verify` on the result.
pub fn grad_program(forward: &Program) -> Result<Program, AutodiffError> {
    gradient_program(forward, &[LeafKind::Param])
}

/// Like `grad_program`, with outputs `grad.<leaf>` for every leaf of the given kinds (e.g.
/// parameters and inputs, to compare with the messages predictive coding sends to inputs).
pub fn gradient_program(forward: &Program, of: &[LeafKind]) -> Result<Program, AutodiffError> {
    let loss = forward.output("loss").ok_or(AutodiffError::NoLoss)?;
    let loss_shape = forward.shape(loss);
    if *loss_shape != Shape::scalar() {
        return Err(AutodiffError::LossNotScalar {
            shape: loss_shape.clone(),
        });
    }
    let params: Vec<(ValueId, String)> = of
        .iter()
        .flat_map(|&kind| forward.leaves(kind))
        .map(|(id, name)| (id, name.to_string()))
        .collect();
    let mut program = forward.clone();
    program.name = format!("{}_grad", forward.name);
    // dL/dL = 1
    let seed = program.constant(1.0, Shape::scalar());
    let wrt: Vec<ValueId> = params.iter().map(|(id, _)| *id).collect();
    let grads = vjp(&mut program, &[(loss, seed)], &wrt)?;
    program.outputs = vec![Output {
        name: "loss".into(),
        value: loss,
    }];
    for ((_, name), grad) in params.iter().zip(grads) {
        program.set_output(format!("grad.{name}"), grad);
    }
    verify(&program).map_err(AutodiffError::Invalid)?;
    Ok(program)
}

/// Which nodes lie on a path from some `wrt` value to some seeded value (both ends included).
fn on_path(program: &Program, seeds: &[(ValueId, ValueId)], wrt: &[ValueId]) -> Vec<bool> {
    let n = program.nodes.len();
    let mut from_wrt = vec![false; n];
    for &w in wrt {
        from_wrt[w.index()] = true;
    }
    for id in program.ids() {
        if program.node(id).args.iter().any(|a| from_wrt[a.index()]) {
            from_wrt[id.index()] = true;
        }
    }
    let mut to_seed = vec![false; n];
    for &(value, _) in seeds {
        to_seed[value.index()] = true;
    }
    for id in program.ids().rev() {
        if to_seed[id.index()] {
            for a in &program.node(id).args {
                to_seed[a.index()] = true;
            }
        }
    }
    from_wrt.iter().zip(to_seed).map(|(&f, t)| f && t).collect()
}

/// Adds a cotangent into a value's running sum.
pub(crate) fn accumulate(program: &mut Program, sum: &mut Option<ValueId>, cotangent: ValueId) {
    *sum = Some(match *sum {
        None => cotangent,
        Some(previous) => program.add_values(previous, cotangent),
    });
}

/// The table of vector-Jacobian rules. Given the cotangent `ct` of node `id`'s value, returns a
/// cotangent for each operand, `None` where `wanted` says the operand is off every
/// differentiated path or where the value does not depend on it differentiably. A unary node is
/// only asked when its operand is wanted, so unary rules do not look at `wanted`.
fn vjp_rule(
    p: &mut Program,
    id: ValueId,
    ct: ValueId,
    wanted: &[bool],
) -> Result<Vec<Option<ValueId>>, AutodiffError> {
    let node = p.node(id).clone();
    let args = node.args.as_slice();
    let out = id;
    let want = |i: usize| wanted[i];
    let cotangents = match &node.op {
        // Leaves and constants end the traversal.
        Op::Leaf(_) | Op::Const(_) | Op::Iota { .. } => vec![],
        Op::Scan(_) | Op::Result(_) => unreachable!("scans have their own rule, in `scan`"),

        // d(-x)/dx = -1
        Op::Unary(UnaryOp::Neg) => vec![Some(p.unary(UnaryOp::Neg, ct))],
        // d exp(x)/dx = exp(x)
        Op::Unary(UnaryOp::Exp) => vec![Some(p.mul(ct, out))],
        // d ln(x)/dx = 1 / x
        Op::Unary(UnaryOp::Log) => vec![Some(p.binary(BinaryOp::Div, ct, args[0]))],
        // d sqrt(x)/dx = 1 / (2 sqrt(x))
        Op::Unary(UnaryOp::Sqrt) => {
            let twice_root = p.scale(out, 2.0);
            vec![Some(p.binary(BinaryOp::Div, ct, twice_root))]
        }
        // d sin(x)/dx = cos(x)
        Op::Unary(UnaryOp::Sin) => {
            let cos = p.unary(UnaryOp::Cos, args[0]);
            vec![Some(p.mul(ct, cos))]
        }
        // d cos(x)/dx = -sin(x)
        Op::Unary(UnaryOp::Cos) => {
            let sin = p.unary(UnaryOp::Sin, args[0]);
            let scaled = p.mul(ct, sin);
            vec![Some(p.unary(UnaryOp::Neg, scaled))]
        }
        // d tan(x)/dx = 1 + tan(x)^2
        Op::Unary(UnaryOp::Tan) => {
            let square = p.mul(out, out);
            let one = p.constant_like(1.0, out);
            let slope = p.add_values(one, square);
            vec![Some(p.mul(ct, slope))]
        }
        // d tanh(x)/dx = 1 - tanh(x)^2
        Op::Unary(UnaryOp::Tanh) => {
            let square = p.mul(out, out);
            let one = p.constant_like(1.0, out);
            let slope = p.sub(one, square);
            vec![Some(p.mul(ct, slope))]
        }
        // d erf(x)/dx = 2/√π · exp(−x²)
        Op::Unary(UnaryOp::Erf) => {
            let x = args[0];
            let square = p.mul(x, x);
            let minus = p.build(Op::Unary(UnaryOp::Neg), &[square], None);
            let bell = p.build(Op::Unary(UnaryOp::Exp), &[minus], None);
            let scale = p.constant_like(std::f64::consts::FRAC_2_SQRT_PI, out);
            let slope = p.mul(scale, bell);
            vec![Some(p.mul(ct, slope))]
        }
        // d sigmoid(x)/dx = sigmoid(x) (1 - sigmoid(x))
        Op::Unary(UnaryOp::Sigmoid) => {
            let one = p.constant_like(1.0, out);
            let complement = p.sub(one, out);
            let slope = p.mul(out, complement);
            vec![Some(p.mul(ct, slope))]
        }
        // d |x|/dx = sign(x)
        Op::Unary(UnaryOp::Abs) => {
            let sign = p.unary(UnaryOp::Sign, args[0]);
            vec![Some(p.mul(ct, sign))]
        }
        // d sign(x)/dx = 0 (almost everywhere)
        Op::Unary(UnaryOp::Sign) => vec![None],
        // stop_gradient(x) = x, but nothing flows back through it: 0 by definition
        Op::Unary(UnaryOp::StopGradient) => vec![None],
        // d x^0/dx = 0
        Op::Unary(UnaryOp::Powf(e)) if *e == 0.0 => vec![None],
        // d x^e/dx = e x^(e-1)
        Op::Unary(UnaryOp::Powf(e)) => {
            let power = p.unary(UnaryOp::Powf(e - 1.0), args[0]);
            let slope = p.scale(power, *e);
            vec![Some(p.mul(ct, slope))]
        }

        // d(a + b)/da = 1, d(a + b)/db = 1
        Op::Binary(BinaryOp::Add) => vec![want(0).then_some(ct), want(1).then_some(ct)],
        // d(a - b)/da = 1, d(a - b)/db = -1
        Op::Binary(BinaryOp::Sub) => vec![
            want(0).then_some(ct),
            want(1).then(|| p.unary(UnaryOp::Neg, ct)),
        ],
        // d(ab)/da = b, d(ab)/db = a
        Op::Binary(BinaryOp::Mul) => vec![
            want(0).then(|| p.mul(ct, args[1])),
            want(1).then(|| p.mul(ct, args[0])),
        ],
        // d(a/b)/da = 1/b, d(a/b)/db = -a/b^2 = -(a/b) / b
        Op::Binary(BinaryOp::Div) => {
            let over_b = p.binary(BinaryOp::Div, ct, args[1]);
            vec![
                want(0).then_some(over_b),
                want(1).then(|| {
                    let scaled = p.mul(over_b, out);
                    p.unary(UnaryOp::Neg, scaled)
                }),
            ]
        }
        // d max(a, b)/da = [a > b] + ½[a = b], d max(a, b)/db = the rest of 1
        Op::Binary(BinaryOp::Max) => {
            let greater = p.binary(BinaryOp::Greater, args[0], args[1]);
            let equal = p.binary(BinaryOp::Equal, args[0], args[1]);
            let half_ties = p.scale(equal, 0.5);
            let share_a = p.add_values(greater, half_ties);
            let to_a = p.mul(ct, share_a);
            vec![want(0).then_some(to_a), want(1).then(|| p.sub(ct, to_a))]
        }
        // Comparisons are piecewise constant: zero derivative.
        Op::Binary(BinaryOp::Greater | BinaryOp::Equal) => vec![None, None],

        // d where(c, a, b)/da = [c != 0], d where(c, a, b)/db = [c = 0]; nothing to c.
        Op::Where => {
            let (cond, zero) = (args[0], p.constant_like(0.0, ct));
            vec![
                None,
                want(1).then(|| p.build(Op::Where, &[cond, ct, zero], None)),
                want(2).then(|| p.build(Op::Where, &[cond, zero, ct], None)),
            ]
        }

        // d sum(x)/dx_i = 1: the cotangent broadcast back over the reduced axes.
        Op::Reduce(ReduceOp::Sum, axes) => {
            let x_shape = p.shape(args[0]).clone();
            vec![Some(unreduce(p, ct, axes, &x_shape))]
        }
        // d max(x)/dx_i = [x_i = max(x)] / #{j : x_j = max(x)}: split evenly among ties.
        Op::Reduce(ReduceOp::Max, axes) => {
            let x = args[0];
            let x_shape = p.shape(x).clone();
            let max = unreduce(p, out, axes, &x_shape);
            let is_max = p.binary(BinaryOp::Equal, x, max);
            let ties = p.reduce_sum(is_max, axes.clone());
            let share = p.binary(BinaryOp::Div, ct, ties);
            let spread = unreduce(p, share, axes, &x_shape);
            vec![Some(p.mul(is_max, spread))]
        }

        // Movement ops move cotangents back where the elements came from.
        Op::Reshape => {
            let x_shape = p.shape(args[0]).clone();
            vec![Some(p.reshape(ct, x_shape))]
        }
        // out[i] = x[perm[i]], so x's axis perm[i] is the cotangent's axis i.
        Op::Transpose(perm) => {
            let mut inverse = vec![0; perm.len()];
            for (i, &axis) in perm.iter().enumerate() {
                inverse[axis] = i;
            }
            vec![Some(p.transpose(ct, inverse))]
        }
        // Each element is copied to every broadcast position: sum the copies.
        Op::Broadcast => {
            let x_shape = p.shape(args[0]).clone();
            vec![Some(p.sum_to(ct, &x_shape))]
        }
        Op::Slice { axis, start, end } => {
            let len = p.shape(args[0]).dims()[*axis];
            let pad = Op::Pad {
                axis: *axis,
                before: *start,
                after: len - end,
            };
            vec![Some(p.build(pad, &[ct], None))]
        }
        Op::Pad { axis, before, .. } => {
            let len = p.shape(args[0]).dims()[*axis];
            let slice = Op::Slice {
                axis: *axis,
                start: *before,
                end: before + len,
            };
            vec![Some(p.build(slice, &[ct], None))]
        }
        Op::Concat { axis } => {
            let mut start = 0;
            let mut pieces = Vec::with_capacity(args.len());
            for (i, &arg) in args.iter().enumerate() {
                let end = start + p.shape(arg).dims()[*axis];
                let slice = Op::Slice {
                    axis: *axis,
                    start,
                    end,
                };
                pieces.push(want(i).then(|| p.build(slice, &[ct], None)));
                start = end;
            }
            pieces
        }

        // C = A B: dA = dC Bᵀ, dB = Aᵀ dC (per batch index)
        Op::MatMul => {
            let rank = node.shape.rank();
            let mut swap_last: Vec<usize> = (0..rank).collect();
            swap_last.swap(rank - 2, rank - 1);
            vec![
                want(0).then(|| {
                    let bt = p.transpose(args[1], swap_last.clone());
                    p.build(Op::MatMul, &[ct, bt], None)
                }),
                want(1).then(|| {
                    let at = p.transpose(args[0], swap_last.clone());
                    p.build(Op::MatMul, &[at, ct], None)
                }),
            ]
        }
        // The input and weight adjoints of the convolution, by definition.
        Op::Conv2d(params) => {
            let (x, w) = (args[0], args[1]);
            vec![
                want(0).then(|| {
                    let shape = p.shape(x).clone();
                    p.build(Op::Conv2dInputGrad(*params), &[ct, w], Some(shape))
                }),
                want(1).then(|| {
                    let shape = p.shape(w).clone();
                    p.build(Op::Conv2dWeightGrad(*params), &[x, ct], Some(shape))
                }),
            ]
        }
        // The transposed convolution y = Cᵀ(a) (C the convolution by w): ⟨y, c⟩ = ⟨a, C(c)⟩,
        // so a's cotangent is the convolution of c, and w's the weight adjoint at input c
        // and cotangent a.
        Op::Conv2dInputGrad(params) => {
            let (a, w) = (args[0], args[1]);
            vec![
                want(0).then(|| p.build(Op::Conv2d(*params), &[ct, w], None)),
                want(1).then(|| {
                    let shape = p.shape(w).clone();
                    p.build(Op::Conv2dWeightGrad(*params), &[ct, a], Some(shape))
                }),
            ]
        }
        // The weight adjoint's derivatives are not needed by BP or PC.
        Op::Conv2dWeightGrad(_) => {
            return Err(AutodiffError::NoRule {
                op: node.op.to_string(),
                node: id,
            })
        }
    };
    Ok(cotangents)
}

/// Undoes a reduction's shape: `value` (reduced over `axes`) broadcast back to `shape`.
fn unreduce(p: &mut Program, value: ValueId, axes: &[usize], shape: &Shape) -> ValueId {
    let kept = shape
        .dims()
        .iter()
        .enumerate()
        .map(|(i, &d)| if axes.contains(&i) { 1 } else { d })
        .collect::<Vec<_>>();
    let with_ones = p.reshape(value, Shape::new(kept));
    p.broadcast(with_ones, shape.clone())
}
