//! The reference interpreter: runs any program (forward, gradient, PC) on ndarray tensors.
//!
//! It is the definition of what a program means, so it favours clarity over speed: one pass
//! over the nodes in program order, and one arm per op in `apply`, each a direct reading of the
//! op's documentation in `ir::op`. It is not slow where that would make training examples
//! impractical: matrix products go through ndarray's GEMM (matrixmultiply), and a convolution
//! and its two adjoints are each one im2col and one GEMM. The JIT is checked against it.
//!
//! `eval` keeps every node's value (for tests and debugging); `eval_outputs` evaluates only
//! what the outputs need and drops each value after its last use, so a long unrolled program
//! holds only its live values.
//!
//! The element type is generic (`Real`): training runs in `f32`, finite-difference checks of
//! the autodiff rules in `f64`.

use crate::ir::shape::ConvGeometry;
use crate::ir::{
    verify, BinaryOp, LeafKind, Node, Op, Program, ReduceOp, Shape, UnaryOp, ValueId, VerifyError,
};
use ndarray::{Array2, ArrayView2, ArrayViewD, Axis, IxDyn, Slice, Zip};
use std::collections::BTreeMap;
use std::fmt;

/// Element types the interpreter runs in: f32 (training) and f64 (checks).
///
/// `to_f64` shares its name with `num_traits::ToPrimitive::to_f64` (a supertrait of `Float`),
/// so on a generic `F` call it as `Real::to_f64(x)`.
pub trait Real:
    ndarray::LinalgScalar + num_traits::Float + fmt::Debug + Send + Sync + 'static
{
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
}

impl Real for f32 {
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
}

impl Real for f64 {
    fn from_f64(x: f64) -> Self {
        x
    }
    fn to_f64(self) -> f64 {
        self
    }
}

/// A dense tensor of any rank, in row-major (standard) layout when produced here.
pub type Tensor<F> = ndarray::ArrayD<F>;

/// Leaf values (and named outputs) by name. Leaf names are unique within a program.
pub type Bindings<F> = BTreeMap<String, Tensor<F>>;

/// Why a program could not be evaluated.
#[derive(Clone, Debug, PartialEq)]
pub enum EvalError {
    /// The program breaks an IR invariant; a compiler bug, not a user error.
    Invalid(VerifyError),
    /// A leaf the program needs has no value in the bindings.
    MissingLeaf {
        name: String,
        kind: LeafKind,
        shape: Shape,
    },
    /// A leaf's bound value does not have the leaf's declared shape.
    LeafShape {
        name: String,
        expected: Shape,
        found: Shape,
    },
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EvalError::Invalid(e) => write!(f, "{e}"),
            EvalError::MissingLeaf { name, kind, shape } => {
                write!(
                    f,
                    "no value given for {} `{name}` of shape {shape}",
                    kind.keyword()
                )
            }
            EvalError::LeafShape {
                name,
                expected,
                found,
            } => write!(
                f,
                "`{name}` is declared {expected} but was given a value of shape {found}"
            ),
        }
    }
}

impl std::error::Error for EvalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EvalError::Invalid(e) => Some(e),
            _ => None,
        }
    }
}

/// Values of every node, in program order.
pub fn eval<F: Real>(program: &Program, leaves: &Bindings<F>) -> Result<Vec<Tensor<F>>, EvalError> {
    verify(program).map_err(EvalError::Invalid)?;
    let values = run(
        program,
        LeafValues::Named(leaves),
        &Schedule::everything(program),
    )?;
    Ok(values.into_iter().flatten().collect())
}

/// Only the program's named outputs; frees each intermediate after its last use (no holding
/// every value of a long unrolled program). Nodes no output depends on are not evaluated, and
/// their leaves need no binding.
pub fn eval_outputs<F: Real>(
    program: &Program,
    leaves: &Bindings<F>,
) -> Result<Bindings<F>, EvalError> {
    verify(program).map_err(EvalError::Invalid)?;
    let mut values = run(
        program,
        LeafValues::Named(leaves),
        &Schedule::for_outputs(program),
    )?;
    let mut named = Bindings::new();
    for (i, output) in program.outputs.iter().enumerate() {
        let slot = &mut values[output.value.index()];
        let shared_later = program.outputs[i + 1..]
            .iter()
            .any(|later| later.value == output.value);
        let value = if shared_later {
            slot.clone()
        } else {
            slot.take()
        };
        named.insert(
            output.name.clone(),
            value.expect("outputs are kept to the end"),
        );
    }
    Ok(named)
}

