//! The autodiff pass: every vector-Jacobian rule against central finite differences in f64,
//! on random shapes and points drawn from a seeded generator, plus accumulation over several
//! uses, branches, shared weights and the error cases.

use ndarray::{ArrayD, IxDyn};
use pcg::autodiff::{grad_program, vjp, AutodiffError};
use pcg::interp::{eval_outputs, Bindings, Tensor};
use pcg::ir::{
    to_text, BinaryOp, ConvParams, LeafKind, Op, Program, ReduceOp, Shape, UnaryOp, ValueId,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Random cases per rule.
const TRIALS: usize = 10;
/// Step of the central differences.
const STEP: f64 = 1e-5;
/// Allowed error relative to the largest gradient entry (or 1, if larger).
const TOLERANCE: f64 = 1e-6;

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Values uniform in `lo..hi`.
fn uniform(rng: &mut ChaCha8Rng, shape: &[usize], lo: f64, hi: f64) -> Tensor<f64> {
    ArrayD::from_shape_simple_fn(IxDyn(shape), || rng.random_range(lo..hi))
}

/// Values with magnitude in `lo..hi` and a random sign (away from kinks at 0).
fn away_from_zero(rng: &mut ChaCha8Rng, shape: &[usize], lo: f64, hi: f64) -> Tensor<f64> {
    uniform(rng, shape, lo, hi).mapv_into(|x| if rng.random_bool(0.5) { x } else { -x })
}

/// A random shape of the given rank, each axis 1 to `max`.
fn dims(rng: &mut ChaCha8Rng, rank: usize, max: usize) -> Vec<usize> {
    (0..rank).map(|_| rng.random_range(1..=max)).collect()
}

/// Draws an operand of the given shape.
type Sampler = fn(&mut ChaCha8Rng, &[usize]) -> Tensor<f64>;

/// Draws both operands of a binary op for the given shape.
type PairSampler = fn(&mut ChaCha8Rng, &[usize]) -> (Tensor<f64>, Tensor<f64>);

/// A forward program under construction, with the values of its leaves.
struct Case {
    program: Program,
    leaves: Bindings<f64>,
}

impl Case {
    fn new(name: &str) -> Case {
        Case {
            program: Program::new(name),
            leaves: Bindings::new(),
        }
    }

    fn leaf(&mut self, kind: LeafKind, name: &str, value: Tensor<f64>) -> ValueId {
        self.leaves.insert(name.to_string(), value.clone());
        self.program.leaf(kind, name, Shape::new(value.shape()))
    }

    /// A parameter: a leaf the gradient is checked for.
    fn param(&mut self, name: &str, value: Tensor<f64>) -> ValueId {
        self.leaf(LeafKind::Param, name, value)
    }

    /// Ends the program with the scalar loss `sum(out * r)` for a fixed random `r`, so that
    /// every element of `out` gets a different cotangent.
    fn with_loss(mut self, out: ValueId, rng: &mut ChaCha8Rng) -> Case {
        let shape = self.program.shape(out).clone();
        let r = uniform(rng, shape.dims(), -1.0, 1.0);
        let r = self.leaf(LeafKind::Input, "r", r);
        let weighted = self.program.mul(out, r);
        let all_axes = (0..shape.rank()).collect();
        let loss = self.program.reduce_sum(weighted, all_axes);
        self.program.set_output("loss", loss);
        self
    }

    fn loss(&self, leaves: &Bindings<f64>) -> f64 {
        let outputs = eval_outputs(&self.program, leaves).expect("forward evaluates");
        outputs["loss"].iter().copied().sum()
    }

    /// The gradients of the BP gradient program, by parameter name.
    fn gradients(&self) -> Bindings<f64> {
        let grad = grad_program(&self.program).expect("gradient program");
        let mut outputs = eval_outputs(&grad, &self.leaves).expect("gradient evaluates");
        assert_eq!(outputs["loss"].sum(), self.loss(&self.leaves));
        outputs.retain(|name, _| name.starts_with("grad."));
        outputs
    }

    /// Compares every parameter's gradient with central finite differences.
    fn check(&self) {
        let gradients = self.gradients();
        let params = self.program.leaves(LeafKind::Param);
        assert_eq!(gradients.len(), params.len());
        for (_, name) in params {
            let analytic = &gradients[&format!("grad.{name}")];
            let numeric = self.finite_differences(name);
            let scale = numeric.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            for (i, (a, n)) in analytic.iter().zip(&numeric).enumerate() {
                assert!(
                    (a - n).abs() <= TOLERANCE * scale,
                    "{}: d loss / d {name}[{i}] is {a}, finite differences say {n}\n{}",
                    self.program.name,
                    to_text(&self.program)
                );
            }
        }
    }

    fn finite_differences(&self, name: &str) -> Tensor<f64> {
        let value = &self.leaves[name];
        let mut numeric = Tensor::zeros(value.raw_dim());
        for (i, slot) in numeric.iter_mut().enumerate() {
            let nudged = |delta: f64| {
                let mut leaves = self.leaves.clone();
                let entry = leaves.get_mut(name).expect("leaf");
                entry.as_slice_mut().expect("standard layout")[i] += delta;
                self.loss(&leaves)
            };
            *slot = (nudged(STEP) - nudged(-STEP)) / (2.0 * STEP);
        }
        numeric
    }
}

/// Checks a one-operand op on `TRIALS` random shapes, with operand values from `sample`.
fn check_unary(op: UnaryOp, seed: u64, sample: Sampler) {
    let mut rng = rng(seed);
    for trial in 0..TRIALS {
        let rank = trial % 3 + 1;
        let shape = dims(&mut rng, rank, 3);
        let mut case = Case::new(&format!("{op}"));
        let x = case.param("x", sample(&mut rng, &shape));
        let y = case.program.unary(op, x);
        case.with_loss(y, &mut rng).check();
    }
}

#[test]
fn unary_rules() {
    fn anywhere(rng: &mut ChaCha8Rng, s: &[usize]) -> Tensor<f64> {
        uniform(rng, s, -2.0, 2.0)
    }
    fn positive(rng: &mut ChaCha8Rng, s: &[usize]) -> Tensor<f64> {
        uniform(rng, s, 0.5, 2.0)
    }
    fn off_zero(rng: &mut ChaCha8Rng, s: &[usize]) -> Tensor<f64> {
        away_from_zero(rng, s, 0.1, 2.0)
    }
    fn near_zero(rng: &mut ChaCha8Rng, s: &[usize]) -> Tensor<f64> {
        uniform(rng, s, -1.0, 1.0)
    }
    let cases: [(UnaryOp, Sampler); 18] = [
        (UnaryOp::Neg, anywhere),
        (UnaryOp::Exp, anywhere),
        (UnaryOp::Log, positive),
        (UnaryOp::Sqrt, positive),
        (UnaryOp::Sin, anywhere),
        (UnaryOp::Cos, anywhere),
        (UnaryOp::Tan, near_zero),
        (UnaryOp::Tanh, anywhere),
        (UnaryOp::Sigmoid, anywhere),
        (UnaryOp::Abs, off_zero),
        (UnaryOp::Sign, off_zero),
        (UnaryOp::Powf(2.0), anywhere),
        (UnaryOp::Powf(3.0), anywhere),
        (UnaryOp::Powf(1.0), anywhere),
        (UnaryOp::Powf(0.0), positive),
        (UnaryOp::Powf(0.5), positive),
        (UnaryOp::Powf(-1.5), positive),
        (UnaryOp::Powf(2.5), positive),
    ];
    for (seed, (op, sample)) in cases.into_iter().enumerate() {
        check_unary(op, seed as u64, sample);
    }
}

/// Checks a two-operand op; `sample` draws both operands for a shape.
fn check_binary(op: BinaryOp, seed: u64, sample: PairSampler) {
    let mut rng = rng(100 + seed);
    for trial in 0..TRIALS {
        let shape = dims(&mut rng, trial % 3 + 1, 3);
        let (a, b) = sample(&mut rng, &shape);
        let mut case = Case::new(&format!("{op}"));
        let a = case.param("a", a);
        let b = case.param("b", b);
        let y = case.program.binary(op, a, b);
        case.with_loss(y, &mut rng).check();
    }
}

#[test]
fn binary_rules() {
    fn anywhere(rng: &mut ChaCha8Rng, s: &[usize]) -> (Tensor<f64>, Tensor<f64>) {
        (uniform(rng, s, -2.0, 2.0), uniform(rng, s, -2.0, 2.0))
    }
    fn divisor_off_zero(rng: &mut ChaCha8Rng, s: &[usize]) -> (Tensor<f64>, Tensor<f64>) {
        (uniform(rng, s, -2.0, 2.0), away_from_zero(rng, s, 0.5, 2.0))
    }
    /// b differs from a by at least 0.1 everywhere, so no element sits on a tie.
    fn apart(rng: &mut ChaCha8Rng, s: &[usize]) -> (Tensor<f64>, Tensor<f64>) {
        let a = uniform(rng, s, -2.0, 2.0);
        let b = &a + &away_from_zero(rng, s, 0.1, 1.0);
        (a, b)
    }
    let cases: [(BinaryOp, PairSampler); 7] = [
        (BinaryOp::Add, anywhere),
        (BinaryOp::Sub, anywhere),
        (BinaryOp::Mul, anywhere),
        (BinaryOp::Div, divisor_off_zero),
        (BinaryOp::Max, apart),
        (BinaryOp::Greater, apart),
        (BinaryOp::Equal, apart),
    ];
    for (seed, (op, sample)) in cases.into_iter().enumerate() {
        check_binary(op, seed as u64, sample);
    }
}

#[test]
fn where_rule() {
    let mut rng = rng(200);
    for trial in 0..TRIALS {
        let shape = dims(&mut rng, trial % 3 + 1, 3);
        let cond = ArrayD::from_shape_simple_fn(IxDyn(&shape), || {
            [0.0, 1.0, -2.0][rng.random_range(0..3)]
        });
        let mut case = Case::new("where");
        let cond = case.leaf(LeafKind::Input, "cond", cond);
        let a = case.param("a", uniform(&mut rng, &shape, -2.0, 2.0));
        let b = case.param("b", uniform(&mut rng, &shape, -2.0, 2.0));
        let y = case.program.build(Op::Where, &[cond, a, b], None);
        case.with_loss(y, &mut rng).check();
    }
}

/// A random non-empty sorted subset of `0..rank`.
fn some_axes(rng: &mut ChaCha8Rng, rank: usize) -> Vec<usize> {
    let mut axes: Vec<usize> = (0..rank).filter(|_| rng.random_bool(0.5)).collect();
    if axes.is_empty() {
        axes.push(rng.random_range(0..rank));
    }
    axes
}

#[test]
fn reduce_sum_rule() {
    let mut rng = rng(300);
    for trial in 0..TRIALS {
        let shape = dims(&mut rng, trial % 3 + 1, 3);
        let axes = some_axes(&mut rng, shape.len());
        let mut case = Case::new("reduce_sum");
        let x = case.param("x", uniform(&mut rng, &shape, -2.0, 2.0));
        let y = case
            .program
            .build(Op::Reduce(ReduceOp::Sum, axes), &[x], None);
        case.with_loss(y, &mut rng).check();
    }
}

#[test]
fn reduce_max_rule() {
    let mut rng = rng(301);
    for trial in 0..TRIALS {
        let shape = dims(&mut rng, trial % 3 + 1, 3);
        let axes = some_axes(&mut rng, shape.len());
        // Distinct values at least 0.3 apart: no ties, and a nudge never changes the argmax.
        let n: usize = shape.iter().product();
        let mut levels: Vec<f64> = (0..n).map(|i| 0.3 * i as f64 - 1.0).collect();
        levels.shuffle(&mut rng);
        let x = ArrayD::from_shape_vec(IxDyn(&shape), levels).unwrap();
        let mut case = Case::new("reduce_max");
        let x = case.param("x", x);
        let y = case
            .program
            .build(Op::Reduce(ReduceOp::Max, axes), &[x], None);
        case.with_loss(y, &mut rng).check();
    }
}

#[test]
fn reshape_rule() {
    let mut rng = rng(400);
    for trial in 0..TRIALS {
        let shape = dims(&mut rng, trial % 3 + 2, 3);
        let (last, rest) = shape.split_last().unwrap();
        let target = vec![*last, rest.iter().product()];
        let mut case = Case::new("reshape");
        let x = case.param("x", uniform(&mut rng, &shape, -2.0, 2.0));
        let y = case
            .program
            .build(Op::Reshape, &[x], Some(Shape::new(target)));
        case.with_loss(y, &mut rng).check();
    }
}

#[test]
fn transpose_rule() {
    let mut rng = rng(500);
    for trial in 0..TRIALS {
        let rank = trial % 3 + 2;
        let shape = dims(&mut rng, rank, 3);
        let mut perm: Vec<usize> = (0..rank).collect();
        // Beyond rank 2, a permutation that is not its own inverse.
        while rank > 2 && (0..rank).all(|i| perm[perm[i]] == i) {
            perm.shuffle(&mut rng);
        }
        let mut case = Case::new("transpose");
        let x = case.param("x", uniform(&mut rng, &shape, -2.0, 2.0));
        let y = case.program.build(Op::Transpose(perm), &[x], None);
        case.with_loss(y, &mut rng).check();
    }
}

#[test]
fn broadcast_rule() {
    let mut rng = rng(600);
    for trial in 0..TRIALS {
        let target = dims(&mut rng, trial % 3 + 1, 3);
        // Drop some leading axes and set some of the rest to 1.
        let lead = rng.random_range(0..=target.len());
        let source: Vec<usize> = target[lead..]
            .iter()
            .map(|&d| if rng.random_bool(0.5) { 1 } else { d })
            .collect();
        let mut case = Case::new("broadcast");
        let x = case.param("x", uniform(&mut rng, &source, -2.0, 2.0));
        let y = case
            .program
            .build(Op::Broadcast, &[x], Some(Shape::new(target)));
        case.with_loss(y, &mut rng).check();
    }
}

#[test]
fn slice_and_pad_rules() {
    let mut rng = rng(700);
    for trial in 0..TRIALS {
        let shape = dims(&mut rng, trial % 3 + 1, 4);
        let axis = rng.random_range(0..shape.len());
        let start = rng.random_range(0..shape[axis]);
        let end = rng.random_range(start + 1..=shape[axis]);
        let mut case = Case::new("slice");
        let x = case.param("x", uniform(&mut rng, &shape, -2.0, 2.0));
        let y = case
            .program
            .build(Op::Slice { axis, start, end }, &[x], None);
        case.with_loss(y, &mut rng).check();

        let (before, after) = (rng.random_range(0..3), rng.random_range(0..3));
        let mut case = Case::new("pad");
        let x = case.param("x", uniform(&mut rng, &shape, -2.0, 2.0));
        let pad = Op::Pad {
            axis,
            before,
            after,
        };
        let y = case.program.build(pad, &[x], None);
        case.with_loss(y, &mut rng).check();
    }
}

#[test]
fn concat_rule() {
    let mut rng = rng(800);
    for trial in 0..TRIALS {
        let shape = dims(&mut rng, trial % 3 + 1, 3);
        let axis = rng.random_range(0..shape.len());
        let mut case = Case::new("concat");
        let parts: Vec<ValueId> = (0..trial % 3 + 1)
            .map(|i| {
                let mut part = shape.clone();
                part[axis] = rng.random_range(1..=3);
                case.param(&format!("x{i}"), uniform(&mut rng, &part, -2.0, 2.0))
            })
            .collect();
        let y = case.program.build(Op::Concat { axis }, &parts, None);
        case.with_loss(y, &mut rng).check();
    }
}

#[test]
fn matmul_rule() {
    let mut rng = rng(900);
    for trial in 0..TRIALS {
        let batch = dims(&mut rng, trial % 3, 2);
        let [m, k, n] = [0; 3].map(|_| rng.random_range(1..=4));
        let a_shape = [batch.clone(), vec![m, k]].concat();
        let b_shape = [batch, vec![k, n]].concat();
        let mut case = Case::new("matmul");
        let a = case.param("a", uniform(&mut rng, &a_shape, -2.0, 2.0));
        let b = case.param("b", uniform(&mut rng, &b_shape, -2.0, 2.0));
        let y = case.program.build(Op::MatMul, &[a, b], None);
        case.with_loss(y, &mut rng).check();
    }
}

#[test]
fn conv2d_rule() {
    let mut rng = rng(1000);
    for _ in 0..TRIALS {
        let (stride, padding, kernel) = (
            rng.random_range(1..=2),
            rng.random_range(0..=1),
            rng.random_range(1..=3),
        );
        let [n, c, o] = [0; 3].map(|_| rng.random_range(1..=2));
        let [h, w] = [0; 2].map(|_| rng.random_range(kernel..=5));
        let mut case = Case::new("conv2d");
        let x = case.param("x", uniform(&mut rng, &[n, c, h, w], -2.0, 2.0));
        let k = case.param("k", uniform(&mut rng, &[o, c, kernel, kernel], -2.0, 2.0));
        let y = case
            .program
            .build(Op::Conv2d(ConvParams::new(stride, padding)), &[x, k], None);
        case.with_loss(y, &mut rng).check();
    }
}

#[test]
fn a_value_used_twice_accumulates() {
    let mut rng = rng(1100);
    let mut case = Case::new("twice");
    let x = case.param("x", uniform(&mut rng, &[3], -2.0, 2.0));
    // x * x: both operands are x, and sin(x) + x^2 uses x in two nodes.
    let square = case.program.mul(x, x);
    let sin = case.program.unary(UnaryOp::Sin, x);
    let y = case.program.add_values(square, sin);
    let case = case.with_loss(y, &mut rng);
    case.check();

    // d/dx sum((x^2 + sin x) r) = (2x + cos x) r, exactly.
    let grad = &case.gradients()["grad.x"];
    let (x, r) = (&case.leaves["x"], &case.leaves["r"]);
    for i in 0..3 {
        let expected = (2.0 * x[i] + x[i].cos()) * r[i];
        assert!((grad[i] - expected).abs() < 1e-12);
    }
}

#[test]
fn a_branching_graph() {
    let mut rng = rng(1200);
    let mut case = Case::new("branch");
    let x = case.param("x", uniform(&mut rng, &[2, 3], -1.0, 1.0));
    let w = case.param("w", uniform(&mut rng, &[3, 4], -1.0, 1.0));
    let h = case.program.build(Op::MatMul, &[x, w], None);
    let h = case.program.unary(UnaryOp::Tanh, h);
    // Two branches from h that meet again: h * sigmoid(h) + exp(h).
    let gate = case.program.unary(UnaryOp::Sigmoid, h);
    let gated = case.program.mul(h, gate);
    let skip = case.program.unary(UnaryOp::Exp, h);
    let y = case.program.add_values(gated, skip);
    case.with_loss(y, &mut rng).check();
}

#[test]
fn a_weight_shared_by_two_matmuls() {
    let mut rng = rng(1300);
    let mut case = Case::new("shared");
    let x1 = case.leaf(LeafKind::Input, "x1", uniform(&mut rng, &[2, 3], -1.0, 1.0));
    let x2 = case.leaf(LeafKind::Input, "x2", uniform(&mut rng, &[2, 3], -1.0, 1.0));
    let w = case.param("w", uniform(&mut rng, &[3, 3], -1.0, 1.0));
    // An unrolled recurrence: h1 = tanh(x1 w), h2 = tanh((h1 + x2) w).
    let a1 = case.program.build(Op::MatMul, &[x1, w], None);
    let h1 = case.program.unary(UnaryOp::Tanh, a1);
    let in2 = case.program.add_values(h1, x2);
    let a2 = case.program.build(Op::MatMul, &[in2, w], None);
    let h2 = case.program.unary(UnaryOp::Tanh, a2);
    case.with_loss(h2, &mut rng).check();
}

#[test]
fn a_parameter_off_every_path_gets_zeros() {
    let mut rng = rng(1400);
    let mut case = Case::new("unused");
    let x = case.param("x", uniform(&mut rng, &[2], -1.0, 1.0));
    case.param("unused", uniform(&mut rng, &[2, 2], -1.0, 1.0));
    let y = case.program.unary(UnaryOp::Exp, x);
    let grads = case.with_loss(y, &mut rng).gradients();
    assert_eq!(grads["grad.unused"], ArrayD::<f64>::zeros(IxDyn(&[2, 2])));
}

#[test]
fn ties_split_evenly() {
    let mut case = Case::new("ties");
    let x = case.param(
        "x",
        ndarray::array![[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]].into_dyn(),
    );
    let m = case
        .program
        .build(Op::Reduce(ReduceOp::Max, vec![1]), &[x], None);
    let b = case.param("b", ndarray::array![2.0, 2.0].into_dyn());
    // max(m, b) ties in its second element: 2 = 2.
    let y = case.program.binary(BinaryOp::Max, m, b);
    let all = case.program.reduce_sum(y, vec![0]);
    case.program.set_output("loss", all);
    let grads = case.gradients();
    assert_eq!(grads["grad.b"], ndarray::array![0.0, 0.5].into_dyn());
    let third = 0.5 / 3.0;
    assert_eq!(
        grads["grad.x"],
        ndarray::array![[0.0, 0.5, 0.5], [third, third, third]].into_dyn()
    );
}

/// The toy graph of Millidge, Tschantz & Buckley (2022), with the gradients of DESIGN.md.
#[test]
fn the_papers_toy_graph() {
    let mut case = Case::new("toy");
    let y0 = case.param("y0", ndarray::arr0(5.0).into_dyn());
    let theta = case.param("theta", ndarray::arr0(2.0).into_dyn());
    let p = &mut case.program;
    let y1 = p.mul(theta, y0);
    let y2 = p.unary(UnaryOp::Sqrt, y1);
    let y3 = p.mul(y0, y0);
    let tan = p.unary(UnaryOp::Tan, y2);
    let sin = p.unary(UnaryOp::Sin, y3);
    let y4 = p.add_values(tan, sin);
    let one = p.constant(1.0, Shape::scalar());
    let miss = p.sub(one, y4);
    let square = p.mul(miss, miss);
    let loss = p.scale(square, 0.5);
    p.set_output("loss", loss);
    case.check();
    let grads = case.gradients();
    assert!((grads["grad.y0"].sum() - -11.3705).abs() < 1e-4);
    assert!((grads["grad.theta"].sum() - -0.8792).abs() < 1e-4);
}

#[test]
fn vjp_with_several_seeds_and_an_interior_value() {
    // h = tanh(x); seeds on exp(h) and on h itself; differentiate with respect to h and x.
    let mut p = Program::new("local");
    let x = p.leaf(LeafKind::Input, "x", Shape::new([3]));
    let h = p.unary(UnaryOp::Tanh, x);
    let e = p.unary(UnaryOp::Exp, h);
    let seed_e = p.leaf(LeafKind::State, "seed_e", Shape::new([3]));
    let seed_h = p.leaf(LeafKind::State, "seed_h", Shape::new([3]));
    let grads = vjp(&mut p, &[(e, seed_e), (h, seed_h)], &[h, x]).unwrap();
    p.set_output("dh", grads[0]);
    p.set_output("dx", grads[1]);

    let xs: ndarray::Array1<f64> = ndarray::array![0.3, -0.7, 1.1];
    let se = ndarray::array![1.0, -2.0, 0.5];
    let sh = ndarray::array![0.25, 1.0, -1.5];
    let leaves = Bindings::from([
        ("x".to_string(), xs.clone().into_dyn()),
        ("seed_e".to_string(), se.clone().into_dyn()),
        ("seed_h".to_string(), sh.clone().into_dyn()),
    ]);
    let out: Bindings<f64> = eval_outputs(&p, &leaves).unwrap();
    for i in 0..3 {
        let t = xs[i].tanh();
        let dh = se[i] * t.exp() + sh[i];
        assert!((out["dh"][i] - dh).abs() < 1e-12);
        assert!((out["dx"][i] - dh * (1.0 - t * t)).abs() < 1e-12);
    }
}

#[test]
fn only_nodes_between_wrt_and_seeds_are_differentiated() {
    // y = w * tanh(x): with respect to w only, no derivative of tanh is built.
    let mut p = Program::new("pruned");
    let x = p.leaf(LeafKind::Input, "x", Shape::new([2]));
    let w = p.leaf(LeafKind::Param, "w", Shape::new([2]));
    let t = p.unary(UnaryOp::Tanh, x);
    let y = p.mul(w, t);
    let seed = p.leaf(LeafKind::State, "seed", Shape::new([2]));
    let before = p.nodes.len();
    let grads = vjp(&mut p, &[(y, seed)], &[w]).unwrap();
    // dL/dw = seed * tanh(x): a single multiplication.
    assert_eq!(p.nodes.len(), before + 1);
    assert_eq!(p.node(grads[0]).op, Op::Binary(BinaryOp::Mul));
    assert_eq!(p.node(grads[0]).args, vec![seed, t]);
}

#[test]
fn conv2d_weight_adjoint_has_no_rule() {
    let mut p = Program::new("second_order");
    let x = p.leaf(LeafKind::Param, "x", Shape::new([1, 1, 4, 4]));
    let g = p.leaf(LeafKind::Param, "g", Shape::new([1, 1, 2, 2]));
    let op = Op::Conv2dWeightGrad(ConvParams::new(1, 0));
    let dw = p.build(op, &[x, g], Some(Shape::new([1, 1, 3, 3])));
    let loss = p.reduce_sum(dw, vec![0, 1, 2, 3]);
    p.set_output("loss", loss);
    let err = grad_program(&p).unwrap_err();
    assert_eq!(
        err,
        AutodiffError::NoRule {
            op: "conv2d_weight_grad[stride=1, padding=0]".into(),
            node: dw
        }
    );
    assert_eq!(
        err.to_string(),
        "cannot differentiate %2 = conv2d_weight_grad[stride=1, padding=0]: the op has no \
         derivative rule"
    );

    // Off the differentiated path the op is harmless: here only `w2` is a parameter.
    let mut p = Program::new("off_path");
    let x = p.leaf(LeafKind::Input, "x", Shape::new([1, 1, 4, 4]));
    let g = p.leaf(LeafKind::Input, "g", Shape::new([1, 1, 2, 2]));
    let op = Op::Conv2dWeightGrad(ConvParams::new(1, 0));
    let dw = p.build(op, &[x, g], Some(Shape::new([1, 1, 3, 3])));
    let w2 = p.leaf(LeafKind::Param, "w2", Shape::new([1, 1, 3, 3]));
    let y = p.mul(dw, w2);
    let loss = p.reduce_sum(y, vec![0, 1, 2, 3]);
    p.set_output("loss", loss);
    assert!(grad_program(&p).is_ok());
}

#[test]
fn grad_program_needs_a_scalar_loss() {
    let mut p = Program::new("no_loss");
    let x = p.leaf(LeafKind::Param, "x", Shape::new([2]));
    p.set_output("y", x);
    assert_eq!(grad_program(&p).unwrap_err(), AutodiffError::NoLoss);
    p.set_output("loss", x);
    assert_eq!(
        grad_program(&p).unwrap_err(),
        AutodiffError::LossNotScalar {
            shape: Shape::new([2])
        }
    );
}

#[test]
fn seeds_must_match_their_values() {
    let mut p = Program::new("seed");
    let x = p.leaf(LeafKind::Param, "x", Shape::new([2]));
    let seed = p.constant(1.0, Shape::new([3]));
    assert_eq!(
        vjp(&mut p, &[(x, seed)], &[x]).unwrap_err(),
        AutodiffError::SeedShape {
            value: x,
            expected: Shape::new([2]),
            found: Shape::new([3])
        }
    );
}

#[test]
fn gradient_program_text() {
    let mut p = Program::new("layer");
    let x = p.leaf(LeafKind::Input, "x", Shape::new([2, 3]));
    let w = p.leaf(LeafKind::Param, "w", Shape::new([3, 4]));
    let h = p.build(Op::MatMul, &[x, w], None);
    let y = p.unary(UnaryOp::Tanh, h);
    let loss = p.reduce_sum(y, vec![0, 1]);
    p.set_output("loss", loss);
    // No cotangent is built for the input x: it is on no path from a parameter.
    insta::assert_snapshot!(to_text(&grad_program(&p).unwrap()), @r"
    program layer_grad {
      %0 = input x : [2, 3]
      %1 = param w : [3, 4]
      %2 = matmul %0, %1 : [2, 4]
      %3 = tanh %2 : [2, 4]
      %4 = reduce_sum[axes=[0, 1]] %3 : []
      %5 = const 1 : []
      %6 = reshape %5 : [1, 1]
      %7 = broadcast %6 : [2, 4]
      %8 = mul %3, %3 : [2, 4]
      %9 = const 1 : [2, 4]
      %10 = sub %9, %8 : [2, 4]
      %11 = mul %7, %10 : [2, 4]
      %12 = transpose[perm=[1, 0]] %0 : [3, 2]
      %13 = matmul %12, %11 : [3, 4]
      return loss = %4
      return grad.w = %13
    }
    ");
}

#[test]
fn a_small_cnn() {
    // conv 3x3 (padding 1) -> relu -> 2x2 max pool -> dense -> squared error
    let mut rng = rng(1500);
    let mut case = Case::new("cnn");
    let x = case.leaf(
        LeafKind::Input,
        "x",
        uniform(&mut rng, &[2, 1, 4, 4], -1.0, 1.0),
    );
    let k = case.param("k", uniform(&mut rng, &[2, 1, 3, 3], -1.0, 1.0));
    let w = case.param("w", uniform(&mut rng, &[8, 3], -1.0, 1.0));
    let y = case.leaf(LeafKind::Target, "y", uniform(&mut rng, &[2, 3], -1.0, 1.0));
    let p = &mut case.program;
    let conv = p.build(Op::Conv2d(ConvParams::new(1, 1)), &[x, k], None);
    let zero = p.constant_like(0.0, conv);
    let relu = p.binary(BinaryOp::Max, conv, zero);
    let windows = p.reshape(relu, Shape::new([2, 2, 2, 2, 2, 2]));
    let pooled = p.build(Op::Reduce(ReduceOp::Max, vec![3, 5]), &[windows], None);
    let flat = p.reshape(pooled, Shape::new([2, 8]));
    let prediction = p.build(Op::MatMul, &[flat, w], None);
    let miss = p.sub(prediction, y);
    let square = p.mul(miss, miss);
    let total = p.reduce_sum(square, vec![0, 1]);
    let loss = p.scale(total, 0.5);
    p.set_output("loss", loss);
    case.check();
}

/// stop_gradient passes its operand's value and no cotangent: the loss Σ r ⊙ x ⊙
/// stop_gradient(x) has gradient r ⊙ x (one copy of x stopped), not 2 r ⊙ x.
#[test]
fn stop_gradient_passes_the_value_and_no_gradient() {
    let mut c = Case::new("stop");
    let mut r = rng(5);
    let x = c.param("x", uniform(&mut r, &[3, 4], -2.0, 2.0));
    let stopped = c.program.unary(UnaryOp::StopGradient, x);
    let out = c.program.mul(x, stopped);
    let c = c.with_loss(out, &mut r);
    let grads = c.gradients();
    let (value, weights) = (&c.leaves["x"], &c.leaves["r"]);
    let want: f64 = (value * value * weights).sum();
    assert!((c.loss(&c.leaves) - want).abs() < 1e-12);
    let expected = weights * value;
    let got = &grads["grad.x"];
    assert!(
        (got - &expected).iter().all(|d| d.abs() < 1e-12),
        "{got} vs {expected}"
    );
}