/// Which nodes to evaluate, and which values can be dropped after each node.
struct Schedule {
    compute: Vec<bool>,
    /// `free_after[i]`: values whose last use is node i.
    free_after: Vec<Vec<ValueId>>,
}

impl Schedule {
    /// Evaluate every node and keep every value.
    fn everything(program: &Program) -> Schedule {
        Schedule {
            compute: vec![true; program.nodes.len()],
            free_after: vec![Vec::new(); program.nodes.len()],
        }
    }

    /// Evaluate what the outputs depend on; drop every other value after its last use.
    fn for_outputs(program: &Program) -> Schedule {
        let n = program.nodes.len();
        let mut compute = vec![false; n];
        let mut is_output = vec![false; n];
        for o in &program.outputs {
            compute[o.value.index()] = true;
            is_output[o.value.index()] = true;
        }
        let mut last_use: Vec<Option<ValueId>> = vec![None; n];
        for id in program.ids().rev() {
            if !compute[id.index()] {
                continue;
            }
            for &a in &program.node(id).args {
                compute[a.index()] = true;
                last_use[a.index()].get_or_insert(id);
            }
        }
        let mut free_after = vec![Vec::new(); n];
        for id in program.ids() {
            if let (Some(user), false) = (last_use[id.index()], is_output[id.index()]) {
                free_after[user.index()].push(id);
            }
        }
        Schedule {
            compute,
            free_after,
        }
    }
}

/// Where a program's leaves get their values: from bindings by name (a whole program), or by
/// position (a scan's body, whose leaves are its first nodes).
#[derive(Clone, Copy)]
enum LeafValues<'a, F: Real> {
    Named(&'a Bindings<F>),
    Positional(&'a [Tensor<F>]),
}

/// Evaluates a verified program in program order, following the schedule.
fn run<F: Real>(
    program: &Program,
    leaves: LeafValues<'_, F>,
    schedule: &Schedule,
) -> Result<Vec<Option<Tensor<F>>>, EvalError> {
    let mut values: Vec<Option<Tensor<F>>> = vec![None; program.nodes.len()];
    // Each scan's results, read by its `result` nodes.
    let mut scans: BTreeMap<ValueId, Vec<Tensor<F>>> = BTreeMap::new();
    for id in program.ids() {
        if !schedule.compute[id.index()] {
            continue;
        }
        let node = program.node(id);
        let value = match (&node.op, leaves) {
            (Op::Leaf(kind), LeafValues::Named(named)) => leaf_value(node, *kind, named)?,
            (Op::Leaf(_), LeafValues::Positional(given)) => given[id.index()].clone(),
            (Op::Result(i), _) => scans[&node.args[0]][*i].clone(),
            (op, _) => {
                let args: Vec<&Tensor<F>> = node
                    .args
                    .iter()
                    .map(|a| values[a.index()].as_ref().expect("operands are live"))
                    .collect();
                if let Op::Scan(scan) = op {
                    scans.insert(id, run_scan(scan, &args)?);
                    Tensor::zeros(IxDyn(&[]))
                } else {
                    apply(op, &args, &node.shape)
                }
            }
        };
        values[id.index()] = Some(value);
        for dead in &schedule.free_after[id.index()] {
            values[dead.index()] = None;
        }
    }
    Ok(values)
}

/// Runs a scan: its body once per iteration, in order (or in reverse), on the carried values,
/// the iteration's slices of the stacked operands and the invariant ones. Returns the final
/// carried values, then each per-iteration output stacked along a new first axis.
fn run_scan<F: Real>(
    scan: &crate::ir::Scan,
    args: &[&Tensor<F>],
) -> Result<Vec<Tensor<F>>, EvalError> {
    let body = &scan.body;
    let schedule = Schedule::for_outputs(body);
    let (carries, stacked) = (scan.carries, scan.stacked);
    let mut leaves: Vec<Tensor<F>> = args.iter().map(|a| (*a).clone()).collect();
    let outputs = body.outputs.len() - carries;
    let mut per_iteration: Vec<Vec<Option<Tensor<F>>>> = vec![vec![None; scan.trips]; outputs];
    for k in 0..scan.trips {
        let t = scan.iteration(k);
        for s in carries..carries + stacked {
            leaves[s] = standard(args[s].index_axis(Axis(0), t));
        }
        let mut values = run(body, LeafValues::Positional(&leaves), &schedule)?;
        let mut take = |i: usize| {
            let value = body.outputs[i].value;
            let shared = body.outputs.iter().filter(|o| o.value == value).count() > 1;
            let slot = &mut values[value.index()];
            if shared {
                slot.clone().expect("outputs are kept to the end")
            } else {
                slot.take().expect("outputs are kept to the end")
            }
        };
        let next: Vec<Tensor<F>> = (0..carries).map(&mut take).collect();
        for (o, ys) in per_iteration.iter_mut().enumerate() {
            ys[t] = Some(take(carries + o));
        }
        for (c, value) in next.into_iter().enumerate() {
            leaves[c] = value;
        }
    }
    let mut results: Vec<Tensor<F>> = leaves.into_iter().take(carries).collect();
    for (o, ys) in per_iteration.into_iter().enumerate() {
        let shape = scan
            .result_shape(carries + o)
            .expect("one result per output");
        let views: Vec<ArrayViewD<F>> = ys
            .iter()
            .map(|y| y.as_ref().expect("every iteration ran").view())
            .collect();
        let stacked = if views.is_empty() {
            Tensor::zeros(IxDyn(shape.dims()))
        } else {
            ndarray::stack(Axis(0), &views).expect("per-iteration outputs share a shape")
        };
        results.push(stacked);
    }
    Ok(results)
}

fn leaf_value<F: Real>(
    node: &Node,
    kind: LeafKind,
    leaves: &Bindings<F>,
) -> Result<Tensor<F>, EvalError> {
    let name = node.name.clone().unwrap_or_default();
    let Some(value) = leaves.get(&name) else {
        return Err(EvalError::MissingLeaf {
            name,
            kind,
            shape: node.shape.clone(),
        });
    };
    if value.shape() != node.shape.dims() {
        return Err(EvalError::LeafShape {
            name,
            expected: node.shape.clone(),
            found: Shape::new(value.shape()),
        });
    }
    Ok(standard(value.view()))
}

/// The value of one non-leaf node from its operands' values; `shape` is the node's shape.
fn apply<F: Real>(op: &Op, args: &[&Tensor<F>], shape: &Shape) -> Tensor<F> {
    let dims = IxDyn(shape.dims());
    match op {
        Op::Leaf(_) | Op::Scan(_) | Op::Result(_) => {
            unreachable!("leaves and scans are evaluated by `run`")
        }
        Op::Const(c) => Tensor::from_elem(dims, F::from_f64(*c)),
        Op::Iota { axis } => Tensor::from_shape_fn(dims, |index| F::from_f64(index[*axis] as f64)),
        Op::Unary(u) => {
            let f = unary_fn::<F>(*u);
            args[0].mapv(f)
        }
        Op::Binary(b) => {
            let f = binary_fn::<F>(*b);
            Zip::from(args[0])
                .and(args[1])
                .map_collect(|&a, &b| f(a, b))
        }
        Op::Where => Zip::from(args[0])
            .and(args[1])
            .and(args[2])
            .map_collect(|&c, &a, &b| if c != F::zero() { a } else { b }),
        Op::Reduce(r, axes) => reduce(*r, args[0], axes),
        Op::Reshape => args[0]
            .to_shape(dims)
            .expect("reshape keeps the element count")
            .into_owned(),
        Op::Transpose(perm) => standard(args[0].view().permuted_axes(perm.clone())),
        Op::Broadcast => standard(
            args[0]
                .broadcast(dims)
                .expect("broadcast target checked by the verifier"),
        ),
        Op::Slice { axis, start, end } => {
            standard(args[0].slice_axis(Axis(*axis), Slice::from(*start..*end)))
        }
        Op::Pad { axis, before, .. } => {
            let mut out = Tensor::zeros(dims);
            let len = args[0].len_of(Axis(*axis));
            out.slice_axis_mut(Axis(*axis), Slice::from(*before..before + len))
                .assign(args[0]);
            out
        }
        Op::Concat { axis } => {
            let mut out = Tensor::zeros(dims);
            let mut start = 0;
            for arg in args {
                let end = start + arg.len_of(Axis(*axis));
                out.slice_axis_mut(Axis(*axis), Slice::from(start..end))
                    .assign(*arg);
                start = end;
            }
            out
        }
        Op::MatMul => matmul(args[0], args[1], shape),
        Op::Conv2d(params) => {
            let geometry = ConvGeometry::new(args[0].shape(), args[1].shape(), *params);
            geometry.conv(args[0], args[1])
        }
        Op::Conv2dInputGrad(params) => {
            let geometry = ConvGeometry::new(shape.dims(), args[1].shape(), *params);
            geometry.input_grad(args[0], args[1])
        }
        Op::Conv2dWeightGrad(params) => {
            let geometry = ConvGeometry::new(args[0].shape(), shape.dims(), *params);
            geometry.weight_grad(args[0], args[1])
        }
    }
}

/// A copy of a view in standard (row-major) layout.
fn standard<F: Real>(view: ArrayViewD<F>) -> Tensor<F> {
    view.as_standard_layout().into_owned()
}

/// An elementwise unary operation on one element.
pub fn unary_fn<F: Real>(op: UnaryOp) -> impl Fn(F) -> F {
    move |x: F| match op {
        UnaryOp::Neg => -x,
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Sin => x.sin(),
        UnaryOp::Cos => x.cos(),
        UnaryOp::Tan => x.tan(),
        UnaryOp::Tanh => x.tanh(),
        // In f64 (libm's erf, within an ulp), rounded to F.
        UnaryOp::Erf => F::from_f64(libm::erf(x.to_f64())),
        // 1 / (1 + e^-x), written so that neither branch overflows.
        UnaryOp::Sigmoid => {
            if x >= F::zero() {
                F::one() / (F::one() + (-x).exp())
            } else {
                let e = x.exp();
                e / (F::one() + e)
            }
        }
        UnaryOp::Abs => x.abs(),
        UnaryOp::StopGradient => x,
        UnaryOp::Sign => {
            if x > F::zero() {
                F::one()
            } else if x < F::zero() {
                -F::one()
            } else {
                F::zero()
            }
        }
        UnaryOp::Powf(p) => x.powf(F::from_f64(p)),
    }
}

fn binary_fn<F: Real>(op: BinaryOp) -> impl Fn(F, F) -> F {
    let indicator = |holds: bool| if holds { F::one() } else { F::zero() };
    move |a: F, b: F| match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Max => a.max(b),
        BinaryOp::Greater => indicator(a > b),
        BinaryOp::Equal => indicator(a == b),
    }
}

fn reduce<F: Real>(op: ReduceOp, x: &Tensor<F>, axes: &[usize]) -> Tensor<F> {
    let mut reduced: Option<Tensor<F>> = None;
    // Reducing the highest axis first keeps the lower axis numbers valid.
    for &axis in axes.iter().rev() {
        let from = reduced.as_ref().unwrap_or(x);
        reduced = Some(match op {
            ReduceOp::Sum => from.sum_axis(Axis(axis)),
            ReduceOp::Max => from.fold_axis(Axis(axis), F::neg_infinity(), |&m, &v| m.max(v)),
        });
    }
    reduced.unwrap_or_else(|| x.clone())
}

/// `[..., m, k] @ [..., k, n]`: one GEMM per batch index.
fn matmul<F: Real>(a: &Tensor<F>, b: &Tensor<F>, shape: &Shape) -> Tensor<F> {
    let r = a.ndim();
    let (m, k, n) = (a.shape()[r - 2], a.shape()[r - 1], b.shape()[r - 1]);
    let batch: usize = a.shape()[..r - 2].iter().product();
    let a3 = a.to_shape((batch, m, k)).expect("matmul operand");
    let b3 = b.to_shape((batch, k, n)).expect("matmul operand");
    let mut out = ndarray::Array3::zeros((batch, m, n));
    for i in 0..batch {
        ndarray::linalg::general_mat_mul(
            F::one(),
            &a3.index_axis(Axis(0), i),
            &b3.index_axis(Axis(0), i),
            F::zero(),
            &mut out.index_axis_mut(Axis(0), i),
        );
    }
    out.into_shape_with_order(IxDyn(shape.dims()))
        .expect("matmul result")
}

/// The sizes of one 2-D convolution. Convolution and its two adjoints are all computed through
/// each sample's im2col matrix `[C*KH*KW, OH*OW]`, whose column (oh, ow) holds the input patch
/// that output pixel (·, oh, ow) sees, one product per sample and channel group g (rows
/// g·P.. of the matrix, P = C/groups·KH·KW, and output channels g·O/groups..):
///
/// - conv:        out[n]_g = W_g · cols_g,       W_g the group's weight as `[O/groups, P]`
/// - weight grad: dW_g    += G[n]_g · cols_gᵀ,   G[n]_g the cotangent as `[O/groups, OH*OW]`
/// - input grad:  dcols_g  = W_gᵀ · G[n]_g, scattered back onto the input by `col2im`
impl ConvGeometry {
    fn im2col<F: Real>(&self, input: &[F]) -> Array2<F> {
        let mut cols = Array2::zeros((self.c * self.kh * self.kw, self.oh * self.ow));
        let entries = cols.as_slice_mut().expect("fresh array");
        self.for_each_run(|entry, pixel, len| {
            let read = input[pixel..].iter().step_by(self.sw);
            entries[entry..entry + len]
                .iter_mut()
                .zip(read)
                .for_each(|(e, &x)| *e = x);
        });
        cols
    }

    /// The adjoint of `im2col`: sums every matrix entry back onto the input element it read.
    fn col2im<F: Real>(&self, cols: &Array2<F>, input: &mut [F]) {
        let entries = cols.as_slice().expect("standard layout");
        self.for_each_run(|entry, pixel, len| {
            let write = input[pixel..].iter_mut().step_by(self.sw);
            write
                .zip(&entries[entry..entry + len])
                .for_each(|(x, &e)| *x = *x + e);
        });
    }

    /// Group g's rows of a matrix whose rows are `groups` equal blocks.
    fn group<'a, F>(&self, m: ArrayView2<'a, F>, g: usize) -> ArrayView2<'a, F> {
        let rows = m.nrows() / self.groups;
        m.slice_move(ndarray::s![g * rows..(g + 1) * rows, ..])
    }

    fn input_len(&self) -> usize {
        self.c * self.h * self.w
    }

    fn conv<F: Real>(&self, input: &Tensor<F>, weight: &Tensor<F>) -> Tensor<F> {
        let (input, weight) = (input.as_standard_layout(), weight.as_standard_layout());
        let input = input.as_slice().expect("standard layout");
        let w = weight
            .to_shape((self.o, self.group_patch()))
            .expect("weight shape");
        let mut out = Array2::zeros((self.n * self.o, self.oh * self.ow));
        for n in 0..self.n {
            let cols = self.im2col(&input[n * self.input_len()..]);
            for g in 0..self.groups {
                let rows = n * self.o + g * self.group_outputs();
                let product = self.group(w.view(), g).dot(&self.group(cols.view(), g));
                out.slice_mut(ndarray::s![rows..rows + self.group_outputs(), ..])
                    .assign(&product);
            }
        }
        out.into_shape_with_order(IxDyn(&[self.n, self.o, self.oh, self.ow]))
            .expect("output shape")
    }

    fn input_grad<F: Real>(&self, cotangent: &Tensor<F>, weight: &Tensor<F>) -> Tensor<F> {
        let (cotangent, weight) = (cotangent.as_standard_layout(), weight.as_standard_layout());
        let ct = cotangent
            .to_shape((self.n * self.o, self.oh * self.ow))
            .expect("cotangent shape");
        let w = weight
            .to_shape((self.o, self.group_patch()))
            .expect("weight shape");
        let mut input = vec![F::zero(); self.n * self.input_len()];
        for n in 0..self.n {
            let mut cols = Array2::zeros((self.c * self.kh * self.kw, self.oh * self.ow));
            for g in 0..self.groups {
                let rows = n * self.o + g * self.group_outputs();
                let g_ct = ct.slice(ndarray::s![rows..rows + self.group_outputs(), ..]);
                let patch = self.group_patch();
                cols.slice_mut(ndarray::s![g * patch..(g + 1) * patch, ..])
                    .assign(&self.group(w.view(), g).t().dot(&g_ct));
            }
            let sample = n * self.input_len();
            self.col2im(&cols, &mut input[sample..sample + self.input_len()]);
        }
        Tensor::from_shape_vec(IxDyn(&[self.n, self.c, self.h, self.w]), input)
            .expect("input shape")
    }

    fn weight_grad<F: Real>(&self, input: &Tensor<F>, cotangent: &Tensor<F>) -> Tensor<F> {
        let (input, cotangent) = (input.as_standard_layout(), cotangent.as_standard_layout());
        let input = input.as_slice().expect("standard layout");
        let ct = cotangent
            .to_shape((self.n * self.o, self.oh * self.ow))
            .expect("cotangent shape");
        let mut grad = Array2::zeros((self.o, self.group_patch()));
        for n in 0..self.n {
            let cols = self.im2col(&input[n * self.input_len()..]);
            for g in 0..self.groups {
                let rows = n * self.o + g * self.group_outputs();
                let g_ct = ct.slice(ndarray::s![rows..rows + self.group_outputs(), ..]);
                let out = g * self.group_outputs();
                let mut block = grad.slice_mut(ndarray::s![out..out + self.group_outputs(), ..]);
                let product = g_ct.dot(&self.group(cols.view(), g).t());
                block.zip_mut_with(&product, |b, &p| *b = *b + p);
            }
        }
        grad.into_shape_with_order(IxDyn(&[self.o, self.group_channels(), self.kh, self.kw]))
            .expect("weight shape")
    }
}

/// Whether a loop's stopping test (`until`) reads 0 in `env`, the state after a step.
pub fn stops<F: Real>(program: &crate::ir::LoopProgram, env: &Bindings<F>) -> bool {
    program
        .until
        .as_ref()
        .and_then(|name| env.get(name))
        .is_some_and(|test| test.iter().all(|&x| Real::to_f64(x) == 0.0))
}

/// Runs a loop program: the prologue once, then the body `steps` times. `observe` sees the
/// bindings (the given leaves plus the state) after the prologue (step 0) and after each body
/// run (steps 1..=steps); returning `false` stops the loop early, as does the loop's own
/// stopping test (`until`) reading 0. Returns the final state: every prologue and body
/// output, and with a stopping test the steps run ([`STEPS_RUN`](crate::ir::STEPS_RUN)).
pub fn run_loop<F: Real>(
    program: &crate::ir::LoopProgram,
    leaves: &Bindings<F>,
    steps: usize,
    mut observe: impl FnMut(usize, &Bindings<F>) -> bool,
) -> Result<Bindings<F>, EvalError> {
    let state = eval_outputs(&program.prologue, leaves)?;
    let mut names: Vec<String> = state.keys().cloned().collect();
    names.extend(program.body.outputs.iter().map(|o| o.name.clone()));
    // One map holds the leaves and the state, so the body's bindings are never rebuilt.
    let mut env = leaves.clone();
    env.extend(state);
    let mut run = 0;
    if observe(0, &env) {
        for step in 1..=steps {
            let next = eval_outputs(&program.body, &env)?;
            env.extend(next);
            run = step;
            let stopped = stops(program, &env);
            if !observe(step, &env) || stopped {
                break;
            }
        }
    }
    let mut out: Bindings<F> = names
        .into_iter()
        .filter_map(|n| env.remove(&n).map(|v| (n, v)))
        .collect();
    if program.until.is_some() {
        let steps_run = F::from_f64(run as f64);
        out.insert(
            crate::ir::STEPS_RUN.to_string(),
            ndarray::arr0(steps_run).into_dyn(),
        );
    }
    Ok(out)
}
